"""A face model on photos from another source: the 12 COCO photos of ../shared/data/photos, which label people,
not faces. A proxy, since no face is labelled there:

- a person counts as found when a detection at the threshold has its centre in the top third of the
  person's box (where the head is, for people standing or sitting); people of at least --min-height px
  only (a face is about a seventh of a standing person's height), whatever way they face: people seen
  from behind have no face to find, so the share is a lower bound on recall;
- a detection whose centre lies in no person box (of any size, crowd regions included) counts as outside
  people: a false detection, or a face COCO left unlabelled (rare: COCO labels people down to a few px).

Each photo runs through the checkpoint's own recipe (whole photo at native resolution for the face models),
at the checkpoint's display threshold unless --threshold is given.

    python scripts/faces_on_people.py assets/checkpoints/faces-full.pt [--threshold 0.35] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from borrowcore import load_detector
from borrowcore.data.images import read_image_rgb

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"
PERSON = 1  # COCO's category id


def people_found(detections: list[list[float]], people: list[list[float]], min_height: float) -> tuple[int, int, int]:
    """(people >= min_height, of them with a detection centred in the top third of their box, detections centred
    in no person box). Boxes: detections xyxy, people COCO xywh."""
    centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in detections]
    tall = [p for p in people if p[3] >= min_height]
    found = sum(any(x <= cx <= x + w and y <= cy <= y + h / 3 for cx, cy in centres) for x, y, w, h in tall)
    outside = sum(not any(x <= cx <= x + w and y <= cy <= y + h for x, y, w, h in people) for cx, cy in centres)
    return len(tall), found, outside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--threshold", type=float, help="default: the checkpoint's display threshold")
    parser.add_argument("--min-height", dest="min_height", type=float, default=96.0)
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="a COCO folder: images/ and instances.json")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    detector = load_detector(args.checkpoint)
    threshold = detector.config.display_threshold if args.threshold is None else args.threshold
    coco = json.loads((args.photos / "instances.json").read_text())
    people: dict[int, list[list[float]]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        if annotation["category_id"] == PERSON:
            people[annotation["image_id"]].append(annotation["bbox"])
    totals, rows = [0, 0, 0, 0], []
    for image in coco["images"]:
        with torch.no_grad():
            [out] = detector([read_image_rgb(args.photos / "images" / image["file_name"])])
        boxes = out["boxes"][out["scores"] >= threshold].tolist()
        tall, found, outside = people_found(boxes, people[image["id"]], args.min_height)
        rows.append({"photo": image["file_name"], "people": tall, "found": found, "detections": len(boxes),
                     "outside_people": outside})
        for i, value in enumerate((tall, found, len(boxes), outside)):
            totals[i] += value
    result = {"checkpoint": str(args.checkpoint), "matching": detector.config.describe_matching(),
              "threshold": threshold, "min_height": args.min_height, "photos": len(rows),
              "people": totals[0], "people_found": totals[1],
              "share_found": round(totals[1] / totals[0], 3) if totals[0] else None,
              "detections": totals[2], "outside_people_per_photo": round(totals[3] / max(1, len(rows)), 2),
              "by_photo": rows}
    print(json.dumps({k: v for k, v in result.items() if k != "by_photo"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
