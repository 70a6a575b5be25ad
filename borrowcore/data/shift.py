"""Off-distribution copies of a COCO set: the same photos rescaled or recoloured, boxes moved with them.

A model people upload photos to must hold beyond its training photos; ``borrowcore shift`` writes the
copies that ``borrowcore eval`` then scores, so "how far it holds" is a measured number.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from borrowcore.data.dataset import CocoDetection, read_image_rgb
from borrowcore.utils.atomic import atomic_write, write_json_atomic


def shift_image(image: torch.Tensor, scale: float = 1.0, hue: float = 0.0, saturation: float = 1.0,
                brightness: float = 1.0) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, round(H s), round(W s)), then hue shifted (fraction of the colour
    wheel), saturation and brightness multiplied."""
    if scale != 1.0:
        size = [max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale))]
        image = F.resize(image, size, antialias=True)
    if hue:
        image = F.adjust_hue(image, hue)
    if saturation != 1.0:
        image = F.adjust_saturation(image, saturation)
    if brightness != 1.0:
        image = F.adjust_brightness(image, brightness)
    return image


def encode_jpeg(image: torch.Tensor, quality: int = 95) -> bytes:
    """uint8 (3, H, W) RGB -> JPEG bytes, through OpenCV (torchvision.io's encoder is deprecated since 0.29;
    both wrap libjpeg, and OpenCV's bytes matched torchvision's at quality 95)."""
    bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[..., ::-1])  # (H, W, 3); OpenCV expects BGR
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {tuple(image.shape)} image as JPEG")
    return data.tobytes()


def write_shifted(annotations: str | Path, images: str | Path, out: str | Path, scale: float = 1.0, hue: float = 0.0,
                  saturation: float = 1.0, brightness: float = 1.0, quality: int = 95) -> Path:
    """Write OUT/images/<file_name> (JPEG) and OUT/instances.json: every image of the set shifted, its
    boxes (crowd regions too) scaled by ``scale``; returns the json's path. Resumable: images already
    written are kept."""
    dataset = CocoDetection(images, annotations)  # validated: boxes clipped, bad files named
    out = Path(out)
    coco = json.loads(json.dumps(dataset.coco.dataset))  # a plain copy
    for info in coco["images"]:
        target = out / "images" / Path(info["file_name"]).with_suffix(".jpg")
        if not target.exists():
            pixels = read_image_rgb(dataset.image_dir / info["file_name"], (info["height"], info["width"]))
            data = encode_jpeg(shift_image(pixels, scale, hue, saturation, brightness), quality=quality)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda f: f.write(data))
        info["file_name"] = str(Path(info["file_name"]).with_suffix(".jpg"))
        info["height"], info["width"] = max(1, round(info["height"] * scale)), max(1, round(info["width"] * scale))
    for ann in coco["annotations"]:
        ann["bbox"] = [round(v * scale, 2) for v in ann["bbox"]]
        ann["area"] = round(ann["bbox"][2] * ann["bbox"][3], 2)
    coco["info"] = {**coco.get("info", {}), "shifted_from": str(annotations),
                    "shift": {"scale": scale, "hue": hue, "saturation": saturation, "brightness": brightness}}
    write_json_atomic(coco, out / "instances.json")
    return out / "instances.json"
