# Set-up and everyday commands. `make test` and `make app` create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: bundle-aerial bundle-faces bundle-faces-release install peer chromium test test-fast app bench bundle clean data

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@# a CPU wheel of another torch version breaks torchvision's compiled ops: fail here, not in a test
	$(PY) -c "import torch, torchvision; torchvision.ops.nms(torch.tensor([[0., 0, 1, 1]]), torch.tensor([1.]), 0.5)" \
		|| (echo "torchvision.ops.nms does not run: torch/torchvision mismatch (need torch==2.14.1 torchvision==0.29.1)"; exit 1)
	touch $(STAMP)

install: $(STAMP)

# The peers only (PYTHONPATH=.peer): ultralytics for YOLO11n (scripts/yolo_peer.py), facenet-pytorch for MTCNN
# (scripts/mtcnn_peer.py), beside the venv and without their dependencies: they would add opencv-python over the
# venv's opencv-python-headless (both are cv2) and pin another torch
peer: $(STAMP)
	$(PY) -m pip install -q --target .peer --no-deps ultralytics==8.4.190 ultralytics-thop polars polars-runtime-32 \
		psutil ultralytics-platform httpx httpcore facenet-pytorch==2.6.0

# Every ground-truth file the bundled reports name (under data/, made from ../shared/data; borrowcore/data/derived.py)
data: $(STAMP)
	$(PY) -c "from borrowcore.data.derived import DERIVED; print('\n'.join(dict.fromkeys(DERIVED.values())))" | \
		while read -r command; do out=$$(echo "$$command" | sed 's/.*--out \([^ ]*\).*/\1/'); \
		[ -e "$$out" ] && { echo "have $$out"; continue; }; echo "$$command"; $(PY) -m $$command || exit 1; done

# The end-to-end app test drives Debian's chromium through Playwright (`playwright install` would download
# a browser of its own, which fails here). Installed when missing and running as root (CI); else a note.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else echo "no chromium on PATH: the end-to-end app test will skip (sudo apt-get install chromium)"; fi; }

test: $(STAMP) chromium
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

app: $(STAMP)
	$(VENV)/bin/streamlit run viewer/Home.py

# What borrowing costs, side by side (docs/benchmarks.md): about 15 minutes on 2 CPU cores.
bench: $(STAMP)
	$(PY) -m borrowcore bench --out reports/bench --repeats 5 --warmup 1

# Reproduces the shipped synth checkpoints, reports and logs in assets/ (hours on 2 CPU cores;
# resumable: run it again after an interruption).
bundle: $(STAMP)
	$(PY) -m borrowcore synth --out data/synth/train --images 2000 --seed 0
	$(PY) -m borrowcore synth --out data/synth/val --images 300 --seed 1
	OMP_NUM_THREADS=1 $(PY) -m borrowcore ablate --data data/synth --out runs/ablation --seeds 0 \
		--set train.workers=0 train.channels_last=true
	$(PY) -m borrowcore release --runs runs/ablation --assets assets

# Reproduces the shipped aerial checkpoints and reports (docs/results/aerial-cars.md): trains ssd and full
# (seeds 0, 1) and context and borrow (seed 0) unless RUNS/<neck>/seed<k> already holds weights, then
# evaluates them (scripts/aerial-eval.sh), tabulates and releases. The shipped runs trained on an H100
# (scripts/gpu-session.sh); on 2 CPU cores each run takes hours. Resumable.
AERIAL_RUNS ?= runs/aerial
bundle-aerial: $(STAMP)
	for run in ssd:0 ssd:1 full:0 full:1 context:0 borrow:0; do neck=$${run%:*}; seed=$${run#*:}; \
		out=$(AERIAL_RUNS)/$$neck/seed$$seed; [ -f $$out/weights.pt ] && continue; \
		$(PY) -m borrowcore train --config configs/aerial-full.yaml --out $$out --resume \
			--set model.neck=$$neck train.seed=$$seed || exit 1; done
	PATH=$(VENV)/bin:$$PATH bash scripts/aerial-eval.sh $(AERIAL_RUNS)
	$(PY) -m borrowcore table --runs $(AERIAL_RUNS) --splits tile256 resize tile128 tile512 --fine-bins --classes
	$(PY) -m borrowcore release --runs $(AERIAL_RUNS) --assets assets --name aerial --reports-folder aerial \
		--best-by tile256 --weights-necks ssd full

# The short-budget face study (docs/results/faces-short-budget.md; its reports: reports/experiments/faces-short,
# its models no longer shipped): trains ssd and
# full (seeds 0-2) and context and borrow (seed 0) on the 401 WIDER train photos unless
# RUNS/<neck>/seed<k>/weights.pt already exists, evaluates them on the 199 val photos (whole photo, tiles,
# rescaled and recoloured copies) and tabulates. About 40 minutes a run on one CPU core; two
# queues side by side on 2 cores. Resumable: run it again after an interruption. The config's RetinaNet
# head init (prior_prob 0.25) is the shipped models' recipe; FACES_SETS=model.prior_prob=0 trains with
# SSD's Xavier init instead (the earlier recipe, reports/experiments/faces-xavier).
FACES_RUNS ?= runs/faces
FACES_SETS ?=
bundle-faces: $(STAMP)
	SETS="$(FACES_SETS)" OMP_NUM_THREADS=1 bash scripts/faces-train.sh $(FACES_RUNS) "full:0 full:1 full:2 borrow:0" & \
		SETS="$(FACES_SETS)" OMP_NUM_THREADS=1 bash scripts/faces-train.sh $(FACES_RUNS) "ssd:0 ssd:1 ssd:2 context:0"; wait
	bash scripts/faces-eval.sh $(FACES_RUNS)
	$(PY) -m borrowcore table --runs $(FACES_RUNS) --splits val tiled x0.5 x2 colour

# The release face models (assets/checkpoints/faces-{ssd,full}.pt, docs/results/faces-release.md):
# train (about 5-6 hours of one core a run, resumable from state/faces-release/), evaluate with the shipped
# inference recipe, ship. The short-budget study above stays in reports/experiments/faces-short.
FACES_RECIPE ?= oversize=shrink zoom_out=[0.5] drop_inside=0.8
bundle-faces-release: $(STAMP)
	bash scripts/faces-release.sh train "ssd full"
	NECKS="ssd full" RECIPE="$(FACES_RECIPE)" NMS_IOU=0.4 bash scripts/faces-release-eval.sh
	NECKS="ssd full" RECIPE="$(FACES_RECIPE)" NMS_IOU=0.4 bash scripts/faces-release-ship.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
