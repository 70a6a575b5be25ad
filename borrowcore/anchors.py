"""Anchors (paper §4.1, Table 1; SPEC §3) and the aspect-ratio design of Eq. (1).

Sizes are tied to strides: S_k = anchor_scale * stride_k (32, 64, 128, 256 at the default 4), a second
ratio-1 anchor of S'_k = sqrt(S_k S_(k+1)) (S'_N = the input size), and the aspect ratios R on S_k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_convert


class AnchorGenerator(nn.Module):
    """Anchor boxes for every cell of every detection layer, in the head's order.

    Order: layer by layer, then row-major over cells, then per cell (S_k, 1), (S'_k, 1), and for each
    r in ``aspect_ratios``: (S_k, r), (S_k, 1/r).

    Args:
        strides: stride of each detection layer.
        anchor_scale: a in S_k = a * stride_k.
        aspect_ratios: the ratios r > 1 (w/h); each adds r and 1/r.
    """

    def __init__(self, strides: Sequence[int], anchor_scale: float = 4.0, aspect_ratios: Sequence[float] = (1.5, 3.0)) -> None:
        super().__init__()
        self.strides = list(strides)
        self.anchor_scale = float(anchor_scale)
        self.aspect_ratios = [float(r) for r in aspect_ratios]
        self._cache: dict[tuple, Tensor] = {}

    def num_anchors_per_location(self) -> int:
        """A = |R| + 1 (SPEC §3): S_k and S'_k at ratio 1, plus r and 1/r for each listed r."""
        return 2 + 2 * len(self.aspect_ratios)

    def sizes(self, image_size: int) -> list[tuple[float, float]]:
        """(S_k, S'_k) per layer; S'_N = the input size."""
        s = [self.anchor_scale * stride for stride in self.strides]
        second = [math.sqrt(s[k] * s[k + 1]) for k in range(len(s) - 1)] + [float(image_size)]
        return list(zip(s, second))

    def cell_shapes(self, image_size: int) -> list[Tensor]:
        """Per layer the (A, 2) anchor widths and heights of one cell, in anchor order."""
        shapes = []
        for size, second in self.sizes(image_size):
            wh = [(size, size), (second, second)]
            for r in self.aspect_ratios:
                wh += [(size * math.sqrt(r), size / math.sqrt(r)), (size / math.sqrt(r), size * math.sqrt(r))]
            shapes.append(torch.tensor(wh, dtype=torch.float64))
        return shapes

    def forward(self, grid_sizes: Sequence[tuple[int, int]], image_size: int,
                device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """All anchors (sum_k h_k w_k A, 4), xyxy in input pixels. Not clipped (SPEC §3)."""
        key = (tuple(tuple(g) for g in grid_sizes), int(image_size), device, dtype)
        if key not in self._cache:
            if len(grid_sizes) != len(self.strides):
                raise ValueError(f"{len(grid_sizes)} grids for {len(self.strides)} strides")
            layers = []
            for (h, w), stride, shapes in zip(grid_sizes, self.strides, self.cell_shapes(image_size)):
                ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
                centres = torch.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], dim=-1).reshape(-1, 1, 2)  # (hw, 1, 2)
                cxcywh = torch.cat([centres.expand(-1, len(shapes), 2), shapes.expand(h * w, -1, -1)], dim=-1)  # (hw, A, 4)
                layers.append(cxcywh.reshape(-1, 4))
            anchors = box_convert(torch.cat(layers), "cxcywh", "xyxy")
            self._cache[key] = anchors.to(device=device, dtype=dtype)
        return self._cache[key]


# ---- Eq. (1): the aspect-ratio set from a dataset's boxes ----

def max_anchor_aspect_ratio(max_object_ratio: float, iou: float = 0.5) -> float:
    """Eq. (1): mAR_anchor = mAR_obj * max{(2 / (1 + 1/IoU))^2, IoU / (2 - 2 IoU), IoU}, 0 < IoU <= 2/3."""
    if not 0 < iou <= 2 / 3:
        raise ValueError(f"Eq. (1) needs 0 < IoU <= 2/3 (its middle term diverges above), got {iou}")
    if max_object_ratio < 1:
        raise ValueError(f"mAR_obj is max(w/h, h/w) >= 1, got {max_object_ratio}")
    return max_object_ratio * max((2 / (1 + 1 / iou)) ** 2, iou / (2 - 2 * iou), iou)


def aspect_ratio_set(max_anchor_ratio: float) -> list[float]:
    """SPEC §3: m <= 1: {1}; 1 < m <= 2: {1, m, 1/m}; m > 2: {1, m/2, m, 2/m, 1/m}."""
    m = max_anchor_ratio
    if m <= 1:
        return [1.0]
    if m <= 2:
        return [1.0, m, 1 / m]
    return [1.0, m / 2, m, 2 / m, 1 / m]


def box_aspect_ratios(boxes_xywh: np.ndarray) -> np.ndarray:
    """max(w/h, h/w) per box; boxes (n, 4) xywh with positive sizes."""
    w, h = boxes_xywh[:, 2], boxes_xywh[:, 3]
    return np.maximum(w / h, h / w)


def design_aspect_ratios(boxes_xywh: np.ndarray, iou: float = 0.5, percentile: float = 99.0) -> dict:
    """Eq. (1) on a dataset: mAR_obj (the percentile of box ARs), mAR_anchor and the ratio set."""
    boxes_xywh = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    boxes_xywh = boxes_xywh[(boxes_xywh[:, 2] > 0) & (boxes_xywh[:, 3] > 0)]
    if len(boxes_xywh) == 0:
        raise ValueError("no boxes with positive width and height")
    max_object_ratio = float(np.percentile(box_aspect_ratios(boxes_xywh), percentile))
    max_anchor_ratio = max_anchor_aspect_ratio(max_object_ratio, iou)
    ratios = aspect_ratio_set(max_anchor_ratio)
    return {
        "num_boxes": int(len(boxes_xywh)),
        "percentile": percentile,
        "iou": iou,
        "max_object_ratio": max_object_ratio,
        "max_anchor_ratio": max_anchor_ratio,
        "aspect_ratios": ratios,
        # the config's form: the ratios r > 1, each giving r and 1/r
        "config_aspect_ratios": sorted(r for r in ratios if r > 1),
    }
