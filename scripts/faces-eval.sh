#!/usr/bin/env bash
# Evaluate every face run under RUNS (RUNS/<neck>/seed<k>/weights.pt) on the 199 WIDER val photos,
# skipping reports already written (rerun to resume). Size bins by sqrt(area): 0-16, 16-32, 32-64, 64+.
#   val     - the checkpoint's own recipe: the whole photo at native resolution, padded (borrow and full:
#             also borrow precision, the share of a small face's matching mass on faces >= 2x its area)
#   tiled   - 256 px tiles at native resolution, overlap 0.2: a small face sees only its tile's faces
#   x0.5, x2, colour - the same photos rescaled 0.5x / 2x, and recoloured (hue +0.1, saturation 0.6,
#             brightness 0.8), written once by `borrowcore shift`: how far the model holds off its
#             training distribution (ssd and full, shifts in SHIFTS; the 2x photos take 15 minutes with
#             ssd and 30 with full on one core)
# TILED_SEEDS and SHIFT_SEEDS pick the seeds evaluated on tiles and shifted photos: "best" (the default) is
# each neck's seed with the highest val AP, the one `release --best-by val` ships; "0 1 2" lists seeds;
# empty skips them.
#   bash scripts/faces-eval.sh [RUNS]
set -eu
RUNS=${1:-runs/faces}
PY=${PYTHON:-.venv/bin/python}
WIDER=../shared/data/wider-faces
. "$(dirname "$0")/wider-val.sh"
shifted x0.5 --scale 0.5
shifted x2 --scale 2
shifted colour --hue 0.1 --saturation 0.6 --brightness 0.8
evaluate() {  # weights split coco images [eval args...]
    local weights=$1 split=$2 coco=$3 images=$4; shift 4
    local report="$(dirname "$weights")/eval_$split.json"
    [ -f "$report" ] && return 0
    $PY -m borrowcore eval --checkpoint "$weights" --coco "$coco" --images "$images" --out "$report" \
        --split "$split" --name wider-faces --size-bins 0,16,32,64 "$@"
}
for weights in "$RUNS"/{ssd,full,context,borrow}/seed*/weights.pt; do
    [ -s "$weights" ] || continue
    borrowing=()
    case "$weights" in */borrow/*|*/full/*) borrowing=(--borrow-precision) ;; esac
    evaluate "$weights" val data/wider/val.json $WIDER/images "${borrowing[@]}"
done
seeds() {  # neck spec: the seeds a spec names ("best": the neck's seed with the highest val AP)
    [ "$2" = best ] || { echo "$2"; return; }
    $PY -c "import sys; from pathlib import Path; from borrowcore.engine.ablation import best_seed
seed = best_seed(Path(sys.argv[1]), sys.argv[2], 'val'); print('' if seed is None else seed)" "$RUNS" "$1"
}
for neck in ssd full; do
  for seed in $(seeds $neck "${TILED_SEEDS-best}"); do
    weights=$RUNS/$neck/seed$seed/weights.pt
    [ -s "$weights" ] || continue
    evaluate "$weights" tiled data/wider/val.json $WIDER/images --tile 256 --overlap 0.2
  done
  for seed in $(seeds $neck "${SHIFT_SEEDS-best}"); do
    weights=$RUNS/$neck/seed$seed/weights.pt
    [ -s "$weights" ] || continue
    for shift in ${SHIFTS-colour x0.5 x2}; do
      evaluate "$weights" $shift data/wider-$shift/instances.json data/wider-$shift/images
    done
  done
done
