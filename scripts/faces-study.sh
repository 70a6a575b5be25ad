#!/usr/bin/env bash
# The lever study on faces (configs/faces-study.yaml, docs/learning-to-borrow.md): each arm is a neck
# and the overrides of one lever, trained resumably and evaluated on the 199 WIDER val photos.
#   bash scripts/faces-study.sh train [RUNS] "context:0 full-match:0"   (arm:seed pairs, one after another;
#        on 2 cores run two queues side by side with OMP_NUM_THREADS=1, about an hour a run)
#   bash scripts/faces-study.sh eval [RUNS]    every finished run: eval_val.json (whole photo, the release
#        inference recipe, borrow precision by layer), then RUNS/compare-<a>-<b>.json, paired bootstrap of b - a
#        for each arm against context and against full at the same seed (BASES="context": context only);
#        PAIRS="context-s3fd:full-match-peers-bg-detach-s3fd": only these pairs, each seed and the seeds together
#        (borrowcore compare --pair)
#   bash scripts/faces-study.sh save [RUNS]    what to commit: a finished, evaluated run's log, config, report and
#        detections to reports/faces-study/ (not its weights); an unfinished run's resume state (last.pt), or a
#        finished unevaluated one's weights.pt, to state/faces-study/. `train` takes them up on another machine
set -euo pipefail
cmd=${1:?train, eval or save}
RUNS=${2:-runs/faces-study}
PY=${PYTHON:-.venv/bin/python}
STATE=state/faces-study
REPORTS=reports/faces-study
WIDER=../shared/data/wider-faces
arm_overrides() {  # the overrides of an arm
  case $1 in
    context) echo "model.neck=context" ;;
    full) echo "" ;;
    full-match) echo "model.matching_loss=1.0" ;;
    full-match-bg) echo "model.matching_loss=1.0 model.matching_loss_background=1.0" ;;
    full-match-bg-detach) echo "model.matching_loss=1.0 model.matching_loss_background=1.0 model.matching_loss_detach=true" ;;
    full-match-bg-detach-s3fd) echo "model.matching_loss=1.0 model.matching_loss_background=1.0 model.matching_loss_detach=true model.min_anchors_per_box=3" ;;
    full-match-peers-bg-detach-s3fd) echo "model.matching_loss=1.0 model.matching_loss_background=1.0 model.matching_loss_detach=true model.matching_loss_area_ratio=0 model.min_anchors_per_box=3" ;;
    full-match-peers-bg-detach-s3fd-fast) echo "model.matching_loss=1.0 model.matching_loss_background=1.0 model.matching_loss_detach=true model.matching_loss_area_ratio=0 model.min_anchors_per_box=3 model.matching=fast" ;;
    full-top16) echo "model.matching_top_k=16" ;;
    full-w025) echo "model.width=0.25" ;;
    full-s3fd) echo "model.min_anchors_per_box=3" ;;
    context-s3fd) echo "model.neck=context model.min_anchors_per_box=3" ;;
    context-w025) echo "model.neck=context model.width=0.25" ;;
    *) echo "unknown arm $1" >&2; return 1 ;;
  esac
}
case $cmd in
train)
  bash scripts/faces-release.sh train ""  # the data: data/wider/{train-extra,val}.json
  for pair in ${3:?arm:seed pairs}; do
    arm=${pair%:*}; seed=${pair#*:}; out=$RUNS/$arm/seed$seed
    [ -f "$out/weights.pt" ] && { echo "$arm seed $seed: finished"; continue; }
    if [ -f "$REPORTS/$arm/seed$seed/eval_val.json" ]; then  # finished and evaluated in an earlier session
      mkdir -p "$out"; cp "$REPORTS/$arm/seed$seed/"* "$out/"
      echo "$arm seed $seed: finished (the committed reports)"; continue
    fi
    if [ -f "$STATE/$arm/seed$seed/weights.pt" ]; then  # finished, not yet evaluated
      mkdir -p "$out"; cp "$STATE/$arm/seed$seed/"{weights.pt,log.jsonl,config.yaml} "$out/"
      echo "$arm seed $seed: finished (the committed weights)"; continue
    fi
    overrides=$(arm_overrides "$arm")
    if [ ! -f "$out/last.pt" ] && [ -f "$STATE/$arm/seed$seed/last.pt" ]; then
      mkdir -p "$out"; cp "$STATE/$arm/seed$seed/"{last.pt,log.jsonl,config.yaml} "$out/"
    fi
    $PY -m borrowcore train --config configs/faces-study.yaml --out "$out" --resume \
        --set train.seed=$seed $overrides
  done ;;
eval)
  # the release inference recipe (scripts/faces-release-eval.sh's RECIPE, NMS IoU 0.4)
  for weights in "$RUNS"/*/seed*/weights.pt; do
    [ -f "$weights" ] || continue
    report=$(dirname "$weights")/eval_val.json
    [ -f "$report" ] && continue
    borrowing=()
    case $weights in */full*) borrowing=(--borrow-precision) ;; esac
    $PY -m borrowcore eval --checkpoint "$weights" --coco data/wider/val.json --images $WIDER/images \
        --out "$report" --split val --name wider-faces --size-bins 0,16,32,64,128,200 --nms-iou 0.4 \
        --recipe oversize=shrink --recipe max_whole_side=1280 --recipe "zoom_out=[0.5]" --recipe drop_inside=0.8 --precision fp32 \
        ${borrowing[@]+"${borrowing[@]}"}
  done
  if [ -n "${PAIRS:-}" ]; then  # PAIRS="a:b ...": only these, at each seed both have, then the seeds together
    for pair in $PAIRS; do
      a=${pair%:*} b=${pair#*:} more=() seeds=""
      for report in "$RUNS/$b"/seed*/eval_val.json; do
        seed=$(basename "$(dirname "$report")"); other=$RUNS/$a/$seed/eval_val.json
        [ -f "$other" ] || continue
        out=$RUNS/compare-$a-$b-$seed.json
        [ -f "$out" ] || $PY -m borrowcore compare "$other" "$report" --out "$out" >/dev/null
        [ -z "$seeds" ] && first=("$other" "$report") || more+=(--pair "$other" "$report")
        seeds=$seeds${seed#seed}
      done
      out=$RUNS/compare-$a-$b-seeds$seeds.json  # about 6 CPU-minutes a seed
      [ ${#more[@]} -gt 0 ] && [ ! -f "$out" ] && $PY -m borrowcore compare "${first[@]}" "${more[@]}" --out "$out"
    done
  else
    for report in "$RUNS"/*/seed*/eval_val.json; do  # every arm against each of BASES: about 5 CPU-minutes a pair
      arm=$(basename "$(dirname "$(dirname "$report")")"); seed=$(basename "$(dirname "$report")")
      for base in ${BASES:-context full}; do  # BASES=context: against context only
        [ "$arm" = "$base" ] && continue
        other=$RUNS/$base/$seed/eval_val.json
        out=$RUNS/compare-$base-$arm-$seed.json
        [ -f "$other" ] && [ ! -f "$out" ] && $PY -m borrowcore compare "$other" "$report" --out "$out" >/dev/null
      done
    done
  fi
  arms=$(for d in "$RUNS"/*/; do basename "$d"; done)
  $PY -m borrowcore table --runs "$RUNS" --splits val --fine-bins --no-borrow-columns --necks $arms ;;
save)
  for run in "$RUNS"/*/seed*/; do
    run=${run%/}; name=${run#"$RUNS"/}
    if [ -f "$run/eval_val.json" ]; then  # finished and evaluated: its figures and detections, not its weights
      files="log.jsonl config.yaml eval_val.json eval_val.detections.json.gz"; dest=$REPORTS/$name
    elif [ -f "$run/weights.pt" ]; then files="weights.pt log.jsonl config.yaml"; dest=$STATE/$name
    elif [ -f "$run/last.pt" ]; then files="last.pt log.jsonl config.yaml"; dest=$STATE/$name
    else continue; fi
    mkdir -p "$dest"
    for f in $files; do cp "$run/$f" "$dest/$f.tmp" && mv "$dest/$f.tmp" "$dest/$f"; done
    [ "$dest" = "$REPORTS/$name" ] && rm -rf "${STATE:?}/$name"
    [ -f "$dest/weights.pt" ] && rm -f "$dest/last.pt"
    echo "$dest: $files"
  done
  for compare in "$RUNS"/compare-*.json; do [ -f "$compare" ] && cp "$compare" "$REPORTS/"; done
  cp "$RUNS/ablation.md" "$REPORTS/" 2>/dev/null || true ;;
esac
