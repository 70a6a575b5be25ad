"""Reports, training logs and COCO files from bundled paths or uploads, cached, with clear errors.

Each loader returns ``(value, None)`` or ``(None, message)``: pages show the message and carry on with
the other files, so one bad file loses nothing else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from borrowcore.anchors import dataset_anchor_recall, design_aspect_ratios
from borrowcore.coco import read_coco_boxes, read_coco_json
from borrowcore.compare import parse_report
from borrowcore.report import ReportError, load_report
from borrowcore.stats import dataset_stats
from borrowcore.traininglog import TrainingLog, parse_training_log, read_training_log

Result = tuple[Any, str | None]


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@st.cache_data(max_entries=256, show_spinner=False)
def _report(path: str, mtime: int) -> dict:
    return load_report(path)


def report_from_path(path: Path) -> Result:
    try:
        return _report(str(path), _mtime(path)), None
    except (ReportError, OSError) as error:
        return None, str(error)


@st.cache_data(max_entries=64, show_spinner=False)
def _report_upload(name: str, data: bytes) -> dict:
    return parse_report(data, name)


def report_from_upload(name: str, data: bytes) -> Result:
    try:
        return _report_upload(name, data), None
    except ReportError as error:
        return None, str(error)


def log_from_path(path: Path, name: str) -> Result:
    """Logs of running trainings change: read each time (they are small)."""
    try:
        return read_training_log(path, name), None
    except ValueError as error:
        return None, str(error)


def log_from_upload(name: str, data: bytes) -> Result:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"{name}: not a text file (a training log is JSON lines)"
    try:
        return parse_training_log(text.splitlines(), name), None
    except ValueError as error:
        return None, str(error)


def _on_file(function: Callable[[Path], Any], name: str, data: bytes) -> Any:
    """Run a path-taking borrowcore function on uploaded bytes; errors name the upload, not the temp file."""
    with tempfile.TemporaryDirectory(prefix="borrowscope-") as folder:
        path = Path(folder) / (Path(name).name or "upload.json")
        path.write_bytes(data)
        try:
            return function(path)
        except ValueError as error:
            raise ValueError(str(error).replace(str(path), name)) from None


@st.cache_data(max_entries=32, show_spinner=False)
def _coco_analysis(name: str, data: bytes, input_size: int, anchor_scale: float, aspect_ratios: tuple[float, ...],
                   iou: float, percentile: float) -> dict:
    def analyse(path: Path) -> dict:
        stats = dataset_stats(path)
        boxes = read_coco_boxes(path)
        design = design_aspect_ratios(boxes, iou=iou, percentile=percentile) if len(boxes) else None
        recall = dataset_anchor_recall(path, input_size, anchor_scale, aspect_ratios)
        designed = None
        if design is not None and tuple(design["config_aspect_ratios"]) != tuple(aspect_ratios):
            designed = dataset_anchor_recall(path, input_size, anchor_scale, design["config_aspect_ratios"])
        return {"stats": stats, "boxes": boxes, "design": design, "recall": recall, "designed_recall": designed}

    return _on_file(analyse, name, data)


def coco_analysis(name: str, data: bytes, input_size: int, anchor_scale: float = 4.0,
                  aspect_ratios: tuple[float, ...] = (1.5, 3.0), iou: float = 0.5, percentile: float = 99.0) -> Result:
    """Statistics, Eq. (1) and anchor recall (with the configured and the Eq. (1) ratios) of a COCO file."""
    try:
        return _coco_analysis(name, data, input_size, anchor_scale, tuple(aspect_ratios), iou, percentile), None
    except ValueError as error:
        return None, str(error)


def training_logs(items: list[tuple[str, Path | bytes]]) -> tuple[list[TrainingLog], list[str]]:
    """Logs from (name, path or uploaded bytes) pairs, and the messages of those that failed."""
    logs, errors = [], []
    for name, source in items:
        log, error = log_from_path(source, name) if isinstance(source, Path) else log_from_upload(name, source)
        if error:
            errors.append(error)
        else:
            logs.append(log)
    return logs, errors


@st.cache_data(max_entries=16, show_spinner=False)
def _coco_index(path: str, mtime: int) -> dict[str, dict]:
    """file_name -> its image size and non-crowd boxes (xywh) with category names."""
    coco = read_coco_json(path)
    names = {c.get("id"): str(c.get("name", c.get("id"))) for c in coco["categories"] if isinstance(c, dict)}
    images = {image.get("id"): {"file_name": image.get("file_name"), "size": (image.get("height"), image.get("width")),
                                "boxes": [], "names": []} for image in coco["images"] if isinstance(image, dict)}
    for ann in coco["annotations"]:
        image = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
        bbox = ann.get("bbox") if image else None
        if image and not ann.get("iscrowd", 0) and isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0:
            image["boxes"].append(bbox)
            image["names"].append(names.get(ann.get("category_id"), str(ann.get("category_id"))))
    return {image["file_name"]: image for image in images.values() if isinstance(image["file_name"], str)}


def ground_truth(file_name: str, size: tuple[int, int]) -> dict | None:
    """The bundled ground truth of an image, found by file name and size in the bundled COCO files:
    {"source", "boxes" (n, 4) xyxy, "names"}; None when no bundled file annotates it."""
    from viewer.assets import coco_files, display_path

    files = sorted(coco_files(), key=lambda p: (p.name not in ("instances.json", "annotations.json"), str(p)))
    for path in files:
        try:
            entry = _coco_index(str(path), _mtime(path)).get(file_name)
        except ValueError:
            continue
        if entry and tuple(entry["size"]) == tuple(size) and entry["boxes"]:
            boxes = np.array(entry["boxes"], dtype=np.float32)
            boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
            return {"source": display_path(path), "boxes": boxes, "names": entry["names"]}
    return None
