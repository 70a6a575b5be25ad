#!/usr/bin/env bash
# The shipped aerial checkpoints off their training distribution: KIT val rescaled 2x (cars of 32-112 px,
# the size other cameras see) and 0.5x, and recoloured (hue +0.1, saturation 0.6, brightness 0.8), each
# at 256 px native-resolution tiles as in the main aerial result. Resumable.
#   [PREFIX=assets/checkpoints/aerial] [NECKS="ssd full"] bash scripts/studies/aerial-shift-eval.sh [OUT]   (evaluates PREFIX-<neck>.pt)
set -eu
OUT=${1:-runs/aerial-shift}
PY=${PYTHON:-.venv/bin/python}
PREFIX=${PREFIX:-assets/checkpoints/aerial}
KIT=../shared/data/aerial-cars
for shift in "x2 --scale 2" "x0.5 --scale 0.5" "colour --hue 0.1 --saturation 0.6 --brightness 0.8"; do
  name=${shift%% *}
  [ -f data/aerial-$name/instances.json ] || $PY -m borrowcore shift --coco $KIT/val.json --images $KIT/images \
      --out data/aerial-$name ${shift#* }
done
for neck in ${NECKS:-ssd full}; do
  for split in tile256:$KIT/val.json:$KIT/images x2:data/aerial-x2/instances.json:data/aerial-x2/images \
               x0.5:data/aerial-x0.5/instances.json:data/aerial-x0.5/images \
               colour:data/aerial-colour/instances.json:data/aerial-colour/images; do
    IFS=: read -r name coco images <<< "$split"
    report=$OUT/$neck/seed0/eval_$name.json
    [ -f "$report" ] && continue
    $PY -m borrowcore eval --checkpoint "$PREFIX-$neck.pt" --coco "$coco" --images "$images" \
        --out "$report" --split "$name" --name aerial-cars --tile 256 --overlap 0.2 --size-bins 0,16,32,64
  done
done
