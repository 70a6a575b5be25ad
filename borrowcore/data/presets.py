"""Named augmentation presets (torchvision references/detection `presets.py` style).

Each takes and returns (image, target) with a uint8 tv_tensors.Image and a target holding `boxes`
(BoundingBoxes) and `labels`; it returns a float32 image in [0, 1] of size (3, size, size).
Normalisation with the ImageNet mean/std is the model's job (SPEC §1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)

PRESET_NAMES = ("ssd", "overhead", "tiles", "tiles-jitter", "faces", "flip", "eval")


def ssd_train_preset(size: int, mean: Sequence[float] = IMAGENET_MEAN) -> v2.Compose:
    """references/detection's "ssd" policy (SPEC §6), then a resize to (size, size)."""
    # Zoom-out canvas filled with the mean colour, so it normalises to ~0; boxes need no fill.
    mean_uint8 = tuple(int(round(255 * m)) for m in mean)
    fill = {tv_tensors.Image: mean_uint8, "others": 0}
    return v2.Compose([
        v2.RandomPhotometricDistort(),  # references' default: each distortion with p = 0.5
        v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0)),
        v2.RandomIoUCrop(),  # zeroes the boxes whose centre leaves the crop: Sanitize drops them
        v2.RandomHorizontalFlip(),
        v2.Resize((size, size)),
        v2.SanitizeBoundingBoxes(),  # drops boxes under 1 px and their labels
        v2.ToDtype(torch.float32, scale=True),  # a plain dtype converts the image only
    ])


def overhead_train_preset(size: int) -> v2.Compose:
    """Aerial imagery: no up/down in the scene, so flips both ways; no IoU crop (it would lose the
    small objects' scale). Tiling at native resolution is the caller's job (SPEC §1)."""
    return v2.Compose([
        v2.RandomPhotometricDistort(),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.Resize((size, size)),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
    ])


def crop_boxes(boxes: torch.Tensor, left: int, top: int, size: int, min_visibility: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (n, 4) xyxy in the image -> (kept boxes in the window's pixels, clipped; kept mask).

    A box cut by the window is kept when at least ``min_visibility`` of its area is inside.
    """
    shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    clipped = shifted.clamp(0, size)
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    keep = inside >= min_visibility * area.clamp(min=1e-9)
    return clipped[keep], keep


class RandomTileCrop:
    """A random ``size`` x ``size`` window at native resolution (SPEC §1: no resize that erases small
    objects). Images smaller than the window are padded right and bottom with the mean colour."""

    def __init__(self, size: int, min_visibility: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN) -> None:
        self.size, self.min_visibility = size, min_visibility
        self.fill = [int(round(255 * m)) for m in mean]

    def __call__(self, image: tv_tensors.Image, target: dict) -> tuple[tv_tensors.Image, dict]:
        height, width = image.shape[-2:]
        if height < self.size or width < self.size:
            pad = [0, 0, max(0, self.size - width), max(0, self.size - height)]  # left, top, right, bottom
            image = v2.functional.pad(image, pad, fill=self.fill)
            height, width = image.shape[-2:]
        top = int(torch.randint(0, height - self.size + 1, ()))
        left = int(torch.randint(0, width - self.size + 1, ()))
        boxes, keep = crop_boxes(target["boxes"].as_subclass(torch.Tensor), left, top, self.size, self.min_visibility)
        target = {**target, "labels": target["labels"][keep],
                  "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(self.size, self.size))}
        image = tv_tensors.Image(image[..., top:top + self.size, left:left + self.size])
        return image, target


def tiles_train_preset(size: int, min_visibility: float = 0.5) -> v2.Compose:
    """Large overhead images: a random native-resolution window, flips both ways, photometric (SPEC §6)."""
    return v2.Compose([
        RandomTileCrop(size, min_visibility),
        v2.RandomPhotometricDistort(),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
    ])


class RandomScaledCrop:
    """A ``size`` x ``size`` crop of the image rescaled by a random factor: scale jitter at native
    resolution, without rescaling the whole photo first.

    The factor s is log-uniform in ``scale_range``; the window is size / s image pixels, so objects
    come out s times their size. With probability ``focus`` the window holds the centre of one random
    object (S3FD's data-anchor sampling in spirit: crops around the objects, not mostly background);
    otherwise it lies anywhere. Images smaller than the window are padded right and bottom with the
    mean colour. Boxes cut by the window are kept when ``min_visibility`` of them is inside; objects
    smaller than ``min_object`` px after scaling become ignore regions (label -1: no anchor trains on
    them, SPEC §5 matching cannot reach them). Labels < 0 on input are ignore regions and stay so.
    """

    def __init__(self, size: int, scale_range: tuple[float, float] = (0.5, 2.0), focus: float = 0.7,
                 min_visibility: float = 0.5, min_object: float = 6.0, mean: Sequence[float] = IMAGENET_MEAN) -> None:
        self.size, self.scale_range, self.focus = size, scale_range, focus
        self.min_visibility, self.min_object = min_visibility, min_object
        self.fill = [int(round(255 * m)) for m in mean]

    def __call__(self, image: tv_tensors.Image, target: dict) -> tuple[tv_tensors.Image, dict]:
        height, width = image.shape[-2:]
        low, high = (torch.tensor(v).log() for v in self.scale_range)
        scale = float((low + (high - low) * torch.rand(())).exp())
        side = max(1, int(round(self.size / scale)))
        if height < side or width < side:
            image = v2.functional.pad(image, [0, 0, max(0, side - width), max(0, side - height)], fill=self.fill)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        labels = target["labels"]
        objects = (labels > 0).nonzero().squeeze(1)
        max_left, max_top = max(0, width - side), max(0, height - side)
        if len(objects) and float(torch.rand(())) < self.focus:
            box = boxes[objects[int(torch.randint(len(objects), ()))]]
            cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
            # the window [left, left + side) holds cx, and stays inside the image where it can
            lo_x, hi_x = max(0.0, cx - side + 1), min(float(max_left), cx)
            lo_y, hi_y = max(0.0, cy - side + 1), min(float(max_top), cy)
            left = int(lo_x + (max(hi_x, lo_x) - lo_x) * float(torch.rand(())))
            top = int(lo_y + (max(hi_y, lo_y) - lo_y) * float(torch.rand(())))
        else:
            left, top = int(torch.randint(0, max_left + 1, ())), int(torch.randint(0, max_top + 1, ()))
        kept, keep = crop_boxes(boxes, left, top, side, self.min_visibility)
        kept = kept * (self.size / side)
        labels = labels[keep].clone()
        sides = ((kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1])).clamp(min=0).sqrt()
        labels[(labels > 0) & (sides < self.min_object)] = -1
        image = v2.functional.crop(image, top, left, side, side)
        image = v2.functional.resize(image, [self.size, self.size], antialias=True)
        target = {**target, "labels": labels,
                  "boxes": tv_tensors.BoundingBoxes(kept, format="XYXY", canvas_size=(self.size, self.size))}
        return tv_tensors.Image(image), target


def faces_train_preset(size: int, scale_range: tuple[float, float] = (0.5, 2.0)) -> v2.Compose:
    """Objects small and large in one photo (faces in crowds): scale-jittered native-resolution crops
    around the objects, photometric jitter, horizontal flips (faces have an up)."""
    return v2.Compose([
        RandomScaledCrop(size, scale_range),
        v2.RandomPhotometricDistort(),
        v2.RandomHorizontalFlip(),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
    ])


def tiles_jitter_train_preset(size: int, scale_range: tuple[float, float] = (0.5, 2.0)) -> v2.Compose:
    """Overhead imagery at more than one scale: ``tiles`` with the faces preset's scale jitter, so a model
    trained on one camera's ground resolution also sees objects 0.5x-2x that size (other cameras and
    altitudes). Crops around the objects, photometric jitter, flips both ways (no up in the scene)."""
    return v2.Compose([
        RandomScaledCrop(size, scale_range),
        v2.RandomPhotometricDistort(),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
    ])


def flip_train_preset(size: int) -> v2.Compose:
    """Horizontal flips only: the recipe of SPEC §10's reference run."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.Resize((size, size)),
        v2.SanitizeBoundingBoxes(),  # a resize down can leave sub-pixel boxes
        v2.ToDtype(torch.float32, scale=True),
    ])


def eval_preset(size: int) -> v2.Compose:
    """Resize image and boxes to (size, size); keep the target's orig_size to map detections back."""
    return v2.Compose([
        v2.Resize((size, size)),
        v2.ToDtype(torch.float32, scale=True),
    ])


def build_preset(name: str, size: int, scale_range: Sequence[float] = (0.5, 2.0)) -> v2.Compose:
    """The preset called `name` (one of PRESET_NAMES) at input size `size`; ``scale_range`` is the zoom
    range of the scale-jittered presets (faces, tiles-jitter)."""
    if name == "ssd":
        return ssd_train_preset(size)
    if name == "overhead":
        return overhead_train_preset(size)
    if name == "tiles":
        return tiles_train_preset(size)
    if name == "tiles-jitter":
        return tiles_jitter_train_preset(size, tuple(scale_range))
    if name == "faces":
        return faces_train_preset(size, tuple(scale_range))
    if name == "flip":
        return flip_train_preset(size)
    if name == "eval":
        return eval_preset(size)
    raise ValueError(f"unknown augmentation preset {name!r}; valid names: {', '.join(PRESET_NAMES)}")
