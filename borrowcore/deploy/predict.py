"""``borrowcore predict``: detections on image files, folders and lists of paths, from a checkpoint or ONNX.

Writes ``OUT/detections.json``, a COCO file whose ``annotations`` are COCO results (image_id,
category_id, bbox xywh, score, plus id and area), with the ``images`` list mapping file names to ids, the
``categories``, the ``skipped`` files (path and reason) and a ``summary``: ``pycocotools.COCO`` loads it
as it is, and ``coco_gt.loadRes(data["annotations"])`` takes its detections once the ids are mapped by
file name. With ``save_images``, ``OUT/images/`` holds each image with its boxes drawn.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from borrowcore.data.dataset import BadImageError, read_image_rgb
from borrowcore.data.tiling import detect_tiled, recipe_tile_size
from borrowcore.utils.atomic import write_json_atomic

# the formats read_image_rgb (Pillow, header checked first) decodes; a file that fails is reported and skipped
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
LIST_SUFFIXES = (".txt",)

# distinct box colours, cycled by label
PALETTE = ("#ff3838", "#2c99a8", "#ff9d97", "#00c2ff", "#ff701f", "#344593", "#ffb21d", "#6473ff",
           "#cfd231", "#0018ec", "#48f90a", "#8438ff", "#92cc17", "#520085", "#3ddb86", "#cb38ff")


@dataclass(frozen=True)
class SourceImage:
    """An image file to predict on: where it is, and the name it gets in detections.json."""

    path: Path
    file_name: str  # relative to the folder it was found in, or the file's own name


def collect_sources(sources: Sequence[str | Path]) -> tuple[list[SourceImage], list[dict[str, str]]]:
    """Image files from files, folders (recursive, by suffix) and .txt lists of paths (relative to the list).

    Returns the images in order, each once, and the sources that could not be used ({"path", "reason"}).
    Whether a file decodes is found out later, when it is read.
    """
    images: list[SourceImage] = []
    problems: list[dict[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path, file_name: str) -> None:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            images.append(SourceImage(path, file_name))

    def visit(source: Path, from_list: bool) -> None:
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                add(path, path.relative_to(source).as_posix())
        elif not source.exists():
            problems.append({"path": str(source), "reason": "no such file or folder"})
        elif source.suffix.lower() in LIST_SUFFIXES and not from_list:
            try:
                lines = source.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as error:
                problems.append({"path": str(source), "reason": f"cannot read the list of paths ({error})"})
                return
            for line in (line.strip() for line in lines):
                if line and not line.startswith("#"):
                    entry = Path(line).expanduser()
                    visit(entry if entry.is_absolute() else source.parent / entry, from_list=True)
        else:
            add(source, source.name)  # any file named directly: a non-image is reported when read

    for source in sources:
        visit(Path(source).expanduser(), from_list=False)
    return images, problems


def class_filter(classes: Sequence[str] | None, class_names: Sequence[str]) -> set[int] | None:
    """Labels (1..K) to keep from class names or label numbers; None keeps all."""
    if not classes:
        return None
    labels = set()
    for item in classes:
        if item in class_names:
            labels.add(list(class_names).index(item) + 1)
        elif str(item).isdigit() and 1 <= int(item) <= len(class_names):
            labels.add(int(item))
        else:
            raise ValueError(f"--classes {item!r}: not a class name or a label in 1..{len(class_names)}; "
                             f"classes: {', '.join(class_names)}")
    return labels


class EagerDetector:
    """A ``Detector`` as a plain callable: inference_mode, on ``device``, AMP on CUDA (bf16 where supported).

    Images stay on the CPU until called (a large image's tiles are cut there).
    """

    def __init__(self, detector: torch.nn.Module, device: str | torch.device = "cpu", amp: bool = True) -> None:
        self.device = torch.device(device)
        self.detector = detector.to(self.device).eval()
        self.config = getattr(detector, "config", None)  # the inference recipe (borrowcore.data.tiling.recipe_tile_size)
        self.whole_image = getattr(detector, "whole_image", False)
        self.class_names = list(detector.class_names)
        self.nms_iou = float(detector.postprocess.nms_iou)
        self.amp = amp and self.device.type == "cuda"

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        autocast = nullcontext()
        if self.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            autocast = torch.autocast("cuda", dtype=dtype)
        with torch.inference_mode(), autocast:
            detections = self.detector([image.to(self.device, non_blocking=True) for image in images])
        return [{key: value.float().cpu() if key != "labels" else value.cpu() for key, value in d.items()}
                for d in detections]


def draw_detections(image: Tensor, detection: dict[str, Tensor], class_names: Sequence[str]) -> Tensor:
    """The image (3, H, W) uint8 with each box outlined and labelled "name score"."""
    from torchvision.utils import draw_bounding_boxes

    if len(detection["boxes"]) == 0:
        return image
    labels = detection["labels"].tolist()
    captions = [f"{class_names[label - 1]} {score:.2f}" for label, score in zip(labels, detection["scores"].tolist())]
    width = max(1, round(max(image.shape[-2:]) / 400))  # visible on large images too
    return draw_bounding_boxes(image, detection["boxes"], captions, colors=[PALETTE[(i - 1) % len(PALETTE)] for i in labels],
                               width=width)


def save_drawn(image: Tensor, path: Path) -> None:
    """Write a (3, H, W) uint8 RGB image as JPEG or PNG, by the name's suffix (OpenCV: torchvision's
    encoders are deprecated from 0.29)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[..., ::-1])  # (H, W, 3) BGR
    if not cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"{path}: could not write the drawn image")


def predict(detector: Callable[[list[Tensor]], list[dict[str, Tensor]]], class_names: Sequence[str],
            sources: Sequence[str | Path], out: str | Path, *, conf: float = 0.25, batch_size: int = 8,
            tile_size: int | None = None, overlap: float = 0.2, merge_edges: bool = False, nms_iou: float = 0.45,
            save_images: bool = False, classes: Sequence[str] | None = None, progress: bool = True,
            model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Detections on every image in ``sources``, written to ``out``/detections.json; returns the summary.

    Args:
        detector: images (3, H, W) -> detections in each image's pixels (``EagerDetector``, ``OnnxDetector``).
        conf: keep detections scoring above it.
        batch_size: images per call (whole-image mode) or tiles per call (tiled mode).
        tile_size: sliced inference with T x T tiles at native resolution (``borrowcore.data.tiling``); None
            resizes each whole image to the detector's input size.
        overlap, merge_edges, nms_iou: the tiles' overlap fraction, edge merging and cross-tile NMS IoU.
        classes: class names or labels to keep (default all).
        model_info: recorded in the file's "info" (checkpoint, ablation, backend).

    A file that is missing, unreadable or not an image is reported (path and reason) and skipped.
    """
    out = Path(out)
    images, skipped = collect_sources(sources)
    if not images:
        reasons = "; ".join(f"{p['path']}: {p['reason']}" for p in skipped) or "no image files"
        raise FileNotFoundError(f"no images found in {', '.join(map(str, sources))} ({reasons})")
    keep_labels = class_filter(classes, class_names)
    image_records: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    saved_names: set[str] = set()
    pending: list[tuple[SourceImage, Tensor]] = []

    def record(source: SourceImage, image: Tensor, detection: dict[str, Tensor]) -> None:
        keep = detection["scores"] > conf
        if keep_labels is not None:
            keep &= torch.tensor([int(label) in keep_labels for label in detection["labels"]], dtype=torch.bool)
        detection = {key: value[keep] for key, value in detection.items()}
        image_id = len(image_records) + 1
        height, width = int(image.shape[-2]), int(image.shape[-1])
        image_records.append({"id": image_id, "file_name": source.file_name, "path": str(source.path),
                              "width": width, "height": height})
        for box, score, label in zip(detection["boxes"].tolist(), detection["scores"].tolist(),
                                     detection["labels"].tolist()):
            x, y, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [round(v, 2) for v in (x, y, w, h)], "score": round(score, 5),
                                "area": round(w * h, 2)})
        if save_images:
            name = Path(source.file_name)
            name = name.with_suffix(name.suffix if name.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png")
            if name.as_posix() in saved_names:  # same relative name from two sources
                name = name.with_name(f"{name.stem}_{image_id}{name.suffix}")
            saved_names.add(name.as_posix())
            save_drawn(draw_detections(image, detection, class_names), out / "images" / name)

    def flush() -> None:
        if pending:
            for (source, image), detection in zip(pending, detector([image for _, image in pending])):
                record(source, image, detection)
            pending.clear()

    start = time.perf_counter()
    for source in tqdm(images, desc="predict", unit="img", disable=not progress, dynamic_ncols=True):
        try:
            image = read_image_rgb(source.path)  # EXIF orientation, gray / RGBA / 16-bit -> RGB uint8
        except BadImageError as error:
            skipped.append({"path": str(source.path), "reason": str(error).removeprefix(f"{source.path}: ")})
            continue
        tile = recipe_tile_size(detector, *image.shape[-2:], tile_size)
        if tile:
            record(source, image, detect_tiled(detector, image, tile, overlap, batch_size, nms_iou,
                                               score_threshold=conf, merge_edges=merge_edges))
        else:
            pending.append((source, image))
            # whole photos one at a time: a batch would pad every photo to the largest
            if len(pending) == batch_size or getattr(detector, "whole_image", False):
                flush()
    flush()
    seconds = time.perf_counter() - start
    summary = {"images": len(image_records), "skipped": len(skipped), "detections": len(annotations),
               "seconds": round(seconds, 3), "images_per_s": round(len(image_records) / seconds, 3) if seconds > 0 else 0.0,
               "detections_file": str(out / "detections.json")}
    write_json_atomic({
        "info": {"description": "borrowcore predict", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "model": model_info or {}, "conf": conf, "tile_size": tile_size,
                 "overlap": overlap if tile_size else None, "merge_edges": merge_edges if tile_size else None,
                 "classes": sorted(keep_labels) if keep_labels is not None else None},
        "images": image_records,
        "categories": [{"id": i, "name": name} for i, name in enumerate(class_names, start=1)],
        "annotations": annotations,
        "skipped": skipped,
        "summary": summary,
    }, out / "detections.json")
    return summary


def predict_files(sources: Sequence[str | Path], out: str | Path, *, checkpoint: str | Path | None = None,
                  onnx: str | Path | None = None, device: str | None = None, amp: bool = True,
                  key_budget: int | None = None, exact: bool | None = None, recipe: dict[str, Any] | None = None,
                  precision: str = "auto", fold_bn: bool = True, **kwargs: Any) -> dict[str, Any]:
    """``borrowcore predict`` as a function: a checkpoint (PyTorch; exact matching or ``key_budget`` keys per
    deeper map, and the ``recipe`` overrides, in place of its own when given; CPU inference at ``precision``;
    BatchNorms folded unless ``fold_bn`` is False)
    or an exported file (onnxruntime)."""
    if (checkpoint is None) == (onnx is None):
        raise ValueError("give either a checkpoint or an ONNX file")
    if onnx is not None and (key_budget is not None or exact is not None or recipe):
        raise ValueError("--key-budget, --exact and --recipe apply to checkpoints: an ONNX file keeps the recipe it "
                         "was exported with")
    # onnxruntime's CUDA provider comes with onnxruntime-gpu only: ONNX files run on the CPU unless asked
    device = device or ("cuda" if torch.cuda.is_available() and onnx is None else "cpu")
    if onnx is not None:
        from borrowcore.deploy.runtime import OnnxDetector

        detector = OnnxDetector(onnx, device)
        info = {"onnx": str(onnx), "backend": "onnxruntime", "ablation": detector.metadata["ablation"],
                "input_size": detector.input_size, "with_nms": detector.with_nms}
        nms_iou = detector.nms_iou
    else:
        from borrowcore.models.checkpoint import load_detector

        model = load_detector(checkpoint, device, key_budget=key_budget, exact=exact, recipe=recipe,
                              precision=precision, fold_bn=fold_bn)
        detector = EagerDetector(model, device, amp)
        info = {"checkpoint": str(checkpoint), "backend": "pytorch", "ablation": model.config.neck,
                "matching": model.config.describe_matching(),
                "input_size": model.input_size, "device": str(device), "amp": detector.amp,
                "precision": model.precision, "batch_norm_folded": model.batch_norm_folded}
        nms_iou = detector.nms_iou
    return predict(detector, detector.class_names, sources, out, nms_iou=nms_iou, model_info=info, **kwargs)
