"""Dataset statistics of a COCO detection file: how many boxes, how small, how elongated, which classes.

Sizes follow SPEC §7: COCO's ranges (small < 32^2, medium, large >= 96^2 px area) and finer bins on
sqrt(area). "area" is the annotation's own ``area`` field when present (what COCOeval ranks by; the mask
area on real COCO, the box area on the borrow benchmark), else the box's w * h. Crowd boxes are
counted apart and left out of every other number, as COCOeval ignores them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from borrowcore.data.coco import read_coco_json

COCO_SIZES = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))
SIDE_BINS = (0, 16, 32, 64, 96, 128)  # px on sqrt(area); the last bin is open: "128+"
ASPECT_BINS = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # max(w/h, h/w); the last bin is open: "10+"


def _bin_labels(edges: tuple[float, ...]) -> list[str]:
    """("0-16", "16-32", ..., "128+") from the bin edges."""
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    return names + [f"{edges[-1]:g}+"]


def _load_coco(coco_file: Path) -> dict:
    """A COCO detection file whose boxes and category ids the statistics can trust (ValueError otherwise)."""
    coco = read_coco_json(coco_file)
    category_ids = {cat.get("id") for cat in coco["categories"] if isinstance(cat, dict)}
    for ann in coco["annotations"]:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{coco_file}: annotation {ann!r:.80} has no [x, y, w, h] bbox")
        if ann.get("category_id") not in category_ids:
            raise ValueError(
                f"{coco_file}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}"
            )
    return coco


def dataset_stats(coco_file: str | Path) -> dict:
    """Counts of a COCO detection file's boxes by size, side bin, aspect ratio and class.

    Returns ``{"file", "images", "images_without_boxes", "boxes", "crowd_boxes",
    "by_coco_size": {small, medium, large}, "by_side": {"0-16", ..., "128+"},
    "aspect_ratio": {"bins": {"1-1.5", ..., "10+"}, "degenerate", "p99"}, "per_class": {name: n}}``;
    every count is over non-crowd boxes except ``crowd_boxes``.
    """
    coco_file = Path(coco_file)
    coco = _load_coco(coco_file)
    names = {cat["id"]: cat.get("name", str(cat["id"])) for cat in coco["categories"]}
    boxes = [ann for ann in coco["annotations"] if not ann.get("iscrowd", 0)]

    wh = np.array([ann["bbox"][2:] for ann in boxes], dtype=np.float64).reshape(-1, 2)  # (n, 2)
    area = np.array([ann.get("area", ann["bbox"][2] * ann["bbox"][3]) for ann in boxes], dtype=np.float64)

    by_size = {name: int(((area >= lo) & (area < hi)).sum()) for name, lo, hi in COCO_SIZES}
    # bin index i holds SIDE_BINS[i] <= side < SIDE_BINS[i + 1]
    side_bin = np.digitize(np.sqrt(area), SIDE_BINS[1:])
    by_side = {label: int((side_bin == i).sum()) for i, label in enumerate(_bin_labels(SIDE_BINS))}

    valid = (wh > 0).all(axis=1)  # zero-width or zero-height boxes have no aspect ratio
    ratio = np.maximum(wh[valid, 0] / wh[valid, 1], wh[valid, 1] / wh[valid, 0])
    ratio_bin = np.digitize(ratio, ASPECT_BINS[1:])
    aspect = {
        "bins": {label: int((ratio_bin == i).sum()) for i, label in enumerate(_bin_labels(ASPECT_BINS))},
        "degenerate": int((~valid).sum()),
        "p99": float(np.percentile(ratio, 99)) if ratio.size else None,
    }

    per_class = {name: 0 for name in names.values()}
    for ann in boxes:
        per_class[names[ann["category_id"]]] += 1

    with_boxes = {ann["image_id"] for ann in boxes}
    return {
        "file": str(coco_file),
        "images": len(coco["images"]),
        "images_without_boxes": sum(img.get("id") not in with_boxes for img in coco["images"]),
        "boxes": len(boxes),
        "crowd_boxes": len(coco["annotations"]) - len(boxes),
        "by_coco_size": by_size,
        "by_side": by_side,
        "aspect_ratio": aspect,
        "per_class": per_class,
    }


def _table(title: str, counts: dict[str, int], total: int) -> list[str]:
    """Rows "name  count  share" under a header, names left-aligned."""
    width = max([len(title)] + [len(name) for name in counts])
    lines = [f"{title:<{width}}  {'boxes':>7}  {'share':>6}"]
    for name, count in counts.items():
        share = f"{100.0 * count / total:5.1f}%" if total else "     -"
        lines.append(f"{name:<{width}}  {count:>7}  {share:>6}")
    return lines


def format_stats(stats: dict) -> str:
    """Plain-text tables of :func:`dataset_stats`' result."""
    total = stats["boxes"]
    aspect = stats["aspect_ratio"]
    p99 = "-" if aspect["p99"] is None else f"{aspect['p99']:.2f}"
    lines = [
        f"{stats['file']}",
        f"{stats['images']} images ({stats['images_without_boxes']} without boxes), "
        f"{total} boxes, {stats['crowd_boxes']} crowd boxes (not counted below)",
        "",
        *_table("COCO size", stats["by_coco_size"], total),
        "",
        *_table("sqrt(area) px", stats["by_side"], total),
        "",
        *_table("aspect ratio", aspect["bins"], total),
        f"99th percentile aspect ratio: {p99}; zero-size boxes: {aspect['degenerate']}",
        "",
        *_table("class", {name: n for name, n in stats["per_class"].items() if n}, total),
    ]
    empty = sum(n == 0 for n in stats["per_class"].values())
    if empty:
        lines.append(f"({empty} classes without boxes not shown)")
    return "\n".join(lines)


def dataset_anchor_recall(coco_file: str | Path, input_size: int, anchor_scale: float = 4.0,
                          aspect_ratios: tuple[float, ...] | list[float] = (1.5, 3.0), iou: float = 0.5) -> dict:
    """Anchor recall (SPEC §9, ``anchors.design_anchor_recall``) of a COCO file's non-crowd boxes with
    positive size; ValueError naming the file when it is malformed. ``skipped``: crowd and zero-size boxes."""
    from borrowcore.models.anchors import design_anchor_recall

    coco = read_coco_json(coco_file)
    sizes = {}
    for image in coco["images"]:
        if not (isinstance(image, dict) and isinstance(image.get("width"), (int, float))
                and isinstance(image.get("height"), (int, float)) and image["width"] > 0 and image["height"] > 0):
            raise ValueError(f"{coco_file}: image entry {image!r:.80} needs a positive width and height")
        sizes[image.get("id")] = (image["height"], image["width"])
    boxes, image_sizes, skipped = [], [], 0
    for ann in coco["annotations"]:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{coco_file}: annotation {ann!r:.80} has no [x, y, w, h] bbox")
        if ann.get("image_id") not in sizes:
            raise ValueError(f"{coco_file}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
        if ann.get("iscrowd", 0) or bbox[2] <= 0 or bbox[3] <= 0:
            skipped += 1
            continue
        boxes.append(bbox)
        image_sizes.append(sizes[ann["image_id"]])
    result = design_anchor_recall(np.array(boxes, dtype=np.float64).reshape(-1, 4),
                                  np.array(image_sizes, dtype=np.float64).reshape(-1, 2), input_size,
                                  anchor_scale, aspect_ratios, iou)
    result["skipped"] = skipped
    return result


def checkpoint_anchor_recall(detector, coco_file: str | Path, iou: float = 0.35,
                             side_bins: tuple[float, ...] = (0, 8, 12, 16, 32, 64, 128)) -> dict:
    """Anchor recall of a COCO file's non-crowd boxes with a checkpoint's own anchors, on the inputs its
    detector builds (whole-image checkpoints: each photo at its own, possibly shrunk, size padded to 64):
    by box side sqrt(w h) in the photo's pixels, the share whose best anchor reaches ``iou`` (default 0.35,
    the face models' match_iou) and 0.5, and the median best IoU."""
    import torch
    from torchvision.ops import box_iou

    from borrowcore.models.detector import PAD_MULTIPLE

    coco = read_coco_json(coco_file)
    per_image: dict = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0) and ann["bbox"][2] > 0 and ann["bbox"][3] > 0:
            per_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    best, sides = [], []
    for image in coco["images"]:
        if image["id"] not in per_image:
            continue
        h, w = image["height"], image["width"]
        [(sx, sy)] = detector.input_scales([(h, w)])
        if detector.whole_image:
            new_h, new_w = detector.whole_size(h, w)
            height, width = -(-new_h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-new_w // PAD_MULTIPLE) * PAD_MULTIPLE
        else:
            height = width = detector.input_size
        grids = [(-(-height // s), -(-width // s)) for s in detector.anchors.strides]
        anchors = detector.anchors(grids, detector.anchor_image_size).double()  # (A, 4) input pixels
        boxes = torch.tensor(per_image[image["id"]], dtype=torch.float64)  # (n, 4) xywh, photo pixels
        sides.append((boxes[:, 2] * boxes[:, 3]).sqrt())
        xyxy = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1) * torch.tensor([sx, sy, sx, sy])
        best.append(box_iou(xyxy, anchors).max(dim=1).values)
    best, sides = torch.cat(best), torch.cat(sides)
    edges = list(side_bins) + [math.inf]
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (sides >= lo) & (sides < hi)
        count = int(inside.sum())
        bins.append({"label": f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}", "boxes": count,
                     "recall": float((best[inside] >= iou).double().mean()) if count else -1.0,
                     "recall_at_0.5": float((best[inside] >= 0.5).double().mean()) if count else -1.0,
                     "median_best_iou": float(best[inside].median()) if count else -1.0})
    return {"iou": iou, "boxes": len(best), "recall": float((best >= iou).double().mean()), "bins": bins}
