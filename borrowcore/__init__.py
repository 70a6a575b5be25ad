"""borrowcore: the feature-borrowing SSD for small objects, and the tools to measure it.

Folders are layers, and imports run one way (tests/test_layers.py checks it):

    utils        atomic file writes, torchrun plumbing
    data         COCO sets, image decoding, augmentation presets, tiles, the borrow benchmark
    models       backbone, neck, head, anchors, boxes, loss, post-processing; the detector and its checkpoint
    evaluation   COCO metrics, reports, error analysis, comparison, the explain path
    engine       training, its config and log, the ablation study
    deploy       predict, ONNX export and runtime, benchmarks
    cli          the ``borrowcore`` command

``data`` and ``models`` know nothing of each other; ``engine`` and ``deploy`` neither.
"""

from borrowcore.engine.config import ExperimentConfig, TrainConfig, load_config, save_config
from borrowcore.models.checkpoint import CheckpointError, load_detector, save_checkpoint
from borrowcore.models.config import DetectorConfig
from borrowcore.models.detector import BorrowSSD, Detector, build_detector
from borrowcore.models.neck import (
    BorrowNeck,
    FeatureFusionBlock,
    FeatureMatchingBlock,
    FeatureRepresentingBlock,
    MatchingScores,
)
from borrowcore.version import __version__

__all__ = [
    "BorrowNeck", "BorrowSSD", "CheckpointError", "Detector", "DetectorConfig", "ExperimentConfig",
    "FeatureFusionBlock", "FeatureMatchingBlock", "FeatureRepresentingBlock", "MatchingScores",
    "TrainConfig", "__version__", "build_detector", "load_config", "load_detector", "save_checkpoint", "save_config",
]
