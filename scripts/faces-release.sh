#!/usr/bin/env bash
# The release face runs (configs/faces-release.yaml), resumable across sessions and machines.
#   bash scripts/faces-release.sh train "ssd full"   # one run per neck, side by side, one core each
#   bash scripts/faces-release.sh train ""           # the data files only (data/wider/*.json)
#   bash scripts/faces-release.sh save               # copy each run's resume state into state/ (commit it)
# train: a run resumes from RUNS/<neck>/last.pt, or, on a fresh clone, from the committed
# state/faces-release/<neck>/ (last.pt: weights, SGD momentum and EMA, about 5 MB; log.jsonl; config.yaml).
# A finished run holds RUNS/<neck>/weights.pt (the EMA) and is skipped. save copies last.pt, log.jsonl and
# config.yaml of every unfinished run into state/; of a finished run only weights.pt, log.jsonl and config.yaml
# (its resume state is not kept: state/ holds runs in flight); commit that once a session. A finished run that
# ships as assets/checkpoints/faces-<neck>.pt keeps only its config: train rebuilds weights.pt from the shipped
# checkpoint and takes its log from assets/logs/.
# The run is the same whichever machine resumes it (tests/test_train.py pins kill-and-resume).
set -euo pipefail
cmd=${1:?usage: faces-release.sh train|save [necks]}
necks=${2-"ssd full"}  # "" prepares the data only
RUNS=${RUNS:-runs/faces-release}
STATE=${STATE:-state/faces-release}
CONFIG=${CONFIG:-configs/faces-release.yaml}
py=${PYTHON:-.venv/bin/python}
wider=../shared/data/wider-faces

if [ "$cmd" = save ]; then
  for run in "$RUNS"/*/; do
    neck=$(basename "$run"); [ -f "$run/last.pt" ] || continue
    mkdir -p "$STATE/$neck"
    if [ -f "$run/weights.pt" ]; then files="weights.pt log.jsonl config.yaml"; else files="last.pt log.jsonl config.yaml"; fi
    for f in $files; do
      cp "$run/$f" "$STATE/$neck/$f.tmp" && mv "$STATE/$neck/$f.tmp" "$STATE/$neck/$f"
    done
    if [ -f "$run/weights.pt" ]; then rm -f "$STATE/$neck/last.pt" "$STATE/$neck/best.pt"; echo "$neck: finished"; continue; fi
    echo "$neck: $($py -c "import sys; from borrowcore.models.checkpoint import read_checkpoint; s = read_checkpoint(sys.argv[1])['train_state']; print('step', s['step'], 'of', s['train_config']['max_steps'], '; cpu hours', round(s.get('spent', {}).get('cpu_s', 0) / 3600, 2))" "$STATE/$neck/last.pt")"
  done
  du -sh "$STATE"
  exit 0
fi
[ "$cmd" = train ] || { echo "unknown command $cmd (train | save)"; exit 2; }

mkdir -p data/wider
if [ ! -f data/wider/train-extra.json ]; then
  cat $wider/train_bbx_gt.txt $wider/extra_bbx_gt.txt > data/wider/train-extra_bbx_gt.txt
  $py -m borrowcore convert --from wider --images $wider/images --labels data/wider/train-extra_bbx_gt.txt \
      --out data/wider/train-extra.json
fi
[ -f data/wider/val.json ] || $py -m borrowcore convert --from wider --images $wider/images \
    --labels $wider/val_bbx_gt.txt --out data/wider/val.json

mkdir -p "$RUNS"
pids=()
for neck in $necks; do
  out=$RUNS/$neck
  [ -f "$out/weights.pt" ] && { echo "$neck: finished ($out/weights.pt)"; continue; }
  if [ -f "$STATE/$neck/weights.pt" ]; then  # finished in an earlier session: its weights, log and config
    mkdir -p "$out"; cp "$STATE/$neck/weights.pt" "$STATE/$neck/log.jsonl" "$STATE/$neck/config.yaml" "$out/"
    echo "$neck: finished (the committed $STATE/$neck/weights.pt)"; continue
  fi
  shipped=assets/checkpoints/faces-$neck.pt
  if [ -f "$STATE/$neck/config.yaml" ] && [ ! -f "$STATE/$neck/last.pt" ] && [ -f "$shipped" ]; then
    # finished and shipped: the shipped file holds the same tensors under the release recipe; weights.pt gets
    # them back with the run's own recipe (its config.yaml), as training wrote it
    mkdir -p "$out"; cp "$STATE/$neck/config.yaml" "$out/"
    cp "assets/logs/faces-$neck-seed0.log.jsonl" "$out/log.jsonl"  # its log ships beside the checkpoint
    $py - "$shipped" "$out/config.yaml" "$out/weights.pt" <<'PY'
import sys, yaml
from borrowcore.models.checkpoint import RECIPE_FIELDS, atomic_save, read_checkpoint
from borrowcore.models.config import DetectorConfig
checkpoint = read_checkpoint(sys.argv[1])
model = yaml.safe_load(open(sys.argv[2]))["model"]
defaults = DetectorConfig().__dict__
recipe = [k for k in RECIPE_FIELDS if k not in ("matching", "key_budget")]  # the matching it shipped with stays
checkpoint["config"].update({k: model.get(k, defaults[k]) for k in recipe})
atomic_save(checkpoint, sys.argv[3])
PY
    echo "$neck: finished (the shipped $shipped, the run's recipe)"; continue
  fi
  if [ ! -f "$out/last.pt" ] && [ -f "$STATE/$neck/last.pt" ]; then
    mkdir -p "$out"; cp "$STATE/$neck/last.pt" "$STATE/$neck/log.jsonl" "$STATE/$neck/config.yaml" "$out/"
    echo "$neck: resuming from the committed state in $STATE/$neck"
  fi
  OMP_NUM_THREADS=${THREADS:-1} $py -m borrowcore train --config "$CONFIG" --out "$out" --resume \
      --set model.neck=$neck ${SETS:-} > "$RUNS-$neck.out" 2>&1 &
  pids+=($!)
  echo "$neck: training in the background (progress: $RUNS-$neck.out, log: $out/log.jsonl)"
done
for pid in "${pids[@]}"; do wait "$pid"; done
