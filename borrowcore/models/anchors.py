"""Anchors (paper §4.1, Table 1; SPEC §3) and the aspect-ratio design of Eq. (1).

Sizes are tied to strides: S_k = anchor_scale * stride_k (32, 64, 128, 256 at the default 4), a second
ratio-1 anchor of S'_k = sqrt(S_k S_(k+1)) (S'_N = the input size), and the aspect ratios R on S_k.
``top_octaves`` j > 0 extends the scale set above the coarsest layer (SPEC §3 extension, off by
default): the last layer also carries the octaves S_N 2^i and their second sizes S'_N 2^i, i = 1..j,
with the same ratios, so faces larger than S'_N have an anchor of their size without a fifth layer.
Anchor recall (SPEC §9) measures what they can reach: the share of a dataset's boxes whose best anchor
has IoU >= 0.5, by size.
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
        top_octaves: j, the octaves above S_N the last layer also carries (0: SPEC §3 as written).
            Its cells hold A anchors per octave: the (1 + j) A anchors of S_N 2^i, i = 0..j, in that order.
    """

    def __init__(self, strides: Sequence[int], anchor_scale: float = 4.0, aspect_ratios: Sequence[float] = (1.5, 3.0),
                 top_octaves: int = 0) -> None:
        super().__init__()
        if top_octaves < 0:
            raise ValueError(f"top_octaves must be >= 0, got {top_octaves}")
        self.strides = list(strides)
        self.anchor_scale = float(anchor_scale)
        self.aspect_ratios = [float(r) for r in aspect_ratios]
        self.top_octaves = int(top_octaves)
        self._cache: dict[tuple, Tensor] = {}

    def num_anchors_per_location(self) -> int:
        """A = |R| + 1 (SPEC §3): S_k and S'_k at ratio 1, plus r and 1/r for each listed r. The last layer
        holds (1 + top_octaves) A (``anchors_per_layer``)."""
        return 2 + 2 * len(self.aspect_ratios)

    def anchors_per_layer(self) -> list[int]:
        """Anchors per cell of each layer: A everywhere, (1 + top_octaves) A on the last."""
        a = self.num_anchors_per_location()
        return [a] * (len(self.strides) - 1) + [a * (1 + self.top_octaves)]

    def sizes(self, image_size: int | None) -> list[tuple[float, float]]:
        """(S_k, S'_k) per layer; S'_N = the input size, or for a whole image (``image_size`` None)
        sqrt(S_N * 2 S_N), as if a layer at the next stride existed (SPEC §3)."""
        s = [self.anchor_scale * stride for stride in self.strides]
        last = float(image_size) if image_size is not None else math.sqrt(2.0) * s[-1]
        second = [math.sqrt(s[k] * s[k + 1]) for k in range(len(s) - 1)] + [last]
        return list(zip(s, second))

    def cell_shapes(self, image_size: int | None) -> list[Tensor]:
        """Per layer the (A_k, 2) anchor widths and heights of one cell, in anchor order."""
        shapes = []
        sizes = self.sizes(image_size)
        for k, (size, second) in enumerate(sizes):
            octaves = range(1 + self.top_octaves) if k == len(sizes) - 1 else range(1)
            wh = []
            for i in octaves:
                s, s2 = size * 2 ** i, second * 2 ** i
                wh += [(s, s), (s2, s2)]
                for r in self.aspect_ratios:
                    wh += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
            shapes.append(torch.tensor(wh, dtype=torch.float64))
        return shapes

    def forward(self, grid_sizes: Sequence[tuple[int, int]], image_size: int | None,
                device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """All anchors (sum_k h_k w_k A, 4), xyxy in input pixels. Not clipped (SPEC §3).

        ``image_size`` S of an S x S input, or None for a whole image of any H x W (SPEC §1, §3)."""
        key = (tuple(tuple(g) for g in grid_sizes), None if image_size is None else int(image_size), device, dtype)
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


# ---- Anchor recall (SPEC §9): can any anchor reach IoU 0.5 with each box? ----

SIDE_BINS = (0, 16, 32, 64, 96, 128)  # px on sqrt(area) at the network input; the last bin is open


def feature_grid_sizes(input_size: int) -> list[tuple[int, int]]:
    """(h_n, w_n) of each detection layer at input S x S, from the backbone's own pooling (a thin trunk
    run on zeros, so the rounding is the model's, not a copy of it)."""
    from borrowcore.models.backbone import VGGBackbone

    backbone = VGGBackbone(width=0.01).eval()  # 8 channels everywhere: the grids only
    with torch.no_grad():
        return [tuple(x.shape[-2:]) for x in backbone(torch.zeros(1, 3, input_size, input_size))]


def anchor_recall(boxes_xywh: np.ndarray, image_sizes: np.ndarray, anchors: Tensor, input_size: int,
                  iou: float = 0.5, side_bins: Sequence[float] = SIDE_BINS) -> dict:
    """Share of boxes whose best anchor has IoU >= ``iou``, overall and by size (SPEC §9).

    Boxes are scaled to the S x S input as the detector resizes (a plain resize), and binned by their
    side sqrt(w h) there.

    Args:
        boxes_xywh: (n, 4) boxes in their images' pixels.
        image_sizes: (n, 2) (H, W) of each box's image.
        anchors: (A, 4) xyxy in input pixels (``AnchorGenerator(...)(grids, S)``).
    Returns ``{"iou", "boxes", "recalled", "recall", "best_iou" (n,), "side" (n,), "bins": [{"label",
    "boxes", "recalled", "recall"}]}``; a recall is -1 where a bin has no boxes.
    """
    from torchvision.ops import box_iou

    boxes = torch.as_tensor(np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4))
    sizes = torch.as_tensor(np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2))
    factor = torch.stack([input_size / sizes[:, 1], input_size / sizes[:, 0]], dim=1).repeat(1, 2)  # (n, 4)
    xyxy = box_convert(boxes, "xywh", "xyxy") * factor  # (n, 4) input pixels
    anchors = anchors.to(torch.float64)
    best = torch.cat([box_iou(chunk, anchors).max(dim=1).values for chunk in xyxy.split(2048)]) \
        if len(xyxy) else torch.zeros(0, dtype=torch.float64)  # (n,), chunked: n x A IoUs can be large
    side = ((xyxy[:, 2] - xyxy[:, 0]).clamp_min(0) * (xyxy[:, 3] - xyxy[:, 1]).clamp_min(0)).sqrt()
    recalled = best >= iou
    edges = list(side_bins) + [math.inf]
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (side >= lo) & (side < hi)
        count = int(inside.sum())
        bins.append({"label": f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}", "boxes": count,
                     "recalled": int(recalled[inside].sum()),
                     "recall": float(recalled[inside].double().mean()) if count else -1.0})
    return {"iou": iou, "boxes": len(boxes), "recalled": int(recalled.sum()),
            "recall": float(recalled.double().mean()) if len(boxes) else -1.0,
            "best_iou": best.numpy(), "side": side.numpy(), "bins": bins}


def design_anchor_recall(boxes_xywh: np.ndarray, image_sizes: np.ndarray, input_size: int,
                         anchor_scale: float = 4.0, aspect_ratios: Sequence[float] = (1.5, 3.0),
                         iou: float = 0.5, top_octaves: int = 0) -> dict:
    """:func:`anchor_recall` of boxes (n, 4) xywh in images of (H, W) ``image_sizes`` (n, 2), for a detector
    of input ``input_size`` with these anchor settings (the anchors built as the detector builds them).
    Reading a dataset's boxes is the readers' business (``borrowcore.evaluation.stats.dataset_anchor_recall``)."""
    from borrowcore.models.backbone import STRIDES

    generator = AnchorGenerator(STRIDES, anchor_scale, aspect_ratios, top_octaves)
    anchors = generator(feature_grid_sizes(input_size), input_size)
    result = anchor_recall(np.asarray(boxes_xywh).reshape(-1, 4), np.asarray(image_sizes).reshape(-1, 2), anchors,
                           input_size, iou)
    result["aspect_ratios"] = list(aspect_ratios)
    return result
