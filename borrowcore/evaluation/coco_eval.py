"""COCO metrics by object size (SPEC §7), from pycocotools' COCOeval.

Every number comes from COCOeval's arrays (``eval["precision"]`` (T, R, K, A, M) and ``eval["recall"]``
(T, K, A, M)), never from its printed summary. Besides COCO's small / medium / large, finer size bins on
sqrt(area) are evaluated through ``params.areaRng``. A metric is -1 where its range has no ground truth
(COCO's convention). Small instances split into twins and orphans (``instance_subsets``) are scored
with COCO's own matching (``SubsetCOCOeval``).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

DEFAULT_SIZE_BINS: tuple[tuple[float, float], ...] = ((0, 16), (16, 32), (32, 64), (64, 96), (96, 128), (128, math.inf))
COCO_RANGES = (("all", 0, math.inf), ("small", 0, 32), ("medium", 32, 96), ("large", 96, math.inf))
MAX_AREA = 1e10  # COCO's stand-in for infinity (1e5 ** 2)


def bin_label(low: float, high: float) -> str:
    return f"{low:g}+" if math.isinf(high) else f"{low:g}-{high:g}"


def parse_size_bins(text: str) -> tuple[tuple[float, float], ...]:
    """"0,16,32,64" -> ((0, 16), (16, 32), (32, 64), (64, inf)): edges on sqrt(area) in pixels."""
    edges = [float(x) for x in text.split(",") if x.strip()]
    if len(edges) < 2 or edges != sorted(edges) or len(set(edges)) != len(edges):
        raise ValueError(f"size bins {text!r}: need at least two increasing edges, e.g. 0,16,32,64,96,128")
    return tuple(zip(edges, edges[1:] + [math.inf]))


def results_to_coco(coco_gt: COCO, results: list[dict]) -> COCO:
    """A COCO object of detections; an empty one when there are none (loadRes cannot take []). ``results`` are
    left as they are: loadRes writes an id, an area and a box-shaped polygon into each dict it is given, which
    would then be saved with the detections (twice their size)."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes([dict(r) for r in results])
    coco_dt = COCO()
    coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def run_cocoeval(coco_gt: COCO, coco_dt: COCO, size_bins: Sequence[tuple[float, float]] = DEFAULT_SIZE_BINS,
                 image_ids: Sequence[int] | None = None, iou_type: str = "bbox") -> tuple[COCOeval, list[tuple[str, float, float]]]:
    """COCOeval over COCO's ranges plus ``size_bins``, evaluated and accumulated (prints silenced)."""
    ranges = list(COCO_RANGES) + [(bin_label(lo, hi), lo, hi) for lo, hi in size_bins]
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.params.areaRng = [[lo ** 2, min(hi ** 2, MAX_AREA)] for _, lo, hi in ranges]
    evaluator.params.areaRngLbl = [label for label, _, _ in ranges]
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator, ranges


def mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCO marks 'no ground truth' with -1), or -1 when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def coco_metrics(coco_gt: COCO, results: list[dict], size_bins: Sequence[tuple[float, float]] = DEFAULT_SIZE_BINS,
                 image_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """AP / AR by size, per-class AP and PR curves from COCOeval's arrays."""
    evaluator, ranges = run_cocoeval(coco_gt, results_to_coco(coco_gt, results), size_bins, image_ids)
    precision = evaluator.eval["precision"]  # (T, R, K, A, M)
    recall = evaluator.eval["recall"]  # (T, K, A, M)
    params = evaluator.params
    area = {label: i for i, (label, _, _) in enumerate(ranges)}
    last = len(params.maxDets) - 1  # maxDets 100
    t50, t75 = int(np.argmin(np.abs(params.iouThrs - 0.5))), int(np.argmin(np.abs(params.iouThrs - 0.75)))

    def ap(a: str, t: int | None = None, k: int | None = None) -> float:
        p = precision[:, :, :, area[a], last]
        p = p if t is None else p[t:t + 1]
        p = p if k is None else p[:, :, k:k + 1]
        return mean_valid(p)

    def ar(a: str, m: int = last) -> float:
        return mean_valid(recall[:, :, area[a], m])

    metrics = {"AP": ap("all"), "AP50": ap("all", t50), "AP75": ap("all", t75),
               "AP_S": ap("small"), "AP_M": ap("medium"), "AP_L": ap("large"),
               "AR1": ar("all", 0), "AR10": ar("all", 1), "AR100": ar("all"),
               "AR_S": ar("small"), "AR_M": ar("medium"), "AR_L": ar("large")}

    image_set = set(params.imgIds)
    gt = [a for a in coco_gt.dataset["annotations"] if not a.get("iscrowd", 0) and a["image_id"] in image_set]
    areas = np.array([a["area"] for a in gt], dtype=np.float64)
    size_rows = []
    for label, lo, hi in ranges[len(COCO_RANGES):]:
        upper = min(hi ** 2, MAX_AREA)
        size_rows.append({"label": label, "min": lo, "max": hi if math.isfinite(hi) else MAX_AREA ** 0.5,
                          "num_gt": int(((areas >= lo ** 2) & (areas <= upper)).sum()),
                          "AP": ap(label), "AP50": ap(label, t50), "AR100": ar(label)})

    per_class = []
    for k, cat_id in enumerate(params.catIds):
        per_class.append({"name": coco_gt.cats[cat_id]["name"], "category_id": int(cat_id),
                          "AP": ap("all", k=k), "AP50": ap("all", t50, k), "AP_S": ap("small", k=k),
                          "num_gt": sum(1 for a in gt if a["category_id"] == cat_id)})

    curves = {}
    for label, _, _ in ranges:
        p = precision[:, :, :, area[label], last]  # (T, R, K)
        curves[label] = {
            # mean over classes that have ground truth in this range; -1 where none has
            "iou50": [round(mean_valid(p[t50, r]), 4) for r in range(p.shape[1])],
            "iou50_95": [round(mean_valid(p[:, r]), 4) for r in range(p.shape[1])],
        }
    return {"metrics": metrics, "size_bins": size_rows, "per_class": per_class,
            "pr_curves": {"recall": [round(float(r), 4) for r in params.recThrs],
                          "iou": [round(float(t), 2) for t in params.iouThrs], "ranges": curves}}


def best_f1_threshold(coco_gt: COCO, results: list[dict], iou: float = 0.5) -> dict[str, float]:
    """The score threshold with the best F1 at IoU ``iou`` over all classes and sizes (ultralytics' "best
    confidence"): from COCOeval's per-recall-point precision and scores, classes averaged.

    Returns {"score", "f1", "precision", "recall"}; all -1 when there is no ground truth or detection."""
    evaluator, _ = run_cocoeval(coco_gt, results_to_coco(coco_gt, results), ())
    t = int(np.argmin(np.abs(evaluator.params.iouThrs - iou)))
    precision = evaluator.eval["precision"][t, :, :, 0, -1]  # (R, K): area "all", maxDets 100
    scores = evaluator.eval["scores"][t, :, :, 0, -1]  # (R, K): the score reached at each recall point
    recall = evaluator.params.recThrs[:, None].repeat(precision.shape[1], axis=1)
    valid = (precision > 0) & (scores > 0)
    rows = valid.any(axis=1)  # recall points some class reaches
    if not rows.any():
        return {"score": -1.0, "f1": -1.0, "precision": -1.0, "recall": -1.0}
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    mean = lambda values: np.array([v[m].mean() if m.any() else -1.0 for v, m in zip(values, valid)])  # noqa: E731
    best = int(np.argmax(np.where(rows, mean(f1), -1.0)))
    return {"score": float(mean(scores)[best]), "f1": float(mean(f1)[best]),
            "precision": float(mean(precision)[best]), "recall": float(recall[best, 0])}


def small_instance_accuracy(coco_gt: COCO, results: list[dict], small_side: float = 32.0, iou: float = 0.5) -> dict[str, float]:
    """Top-1 class accuracy on small instances: for each small ground-truth box (sqrt(area) < small_side),
    the class of the highest-scoring detection of any class at IoU >= ``iou``; the share that is right.

    AP cannot show a model *flipping* its answer (a pair's second class, scored lower, still counts on
    the same box); this can: on the shuffled control a model that reads the twin falls below chance.
    """
    from torchvision.ops import box_convert, box_iou

    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    correct = matched = total = 0
    for ann in coco_gt.dataset["annotations"]:
        if ann.get("iscrowd", 0) or math.sqrt(ann["area"]) >= small_side:
            continue
        total += 1
        candidates = by_image.get(ann["image_id"], [])
        if not candidates:
            continue
        ious = box_iou(box_convert(torch.tensor([ann["bbox"]], dtype=torch.float64), "xywh", "xyxy"),
                       box_convert(torch.tensor([c["bbox"] for c in candidates], dtype=torch.float64), "xywh", "xyxy"))[0]
        hits = [c for c, v in zip(candidates, ious.tolist()) if v >= iou]
        if not hits:
            continue
        matched += 1
        correct += max(hits, key=lambda c: c["score"])["category_id"] == ann["category_id"]
    return {"accuracy": correct / matched if matched else -1.0, "matched": matched, "instances": total}


SUBSETS = ("twins", "orphans")


def instance_subsets(coco_gt: COCO, small: float = 32.0, ratio: float = 2.0, min_large: float = 48.0) -> dict[str, set[int]]:
    """Annotation ids of the small instances with a larger same-class instance in their image ("twins") and
    of the other small ones ("orphans"), issue 15 ("Faces in crowds").

    A small instance is a non-crowd box with sqrt(area) < ``small``. It is a twin when its image holds a
    non-crowd instance of the same category with sqrt(area) >= ``ratio`` x its own and >= ``min_large``;
    otherwise an orphan. Any category, any COCO set; ``area`` is the annotation's (what COCOeval's size
    ranges use). Crowd boxes are in neither subset."""
    if ratio <= 1:
        raise ValueError(f"ratio {ratio}: a twin's larger instance must be more than 1x its side")
    largest: dict[tuple[int, int], float] = {}  # (image, category) -> side of its largest non-crowd instance
    candidates = [a for a in coco_gt.dataset["annotations"] if not a.get("iscrowd", 0)]
    for ann in candidates:
        key = (ann["image_id"], ann["category_id"])
        largest[key] = max(largest.get(key, 0.0), math.sqrt(ann["area"]))
    subsets: dict[str, set[int]] = {name: set() for name in SUBSETS}
    for ann in candidates:
        side = math.sqrt(ann["area"])
        if side >= small:
            continue
        large = largest[ann["image_id"], ann["category_id"]]
        subsets["twins" if large >= max(ratio * side, min_large) else "orphans"].add(ann["id"])
    return subsets


class SubsetCOCOeval(COCOeval):
    """COCOeval on the ground truth ``keep`` (annotation ids): every other box is ignored the way COCO ignores
    a box outside the evaluated size range, so a detection matched to it is neither TP nor FP.

    Not by marking the others iscrowd=1 in a copy of the dataset: COCO's crowd IoU is intersection over the
    *detection's* area and a crowd box absorbs any number of detections, so a large ignored box would swallow
    every false positive of its class inside it (a detection on part of a large instance, duplicates) -- and
    twins by definition share their image with such a box, so that would flatter the twins. Here the others keep the
    ordinary IoU and match one detection each; boxes that were crowd stay crowd. (Setting ``ann["ignore"]``
    in the dataset does not work: ``_prepare`` overwrites it with ``iscrowd``, hence this override.)"""

    def __init__(self, coco_gt: COCO, coco_dt: COCO, keep: set[int], iou_type: str = "bbox"):
        super().__init__(coco_gt, coco_dt, iou_type)
        self.keep = set(keep)

    def _prepare(self) -> None:
        super()._prepare()
        for key, gts in self._gts.items():  # copies: _gts holds the COCO object's own annotation dicts
            self._gts[key] = [g if g["id"] in self.keep else {**g, "ignore": 1} for g in gts]


def subset_evaluator(coco_gt: COCO, coco_dt: COCO, keep: set[int], small: float = 32.0) -> SubsetCOCOeval:
    """A SubsetCOCOeval over COCO's small range [0, small^2] (as AP_S: unmatched detections larger than that
    are ignored too), on every image: a false positive counts wherever it is. Evaluated, not accumulated."""
    evaluator = SubsetCOCOeval(coco_gt, coco_dt, keep)
    evaluator.params.areaRng = [[0.0, small ** 2]]
    evaluator.params.areaRngLbl = ["small"]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return evaluator


def subset_metrics(coco_gt: COCO, results: list[dict], subsets: dict[str, set[int]] | None = None,
                   small: float = 32.0) -> dict[str, dict[str, float]]:
    """AP, AP50 (fractions; -1 without ground truth) and instance count of each subset of ``instance_subsets``:
    {"twins": {"AP", "AP50", "instances"}, "orphans": {...}}. Two COCOeval runs."""
    subsets = instance_subsets(coco_gt, small) if subsets is None else subsets
    coco_dt = results_to_coco(coco_gt, results)
    out = {}
    for name, keep in subsets.items():
        evaluator = subset_evaluator(coco_gt, coco_dt, keep, small)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.accumulate()
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at maxDets 100
        t50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
        out[name] = {"AP": mean_valid(precision), "AP50": mean_valid(precision[t50]), "instances": len(keep)}
    return out
