#!/usr/bin/env bash
# The inference-recipe study behind the release face models' shipped recipe
# (docs/results/faces-inference-recipe.md): one checkpoint under several recipes on val and on the 2x copy
# (the faces of a close-up photo), then the table (AP50 >= 16 px and by bin, rescored from the reports) and
# the faces found / false boxes a photo at each report's F1-best threshold.
#   bash scripts/studies/faces-recipe-study.sh runs/faces-release/ssd/weights.pt ssd [OUT] (SPLITS="val x2")
set -eu
WEIGHTS=${1:?usage: faces-recipe-study.sh WEIGHTS TAG [OUT]}
TAG=${2:?tag}
OUT=${3:-runs/recipe}
PY=${PYTHON:-.venv/bin/python}
WIDER=../shared/data/wider-faces
. "$(dirname "$0")/../wider-val.sh"
mkdir -p "$OUT"
zoom="--recipe oversize=shrink --recipe zoom_out=[0.5]"
set -f  # [0.5] is a YAML list
recipes=(
  "plain|"
  "zoom|$zoom"
  "zoom-inside|$zoom --recipe drop_inside=0.8"
  "zoom-inside.5|$zoom --recipe drop_inside=0.5"
  "zoom-inside-nms.4|$zoom --recipe drop_inside=0.8 --nms-iou 0.4"
  "shrink1536|$zoom --recipe drop_inside=0.8 --nms-iou 0.4 --recipe max_whole_side=1536"
  "shrink1280|$zoom --recipe drop_inside=0.8 --nms-iou 0.4 --recipe max_whole_side=1280"
  "shrink1024|$zoom --recipe drop_inside=0.8 --nms-iou 0.4 --recipe max_whole_side=1024"
)
for split in ${SPLITS:-val x2}; do
  case $split in
    val) coco=data/wider/val.json images=../shared/data/wider-faces/images ;;
    x2) shifted x2 --scale 2; coco=data/wider-x2/instances.json images=data/wider-x2/images ;;
    *) echo "split val or x2, got $split"; exit 2 ;;
  esac
  for entry in "${recipes[@]}"; do
    name=${entry%%|*} args=${entry#*|}
    report=$OUT/$TAG-$name-$split.json
    [ -f "$report" ] || $PY -m borrowcore eval --checkpoint "$WEIGHTS" --coco $coco --images $images --out "$report" \
        --split $split --name wider-faces --size-bins 0,16,32,64,128,200 $args > /dev/null
  done
done
set +f
$PY scripts/faces_release_table.py --reports "$OUT"/$TAG-*.json
for report in "$OUT"/$TAG-*.json; do $PY scripts/found_at_threshold.py "$report" --f1-best | tail -1; done
