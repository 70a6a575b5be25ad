"""Images that arrive as bytes (the app's uploads): decoded to RGB uint8, or refused with a clear reason.

Every problem an upload can have becomes a ``BadImageError`` naming the file: not an image, truncated or
corrupt, too many pixels (a decompression bomb: a few KB of PNG that inflates to gigabytes). Modes that
are not 8-bit RGB are converted as a person would expect: 16-bit scaled to 8-bit, grayscale repeated,
transparency composited on white (as a viewer shows it), CMYK converted, EXIF orientation applied.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from borrowcore.data import BadImageError

MAX_PIXELS = 40_000_000  # width x height; a 8K x 5K photo passes, a 12K x 12K bomb does not

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


def decode_upload(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode an uploaded image to a uint8 (3, H, W) RGB tensor, EXIF orientation applied.

    Raises BadImageError "<name>: <what is wrong>" for empty, non-image, truncated or corrupt files and
    for images of more than ``max_pixels`` pixels (checked on the header, before decoding).
    """
    if not data:
        raise BadImageError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image ({_what_it_is(data)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # over Pillow's own limit
        raise BadImageError(f"{name}: refused: too many pixels to decode safely (limit {max_pixels:,}); "
                            "a decompression bomb, or an image far larger than the detector needs") from None
    except Exception as error:  # noqa: BLE001 - a broken header fails inside Pillow in many ways
        raise BadImageError(f"{name}: corrupt image header ({type(error).__name__}: {error})") from error
    width, height = image.size
    if width * height > max_pixels:
        raise BadImageError(f"{name}: refused: {width} x {height} = {width * height:,} pixels is over the "
                            f"limit of {max_pixels:,} (a decompression bomb, or an image far larger than the "
                            "detector needs; downscale it first)")
    if width == 0 or height == 0:
        raise BadImageError(f"{name}: the image has no pixels ({width} x {height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF and palette transparency
            image.load()  # a truncated file fails here: "image file is truncated"
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored
                pass
            pixels = _to_rgb(image)
    except Exception as error:  # noqa: BLE001
        reason = str(error) or type(error).__name__
        raise BadImageError(f"{name}: truncated or corrupt {image.format or 'image'} file ({reason})") from error
    return torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
