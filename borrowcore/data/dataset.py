"""COCO-format detection data: a validated dataset with deterministic augmentation, and its collate."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision import tv_tensors

# Every image is read by the one decoder, which checks the header before decoding (borrowcore.data.images).
from borrowcore.data.images import BadImageError, read_image_rgb  # noqa: F401 - re-exported

# Problems an annotation (or an image, with verify_images) can have; the keys of `CocoDetection.skipped`.
PROBLEM_KINDS = (
    "malformed_bbox",
    "non_positive_size",
    "outside_image",
    "unknown_category",
    "unknown_image",
    "unreadable_image",
)

# Boxes may overshoot the image by this many pixels (rounding in annotation tools); they are clipped.
OUTSIDE_TOLERANCE_PX = 1.0

_MASK64 = (1 << 64) - 1

# The training-target label of a crowd / ignore region (CocoDetection(ignore_regions=True)): the loss
# trains no anchor on it, as positive or as negative.
IGNORE_LABEL = -1


class BadAnnotationError(ValueError):
    """An annotation file, or one annotation in it, that cannot be trained on."""


class BadDataWarning(UserWarning):
    """A bad annotation or image skipped because the dataset was built with skip_bad=True."""


def _splitmix64(x: int) -> int:
    """One step of SplitMix64: a cheap, well-mixed 64-bit integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The torch seed of one sample's augmentation: a fixed mix of (seed, epoch, index).

    Python's hash() is salted per process, so it would differ between workers and runs.
    """
    state = 0
    for value in (seed, epoch, index):
        state = _splitmix64(state ^ (value & _MASK64))
    return state >> 1  # 63 bits: always a valid torch.manual_seed argument


def _load_coco(ann_file: Path) -> COCO:
    """Read a COCO detection json with pycocotools, raising BadAnnotationError naming the file."""
    if not ann_file.is_file():
        raise BadAnnotationError(f"{ann_file}: annotation file not found")
    try:
        dataset = json.loads(ann_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadAnnotationError(f"{ann_file}: not a readable JSON file ({error})") from error
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(dataset, dict) or not isinstance(dataset.get(key), list)]
    if missing:
        raise BadAnnotationError(
            f"{ann_file}: not a COCO detection file (missing or not a list: {', '.join(missing)})"
        )
    for image in dataset["images"]:
        if not (isinstance(image, dict) and "id" in image and "file_name" in image
                and isinstance(image.get("width"), int) and isinstance(image.get("height"), int)):
            raise BadAnnotationError(
                f"{ann_file}: image entry {image!r} needs an id, a file_name and integer width and height"
            )
    for ann in dataset["annotations"]:
        if not (isinstance(ann, dict) and "id" in ann):
            raise BadAnnotationError(f"{ann_file}: annotation entry {ann!r} has no id")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco.createIndex()
        except (KeyError, TypeError) as error:
            raise BadAnnotationError(f"{ann_file}: not a COCO detection file ({error!r})") from error
    return coco


def drop_images(coco: COCO, image_ids: Collection[int]) -> None:
    """Remove images and their annotations from a COCO object, in place (re-indexed)."""
    image_ids = set(image_ids)
    if not image_ids:
        return
    coco.dataset["images"] = [image for image in coco.dataset["images"] if image["id"] not in image_ids]
    coco.dataset["annotations"] = [a for a in coco.dataset["annotations"] if a["image_id"] not in image_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()


def load_ground_truth(ann_file: str | Path, skip_bad: bool = False, unreadable: Collection[int] = ()) -> COCO:
    """The ground truth an evaluation scores against: the COCO file as CocoDetection cleans it (boxes
    clipped within OUTSIDE_TOLERANCE_PX; with ``skip_bad``, bad annotations dropped), without the images
    in ``unreadable`` (ids an evaluation with skip_bad could not decode). No image is read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)  # already reported by the evaluation
        coco = CocoDetection(Path(ann_file).parent, ann_file, skip_bad=skip_bad).coco
    drop_images(coco, unreadable)
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """A COCO detection dataset whose annotations are validated when it is built.

    Category ids, sorted, map to contiguous labels 1..K (0 is background). Crowd boxes are kept in
    `self.coco` (COCOeval ignores detections on them) but left out of the training targets.
    Augmentation is a pure function of (seed, epoch, index): the same whatever the number of
    workers, and across a killed-and-resumed run.

    Args:
        image_dir: folder the images' `file_name`s are relative to.
        ann_file: the COCO json.
        transforms: a transforms.v2 callable taking and returning (image, target).
        skip_bad: warn about, skip and count bad annotations (and images) instead of raising.
        seed: the augmentation seed.
        repeats: visits of every image per epoch (mmdetection's ``RepeatDataset``): a few large images
            cropped to random tiles give ``repeats`` different windows each per epoch.
        verify_images: decode every image once at construction (skipped when unreadable if skip_bad).
        ignore_regions: put crowd boxes in the targets with label ``IGNORE_LABEL`` (-1), so augmentation
            moves them with the image and the loss trains no anchor on them (WIDER's ``invalid`` faces,
            VOC's ``difficult``); off, they are left out of the targets.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable[..., Any] | None = None,
        skip_bad: bool = False,
        seed: int = 0,
        verify_images: bool = False,
        repeats: int = 1,
        ignore_regions: bool = False,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.skip_bad = skip_bad
        self.seed = seed
        self.repeats = repeats
        self.ignore_regions = ignore_regions
        # Shared memory, so set_epoch reaches DataLoader workers that persist across epochs.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

        self.coco = _load_coco(self.ann_file)
        self.categories: list[dict] = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.class_names: list[str] = [c["name"] for c in self.categories]
        self.cat_id_to_label: dict[int, int] = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat_id: dict[int, int] = {v: k for k, v in self.cat_id_to_label.items()}

        self.skipped: dict[str, int] = {kind: 0 for kind in PROBLEM_KINDS} | {"total": 0}
        self.num_crowd = 0
        self._targets = self._validate_annotations()  # image id -> (boxes (n, 4) xyxy, labels (n,))

        self.ids: list[int] = sorted(self.coco.imgs)
        self.unreadable: dict[int, str] = {}  # image id -> why it was skipped (verify_images with skip_bad)
        if verify_images:
            self.ids = [image_id for image_id in self.ids if self._verify_image(image_id)]
            # evaluation reads self.coco: an image that was never seen must not count its boxes as misses
            drop_images(self.coco, self.unreadable)

    # Construction-time checks

    def _problem(self, kind: str, message: str) -> None:
        """Raise, or with skip_bad warn and count, one bad item."""
        if not self.skip_bad:
            error = BadImageError if kind == "unreadable_image" else BadAnnotationError
            raise error(message)
        warnings.warn(message, BadDataWarning, stacklevel=3)
        self.skipped[kind] += 1
        self.skipped["total"] += 1

    def _check_annotation(self, ann: dict) -> tuple[str, str, list[float] | None]:
        """(problem kind, problem, None) for a bad annotation, or ("", "", clipped xywh box)."""
        image = self.coco.imgs.get(ann.get("image_id"))
        if image is None:
            return "unknown_image", f"image_id {ann.get('image_id')!r} is not in images", None
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in bbox)):
            return "malformed_bbox", f"bbox {bbox!r} is not 4 finite numbers", None
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            return "non_positive_size", f"bbox {bbox!r} has width {w:g} and height {h:g} (must be > 0)", None
        width, height, tol = image["width"], image["height"], OUTSIDE_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return "outside_image", f"bbox {bbox!r} lies outside the {width}x{height} image", None
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if x2 <= x1 or y2 <= y1:
            return "outside_image", f"bbox {bbox!r} has no area inside the {width}x{height} image", None
        if ann.get("category_id") not in self.cat_id_to_label:
            return "unknown_category", f"category_id {ann.get('category_id')!r} is not in categories", None
        return "", "", [x1, y1, x2 - x1, y2 - y1]

    def _validate_annotations(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Check every annotation; return the training targets per image, bad ones removed."""
        boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in self.coco.imgs}
        labels: dict[int, list[int]] = {image_id: [] for image_id in self.coco.imgs}
        kept, changed = [], False
        for ann in self.coco.dataset["annotations"]:
            kind, problem, bbox = self._check_annotation(ann)
            if kind:
                file_name = self.coco.imgs.get(ann.get("image_id"), {}).get("file_name", "<no image>")
                self._problem(kind, f"{self.ann_file}: annotation {ann['id']} (image {file_name}): {problem}")
                changed = True
                continue
            if bbox != ann["bbox"]:
                ann, changed = {**ann, "bbox": bbox}, True  # clipped within the tolerance
            kept.append(ann)
            x, y, w, h = bbox
            if ann.get("iscrowd", 0):
                self.num_crowd += 1  # SSD matching ignores crowd regions (SPEC §5)
                if self.ignore_regions:
                    boxes[ann["image_id"]].append([x, y, x + w, y + h])
                    labels[ann["image_id"]].append(IGNORE_LABEL)
                continue
            boxes[ann["image_id"]].append([x, y, x + w, y + h])
            labels[ann["image_id"]].append(self.cat_id_to_label[ann["category_id"]])
        if changed:
            # Evaluation reads self.coco: it must hold the annotations that were trained on.
            self.coco.dataset["annotations"] = kept
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco.createIndex()
        return {
            image_id: (np.asarray(boxes[image_id], dtype=np.float32).reshape(-1, 4),
                       np.asarray(labels[image_id], dtype=np.int64))
            for image_id in boxes
        }

    def _verify_image(self, image_id: int) -> bool:
        """Decode one image; False (after a warning) if it fails and skip_bad is set."""
        try:
            self._read_image(image_id)
        except BadImageError as error:
            self._problem("unreadable_image", f"{self.ann_file}: image id {image_id}: {error}")
            self.unreadable[image_id] = str(error)
            return False
        return True

    # Reading

    def _read_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        return read_image_rgb(self.image_dir / info["file_name"], (info["height"], info["width"]))

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` (call before iterating a DataLoader)."""
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def __len__(self) -> int:
        return len(self.ids) * self.repeats

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]] | None:
        """(image, target) of one image; None when its file is unreadable and skip_bad is set.

        Before transforms: image a uint8 tv_tensors.Image (3, H, W); target `boxes` BoundingBoxes
        (n, 4) XYXY float32, `labels` int64 (n,) in 1..K, `image_id` the COCO id, `orig_size` (H, W).
        """
        image_id = self.ids[index % len(self.ids)]
        try:
            pixels = self._read_image(image_id)
        except BadImageError as error:
            if not self.skip_bad:
                raise
            warnings.warn(f"{self.ann_file}: image id {image_id}: {error}", BadDataWarning, stacklevel=2)
            return None
        height, width = pixels.shape[-2:]
        boxes, labels = self._targets[image_id]
        image = tv_tensors.Image(pixels)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes.copy()), format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=(height, width),
            ),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": image_id,
            "orig_size": (height, width),
        }
        if self.transforms is None:
            return image, target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(self.seed, self.epoch, index))
            image, target = self.transforms(image, target)
        return image, target


def collate_detection(
    batch: list[tuple[Any, dict[str, Any]] | None],
) -> tuple[torch.Tensor | list[torch.Tensor], list[dict[str, Any]]]:
    """Batch (image, target) pairs, dropping None (unreadable images under skip_bad).

    Images of one size are stacked to (B, 3, S, S) (dtype kept: float after the presets);
    otherwise they stay a list of (3, H_i, W_i). Targets stay a list of dicts.
    """
    samples = [sample for sample in batch if sample is not None]
    images = [image.as_subclass(torch.Tensor) for image, _ in samples]
    targets = [target for _, target in samples]
    if images and all(image.shape == images[0].shape for image in images):
        return torch.stack(images), targets  # (B, 3, S, S)
    return images, targets
