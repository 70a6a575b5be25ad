import pytest
import torch

from borrowcore import DetectorConfig, build_detector

torch.set_num_threads(2)


@pytest.fixture
def tiny_config():
    """A detector small enough for CPU tests: width 0.125, input 128, 3 classes."""
    return DetectorConfig(neck="full", num_classes=3, input_size=128, width=0.125, batch_norm=True)


def make_detector(config: DetectorConfig, neck: str | None = None, seed: int = 0):
    torch.manual_seed(seed)
    if neck is not None:
        config = DetectorConfig(**{**config.__dict__, "neck": neck})
    return build_detector(config)


def png_header_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A PNG whose header claims width x height RGB pixels, followed by a tiny, truncated IDAT: a few hundred
    bytes that libpng would try to decode into gigabytes (and crash on: "Not enough image data")."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    rows = zlib.compress(b"\x00" * 1000)  # far less than one row of the claimed image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
