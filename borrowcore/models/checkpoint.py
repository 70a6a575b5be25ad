"""One checkpoint format for every ablation, written atomically and read with weights-only loading.

A checkpoint is a dict of plain types and tensors (``torch.load(weights_only=True)`` refuses
dataclasses, paths and numpy objects):

    format: "borrowcore-checkpoint", format_version: 1,
    config: DetectorConfig as a dict, class_names: [str], state_dict: {name: Tensor},
    versions: {torch, torchvision, borrowcore, python},
    train_state: (optional) optimizer / scheduler / scaler / step / epoch / RNG states.
"""

from __future__ import annotations

import dataclasses
import pickle
import platform
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from borrowcore.models.config import DetectorConfig, detector_config_from_dict
from borrowcore.utils.atomic import atomic_write
from borrowcore.version import __version__

FORMAT = "borrowcore-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that cannot be used as a borrowcore checkpoint; the message names the file and why."""


def library_versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion, which weights-only loading refuses
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "borrowcore": str(__version__), "python": platform.python_version()}


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str | Path, detector: torch.nn.Module, config: DetectorConfig | None = None,
                    train_state: dict[str, Any] | None = None) -> None:
    """Write ``detector`` (and the trainer's state, when given) to ``path`` atomically."""
    model = detector.module if hasattr(detector, "module") else detector  # unwrap DDP
    config = config or model.config
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(config),
        "class_names": list(model.class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": library_versions(),
    }
    if train_state is not None:
        checkpoint["train_state"] = train_state
    atomic_save(checkpoint, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict with ``weights_only=True``; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            detail = next((line.strip() for line in str(error).splitlines() if "WeightsUnpickler error" in line), "")
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects that weights-only loading does not allow "
                f"(a pickle payload can run code when loaded); borrowcore checkpoints hold only tensors and "
                f"plain values. {detail}"
            ) from error
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({error})") from error
    except Exception as error:  # noqa: BLE001 - a corrupt file fails in many ways inside the unpickler
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a borrowcore checkpoint (no format '{FORMAT}'; found {keys})")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {checkpoint.get('format_version')}, "
                              f"this borrowcore reads version {FORMAT_VERSION}")
    for key, kind in (("config", dict), ("class_names", list), ("state_dict", dict)):
        if not isinstance(checkpoint.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint field '{key}' missing or not a {kind.__name__}")
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> DetectorConfig:
    try:
        return detector_config_from_dict(checkpoint["config"], f"{path}: config")
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid model config in checkpoint: {error}") from error


# DetectorConfig fields that are the inference recipe, not the weights: a checkpoint runs with any of them
RECIPE_FIELDS = ("score_threshold", "nms_iou", "candidates_per_class", "detections_per_image", "display_threshold",
                 "inference", "max_whole_side", "oversize", "zoom_out", "zoom_out_min", "drop_inside", "matching", "key_budget")


def check_recipe(recipe: dict[str, Any]) -> None:
    """Refuse overrides of fields that shape the weights (anything not in ``RECIPE_FIELDS``)."""
    unknown = sorted(set(recipe) - set(RECIPE_FIELDS))
    if unknown:
        raise ValueError(f"not inference-recipe fields: {unknown} (those are {', '.join(RECIPE_FIELDS)})")


def parse_recipe(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (VALUE in YAML: 0.5, [0.5], shrink) -> inference-recipe overrides, checked
    against ``RECIPE_FIELDS``."""
    import yaml

    recipe = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in RECIPE_FIELDS:
            raise ValueError(f"--recipe takes KEY=VALUE with KEY one of {', '.join(RECIPE_FIELDS)}; got {item!r}")
        recipe[key] = yaml.safe_load(value)
    return recipe


def load_state(detector: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> None:
    """Load a checkpoint's weights into ``detector``, naming what differs when the architecture does."""
    model = detector.module if hasattr(detector, "module") else detector
    saved = checkpoint_config(checkpoint, path)
    own = getattr(model, "config", None)
    if own is not None:
        differences = [
            f"{f.name}: checkpoint {getattr(saved, f.name)!r}, model {getattr(own, f.name)!r}"
            for f in dataclasses.fields(DetectorConfig)
            if getattr(saved, f.name) != getattr(own, f.name)
            and f.name not in RECIPE_FIELDS + ("match_iou",)  # not weights
        ]
        if differences:
            raise CheckpointError(f"{path}: architecture differs from the model: " + "; ".join(differences))
    state = checkpoint["state_dict"]
    own_state = model.state_dict()
    missing = sorted(set(own_state) - set(state))
    unexpected = sorted(set(state) - set(own_state))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
                  for k, v in own_state.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            parts.append(f"shape mismatch {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
        raise CheckpointError(f"{path}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def load_detector(path: str | Path, device: str | torch.device = "cpu", input_size: int | None = None,
                  key_budget: int | None = None, exact: bool | None = None, nms_iou: float | None = None,
                  recipe: dict[str, Any] | None = None, precision: str = "auto", fold_bn: bool = True):
    """Rebuild the detector a checkpoint was saved from, in eval mode on ``device``.

    ``input_size`` runs it at another S x S (the weights do not depend on S; anchors are rebuilt), so
    that tiles of T = S px stay at native resolution for any T. ``exact`` True matches every deeper cell
    (the paper), False the fast default; ``key_budget`` K > 0 matches fast with K keys per deeper map.
    None keeps what the checkpoint stores (a checkpoint from before ``matching`` existed runs fast).
    ``nms_iou`` replaces the IoU above which NMS drops the lower-scoring of two same-class boxes; ``recipe``
    any other ``RECIPE_FIELDS`` (``parse_recipe``), such as ``{"oversize": "shrink", "zoom_out": [0.5]}``.
    ``precision`` of inference on the CPU (``resolve_precision``): "auto" (bf16 where the CPU computes it
    natively), "bf16" or "fp32"; on CUDA the predictor's autocast decides. On the CPU the weights are held
    channels-last (docs/benchmarks.md, "CPU inference"). ``fold_bn`` folds every BatchNorm into the conv
    before it (``fold_batch_norm``): the same function, one pass over each map fewer; False keeps the modules
    as trained (parameter counts, training-mode diagnostics)."""
    from borrowcore.models.detector import build_detector

    if key_budget is not None and key_budget <= 0:
        raise ValueError(f"key budget must be > 0 keys per deeper map, got {key_budget} (every cell: exact)")
    if exact and key_budget:
        raise ValueError(f"exact matching uses every cell: it takes no key budget (got {key_budget})")
    if nms_iou is not None and not 0 < nms_iou <= 1:
        raise ValueError(f"NMS IoU must be in (0, 1], got {nms_iou}")
    checkpoint = read_checkpoint(path)
    check_recipe(recipe or {})
    overrides: dict[str, Any] = {"input_size": input_size} if input_size is not None else {}
    overrides.update(recipe or {})
    if nms_iou is not None:
        overrides["nms_iou"] = nms_iou
    if exact:
        overrides.update(matching="exact", key_budget=0)
    elif exact is not None or key_budget:
        overrides["matching"] = "fast"  # with the given budget, else the checkpoint's own (0: the default)
        if key_budget:
            overrides["key_budget"] = key_budget
    if overrides:
        checkpoint = {**checkpoint, "config": {**checkpoint["config"], **overrides}}
    config = checkpoint_config(checkpoint, path)
    if len(checkpoint["class_names"]) != config.num_classes:
        raise CheckpointError(f"{path}: {len(checkpoint['class_names'])} class names for "
                              f"num_classes={config.num_classes}")
    detector = build_detector(config, checkpoint["class_names"])
    load_state(detector, checkpoint, path)
    detector.precision = resolve_precision(precision)
    detector = detector.to(device).eval()
    detector.batch_norm_folded = fold_batch_norm(detector) > 0 if fold_bn else False
    if torch.device(device).type == "cpu":  # oneDNN's convolutions: 1.2x (fp32) to 1.3x (bf16) a photo, same boxes
        detector = detector.to(memory_format=torch.channels_last)
    return detector


def fold_batch_norm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d just before it in an nn.Sequential, in place; returns
    how many were folded.

    BN(conv(x)) = gamma (W x + b - mean) / sqrt(var + eps) + beta is one conv with weight W gamma / sqrt(var +
    eps) and a bias to match (torch.nn.utils.fusion), so the BatchNorm becomes an Identity and inference makes
    one pass over each map fewer. The same function up to rounding; for inference only: the folded model has
    no BatchNorm left to train, and its state_dict is not the checkpoint's.
    """
    if model.training:
        raise ValueError("fold_batch_norm folds eval-mode statistics: call model.eval() first")
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
                folded += 1
    return folded


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str) -> str:
    """"auto" -> "bf16" where the CPU has native bf16 (AVX-512 BF16 or AMX: autocast's convolutions and
    attention then run about 2x fp32 with the same detections, docs/benchmarks.md), else "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        try:
            native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):  # a build without oneDNN
            native = False
        return "bf16" if native else "fp32"
    return precision
