"""Uploads decoded to RGB uint8, or refused with a message naming the file and the problem."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from borrowcore.data.dataset import BadImageError
from borrowcore.data.images import decode_upload, image_digest


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_png_round_trips_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = decode_upload(encode(Image.fromarray(pixels), "PNG"), "a.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))


def test_grayscale_becomes_three_equal_channels():
    image = decode_upload(encode(Image.new("L", (8, 6), 77), "PNG"), "gray.png")
    assert image.shape == (3, 6, 8) and (image == 77).all()


def test_16_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = decode_upload(encode(Image.fromarray(values), "PNG"), "deep.png")
    assert image[:, 0].tolist() == [[0, 100, 255]] * 3


def test_16_bit_rgb_png():
    cv2 = pytest.importorskip("cv2")
    values = np.full((4, 5, 3), 257 * 200, dtype=np.uint16)
    ok, buffer = cv2.imencode(".png", values)
    assert ok
    image = decode_upload(buffer.tobytes(), "rgb16.png")
    assert image.shape == (3, 4, 5) and (image == 200).all()


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    image = decode_upload(encode(rgba, "PNG"), "alpha.png")
    assert image[:, 0, 0].tolist() == [0, 0, 255] and image[:, 1, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    red, green, blue = decode_upload(data, "print.jpg")[:, 8, 8].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_exif_rotation_is_honoured():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white left edge as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to display
    decoded = decode_upload(encode(image, "JPEG", exif=exif, quality=95), "phone.jpg")
    assert decoded.shape == (3, 40, 20)  # displayed portrait
    assert decoded[:, 2, 10].min() > 200 and decoded[:, 38, 10].max() < 60  # the white edge is now on top


@pytest.mark.parametrize("data, problem", [
    (b"", "the file is empty"),
    (b"<html><body>not a photo</body></html>", "not an image (it is an HTML page)"),
    (b"\x00\x01\x02\x03" * 100, "not an image"),
])
def test_non_images_are_named(data, problem):
    with pytest.raises(BadImageError) as raised:
        decode_upload(data, "holiday.jpg")
    assert str(raised.value).startswith(f"holiday.jpg: {problem}")


def test_truncated_jpeg_is_refused():
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(BadImageError, match=r"^cut.jpg: truncated or corrupt JPEG file"):
        decode_upload(data[: len(data) // 2], "cut.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (5000, 5000), 0), "PNG")  # 25 Mpx in a few KB
    assert len(bomb) < 100_000
    with pytest.raises(BadImageError, match=r"^bomb.png: refused: 5000 x 5000 = 25,000,000 pixels is over the limit"):
        decode_upload(bomb, "bomb.png", max_pixels=1_000_000)
    assert decode_upload(bomb, "bomb.png", max_pixels=25_000_000).shape == (3, 5000, 5000)


def test_digest_is_content_only():
    # SHA-256 of the bytes, nothing else: the FIPS 180-2 test vector for "abc"
    assert image_digest(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    # every byte counts, the last of a large upload too (a digest of its head would mix up two photos)
    photo = encode(Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)), "PNG")
    assert len(photo) > 300_000
    changed = bytearray(photo)
    changed[-5] ^= 1
    assert image_digest(bytes(changed)) != image_digest(photo)
    changed[-5] ^= 1
    assert image_digest(bytes(changed)) == image_digest(photo)  # the same bytes from another buffer
