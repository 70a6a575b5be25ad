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

PRESET_NAMES = ("ssd", "overhead", "flip", "eval")


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


def build_preset(name: str, size: int) -> v2.Compose:
    """The preset called `name` (one of PRESET_NAMES) at input size `size`."""
    if name == "ssd":
        return ssd_train_preset(size)
    if name == "overhead":
        return overhead_train_preset(size)
    if name == "flip":
        return flip_train_preset(size)
    if name == "eval":
        return eval_preset(size)
    raise ValueError(f"unknown augmentation preset {name!r}; valid names: {', '.join(PRESET_NAMES)}")
