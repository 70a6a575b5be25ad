"""Training and validation steps as free functions returning dicts of numbers (torchvision
references' ``engine.py`` style). The loop around them, checkpoints and logs are in ``train.py``."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn


class TrainingDiverged(RuntimeError):
    """A loss part became NaN or inf; the message names the step and the part."""


def autocast_context(device: torch.device, amp: str, cpu_bf16: bool = False):
    """bf16/fp16 autocast on CUDA (SPEC §6); on the CPU bf16 autocast only when ``cpu_bf16`` (cores with
    AVX-512 BF16 run a training step about twice as fast). Weights stay fp32 either way and the loss is
    computed in fp32 (``Detector.compute_loss``)."""
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else nullcontext()
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_device(images: Tensor | list[Tensor], targets: list[dict], device: torch.device, channels_last: bool = False):
    if isinstance(images, Tensor):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
    else:
        images = [img.to(device, non_blocking=True) for img in images]
    targets = [{"boxes": t["boxes"].as_subclass(Tensor).to(device), "labels": t["labels"].to(device)} for t in targets]
    return images, targets


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images, targets: list[dict], step: int, device: torch.device, amp: str = "off",
               grad_clip: float = 0.0, cpu_bf16: bool = False) -> dict[str, float]:
    """One optimiser step; returns the loss parts and ``grad_norm``, the gradients' total L2 norm before
    clipping (unscaled under AMP). Raises TrainingDiverged before any update on a NaN/inf loss."""
    with autocast_context(device, amp, cpu_bf16):
        parts = model(images, targets)
    for name, value in parts.items():
        if not torch.isfinite(value).all():
            raise TrainingDiverged(f"step {step}: loss part '{name}' is {value.item()} (not finite); "
                                   f"the last checkpoint is intact")
    loss = sum(parts.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # a no-op without AMP; with it, the norm is the true one
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    return {"loss": loss.item(), **{name: value.item() for name, value in parts.items()},
            "grad_norm": grad_norm.item()}


@torch.no_grad()
def validation_loss(detector: nn.Module, loader, device: torch.device, amp: str = "off") -> dict[str, float]:
    """Mean loss parts over a loader, the detector in eval mode (BatchNorm uses running stats)."""
    was_training = detector.training
    detector.eval()
    totals: dict[str, float] = {}
    batches = 0
    for images, targets in loader:
        images, targets = to_device(images, targets, device)
        with autocast_context(device, amp):
            parts = detector.compute_loss(images, targets)
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value.item()
        batches += 1
    detector.train(was_training)
    if batches == 0:
        return {}
    mean = {f"val_{name}": total / batches for name, total in totals.items()}
    mean["val_loss"] = sum(mean.values())
    mean["val_batches"] = batches
    return mean


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, milestones: list[float]) -> float:
    """Linear warm-up from 0.001x, then cosine to 0 or x0.1 at each milestone (fractions of the run)."""
    if warmup_steps > 0 and step < warmup_steps:
        alpha = step / warmup_steps
        return 0.001 * (1 - alpha) + alpha
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 0.1 ** sum(step >= m * total_steps for m in milestones)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """SPEC §6: no weight decay on biases, norm parameters (BatchNorm, L2Norm scales) and tau."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith("log_tau"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ModelEMA:
    """An exponential moving average of a model's weights and buffers, for evaluation and shipping
    (the EMA of ultralytics and timm): ``ema = d ema + (1 - d) model`` after every optimiser step, with
    d = decay (1 - exp(-updates / tau)), so early steps, whose weights are soon stale, count less.

    BatchNorm running statistics are averaged like the weights; integer buffers (BatchNorm's step count)
    are copied. The average lives on the model's device, fp32 like the master weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        model = model.module if hasattr(model, "module") else model
        self.decay, self.tau, self.updates = decay, tau, 0
        self.state = {name: value.detach().clone() for name, value in model.state_dict().items()}

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = model.module if hasattr(model, "module") else model
        self.updates += 1
        d = self.current_decay()
        for name, value in model.state_dict().items():
            average = self.state[name]
            if average.dtype.is_floating_point:
                average.mul_(d).add_(value.detach(), alpha=1 - d)
            else:
                average.copy_(value)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau,
                "state_dict": {name: value.cpu() for name, value in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.decay, self.tau = int(state["updates"]), float(state["decay"]), float(state["tau"])
        for name, value in state["state_dict"].items():
            self.state[name].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        """Load the average into ``model`` (a copy of the trained one)."""
        model = model.module if hasattr(model, "module") else model
        model.load_state_dict(self.state)
