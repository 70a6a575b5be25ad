"""What the borrowing neck reads and learns: how much each fusion C_n takes from X(n), the borrowed Z(n) and
the context D_n(Y(n+1)), and which neck parts get gradient.

Y(n) = X(n) + C_n([X(n), Z(n), D_n]) is one 1x1 conv over the concatenation, so C_n's weight splits by input
channels into W_X, W_Z and W_D, and C_n's output is W_X X + W_Z Z + W_D D + b. ``fusion_weight_norms`` gives
the slices' Frobenius norms; ``fusion_contributions`` the RMS of each term on real images (a weight is only
as loud as what it multiplies); ``gradient_norms`` the L2 norm of the gradients of each part after a
backward pass (the training log records it).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from borrowcore.models.neck import BorrowNeck, FeatureFusionBlock

# parameter-name fragments -> the part of the model they belong to (first match wins)
PARTS = (("matching.", "fmb_theta_phi"), ("representing.", "frb_g"), ("fusion.", "ffb"),
         ("backbone.", "backbone"), ("head.", "head"))


def fusion_slices(block: FeatureFusionBlock, channels: int) -> dict[str, slice]:
    """C_n's input channels by source: X(n), then Z(n) when the block borrows, then the context."""
    borrowed = block.combine.in_channels - channels - (block.deconv.out_channels if block.deconv is not None else 0)
    slices = {"x": slice(0, channels)}
    if borrowed:
        slices["z"] = slice(channels, channels + borrowed)
    if block.deconv is not None:
        slices["context"] = slice(channels + borrowed, block.combine.in_channels)
    return slices


def fusion_weight_norms(neck: BorrowNeck) -> dict[str, dict[str, float]]:
    """Per 1-based fused layer, the Frobenius norm of C_n's weight slice on each input."""
    norms = {}
    for n, block in enumerate(neck.fusion):
        weight = block.combine.weight.detach().float()  # (c_n, c_n + c + c, 1, 1)
        norms[str(n + 1)] = {name: float(weight[:, part].norm()) for name, part in
                             fusion_slices(block, block.combine.out_channels).items()}
    return norms


@torch.no_grad()
def fusion_contributions(detector: nn.Module, images: list[Tensor]) -> dict[str, dict[str, float]]:
    """Per 1-based fused layer, the RMS over cells and images of each term W_X X, W_Z Z, W_D D of C_n's
    output, and of X(n) itself (the residual it is added to); images (3, H, W) run one at a time."""
    neck = detector.network.neck
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, int] = defaultdict(int)

    def hook(n: int, block: FeatureFusionBlock):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            fused = inputs[0].float()  # (B, c_n + c + c, h, w)
            weight = module.weight.float()
            layer = str(n + 1)
            for name, part in fusion_slices(block, module.out_channels).items():
                term = F.conv2d(fused[:, part], weight[:, part])  # (B, c_n, h, w)
                sums[layer][name] += float(term.pow(2).mean())
            sums[layer]["residual_x"] += float(fused[:, : module.out_channels].pow(2).mean())
            counts[layer] += 1
        return record

    handles = [block.combine.register_forward_hook(hook(n, block)) for n, block in enumerate(neck.fusion)]
    try:
        detector.eval()
        device = next(detector.parameters()).device
        for image in images:
            batch, _ = detector.preprocess([image.to(device)])
            detector.network(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: {name: (total / counts[layer]) ** 0.5 for name, total in terms.items()}
            for layer, terms in sums.items()}


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the current gradients of each model part (``PARTS``); theta, phi and tau together as FMB."""
    model = model.module if hasattr(model, "module") else model
    squares: dict[str, float] = defaultdict(float)
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        part = next((label for fragment, label in PARTS if fragment in name), "other")
        squares[part] += float(param.grad.detach().float().pow(2).sum())
    return {part: total ** 0.5 for part, total in squares.items()}


def batch_gradient_norms(detector: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict:
    """The loss parts and ``gradient_norms`` of one training batch at the detector's current weights (train
    mode, no update): whether each part of the neck still gets gradient, and how much next to its weights."""
    detector.train()
    detector.zero_grad(set_to_none=True)
    parts = detector(images, targets)
    sum(parts.values()).backward()
    norms = gradient_norms(detector)
    fmb = {name.removeprefix("network.neck.matching."): float(param.grad.norm()) for name, param in detector.named_parameters()
           if name.startswith("network.neck.matching.") and param.grad is not None and not name.endswith("bias")}
    weights: dict[str, float] = defaultdict(float)
    for name, param in detector.named_parameters():
        weights[next((label for fragment, label in PARTS if fragment in name), "other")] += float(param.detach().pow(2).sum())
    detector.zero_grad(set_to_none=True)
    detector.eval()
    return {"loss": {name: value.item() for name, value in parts.items()}, "gradient_norms": norms,
            "gradient_over_weight": {part: norm / weights[part] ** 0.5 for part, norm in norms.items() if weights[part]},
            "fmb_gradient_norms": fmb}


def diagnose(detector: nn.Module, val_set, train_batch: tuple[list[Tensor], list[dict]] | None = None,
             contribution_images: int = 20) -> dict:
    """Everything above for one checkpoint: FMB's temperatures tau_n, C_n's weight norms and contributions
    (on ``contribution_images`` val images, evenly spaced), the borrow precision by layer on ``val_set``
    (borrowing necks), and the gradient norms of ``train_batch`` when given."""
    from borrowcore.evaluation.explain import borrow_precision

    neck = detector.network.neck
    out: dict = {"neck": neck.neck}
    if neck.borrows:
        out["tau"] = {str(n + 1): float(block.log_tau.detach().exp()) for n, block in enumerate(neck.matching)
                      if block.log_tau is not None}
    if len(neck.fusion):
        picks = torch.linspace(0, len(val_set) - 1, min(contribution_images, len(val_set))).long().tolist()
        out["fusion_weight_norms"] = fusion_weight_norms(neck)
        out["fusion_contributions"] = fusion_contributions(detector, [val_set[i][0].as_subclass(Tensor) for i in picks])
    if neck.borrows:
        out["borrow_precision"] = borrow_precision(detector, val_set, next(detector.parameters()).device)
    if train_batch is not None:
        out["training_batch"] = batch_gradient_norms(detector, *train_batch)
    return out
