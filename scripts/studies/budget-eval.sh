#!/usr/bin/env bash
# What fast matching costs in accuracy. The shipped `full` models, trained with exact matching, evaluated
# with every cell matched (K0: --exact) and with K keys per deeper map (K64 is the default):
#   synthetic twins - synth-full.pt at its 256 px input (layer 1 matches 16 x 16, 8 x 8, 4 x 4 maps:
#                     K = 64 pools the 16 x 16 map to 8 x 8; K = 256 changes nothing)
#   faces           - faces-full.pt on the 199 WIDER val photos, whole photo (up to 1024 px: layer 1 matches
#                     maps up to 64 x 64; K = 256 pools them to 16 x 16, K = 64 to 8 x 8)
#   bash scripts/studies/budget-eval.sh [OUT]   (reports OUT/<set>-K<k>.json; rerun to resume)
set -eu
OUT=${1:-runs/budget}
PY=${PYTHON:-.venv/bin/python}
WIDER=../shared/data/wider-faces
mkdir -p "$OUT"
matching() { if [ "$1" = 0 ]; then echo --exact; else echo --key-budget "$1"; fi; }
[ -f data/synth/val/twins.json ] || $PY -m borrowcore synth --out data/synth/val --images 300 --seed 1
[ -f data/wider/val.json ] || $PY -m borrowcore convert --from wider --images $WIDER/images \
    --labels $WIDER/val_bbx_gt.txt --out data/wider/val.json
for k in 0 64 256; do
  [ -f "$OUT/synth-twins-K$k.json" ] || $PY -m borrowcore eval --checkpoint assets/checkpoints/synth-full.pt \
      --coco data/synth/val/twins.json --images data/synth/val/images --out "$OUT/synth-twins-K$k.json" \
      --split twins --name synth --borrow-precision $(matching $k)
done
for k in 0 256 64; do
  [ -f "$OUT/faces-K$k.json" ] || $PY -m borrowcore eval --checkpoint assets/checkpoints/faces-full.pt \
      --coco data/wider/val.json --images $WIDER/images --out "$OUT/faces-K$k.json" \
      --split val --name wider-faces --size-bins 0,16,32,64 --borrow-precision $(matching $k)
done
