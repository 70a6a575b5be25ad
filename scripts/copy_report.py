"""Copy an eval report under another name with its stored detections (the report names its detections
file, so a plain copy would point at the original's). faces-release-eval.sh uses it where two reports
would run the same inference: a run trained with exact matching has eval_val-exact equal to eval_val.

    python scripts/copy_report.py runs/faces-release/full/eval_val.json runs/faces-release/full/eval_val-exact.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from borrowcore.evaluation.evaluate import write_report
from borrowcore.evaluation.report import load_detections, load_report


def copy_report(source: Path, target: Path) -> None:
    report = load_report(source)
    write_report(report, load_detections(report, source), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    copy_report(args.source, args.target)


if __name__ == "__main__":
    main()
