"""Reading COCO annotation files where no images are needed (anchor design, statistics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_coco_json(path: str | Path) -> dict:
    """The parsed json of a COCO detection file, with a clear error naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror})") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(f"{path}: not a COCO detection file (needs lists 'images', 'annotations', 'categories')")
    return data


def read_coco_boxes(path: str | Path, include_crowd: bool = False) -> np.ndarray:
    """All boxes (n, 4) xywh of a COCO file, crowd boxes left out by default."""
    data = read_coco_json(path)
    boxes = []
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise ValueError(f"{path}: annotation {ann.get('id')} has a malformed bbox {bbox!r}")
        boxes.append(bbox)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
