"""borrowcore: the feature-borrowing SSD for small objects, and the tools to measure it."""

from borrowcore.config import DetectorConfig, ExperimentConfig, TrainConfig, load_config, save_config
from borrowcore.model import BorrowSSD, Detector, build_detector
from borrowcore.neck import (
    BorrowNeck,
    FeatureFusionBlock,
    FeatureMatchingBlock,
    FeatureRepresentingBlock,
    MatchingScores,
)
from borrowcore.checkpoint import CheckpointError, load_detector, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "BorrowNeck", "BorrowSSD", "CheckpointError", "Detector", "DetectorConfig", "ExperimentConfig",
    "FeatureFusionBlock", "FeatureMatchingBlock", "FeatureRepresentingBlock", "MatchingScores",
    "TrainConfig", "build_detector", "load_config", "load_detector", "save_checkpoint", "save_config",
]
