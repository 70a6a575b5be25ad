"""Box coding and anchor matching (SPEC §5), on torchvision.ops."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

# exp() of a log-scale offset is clamped here, as torchvision does, so a wild prediction cannot overflow
MAX_LOG_SCALE = math.log(1000.0 / 16)


class BoxCoder:
    """SSD box coding with variances (0.1, 0.2): torchvision's BoxCoder weights (10, 10, 5, 5).

    offsets = ((cx - cx_a) / (w_a * 0.1), (cy - cy_a) / (h_a * 0.1), log(w / w_a) / 0.2, log(h / h_a) / 0.2)
    """

    def __init__(self, variances: tuple[float, float] = (0.1, 0.2)) -> None:
        self.variances = variances

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """boxes, anchors (..., 4) xyxy -> offsets (..., 4)."""
        box = box_convert(boxes, "xyxy", "cxcywh")
        anchor = box_convert(anchors, "xyxy", "cxcywh")
        centre = (box[..., :2] - anchor[..., :2]) / (anchor[..., 2:] * self.variances[0])
        size = torch.log(box[..., 2:] / anchor[..., 2:]) / self.variances[1]
        return torch.cat([centre, size], dim=-1)

    def decode(self, offsets: Tensor, anchors: Tensor) -> Tensor:
        """offsets (..., 4), anchors (..., 4) xyxy (broadcast) -> boxes (..., 4) xyxy."""
        anchor = box_convert(anchors, "xyxy", "cxcywh")
        centre = anchor[..., :2] + offsets[..., :2] * self.variances[0] * anchor[..., 2:]
        size = anchor[..., 2:] * torch.exp((offsets[..., 2:] * self.variances[1]).clamp(max=MAX_LOG_SCALE))
        return box_convert(torch.cat([centre, size], dim=-1), "cxcywh", "xyxy")


def match_anchors(boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5, min_anchors: int = 0,
                  min_anchor_iou: float = 0.1) -> Tensor:
    """Index of the box each anchor is matched to, or -1 for background (SPEC §5).

    An anchor is positive for its highest-IoU box when IoU >= ``iou_threshold``; each box's best anchor
    is forced positive for that box. ``min_anchors`` > 0 adds S3FD's scale compensation (Zhang et al. 2017,
    §3.2): a box with fewer positives than that also takes its best background anchors of IoU above
    ``min_anchor_iou``, up to ``min_anchors`` in all, so tiny faces between the anchor sizes get as many
    positives as the others.

    boxes (G, 4), anchors (A, 4), xyxy -> (A,) int64.
    """
    if boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    iou = box_iou(boxes, anchors)  # (G, A)
    best_iou, matches = iou.max(dim=0)  # per anchor
    matches[best_iou < iou_threshold] = -1
    best_anchor = iou.argmax(dim=1)  # (G,): each box keeps at least its best anchor
    matches[best_anchor] = torch.arange(boxes.shape[0], device=anchors.device)
    if min_anchors > 0:
        counts = torch.bincount(matches[matches >= 0], minlength=boxes.shape[0])  # (G,)
        for g in (counts < min_anchors).nonzero().squeeze(1).tolist():
            values, candidates = iou[g].topk(min(min_anchors + int(counts[g]), iou.shape[1]))  # best first
            free = candidates[(values > min_anchor_iou) & (matches[candidates] == -1)]
            matches[free[: min_anchors - int(counts[g])]] = g
    return matches


def ignored_anchors(ignore_boxes: Tensor, anchors: Tensor, iof_threshold: float = 0.5) -> Tensor:
    """Anchors lying mostly inside an ignore region (a crowd box, WIDER's ``invalid`` face): (A,) bool.

    An anchor is ignored when the share of its own area inside some ignore box (intersection over the
    anchor, mmdetection's ``ignore_iof_thr``) is at least ``iof_threshold``. ignore_boxes (G, 4),
    anchors (A, 4), xyxy.
    """
    if ignore_boxes.numel() == 0:
        return torch.zeros(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    top_left = torch.max(anchors[:, None, :2], ignore_boxes[None, :, :2])  # (A, G, 2)
    bottom_right = torch.min(anchors[:, None, 2:], ignore_boxes[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=-1)  # (A, G)
    anchor_area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])  # (A,)
    iof = intersection / anchor_area.clamp(min=1e-9)[:, None]
    return (iof >= iof_threshold).any(dim=1)


def drop_inside(boxes: Tensor, scores: Tensor, labels: Tensor, share: float) -> Tensor:
    """Indices (best first) of the boxes kept when a box is dropped for having at least ``share`` of its
    area inside a kept, better-scoring box of its label: NMS's greedy order with containment in place of
    IoU. boxes (D, 4) xyxy, scores (D,), labels (D,)."""
    order = scores.argsort(descending=True, stable=True)
    boxes, labels = boxes[order], labels[order]
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])  # (D, D, 2): row i the container, column j the box
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    inside = (inter >= share * area[None, :]) & (labels[:, None] == labels[None, :]) & (area[None, :] > 0)
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for i in range(len(boxes)):
        if keep[i]:
            later = inside[i].clone()
            later[: i + 1] = False
            keep &= ~later
    return order[keep]
