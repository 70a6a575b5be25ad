"""The one image decoder: every image the project reads, from disk or uploaded, goes through here.

The header is read first (Pillow's ``Image.open`` parses it without touching the pixel data) and the
image refused when width x height is over the pixel limit: a few KB of PNG can claim 40000 x 40000
pixels, and handing that to a native decoder allocates gigabytes or crashes it. Only then are the
pixels decoded. Every problem becomes a ``BadImageError`` "<file>: <what is wrong>": missing or empty,
not an image, truncated or corrupt, too many pixels. Modes that are not 8-bit RGB are converted as a
person would expect: 16-bit scaled to 8-bit, grayscale repeated, transparency composited on white (as a
viewer shows it), CMYK converted, EXIF orientation applied.

The pixel limit is ``MAX_PIXELS`` (40 Mpx), or the environment variable ``BORROWCORE_MAX_PIXELS`` read at
import, or a ``max_pixels`` argument: the same number for ``predict``, ``eval``, training and the app.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

PIXEL_LIMIT_ENV = "BORROWCORE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000  # width x height; a 8K x 5K photo passes, a 12K x 12K bomb does not


class BadImageError(ValueError):
    """An image file that cannot be read or decoded, or whose size disagrees with its annotation file."""


def _pixel_limit_from_env() -> int:
    raw = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(raw))
    except ValueError:
        raise ValueError(f"{PIXEL_LIMIT_ENV}={raw!r}: expected a number of pixels, e.g. 40000000") from None
    if limit <= 0:
        raise ValueError(f"{PIXEL_LIMIT_ENV}={raw!r}: the pixel limit must be positive")
    return limit


MAX_PIXELS = _pixel_limit_from_env()

# What some common non-image files begin with, to say what was uploaded instead.
_SIGNATURES = ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive (or a .pt checkpoint)"),
               (b"\x80\x02", "a Python pickle"), (b"<!DOCTYPE", "an HTML page"), (b"<html", "an HTML page"),
               (b"{", "JSON text"), (b"\x1f\x8b", "a gzip file"))


def image_digest(data: bytes) -> str:
    """SHA-256 of an upload's bytes: the key its results are cached under."""
    return hashlib.sha256(data).hexdigest()


def _what_it_is(data: bytes) -> str:
    head = data[:16].lstrip()
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return f"it is {kind}"
    try:
        data[:512].decode("utf-8")
        return "it is text"
    except UnicodeDecodeError:
        return "its content is no image format Pillow reads (JPEG, PNG, BMP, GIF, TIFF, WebP)"


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16-bit (or wider) grayscale
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F" and values.max() <= 1.0:
            top = 1.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))  # L, 1, P, CMYK, YCbCr, RGB (16-bit RGB arrives as 8-bit RGB)


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = None,
                       expected_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode an encoded image to a uint8 (3, H, W) RGB tensor, EXIF orientation applied.

    The header is checked against ``max_pixels`` (default ``MAX_PIXELS``) before any pixel is decoded.
    ``expected_size`` (H, W), from an annotation file: when the EXIF-rotated image does not have it but the
    stored pixels do, the annotations were made on the stored pixels and those are returned.
    Raises BadImageError "<name>: <what is wrong>" for empty, non-image, truncated or corrupt files, for
    images over the pixel limit, and for a size that disagrees with ``expected_size``.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise BadImageError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image ({_what_it_is(data)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # over Pillow's own limit
        claimed = re.search(r"\((\d+) pixels\)", str(error))  # Pillow: "Image size (N pixels) exceeds limit ..."
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
        raise BadImageError(f"{name}: refused: {size} is over the limit of {max_pixels:,} (a decompression bomb, "
                            "or an image far larger than the detector needs)") from None
    except Exception as error:  # noqa: BLE001 - a broken header fails inside Pillow in many ways
        raise BadImageError(f"{name}: corrupt image header ({type(error).__name__}: {error})") from error
    width, height = image.size
    if width * height > max_pixels:
        raise BadImageError(f"{name}: refused: {width} x {height} = {width * height:,} pixels is over the "
                            f"limit of {max_pixels:,} (a decompression bomb, or an image far larger than the "
                            f"detector needs; downscale it first, or raise {PIXEL_LIMIT_ENV})")
    if width == 0 or height == 0:
        raise BadImageError(f"{name}: the image has no pixels ({width} x {height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF and palette transparency
            image.load()  # a truncated file fails here: "image file is truncated"
            try:
                shown = ImageOps.exif_transpose(image)
            except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored
                shown = image
            expected = tuple(expected_size) if expected_size is not None else None
            if expected is not None and (shown.height, shown.width) != expected == (image.height, image.width):
                shown = image  # the annotation file's width/height are those of the unrotated pixels
            pixels = _to_rgb(shown)
    except Exception as error:  # noqa: BLE001
        reason = str(error) or type(error).__name__
        raise BadImageError(f"{name}: truncated or corrupt {image.format or 'image'} file ({reason})") from error
    if expected_size is not None and pixels.shape[:2] != tuple(expected_size):
        raise BadImageError(f"{name}: image is {pixels.shape[1]}x{pixels.shape[0]} px but the annotation file "
                            f"says {expected_size[1]}x{expected_size[0]} px")
    return torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def decode_upload(data: bytes, name: str, max_pixels: int | None = None) -> torch.Tensor:
    """An uploaded image's bytes decoded by ``decode_image_bytes`` (the app's name for it)."""
    return decode_image_bytes(data, name, max_pixels)


def read_image_rgb(path: str | Path, expected_size: tuple[int, int] | None = None,
                   max_pixels: int | None = None) -> torch.Tensor:
    """An image file decoded by ``decode_image_bytes``: uint8 (3, H, W), errors naming the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BadImageError(f"{path}: cannot read the file ({error.strerror or error})") from error
    return decode_image_bytes(data, str(path), max_pixels, expected_size)
