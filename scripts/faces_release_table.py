"""Issue #25's table of the release face runs, from their eval reports (no inference: each report's stored
detections are scored again with COCOeval, AP50 at maxDets 100 as every report here).

Per neck and report (eval_val, eval_val-exact, eval_x2, eval_x0.5, eval_colour under RUNS/<neck>/, as
scripts/faces-release-eval.sh writes them): AP, AP50 on faces >= 16 px (smaller faces ignored, as in the
issue's table), AP50 by size bin (sqrt(area): <16, 16-32, 32-64, 64-128, 128-200, 200+), twins and
orphans AP50 (the report's subsets) and borrow precision against chance where measured. No timing: a
report's seconds depend on what shared the cores while it ran (scripts/photo_seconds.py times on idle cores).

    python scripts/faces_release_table.py runs/faces-release --out reports/faces-release/table.md
    python scripts/faces_release_table.py --reports runs/recipe/*.json   # any reports, a row each
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from borrowcore.evaluation.analysis import report_ground_truth
from borrowcore.evaluation.coco_eval import coco_metrics
from borrowcore.evaluation.report import load_detections, load_report

BINS = ((0, 16), (16, 32), (32, 64), (64, 128), (128, 200), (200, math.inf))
SPLITS = ("val", "val-exact", "x2", "x0.5", "colour")


def row(report_path: Path) -> dict:
    report = load_report(report_path)
    coco = report_ground_truth(report)
    results = load_detections(report, report_path)
    at16 = coco_metrics(coco, results, ((16, math.inf),))["size_bins"][0]["AP50"]
    by_bin = {b["label"]: b["AP50"] for b in coco_metrics(coco, results, BINS)["size_bins"]}
    borrow = report.get("extra", {}).get("borrow_precision") or {}
    return {"report": str(report_path), "AP": report["metrics"]["AP"], "AP50": report["metrics"]["AP50"],
            "AP50_16+": at16, **{f"AP50_{k}": v for k, v in by_bin.items()},
            "twins_AP50": report.get("subsets", {}).get("twins", {}).get("AP50"),
            "orphans_AP50": report.get("subsets", {}).get("orphans", {}).get("AP50"),
            "borrow_precision": borrow.get("borrow_precision"), "chance": borrow.get("chance")}


def pct(value: float | None) -> str:
    return "" if value is None or value < 0 else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="?", help="RUNS/<neck>/eval_<split>.json")
    parser.add_argument("--reports", type=Path, nargs="+", help="these reports instead, one row each by file name")
    parser.add_argument("--necks", nargs="+", default=["ssd", "context", "full"])
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="eval_<split>.json reports")
    parser.add_argument("--out", type=Path, help="markdown table (and the same rows as .json beside it)")
    args = parser.parse_args()
    if (args.runs is None) == (args.reports is None):
        parser.error("give RUNS or --reports")
    rows = [{"neck": "", "split": path.stem, **row(path)} for path in args.reports or []]
    for neck in args.necks if args.runs else []:
        for split in args.splits:
            path = args.runs / neck / f"eval_{split}.json"
            if path.exists():
                rows.append({"neck": neck, "split": split, **row(path)})
    labels = [f"{lo:g}-{hi:g}" if math.isfinite(hi) else f"{lo:g}+" for lo, hi in BINS]
    head = ["neck", "report", "AP", "AP50 >=16 px", *labels, "twins", "orphans", "borrow prec. (chance)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        borrow = f"{pct(r['borrow_precision'])} ({pct(r['chance'])})" if r["borrow_precision"] is not None else ""
        cells = [r["neck"], r["split"], pct(r["AP"]), pct(r["AP50_16+"]), *(pct(r[f"AP50_{k}"]) for k in labels),
                 pct(r["twins_AP50"]), pct(r["orphans_AP50"]), borrow]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
