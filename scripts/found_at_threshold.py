"""What a user sees at a score threshold: the share of faces found by size, and false detections a photo.

From an eval report (its detections and ground truth): detections at or above the threshold (default the
checkpoint's display threshold, else the report's F1-best), best first, each matched greedily to the
unmatched ground-truth box of highest IoU >= 0.5; a detection on an ignore region (WIDER's invalid faces,
iscrowd) is neither found nor false. Sizes by sqrt(area) of the ground truth, in the photo's pixels.

    python scripts/found_at_threshold.py runs/faces-release/full/eval_val.json [--threshold 0.35 | --f1-best]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.ops import box_convert, box_iou

from borrowcore.engine.ablation import release_threshold
from borrowcore.evaluation.analysis import report_ground_truth
from borrowcore.evaluation.report import load_detections, read_json

EDGES = (0, 16, 32, 64, 128, 200, math.inf)


def found_at_threshold(report_path: Path, threshold: float | None = None) -> dict:
    report = read_json(report_path)
    coco = report_ground_truth(report)
    if threshold is None:
        threshold = report["model"].get("config", {}).get("display_threshold") or release_threshold(report_path)
    detections = defaultdict(list)
    for d in load_detections(report, report_path):
        if d["score"] >= threshold:
            detections[d["image_id"]].append(d)
    found, total, false = defaultdict(int), defaultdict(int), 0
    for image_id in coco.getImgIds():
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        faces = [a for a in annotations if not a.get("iscrowd")]
        ignore = [a for a in annotations if a.get("iscrowd")]
        gt = box_convert(torch.tensor([a["bbox"] for a in faces], dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")
        ig = box_convert(torch.tensor([a["bbox"] for a in ignore], dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")
        sides = [math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in faces]
        matched = torch.zeros(len(faces), dtype=torch.bool)
        for d in sorted(detections[image_id], key=lambda d: -d["score"]):
            box = box_convert(torch.tensor([d["bbox"]], dtype=torch.float64), "xywh", "xyxy")
            iou = box_iou(box, gt)[0] if len(gt) else torch.zeros(0, dtype=torch.float64)
            iou[matched] = -1
            if len(iou) and iou.max() >= 0.5:
                matched[iou.argmax()] = True
            elif not (len(ig) and box_iou(box, ig).max() >= 0.5):
                false += 1
        for side, hit in zip(sides, matched.tolist()):
            label = next(f"{lo:g}-{hi:g}" if hi != math.inf else f"{lo:g}+" for lo, hi in zip(EDGES, EDGES[1:])
                         if lo <= side < hi)
            total[label] += 1
            found[label] += hit
    labels = [f"{lo:g}-{hi:g}" if hi != math.inf else f"{lo:g}+" for lo, hi in zip(EDGES, EDGES[1:])]
    return {"report": str(report_path), "threshold": round(float(threshold), 3), "photos": len(coco.getImgIds()),
            "false_per_photo": round(false / max(1, len(coco.getImgIds())), 2),
            "found": {label: {"faces": total[label], "share": round(found[label] / total[label], 3) if total[label] else None}
                      for label in labels}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--f1-best", dest="f1_best", action="store_true",
                        help="the report's F1-best score (what `borrowcore release --best-by` ships as the display "
                             "threshold) instead of the checkpoint's display threshold")
    parser.add_argument("--json", type=Path, help="also write the (last) result here")
    args = parser.parse_args()
    for path in args.reports:
        threshold = release_threshold(path) if args.f1_best else args.threshold
        result = found_at_threshold(path, threshold)
        print(json.dumps(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
