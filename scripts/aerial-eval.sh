#!/usr/bin/env bash
# Evaluate every aerial run under RUNS (RUNS/<neck>/seed<k>/weights.pt) on aerial val at native
# resolution, skipping reports already written (rerun to resume):
#   resize   - the whole 1764 x 430 tile resized to the model's 256 x 256 input (the naive way)
#   tile256  - 256 px tiles, overlap 0.2, at the training input size (native resolution)
#              (borrow and full: also borrow precision, the share of a small instance's matching mass on
#              larger same-class instances in its tile, against chance)
#   tile128, tile512 - other tile sizes, the detector run at S = T so tiles stay at native resolution
#                      (ssd and full only): how much does a tile's extent matter to borrowing?
# Fine size bins by sqrt(area): the val boxes' quartiles (23, 25, 28 px) and 32 (COCO small).
#   bash scripts/aerial-eval.sh [RUNS] [DATA]
set -eu
RUNS=${1:-runs/aerial}
DATA=${2:-../shared/data/aerial-cars}
evaluate() {  # weights mode [eval args...]
    local weights=$1 mode=$2; shift 2
    local report="$(dirname "$weights")/eval_$mode.json"
    [ -f "$report" ] && return 0
    borrowcore eval --checkpoint "$weights" --coco "$DATA/val.json" --images "$DATA/images" --out "$report" \
        --split "$mode" --name aerial-cars --size-bins 0,23,25,28,32 "$@"
}
for weights in "$RUNS"/{ssd,full,context,borrow}/seed*/weights.pt; do
    [ -f "$weights" ] || continue
    borrowing=()  # the borrowing ablations also measure where small instances' matching mass goes
    case "$weights" in */borrow/*|*/full/*) borrowing=(--borrow-precision) ;; esac
    evaluate "$weights" tile256 --tile 256 --overlap 0.2 "${borrowing[@]}"
    evaluate "$weights" resize
done
for weights in "$RUNS"/{ssd,full}/seed*/weights.pt; do
    [ -f "$weights" ] || continue
    evaluate "$weights" tile128 --tile 128 --overlap 0.2 --input-size 128
    evaluate "$weights" tile512 --tile 512 --overlap 0.2 --input-size 512
done
