"""Why small objects fail: COCO error analysis by size, and head-to-head comparison of two reports.

Error analysis follows COCO's analyze() (as mmdetection's coco_error_analysis computes it, SPEC §7):
precision-recall under progressively relaxed conditions, per size range:

    C75  PR at IoU 0.75                C50  PR at IoU 0.5
    Loc  PR at IoU 0.1 (localisation errors ignored; duplicate detections still count)
    Sim  Loc with confusions inside a supercategory removed
    Oth  Loc with every class confusion removed
    BG   Oth with every background false positive removed (precision 1 wherever Oth recalls)
    FN   1: what is left are the objects never detected

A confusion is "removed" by turning the other class's ground truth into a crowd region of the evaluated
class, so detections on it are ignored rather than counted as false positives. In the borrow benchmark
each look-alike pair is one supercategory, so Sim measures exactly the confusion borrowing should remove.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert, box_iou

from borrowcore.data.dataset import load_ground_truth
from borrowcore.evaluation.coco_eval import (COCO_RANGES, DEFAULT_SIZE_BINS, MAX_AREA, bin_label, instance_subsets,
                                             results_to_coco, subset_evaluator)
from borrowcore.evaluation.report import ReportError, load_detections, load_report, save_report

CONDITIONS = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")


def load_coco(path: str | Path) -> COCO:
    """A COCO file as evaluation scores against it (data.load_ground_truth: validated, boxes clipped)."""
    return load_ground_truth(path)


def report_ground_truth(report: dict, coco: str | Path | None = None) -> COCO:
    """The ground truth a report's metrics were computed on: its COCO file (or ``coco``) cleaned as the
    evaluation cleaned it, without the images that evaluation could not read (eval --skip-bad)."""
    from borrowcore.data.dataset import BadAnnotationError
    from borrowcore.data.derived import missing_ground_truth, resolve

    dataset = report["dataset"]
    path = resolve(coco or dataset["annotations"])
    if not path.is_file():  # a file made from ../shared/data that this clone has not made yet
        raise BadAnnotationError(missing_ground_truth(path))
    return load_ground_truth(path, dataset.get("skip_bad", False),
                             [row["id"] for row in dataset.get("unreadable_images", [])])


def _ranges(size_bins: Sequence[tuple[float, float]]) -> list[tuple[str, float, float]]:
    return list(COCO_RANGES) + [(bin_label(lo, hi), lo, hi) for lo, hi in size_bins]


def _precision(coco_gt: COCO, coco_dt: COCO, ranges, iou_thresholds: list[float], cat_ids: list[int]) -> np.ndarray:
    """COCOeval precision (T, R, K, A) at maxDets 100 for the given categories and ranges."""
    evaluator = COCOeval(coco_gt, coco_dt, "bbox")
    evaluator.params.iouThrs = np.array(iou_thresholds)
    evaluator.params.maxDets = [100]
    evaluator.params.catIds = cat_ids
    evaluator.params.areaRng = [[lo ** 2, min(hi ** 2, MAX_AREA)] for _, lo, hi in ranges]
    evaluator.params.areaRngLbl = [label for label, _, _ in ranges]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"][..., 0]


def _relaxed_gt(coco_gt: COCO, cat_id: int, confused: set[int]) -> COCO:
    """Ground truth in which the classes in ``confused`` become crowd regions of ``cat_id``."""
    gt = COCO()
    gt.dataset = copy.deepcopy(coco_gt.dataset)
    for ann in gt.dataset["annotations"]:
        if ann["category_id"] in confused:
            ann["iscrowd"], ann["ignore"], ann["category_id"] = 1, 1, cat_id
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def error_analysis(coco_gt: COCO, results: list[dict],
                   size_bins: Sequence[tuple[float, float]] = DEFAULT_SIZE_BINS) -> dict[str, Any]:
    """The C75 .. FN breakdown per size range: AP under each condition (mean over classes with ground
    truth in the range), per class, and the mean PR curve of each condition."""
    ranges = _ranges(size_bins)
    cat_ids = sorted(coco_gt.getCatIds())
    coco_dt = results_to_coco(coco_gt, results)
    base = _precision(coco_gt, coco_dt, ranges, [0.75, 0.5, 0.1], cat_ids)  # (3, R, K, A)
    ps = np.concatenate([base, np.zeros((4, *base.shape[1:]))])  # (7, R, K, A)
    for k, cat_id in enumerate(cat_ids):
        own = [r for r in results if r["category_id"] == cat_id]
        dt_k = results_to_coco(coco_gt, own)
        supercategory = coco_gt.cats[cat_id].get("supercategory")
        same_super = {c for c in cat_ids if c != cat_id and supercategory is not None
                      and coco_gt.cats[c].get("supercategory") == supercategory}
        others = set(cat_ids) - {cat_id}
        ps[3, :, k] = _precision(_relaxed_gt(coco_gt, cat_id, same_super), dt_k, ranges, [0.1], [cat_id])[0, :, 0]
        ps[4, :, k] = _precision(_relaxed_gt(coco_gt, cat_id, others), dt_k, ranges, [0.1], [cat_id])[0, :, 0]
    has_gt = ps[4].max(axis=0) > -1  # (K, A): -1 marks a class without ground truth in the range
    ps[ps == -1] = 0
    ps[5] = ps[4] > 0  # BG: every background false positive removed
    ps[6] = 1.0  # FN
    out: dict[str, Any] = {"conditions": list(CONDITIONS), "recall": np.linspace(0, 1, ps.shape[1]).round(2).tolist(),
                           "ranges": {}}
    for a, (label, _, _) in enumerate(ranges):
        classes = has_gt[:, a]
        entry: dict[str, Any] = {"num_classes": int(classes.sum())}
        if classes.any():
            entry["AP"] = {c: float(ps[i, :, classes, a].mean()) for i, c in enumerate(CONDITIONS)}
            entry["curves"] = {c: ps[i, :, classes, a].mean(axis=0).round(4).tolist() for i, c in enumerate(CONDITIONS)}
            entry["per_class"] = {coco_gt.cats[cat_ids[k]]["name"]: {c: float(ps[i, :, k, a].mean()) for i, c in enumerate(CONDITIONS)}
                                  for k in np.flatnonzero(classes)}
        out["ranges"][label] = entry
    return out


def analyze_report(report_path: str | Path, coco: str | Path | None = None, write: bool = True) -> dict[str, Any]:
    """``borrowcore analyze``: the breakdown of a report's detections, stored in its ``extra``."""
    report = load_report(report_path)
    coco_gt = report_ground_truth(report, coco)
    bins = [(row["min"], row["max"] if row["max"] < MAX_AREA ** 0.5 else math.inf) for row in report["size_bins"]]
    analysis = error_analysis(coco_gt, load_detections(report, report_path), bins)
    if write:
        report.setdefault("extra", {})["error_analysis"] = analysis
        save_report(report, report_path)
    return analysis


def format_analysis(analysis: dict[str, Any]) -> str:
    lines = [f"{'range':<10}" + "".join(f"{c:>7}" for c in CONDITIONS)]
    for label, entry in analysis["ranges"].items():
        if "AP" in entry:
            lines.append(f"{label:<10}" + "".join(f"{100 * entry['AP'][c]:7.1f}" for c in CONDITIONS))
    return "\n".join(lines)


# ---- head to head ----

def _bootstrap_evaluator(coco_gt: COCO, results: list[dict], ranges) -> COCOeval:
    evaluator = COCOeval(coco_gt, results_to_coco(coco_gt, results), "bbox")
    evaluator.params.areaRng = [[lo ** 2, min(hi ** 2, MAX_AREA)] for _, lo, hi in ranges]
    evaluator.params.areaRngLbl = [label for label, _, _ in ranges]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return evaluator


def _ap_on_sample(evaluator: COCOeval, image_ids: list[int], positions: np.ndarray) -> np.ndarray:
    """AP per area range on a resample of images (with repeats): COCOeval.accumulate over the per-image
    results of the resampled images (evaluate() would drop the repeats)."""
    per_image = evaluator._evalImgs_full  # [k][a][i]
    sample = copy.copy(evaluator)
    sample.params = copy.copy(evaluator.params)
    sample._paramsEval = copy.copy(evaluator._paramsEval)
    resampled_ids = [image_ids[i] for i in positions]
    sample.params.imgIds = sample._paramsEval.imgIds = resampled_ids
    # AP is read at the largest maxDets only: accumulating the others (1, 10) would triple the work for nothing
    # (the per-image results hold the detections up to the largest, whatever the list)
    sample.params.maxDets = sample._paramsEval.maxDets = evaluator.params.maxDets[-1:]
    sample.evalImgs = [per_image[k][a][i] for k in range(len(per_image)) for a in range(len(per_image[k])) for i in positions]
    with contextlib.redirect_stdout(io.StringIO()):
        sample.accumulate()
    precision = sample.eval["precision"][:, :, :, :, -1]  # (T, R, K, A)
    out = np.full(precision.shape[-1], -1.0)
    for a in range(precision.shape[-1]):
        valid = precision[..., a][precision[..., a] > -1]
        out[a] = valid.mean() if valid.size else -1.0
    return out


def _ap_on_samples(evaluators: list[COCOeval], image_ids: list[int], positions: np.ndarray) -> np.ndarray:
    """``_ap_on_sample`` of each evaluator on the same resample, one array (size ranges, then subsets)."""
    return np.concatenate([_ap_on_sample(evaluator, image_ids, positions) for evaluator in evaluators])


def _prepare_bootstrap(evaluator: COCOeval) -> list[int]:
    """Index the per-image results as [k][a][i] once (evaluate() stores them flat)."""
    params = evaluator.params
    num_k, num_a, num_i = len(params.catIds), len(params.areaRng), len(params.imgIds)
    flat = evaluator.evalImgs
    evaluator._evalImgs_full = [[flat[(k * num_a + a) * num_i:(k * num_a + a + 1) * num_i] for a in range(num_a)]
                                for k in range(num_k)]
    return list(params.imgIds)


def detected_instances(coco_gt: COCO, results: list[dict], score_threshold: float, iou: float = 0.5) -> set[int]:
    """Ground-truth annotation ids hit by a detection of the right class, score >= threshold, IoU >= iou."""
    by_image: dict[tuple[int, int], list[list[float]]] = {}
    for r in results:
        if r["score"] >= score_threshold:
            by_image.setdefault((r["image_id"], r["category_id"]), []).append(r["bbox"])
    hit = set()
    for ann in coco_gt.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        boxes = by_image.get((ann["image_id"], ann["category_id"]))
        if not boxes:
            continue
        ious = box_iou(box_convert(torch.tensor([ann["bbox"]], dtype=torch.float64), "xywh", "xyxy"),
                       box_convert(torch.tensor(boxes, dtype=torch.float64), "xywh", "xyxy"))
        if float(ious.max()) >= iou:
            hit.add(ann["id"])
    return hit


def compare_reports(path_a: str | Path, path_b: str | Path, coco: str | Path | None = None, bootstrap: int = 1000,
                    seed: int = 0, score_threshold: float = 0.5,
                    more_pairs: Sequence[tuple[str | Path, str | Path]] = ()) -> dict[str, Any]:
    """B against A on the same images: per size range AP_B - AP_A with a paired bootstrap 95% interval
    over images (seeded), the same for the small twins and orphans (``coco_eval.instance_subsets``; the same
    resamples), and the ground-truth instances B detects that A misses ("fixed") and the reverse.

    ``more_pairs``: the same two arms at other training seeds, (A, B) each. AP A and AP B are then the means
    over the seeds and every bootstrap draw resamples the images once for all of them, so the interval is of
    the seed-mean difference over images (the seeds themselves are not resampled: three seeds do not make a
    distribution). Fixed and broken are of the first pair."""
    def edges(report: dict) -> list[tuple[float, float]]:
        return [(row["min"], row["max"]) for row in report["size_bins"]]

    pairs = [(path_a, path_b), *more_pairs]
    reports = [(load_report(a), load_report(b)) for a, b in pairs]
    report_a = reports[0][0]
    for (pa, pb), (ra, rb) in zip(pairs, reports):
        for path, report in ((pa, ra), (pb, rb)):
            if report["dataset"]["annotations_sha256"] != report_a["dataset"]["annotations_sha256"]:
                raise ReportError(f"{path_a} and {path} were evaluated on different ground truth "
                                  f"({report_a['dataset']['annotations']} vs {report['dataset']['annotations']})")
            if edges(report) != edges(report_a):
                raise ReportError(f"{path_a} and {path} have different size bins: "
                                  "evaluate both with the same --size-bins")
    coco_gt = report_ground_truth(report_a, coco)
    bins = [(row["min"], row["max"] if row["max"] < MAX_AREA ** 0.5 else math.inf) for row in report_a["size_bins"]]
    ranges = _ranges(bins)
    subsets = instance_subsets(coco_gt)  # one more evaluator per subset, resampled with the same images

    def evaluators(results: list[dict]) -> list[COCOeval]:
        full = _bootstrap_evaluator(coco_gt, results, ranges)
        out = [full] + [subset_evaluator(coco_gt, full.cocoDt, keep) for keep in subsets.values()]
        for evaluator in out:
            _prepare_bootstrap(evaluator)
        return out

    detections = [(load_detections(ra, pa), load_detections(rb, pb)) for (pa, pb), (ra, rb) in zip(pairs, reports)]
    results_a, results_b = detections[0]
    arms = [(evaluators(da), evaluators(db)) for da, db in detections]
    image_ids = list(arms[0][0][0].params.imgIds)

    def mean_ap(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # a range without ground truth in this resample is -1 for every seed alike (the same images): the mean too
        ap_a = np.mean([_ap_on_samples(evals_a, image_ids, positions) for evals_a, _ in arms], axis=0)
        ap_b = np.mean([_ap_on_samples(evals_b, image_ids, positions) for _, evals_b in arms], axis=0)
        return ap_a, ap_b

    ap_a, ap_b = mean_ap(np.arange(len(image_ids)))
    rng = np.random.default_rng(seed)
    draws_a, draws_b = np.empty((bootstrap, len(ap_a))), np.empty((bootstrap, len(ap_b)))  # AP per draw and range
    for i in range(bootstrap):
        positions = rng.integers(0, len(image_ids), len(image_ids))  # the same images for A and B: paired
        draws_a[i], draws_b[i] = mean_ap(positions)
    out_ranges = {}
    for a, label in enumerate([label for label, _, _ in ranges] + list(subsets)):
        if ap_a[a] < 0 or ap_b[a] < 0:
            out_ranges[label] = {"AP_a": -1.0, "AP_b": -1.0, "diff": 0.0, "ci": [0.0, 0.0], "dropped": 0}
            continue
        # a draw with no ground truth in this range has no AP (-1), not a difference of 0: counted as 0 it
        # would narrow the interval of sparse ranges, so it is dropped, and the number dropped reported
        valid = (draws_a[:, a] >= 0) & (draws_b[:, a] >= 0)
        diffs = draws_b[valid, a] - draws_a[valid, a]
        low, high = (np.percentile(diffs, [2.5, 97.5]) if diffs.size else (0.0, 0.0))
        out_ranges[label] = {"AP_a": float(ap_a[a]), "AP_b": float(ap_b[a]), "diff": float(ap_b[a] - ap_a[a]),
                             "ci": [float(low), float(high)], "dropped": int(bootstrap - valid.sum())}
    out_subsets = {name: {**out_ranges.pop(name), "instances": len(keep)} for name, keep in subsets.items()}
    hit_a = detected_instances(coco_gt, results_a, score_threshold)
    hit_b = detected_instances(coco_gt, results_b, score_threshold)

    def instances(ids: set[int]) -> list[dict]:
        rows = []
        for ann_id in sorted(ids):
            ann = coco_gt.anns[ann_id]
            image = coco_gt.imgs[ann["image_id"]]
            rows.append({"annotation_id": ann_id, "image_id": ann["image_id"], "file_name": image["file_name"],
                         "category": coco_gt.cats[ann["category_id"]]["name"], "bbox": ann["bbox"],
                         "size": float(math.sqrt(ann["area"]))})
        return rows

    return {"a": str(path_a), "b": str(path_b), "pairs": [[str(a), str(b)] for a, b in pairs], "bootstrap": bootstrap,
            "seed": seed, "score_threshold": score_threshold, "ranges": out_ranges, "subsets": out_subsets,
            "fixed": instances(hit_b - hit_a), "broken": instances(hit_a - hit_b)}


def format_comparison(comparison: dict[str, Any]) -> str:
    pairs = comparison.get("pairs", [[comparison["a"], comparison["b"]]])
    lines = [f"A = {a}" for a, _ in pairs] + [f"B = {b}" for _, b in pairs]
    seeds = f", the mean of {len(pairs)} seeds" if len(pairs) > 1 else ""
    lines.append(f"{'range':<10}{'AP A':>8}{'AP B':>8}{'B - A':>8}   "
                 f"95% CI ({comparison['bootstrap']} paired bootstrap draws{seeds})")
    for label, row in [*comparison["ranges"].items(), *comparison.get("subsets", {}).items()]:  # small twins, orphans
        if row["AP_a"] < 0:
            lines.append(f"{label:<10}{'n/a':>8}{'n/a':>8}")
            continue
        dropped = row.get("dropped", 0)
        lines.append(f"{label:<10}{100 * row['AP_a']:8.1f}{100 * row['AP_b']:8.1f}{100 * row['diff']:+8.1f}   "
                     f"[{100 * row['ci'][0]:+.1f}, {100 * row['ci'][1]:+.1f}]"
                     + (f"  ({dropped} draws without ground truth here dropped)" if dropped else ""))
    lines.append(f"fixed by B (B detects, A misses{' at the first seed' if seeds else ''}): {len(comparison['fixed'])}; "
                 f"broken by B (A detects, B misses): {len(comparison['broken'])}")
    return "\n".join(lines)
