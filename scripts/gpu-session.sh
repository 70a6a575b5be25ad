#!/usr/bin/env bash
# One GPU session, as run on the device machine (see docs/results/aerial-cars.md and docs/benchmarks.md):
#   1. the GPU benchmark rows (fp32 and AMP latency, peak memory) while the GPU is idle;
#   2. aerial training: `ssd` and `full`, seeds 0 and 1, four runs side by side on the one GPU;
#   3. torch.compile against eager, batch 1 then batch 16;
#   4. with PHASES including "scale": ssd, full (fast, the default) and full --exact at 300 / 1024 / 2048 px.
# Every phase has its own time limit, so that a slow phase costs only itself.
#
#   [NECKS="ssd full"] [SEEDS="0 1"] [PHASES="latency training compile"] [CONFIG=configs/aerial-full.yaml NAME=aerial] \
#       bash scripts/gpu-session.sh DATA OUT
# The aerial recipe with scale jitter: CONFIG=configs/aerial-jitter.yaml NAME=aerial-jitter PHASES=training.
# DATA holds images/ and train.json (default ../shared/data/aerial-cars); OUT collects everything.
# The shipped context and borrow runs: NECKS="context borrow" SEEDS=0 PHASES=training.
set -u
DATA=${1:-../shared/data/aerial-cars}
OUT=${2:-runs/gpu-session}
STEPS=${STEPS:-1500}
NECKS=${NECKS:-ssd full}
CONFIG=${CONFIG:-configs/aerial-full.yaml}
NAME=${NAME:-aerial}
SEEDS=${SEEDS:-0 1}
PHASES=${PHASES-latency training compile}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
started=$(date +%s)
phase() { echo "[$(( $(date +%s) - started )) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" >>"$OUT/gpu.txt"
cat "$OUT/gpu.txt"

wants() { [[ " $PHASES " == *" $1 "* ]]; }

wants latency && phase "latency" && { timeout 90 python3 -m borrowcore bench --out "$OUT/bench" --sections latency --repeats 30 --warmup 5 \
    >"$OUT/bench.log" 2>&1 || echo "latency bench failed or timed out (rc $?)"; tail -n 30 "$OUT/bench.log"; }

# the cost against image size: ssd, full (fast matching, the default) and full --exact, batch 1, fp32
wants scale && phase "scale" && { timeout "${SCALE_LIMIT:-120}" python3 -m borrowcore bench --out "$OUT/scale" \
    --sections scale --scale-sizes 300 1024 2048 --scale-widths 0.125 1.0 --repeats 10 --warmup 3 \
    >"$OUT/scale.log" 2>&1 || echo "scale bench failed or timed out (rc $?)"; tail -n 30 "$OUT/scale.log"; }

wants training && phase "training"
for neck in $NECKS; do
    wants training || break
    for seed in $SEEDS; do
        OMP_NUM_THREADS=2 timeout "${TRAIN_LIMIT:-280}" python3 -m borrowcore train --config "$CONFIG" \
            --out "$OUT/$NAME-$neck-s$seed" --device cuda \
            --set "model.neck=$neck" "train.seed=$seed" "train.max_steps=$STEPS" "train.train_images=$DATA/images" \
            "train.train_annotations=$DATA/train.json" >"$OUT/train-$NAME-$neck-s$seed.log" 2>&1 &
    done
done
wait
for log in "$OUT"/train-*.log; do echo "== $log"; tail -c 400 "$log"; echo; done
for run in "$OUT"/aerial-*; do tail -n 2 "$run/log.jsonl"; done

wants compile && phase "compile"
for batch in 1 16; do
    wants compile || break
    timeout "${COMPILE_LIMIT:-100}" python3 -m borrowcore bench --out "$OUT/compile-b$batch" --sections compile \
        --batches "$batch" --repeats 30 --warmup 5 >"$OUT/compile-b$batch.log" 2>&1 || echo "compile b$batch failed or timed out"
    tail -n 6 "$OUT/compile-b$batch.log"
done
phase "done"

# Bring back (when PACK names a folder): each run's weights without optimizer state, and one archive of
# the logs, configs and benchmark results.
if [ -n "${PACK:-}" ]; then
    mkdir -p "$PACK"
    python3 - "$OUT" "$PACK" <<'PY'
import sys
from pathlib import Path

from borrowcore.models.checkpoint import checkpoint_config, load_state, read_checkpoint, save_checkpoint
from borrowcore.models.detector import build_detector

out, pack = Path(sys.argv[1]), Path(sys.argv[2])
for run in sorted(out.glob("aerial-*")):
    source = run / "weights.pt" if (run / "weights.pt").exists() else run / "last.pt"
    if source.exists():
        checkpoint = read_checkpoint(source)
        detector = build_detector(checkpoint_config(checkpoint, source), checkpoint["class_names"])
        load_state(detector, checkpoint, source)
        save_checkpoint(pack / f"{run.name}.pt", detector)
        print(run.name, "step", checkpoint.get("train_state", {}).get("step", "final"))
PY
    tar czf "$PACK/session.tar.gz" --exclude='*.pt' -C "$(dirname "$OUT")" "$(basename "$OUT")"
    ls -la "$PACK"
fi
