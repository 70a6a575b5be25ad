"""Scale a report's stored detections back onto the original photos, to score a model shown a rescaled copy
(``borrowcore shift --scale``) on the original labels: the x2 copy, shrunk to 1,280 px by the face models'
recipe, is the photo seen at 1.25x, the size YOLO11n is best at.

    python scripts/studies/rescale_detections.py runs/faces-release/full/eval_x2.json --factor 0.5 --out /tmp/full-x2.json
    borrowcore eval --detections /tmp/full-x2.json --coco data/wider/val.json --images ... --size-bins ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from borrowcore.evaluation.report import load_detections, load_report


def rescaled(detections: list[dict], factor: float) -> list[dict]:
    """COCO results with every box (x, y, w, h) multiplied by factor; image ids, classes and scores kept."""
    return [{"image_id": d["image_id"], "category_id": d["category_id"],
             "bbox": [round(v * factor, 2) for v in d["bbox"]], "score": d["score"]} for d in detections]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="an eval report with stored detections")
    parser.add_argument("--factor", type=float, required=True, help="original size / evaluated size, e.g. 0.5")
    parser.add_argument("--out", type=Path, required=True, help="COCO results json for borrowcore eval --detections")
    args = parser.parse_args()
    report = load_report(args.report)
    args.out.write_text(json.dumps(rescaled(load_detections(report, args.report), args.factor)))
    print(f"{args.out}: detections scaled by {args.factor:g}")


if __name__ == "__main__":
    main()
