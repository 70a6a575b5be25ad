"""Reports, training logs and COCO files from bundled paths or uploads, cached, with clear errors.

Each loader returns ``(value, None)`` or ``(None, message)``: pages show the message and carry on with
the other files, so one bad file loses nothing else.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import streamlit as st

from borrowcore.data.coco import read_coco_boxes, read_coco_json
from borrowcore.data.images import BadImageError, decode_upload
from borrowcore.engine.traininglog import TrainingLog, parse_training_log, read_training_log
from borrowcore.evaluation.analysis import analyze_report, compare_reports
from borrowcore.evaluation.compare import parse_report, resolve_report_path
from borrowcore.evaluation.report import ReportError, load_report, report_detections_path, sha256_file
from borrowcore.evaluation.stats import dataset_anchor_recall
from borrowcore.evaluation.stats import dataset_stats
from borrowcore.models.anchors import design_aspect_ratios

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


def ground_truth(file_name: str, size: tuple[int, int], extra: Sequence[Path] = ()) -> dict | None:
    """The bundled ground truth of an image, found by file name and size in ``extra`` COCO files (e.g. a
    report's, first), then the bundled ones: {"source", "boxes" (n, 4) xyxy, "names"}; None when none annotates it."""
    from viewer.assets import coco_files, display_path

    files = sorted(coco_files(), key=lambda p: (p.name not in ("instances.json", "annotations.json"), str(p)))
    files = [Path(p) for p in extra if Path(p).is_file()] + files
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


# ---- error breakdown and head to head ----

def _content_digest(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    return digest.hexdigest()


@st.cache_data(max_entries=256, show_spinner=False)
def _report_digest(path: str, mtime: int, detections_mtime: int) -> str:
    """A report's identity for caches: the hash of its bytes and its detections' bytes."""
    report = load_report(path)
    detections = report_detections_path(report, path)
    return _content_digest(Path(path)) + (_content_digest(detections) if detections.is_file() else "")


def report_digest(path: Path) -> str:
    detections = report_detections_path(_report(str(path), _mtime(path)), path)
    return _report_digest(str(path), _mtime(path), _mtime(detections) if detections.is_file() else 0)


@st.cache_data(max_entries=64, show_spinner=False)
def _breakdown(path: str, digest: str, annotations: str) -> dict:
    return analyze_report(path, coco=annotations, write=False)


def error_breakdown(report: dict, path: Path | None) -> Result:
    """A report's C75..FN breakdown: stored in ``extra.error_analysis``, else computed from its detections
    and ground truth (cached by content hash); a plain message when it cannot be."""
    stored = report.get("extra", {}).get("error_analysis")
    if isinstance(stored, dict) and "ranges" in stored:
        return stored, None
    if path is None:
        return None, ("uploaded without its detections, and it stores no breakdown: run "
                      "`borrowcore analyze --report` on it (or use Head to head, which takes the detections too)")
    annotations = resolve_report_path(report["dataset"]["annotations"], path)
    if annotations is None:
        return None, (f"its ground truth `{report['dataset']['annotations']}` (dataset.annotations) is not on this "
                      "machine, so its errors cannot be analysed here; run `borrowcore analyze` where it is")
    detections = report_detections_path(report, path)
    if not detections.is_file():
        return None, f"its detections `{report['detections']}` are missing beside it"
    try:
        return _breakdown(str(path), report_digest(path), str(annotations)), None
    except (ReportError, ValueError, KeyError, OSError) as error:
        return None, str(error)


def store_report_upload(name: str, report: dict, detections: bytes) -> Path:
    """An uploaded report and its detections side by side under their content hash; returns the report's path."""
    from viewer.models import UPLOADS

    data = json.dumps({**report, "detections": Path(report["detections"]).name}).encode()
    folder = UPLOADS / "reports" / hashlib.sha256(data + detections).hexdigest()[:32]
    path = folder / (Path(name).name or "report.json")
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(report["detections"]).name).write_bytes(detections)
        path.write_bytes(data)
    return path


def store_evaluation(report: dict, detections: bytes, annotations: bytes | None = None) -> Path:
    """A report evaluated in this session with its detections (gzip json) side by side under their content
    hash, and an uploaded set's ground truth too (its unpacked folder is gone), which the stored report then
    names; returns the report's path. Written once: the report last, atomically, so it is there only when all is."""
    from borrowcore.evaluation.report import save_report
    from viewer.models import UPLOADS

    digest = hashlib.sha256(json.dumps(report, sort_keys=True).encode() + detections + (annotations or b""))
    folder = UPLOADS / "evaluations" / digest.hexdigest()[:32]
    path = folder / "report.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(report["detections"]).name).write_bytes(detections)
        if annotations is not None:
            truth = folder / "ground_truth.json"
            truth.write_bytes(annotations)
            report = {**report, "dataset": {**report["dataset"], "annotations": str(truth)}}
        save_report(report, path)
    return path


@st.cache_data(max_entries=16, show_spinner=False)
def _comparison(path_a: str, digest_a: str, path_b: str, digest_b: str, annotations: str, bootstrap: int,
                seed: int, score_threshold: float) -> dict:
    return compare_reports(path_a, path_b, coco=annotations, bootstrap=bootstrap, seed=seed,
                           score_threshold=score_threshold)


def comparison(path_a: Path, path_b: Path, bootstrap: int, seed: int, score_threshold: float) -> Result:
    """``borrowcore.evaluation.analysis.compare_reports`` of two report files, cached by their content."""
    report_a, error = report_from_path(path_a)
    if error:
        return None, error
    annotations = resolve_report_path(report_a["dataset"]["annotations"], path_a)
    if annotations is None:
        return None, (f"the ground truth `{report_a['dataset']['annotations']}` (dataset.annotations of A) is not "
                      "on this machine: the comparison needs it")
    try:
        return _comparison(str(path_a), report_digest(path_a), str(path_b), report_digest(path_b), str(annotations),
                           int(bootstrap), int(seed), float(score_threshold)), None
    except (ReportError, ValueError, KeyError, OSError) as error:
        return None, str(error)


@st.cache_data(max_entries=256, show_spinner=False)
def _checkpoint_sha256(path: str, mtime: int) -> str:
    return sha256_file(path)


def checkpoint_sha256(path: Path) -> str:
    return _checkpoint_sha256(str(path), _mtime(path))


@st.cache_data(max_entries=512, show_spinner=False)
def _instance_crop(path: str, mtime: int, bbox: tuple[float, ...], colour: str) -> bytes:
    from viewer.figures import instance_crop

    image = decode_upload(Path(path).read_bytes(), Path(path).name)  # (3, H, W) uint8
    buffer = io.BytesIO()
    instance_crop(image.permute(1, 2, 0).numpy(), bbox, colour).save(buffer, "PNG")
    return buffer.getvalue()


def instance_crop_png(path: Path, bbox: list[float], colour: str) -> Result:
    """PNG of a ground-truth instance with its context and its box drawn, from the image file ``path``."""
    if not path.is_file():
        return None, f"{path.name}: image not found in {path.parent}"
    try:
        return _instance_crop(str(path), _mtime(path), tuple(float(v) for v in bbox), colour), None
    except BadImageError as error:
        return None, str(error)
