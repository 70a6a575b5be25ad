# Sourced by faces-eval.sh, faces-release-eval.sh and studies/faces-recipe-study.sh (PY and WIDER set): the 199 WIDER val photos as COCO
# (data/wider/val.json) and `shifted NAME SHIFT-ARGS...`, an off-distribution copy in data/wider-NAME/.
[ -f data/wider/val.json ] || $PY -m borrowcore convert --from wider --images $WIDER/images \
    --labels $WIDER/val_bbx_gt.txt --out data/wider/val.json
shifted() {  # name shift-args...
    local name=$1; shift
    [ -f data/wider-$name/instances.json ] || $PY -m borrowcore shift --coco data/wider/val.json \
        --images $WIDER/images --out data/wider-$name "$@"
}
