#!/usr/bin/env bash
# The face runs (configs/faces-full.yaml with model.neck set), one after another, each resumable:
#   bash scripts/faces-train.sh RUNS "ssd:0 full:0"   (neck:seed pairs; default the 3-seed ssd/full set)
# SETS="train.warmup_steps=300" adds overrides to every run. A run whose RUNS/<neck>/seed<k>/weights.pt exists is skipped; an interrupted one resumes from last.pt.
# On 2 CPU cores run two of these side by side with OMP_NUM_THREADS=1 (about 40 minutes a run at 800 steps).
set -euo pipefail
runs=${1:-runs/faces}
pairs=${2:-"ssd:0 full:0 ssd:1 full:1 ssd:2 full:2 context:0 borrow:0"}
py=${PYTHON:-.venv/bin/python}
wider=../shared/data/wider-faces
mkdir -p data/wider
for split in train val; do
  [ -f data/wider/$split.json ] || $py -m borrowcore convert --from wider --images $wider/images \
      --labels $wider/${split}_bbx_gt.txt --out data/wider/$split.json
done
for pair in $pairs; do
  neck=${pair%:*}; seed=${pair#*:}; out=$runs/$neck/seed$seed
  [ -f $out/weights.pt ] && continue
  $py -m borrowcore train --config configs/faces-full.yaml --out $out --resume \
      --set model.neck=$neck train.seed=$seed ${SETS:-}  # writes weights.pt when it finishes
done
