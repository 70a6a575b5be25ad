"""``borrowcore eval``: a detector's batched inference on a COCO set (or another detector's results file),
scored by ``coco_eval``, written as the report (``report.py``) beside its detections.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from borrowcore.data.dataset import CocoDetection, collate_detection
from borrowcore.data.tiling import TiledDataset, detect_tiled, recipe_tile_size
from borrowcore.evaluation.coco_eval import (DEFAULT_SIZE_BINS, best_f1_threshold, coco_metrics,
                                             small_instance_accuracy, subset_metrics)
from borrowcore.evaluation.report import SCHEMA, SCHEMA_VERSION, read_json, save_report, sha256_file
from borrowcore.utils.atomic import write_json_atomic
from borrowcore.utils.distributed import DistributedContext, cleanup, init_distributed


@torch.inference_mode()
def predict(detector: torch.nn.Module, dataset: CocoDetection, device: torch.device | str = "cpu",
            batch_size: int = 8, workers: int = 0, context: DistributedContext | None = None,
            show_progress: bool = True, tile: int | None = None, overlap: float = 0.2) -> tuple[list[dict], float]:
    """COCO results (image_id, category_id, bbox xywh, score) for this rank's shard, and the seconds taken.

    ``dataset`` must have no transforms: the detector resizes each image itself and returns boxes in
    the image's own pixels. With ``tile``, each image is cut into overlapping tile x tile windows at
    native resolution (borrowcore.data.tiling) instead of being resized whole.
    """
    context = context or DistributedContext()
    shard = Subset(dataset, range(context.rank, len(dataset), context.world_size))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=collate_detection)
    detector.eval().to(device)
    results: list[dict] = []
    seconds = 0.0
    whole_image = getattr(detector, "whole_image", False)
    for images, targets in tqdm(loader, desc="eval", disable=not (show_progress and context.is_main), dynamic_ncols=True):
        images = [img.to(device) for img in images]
        start = time.perf_counter()
        tiles = [recipe_tile_size(detector, *img.shape[-2:], tile) for img in images]
        if any(tiles) or whole_image:
            # tiles per image; whole photos one at a time (a batch would pad all to the largest)
            detections = [detect_tiled(detector, img, t, overlap, batch_size,
                                       max_detections=detector.postprocess.detections_per_image)
                          if t else detector([img])[0] for img, t in zip(images, tiles)]
        else:
            detections = detector(images)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        for target, detection in zip(targets, detections):
            boxes = detection["boxes"].cpu()
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            for box, score, label in zip(xywh, detection["scores"].cpu().tolist(), detection["labels"].cpu().tolist()):
                results.append({"image_id": int(target["image_id"]), "category_id": dataset.label_to_cat_id[int(label)],
                                "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return results, seconds


def gather_results(results: list[dict], context: DistributedContext) -> list[dict]:
    """Every rank's results on every rank (rank 0 evaluates)."""
    if not context.distributed:
        return results
    gathered: list[list[dict] | None] = [None] * context.world_size
    torch.distributed.all_gather_object(gathered, results)
    return [r for part in gathered for r in part]


def format_metrics(report: dict) -> str:
    """A plain-text table of a report's metrics (percent)."""
    m = report["metrics"]
    def pct(v: float) -> str:
        return "  n/a" if v < 0 else f"{100 * v:5.1f}"
    lines = ["  ".join(f"{k:>5}" for k in m), "  ".join(pct(v) for v in m.values()), "",
             f"{'size bin':<10} {'GT':>6} {'AP':>6} {'AP50':>6} {'AR100':>6}"]
    for row in report["size_bins"]:
        lines.append(f"{row['label']:<10} {row['num_gt']:>6} {pct(row['AP']):>6} {pct(row['AP50']):>6} {pct(row['AR100']):>6}")
    if report.get("subsets"):  # reports written before issue 15 have none
        lines += ["", f"{'small':<10} {'GT':>6} {'AP':>6} {'AP50':>6}"]
        for name, row in report["subsets"].items():
            lines.append(f"{name:<10} {row['instances']:>6} {pct(row['AP']):>6} {pct(row['AP50']):>6}")
    return "\n".join(lines)


def evaluate_detector(detector: torch.nn.Module, annotations: str | Path, images: str | Path, out: str | Path | None = None,
                      *, checkpoint: str | Path = "", split: str | None = None, dataset_name: str | None = None,
                      size_bins: Sequence[tuple[float, float]] = DEFAULT_SIZE_BINS, batch_size: int = 8,
                      workers: int = 0, device: str | torch.device = "cpu", context: DistributedContext | None = None,
                      show_progress: bool = True, tile: int | None = None, overlap: float = 0.2,
                      borrow_precision: bool = False, skip_bad: bool = False) -> dict | None:
    """Evaluate ``detector`` on a COCO file; returns the report (on rank 0; None elsewhere) and writes it
    with its detections (``<out stem>.detections.json.gz``) when ``out`` is given.

    ``borrow_precision`` (a borrowing ablation) adds ``extra.borrow_precision``: the share of each small
    instance's matching mass on larger same-class instances, against chance, on the same inputs the
    detector saw (whole images, or with ``tile`` every window).

    An image that cannot be decoded stops the evaluation with a BadImageError naming it; with ``skip_bad``
    every image is decoded once first and the unreadable ones (and bad annotations) are left out of the
    evaluation, their boxes too, and listed in the report's ``dataset.unreadable_images``."""
    context = context or DistributedContext()
    annotations, images = Path(annotations), Path(images)
    dataset = CocoDetection(images, annotations, skip_bad=skip_bad, verify_images=skip_bad)
    results, seconds = predict(detector, dataset, device, batch_size, workers, context, show_progress, tile, overlap)
    results = gather_results(results, context)
    if context.distributed:
        seconds = max(s for s in gather_results([seconds], context))  # wall time of the slowest shard
    if not context.is_main:
        return None
    report = build_report(dataset, results, model_entry(detector, checkpoint), timing_entry(len(dataset), seconds, device),
                          inference_description(detector, tile, overlap), size_bins, split, dataset_name)
    if borrow_precision:
        from borrowcore.evaluation.explain import borrow_precision as measure

        inputs = TiledDataset(dataset, tile, overlap) if tile else dataset
        report["extra"]["borrow_precision"] = {**measure(detector, inputs, device),
                                               "inputs": f"tiles {tile} px" if tile else "whole images"}
    if out is not None:
        write_report(report, results, out)
    return report


def model_entry(detector: torch.nn.Module, checkpoint: str | Path = "") -> dict:
    """A report's ``model``: the detector's config, classes, checkpoint file and its sha256, neck and matching."""
    config = getattr(detector, "config", None)
    return {"config": dataclasses.asdict(config) if config is not None else {},
            "class_names": list(detector.class_names), "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else "",
            "ablation": config.neck if config is not None else "",
            "matching": config.describe_matching() if config is not None else "",
            "precision": getattr(detector, "precision", "fp32"),
            "batch_norm_folded": getattr(detector, "batch_norm_folded", False)}


def timing_entry(images: int, seconds: float, device: str | torch.device) -> dict:
    """A report's ``timing``: images, inference seconds, images/s, and the device (a GPU by its name)."""
    return {"images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 2) if seconds > 0 else 0.0,
            "device": str(device) if torch.device(device).type != "cuda" else torch.cuda.get_device_name(device)}


def build_report(dataset: CocoDetection, results: list[dict], model: dict, timing: dict, inference: str,
                 size_bins: Sequence[tuple[float, float]] = DEFAULT_SIZE_BINS, split: str | None = None,
                 dataset_name: str | None = None) -> dict:
    """The evaluation report of ``results`` (COCO detections) on ``dataset``'s cleaned ground truth."""
    annotations, images = dataset.ann_file, dataset.image_dir
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "dataset": {"name": dataset_name or annotations.parent.name, "split": split or annotations.stem,
                    "annotations": str(annotations), "annotations_sha256": sha256_file(annotations),
                    "images": str(images), "num_images": len(dataset), "skip_bad": dataset.skip_bad,
                    "unreadable_images": [{"id": i, "reason": reason}
                                          for i, reason in sorted(dataset.unreadable.items())],
                    "skipped": dict(dataset.skipped),
                    "num_boxes": sum(1 for a in dataset.coco.dataset["annotations"] if not a.get("iscrowd", 0))},
        "detections": "",
        **coco_metrics(dataset.coco, results, size_bins),
        "subsets": subset_metrics(dataset.coco, results),  # small twins and orphans (instance_subsets)
        "timing": timing,
        "extra": {"inference": inference, "small_top1": small_instance_accuracy(dataset.coco, results),
                  "best_f1": best_f1_threshold(dataset.coco, results)},
    }


def write_report(report: dict, results: list[dict], out: str | Path) -> None:
    """``out`` and its detections beside it (``<out stem>.detections.json.gz``), both atomically."""
    out = Path(out)
    detections_path = out.with_name(out.stem + ".detections.json.gz")
    write_json_atomic(results, detections_path)
    report["detections"] = detections_path.name
    save_report(report, out)


def evaluate_results(results_file: str | Path, annotations: str | Path, images: str | Path,
                     out: str | Path | None = None, *, model_name: str = "", split: str | None = None,
                     dataset_name: str | None = None, size_bins: Sequence[tuple[float, float]] = DEFAULT_SIZE_BINS,
                     seconds: float = 0.0, device: str = "") -> dict:
    """Score another detector's COCO results file (a list of {image_id, category_id, bbox xywh, score} in
    the set's image ids and category ids) with the same evaluator and report: a peer in the same table."""
    dataset = CocoDetection(images, annotations)
    results = read_json(results_file)
    if not isinstance(results, list) or any(
            not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r) for r in results):
        raise ValueError(f"{results_file}: not a COCO results list (each entry needs image_id, category_id, bbox, score)")
    unknown = {r["image_id"] for r in results} - set(dataset.coco.imgs)
    if unknown:
        raise ValueError(f"{results_file}: image ids not in {annotations}: {sorted(unknown)[:5]}")
    model = {"config": {}, "class_names": list(dataset.class_names), "checkpoint": str(results_file),
             "checkpoint_sha256": sha256_file(results_file), "ablation": model_name or Path(results_file).stem}
    timing = {"images": len(dataset), "seconds": round(seconds, 3),
              "images_per_s": round(len(dataset) / seconds, 2) if seconds > 0 else 0.0, "device": device}
    report = build_report(dataset, results, model, timing, f"external detections ({model_name or 'unnamed'})",
                          size_bins, split, dataset_name)
    if out is not None:
        write_report(report, results, out)
    return report


def inference_description(detector: torch.nn.Module, tile: int | None, overlap: float) -> str:
    """How the detector saw the images, in words, for the report."""
    config = getattr(detector, "config", None)
    borrows = config is not None and config.neck in ("borrow", "full")
    budget = f"; {config.describe_matching()}" if borrows else ""
    if tile or (config is not None and config.inference == "tiles"):
        return f"tiles {tile or config.input_size} px, overlap {overlap}{budget}"
    if getattr(detector, "whole_image", False):
        beyond = (f"shrunk to {config.max_whole_side} px" if getattr(config, "oversize", "tiles") == "shrink"
                  else f"tiles of {config.input_size} px")
        zoom = (f"; zoomed out x{', x'.join(f'{z:g}' for z in config.zoom_out)} for boxes of "
                f"{config.zoom_out_min} px and more" if getattr(config, "zoom_out", None) else "")
        inside = (f"; boxes {config.drop_inside:.0%} inside a better one dropped"
                  if getattr(config, "drop_inside", 0) else "")
        return (f"whole image at native resolution, padded to multiples of 64 ({beyond} "
                f"above {config.max_whole_side} px){zoom}{inside}{budget}")
    return f"resize to {detector.input_size}{budget}"


def evaluate_checkpoint(checkpoint: str | Path, annotations: str | Path, images: str | Path,
                        out: str | Path | None = None, device: str | None = None, input_size: int | None = None,
                        key_budget: int | None = None, exact: bool | None = None, nms_iou: float | None = None,
                        recipe: dict | None = None, precision: str = "auto", fold_bn: bool = True,
                        **kwargs) -> dict | None:
    """``borrowcore eval`` as a function: load the checkpoint (at ``input_size``, with exact matching or
    ``key_budget`` keys per deeper map, at ``nms_iou`` and with the ``recipe`` overrides when given, at the CPU
    inference ``precision``, its BatchNorms folded unless ``fold_bn`` is False), evaluate, write the report."""
    from borrowcore.models.checkpoint import load_detector

    context = init_distributed(device)
    detector = load_detector(checkpoint, context.device, input_size, key_budget, exact, nms_iou, recipe, precision,
                             fold_bn)
    try:
        return evaluate_detector(detector, annotations, images, out, checkpoint=checkpoint, device=context.device,
                                 context=context, **kwargs)
    finally:
        cleanup(context)
