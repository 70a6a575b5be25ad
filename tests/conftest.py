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
