#!/usr/bin/env bash
# Ship the release face runs (issue #25) once scripts/faces-release-eval.sh has evaluated them:
#  1. the short-budget three-seed face ablation (its weights are replaced) leaves assets/ for
#     reports/experiments/faces-short/ and its logs for reports/experiments/logs/faces-short-*; its reports
#     keep the run they evaluated (extra.evaluated_checkpoint) and no longer name a bundled checkpoint;
#  2. `borrowcore release`: assets/checkpoints/faces-<neck>.pt without training state, the display threshold
#     the F1-best on val, fast matching when it costs at most 0.1 AP on val against exact (issue 37's band for a default) (else exact; the
#     reports are made with the run's own matching, exact for the release config);
#     every report under assets/reports/faces/<neck>/seed0/, the training log as assets/logs/faces-<neck>-seed0;
#  3. the summary table and found-at-threshold / bootstrap files under reports/faces-release/.
#     NMS_IOU=0.4 bash scripts/faces-release-ship.sh [RUNS]   (NECKS="ssd full context": those evaluated;
#     NMS_IOU: the NMS IoU chosen on val with `borrowcore eval --nms-iou`, default as trained; RECIPE: the
#     inference-recipe fields the reports were made with, faces-release-eval.sh's RECIPE)
#     RETIRE=DIR: the bundled faces-<neck> models being replaced keep their reports (DIR/<neck>/seed0/, each naming
#     the checkpoint it evaluated in extra.evaluated_checkpoint) and training logs (DIR/logs/); OUT=DIR: where the
#     table and the found / compare / people files go (default reports/faces-release). Release 2:
#     RETIRE=reports/faces-release1 OUT=reports/faces-release2 NECKS="context full" NMS_IOU=0.4 RECIPE=... \
#         bash scripts/faces-release-ship.sh runs/faces-release2
set -euo pipefail
recipe=()
set -f  # RECIPE's [0.5] is a YAML list, not a glob
for item in ${RECIPE:-}; do recipe+=(--recipe "$item"); done
set +f
RUNS=${1:-runs/faces-release}
NECKS=${NECKS:-ssd full context}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-reports/faces-release}

shipped=()
for neck in $NECKS; do [ -f "$RUNS/$neck/eval_val.json" ] && shipped+=("$neck"); done
[ ${#shipped[@]} -gt 0 ] || { echo "no evaluated runs under $RUNS (scripts/faces-release-eval.sh)"; exit 1; }

if [ -d assets/reports/faces/full/seed1 ] && [ ! -d reports/experiments/faces-short ]; then
  mv assets/reports/faces reports/experiments/faces-short
  for log in assets/logs/faces-*-seed*.log.jsonl; do
    mv "$log" "reports/experiments/logs/faces-short-${log#assets/logs/faces-}"
  done
  $PY - <<'EOF'
from pathlib import Path
from borrowcore.evaluation.report import load_report, save_report
for path in sorted(Path("reports/experiments/faces-short").rglob("eval_*.json")):
    report = load_report(path)
    if report["model"].get("checkpoint"):
        report["extra"].setdefault("evaluated_checkpoint", report["model"]["checkpoint"])
        report["model"]["checkpoint"], report["model"]["checkpoint_sha256"] = "", ""
        save_report(report, path)
EOF
fi

if [ -n "${RETIRE:-}" ]; then
  for neck in "${shipped[@]}"; do
    [ -d "assets/reports/faces/$neck" ] || continue
    [ -e "$RETIRE/$neck" ] && { echo "$RETIRE/$neck exists: not overwriting retired reports"; exit 1; }
    mkdir -p "$RETIRE/logs"
    mv "assets/reports/faces/$neck" "$RETIRE/$neck"
    for log in assets/logs/faces-"$neck"-seed*.log.jsonl; do [ -f "$log" ] && mv "$log" "$RETIRE/logs/"; done
  done
  $PY - "$RETIRE" <<'EOF'
import sys
from pathlib import Path
from borrowcore.evaluation.report import load_report, save_report
for path in sorted(Path(sys.argv[1]).rglob("eval_*.json")):
    report = load_report(path)
    if report["model"].get("checkpoint"):
        report["extra"].setdefault("evaluated_checkpoint", report["model"]["checkpoint"])
        report["extra"].setdefault("evaluated_checkpoint_sha256", report["model"].get("checkpoint_sha256", ""))
        report["model"]["checkpoint"], report["model"]["checkpoint_sha256"] = "", ""
        save_report(report, path)
EOF
fi

# borrowcore release reads <runs>/<neck>/seed<k>/: the release runs are seed 0 of each neck
layout=$(mktemp -d)
for neck in "${shipped[@]}"; do mkdir -p "$layout/$neck"; ln -s "$(realpath "$RUNS/$neck")" "$layout/$neck/seed0"; done
matching=fast
if [ -f "$RUNS/full/eval_val-exact.json" ]; then
  matching=$($PY -c "import json, sys; fast, exact = (json.load(open(p))['metrics']['AP'] for p in sys.argv[1:]); \
print('fast' if exact - fast <= 0.001 else 'exact')" "$RUNS/full/eval_val-fast.json" "$RUNS/full/eval_val-exact.json")
fi
echo "shipping ${shipped[*]} with $matching matching"
$PY -m borrowcore release --runs "$layout" --name faces --necks "${shipped[@]}" --reports-folder faces \
    --best-by val --matching "$matching" ${NMS_IOU:+--nms-iou "$NMS_IOU"} ${recipe[@]+"${recipe[@]}"}
rm -r "$layout"

mkdir -p "$OUT"
for neck in "${shipped[@]}"; do
  [ -f "$RUNS/$neck/found_val.json" ] && cp "$RUNS/$neck/found_val.json" "$OUT/found_val-$neck.json"
done
cp "$RUNS"/compare-*.json "$OUT/" 2>/dev/null || true
$PY scripts/faces_release_table.py "$RUNS" --necks "${shipped[@]}" --out "$OUT/table.md"
for neck in "${shipped[@]}"; do  # off source: the COCO people photos, at the shipped display threshold
  $PY scripts/faces_on_people.py "assets/checkpoints/faces-$neck.pt" --json "$OUT/people-$neck.json"
done
