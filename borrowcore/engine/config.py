"""The training recipe and the experiment files in configs/: a ``DetectorConfig`` and the ``TrainConfig``
that trains it, read from and written to YAML or JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from borrowcore.models.config import DetectorConfig, config_from_dict


@dataclass
class TrainConfig:
    """The training recipe (SPEC §6)."""

    train_images: str = ""  # image folder
    train_annotations: str = ""  # COCO json
    val_images: str = ""
    val_annotations: str = ""
    augmentation: str = "ssd"  # a preset name from borrowcore.data.presets
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # zoom range of faces / tiles-jitter
    epochs: int = 1
    max_steps: int = 0  # > 0 stops after this many optimiser steps (overrides epochs)
    repeats: int = 1  # visits of every training image per epoch (random tiles of a few large images)
    batch_size: int = 32  # per process
    lr: float = 0.01  # at batch_size * world size; scale linearly with the global batch
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 200
    schedule: str = "cosine"  # cosine | multistep
    milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # fractions of the run
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    amp: str = "bf16"  # on CUDA only: bf16 | fp16 | off
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (fp32 weights and loss): ~2x on AVX-512 BF16 cores
    # > 0: keep an EMA of the weights (decay d (1 - exp(-step / ema_tau))); it is what validation scores,
    # best.pt and weights.pt hold; last.pt keeps the raw weights and the EMA for resuming. 0: no EMA
    ema_decay: float = 0.0
    ema_tau: float = 2000.0
    workers: int = 2
    seed: int = 0
    log_every: int = 10  # steps between log lines
    checkpoint_every: int = 100  # steps between last.pt writes (and at each epoch end)
    pretrained: str = ""  # torchvision vgg16(_bn) state-dict file
    channels_last: bool = False
    skip_bad: bool = False
    val_metric: str = "loss"  # best.pt by lowest validation loss, or by highest COCO AP ("AP")
    val_borrow: bool = False  # at each validation of a borrowing neck, the borrow precision by layer (log.jsonl)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "multistep"):
            raise ValueError(f"schedule must be cosine or multistep, got {self.schedule!r}")
        if self.val_metric not in ("loss", "AP"):
            raise ValueError(f"val_metric must be loss or AP, got {self.val_metric!r}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay}")
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp must be bf16, fp16 or off, got {self.amp!r}")


@dataclass
class ExperimentConfig:
    """One file in configs/: a model and the recipe that trains it."""

    model: DetectorConfig = field(default_factory=DetectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def experiment_config_from_dict(values: dict[str, Any], source: str = "config") -> ExperimentConfig:
    return config_from_dict(ExperimentConfig, values, source, {"model": DetectorConfig, "train": TrainConfig})


def load_config(path: str | Path) -> ExperimentConfig:
    """Read an ExperimentConfig from YAML (.yaml/.yml) or JSON (.json)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read config ({error.strerror})") from error
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from error
    return experiment_config_from_dict(values or {}, str(path))


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """``section.field=value`` pairs (value parsed as YAML: ``--set train.max_steps=50``) onto a copy of
    ``config``, re-validated like a file."""
    values = dataclasses.asdict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in values or name not in values[section]:
            raise ValueError(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE with a known field")
        values[section][name] = yaml.safe_load(raw)
    return experiment_config_from_dict(values, "--set")


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write an ExperimentConfig as YAML or JSON, by the file's suffix."""
    path = Path(path)
    values = dataclasses.asdict(config)
    if path.suffix == ".json":
        path.write_text(json.dumps(values, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(values, sort_keys=False))
