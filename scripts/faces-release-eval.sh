#!/usr/bin/env bash
# Evaluate the release face runs (scripts/faces-release.sh: RUNS/<neck>/weights.pt, the EMA at the end) the way
# issue #25 asks, skipping reports already written (rerun to resume). Every report: the 199 WIDER val photos
# or a shifted copy, whole photo at native resolution, size bins by sqrt(area) 0-16-32-64-128-200+.
#   eval_val.json          the checkpoint's own recipe (its matching: the release config trains exact), with
#                          borrow precision for borrow / full; eval_val-exact / eval_val-fast: either matching
#                          (the run's own one a copy of eval_val, scripts/copy_report.py)
#   eval_x2 / x0.5 / colour the same photos rescaled 2x and 0.5x, and recoloured (`borrowcore shift`)
#   found_val.json         faces found by size and false detections a photo at the F1-best threshold on val
#   RUNS/compare-<a>-<b>.json  paired bootstrap over photos of b minus a (full - ssd, full - context, full - peer)
#   PEERS="yolo11n": peers whose RUNS/<peer>/eval_val.json their own script wrote: found_val and full - peer
#     bash scripts/faces-release-eval.sh [RUNS]      (NECKS="ssd full context" SHIFTS="x2 x0.5 colour")
#     NMS_IOU=0.4 ...: every report at that NMS IoU (ship with the same: faces-release-ship.sh)
#     RECIPE="oversize=shrink zoom_out=[0.5] drop_inside=0.8": every report with these inference-recipe fields
#                          (`borrowcore eval --recipe`; ship with the same)
set -eu
recipe=()
set -f  # RECIPE's [0.5] is a YAML list, not a glob
for item in ${RECIPE:-}; do recipe+=(--recipe "$item"); done
set +f
RUNS=${1:-runs/faces-release}
NECKS=${NECKS:-ssd full context}
PY=${PYTHON:-.venv/bin/python}
WIDER=../shared/data/wider-faces
BINS=0,16,32,64,128,200
. "$(dirname "$0")/wider-val.sh"
evaluate() {  # weights split coco images [eval args...]
    local weights=$1 split=$2 coco=$3 images=$4; shift 4
    local report="$(dirname "$weights")/eval_$split.json"
    [ -f "$report" ] && return 0
    $PY -m borrowcore eval --checkpoint "$weights" --coco "$coco" --images "$images" --out "$report" \
        --split "$(s=${split%-exact}; echo "${s%-fast}")" --name wider-faces --size-bins $BINS ${NMS_IOU:+--nms-iou "$NMS_IOU"} ${recipe[@]+"${recipe[@]}"} "$@"
}
for neck in $NECKS; do
    weights=$RUNS/$neck/weights.pt
    [ -s "$weights" ] || { echo "$neck: no $weights yet (training not finished)"; continue; }
    borrowing=()
    case $neck in borrow|full) borrowing=(--borrow-precision) ;; esac
    evaluate "$weights" val data/wider/val.json $WIDER/images ${borrowing[@]+"${borrowing[@]}"}
    case $neck in borrow|full)  # both matchings: eval_val is the run's own (the release config: exact), copied
        own=$($PY -c "import sys; from borrowcore.evaluation.report import load_report; \
print('exact' if load_report(sys.argv[1])['model']['config']['key_budget'] == 0 else 'fast')" "$RUNS/$neck/eval_val.json")
        [ -f "$RUNS/$neck/eval_val-$own.json" ] || $PY scripts/copy_report.py "$RUNS/$neck/eval_val.json" \
            "$RUNS/$neck/eval_val-$own.json"
        if [ "$own" = exact ]; then evaluate "$weights" val-fast data/wider/val.json $WIDER/images --recipe matching=fast
        else evaluate "$weights" val-exact data/wider/val.json $WIDER/images --exact; fi ;;
    esac
    [ -f "$RUNS/$neck/found_val.json" ] || $PY scripts/found_at_threshold.py "$RUNS/$neck/eval_val.json" \
        --f1-best --json "$RUNS/$neck/found_val.json"
    for shift in ${SHIFTS-x2 x0.5 colour}; do
        case $shift in
            x2) shifted x2 --scale 2 ;; x0.5) shifted x0.5 --scale 0.5 ;;
            colour) shifted colour --hue 0.1 --saturation 0.6 --brightness 0.8 ;;
        esac
        evaluate "$weights" $shift data/wider-$shift/instances.json data/wider-$shift/images
    done
done
pairs="ssd:full context:full"
for peer in ${PEERS-yolo11n}; do  # a peer scored by its own script (scripts/yolo_peer.py) into RUNS/<peer>/
    pairs="$pairs $peer:full"
    if [ -f "$RUNS/$peer/eval_val.json" ] && [ ! -f "$RUNS/$peer/found_val.json" ]; then
        $PY scripts/found_at_threshold.py "$RUNS/$peer/eval_val.json" --f1-best --json "$RUNS/$peer/found_val.json"
    fi
done
for pair in $pairs; do
    a=${pair%:*} b=${pair#*:}
    [ -f "$RUNS/$a/eval_val.json" ] && [ -f "$RUNS/$b/eval_val.json" ] || continue
    [ -f "$RUNS/compare-$a-$b.json" ] || $PY -m borrowcore compare "$RUNS/$a/eval_val.json" "$RUNS/$b/eval_val.json" \
        --bootstrap 1000 --out "$RUNS/compare-$a-$b.json"
done
