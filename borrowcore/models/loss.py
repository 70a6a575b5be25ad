"""MultiBox loss (SPEC §5): smooth L1 on positives + cross-entropy with 3:1 hard negative mining."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from borrowcore.models.boxes import BoxCoder, ignored_anchors, match_anchors


class MultiBoxLoss(nn.Module):
    """SSD's loss, both parts divided by max(1, positives in the batch) as torchvision's SSD does.

    Args:
        box_coder: encodes matched boxes against their anchors.
        iou_threshold: matching threshold (SPEC §5: 0.5; S3FD and RetinaFace match tiny faces at 0.35).
        negatives_per_positive: hard negatives kept per positive, ranked by their loss.
        ignore_iof: an anchor with at least this share of its area inside an ignore region (targets'
            boxes labelled < 0, see ``CocoDetection(ignore_regions=True)``) is neither positive nor negative.
        min_anchors: > 0, S3FD's scale compensation (``match_anchors``): every box gets at least this many
            positives among the anchors of IoU > 0.1; 0, SSD's matching.
    """

    def __init__(self, box_coder: BoxCoder | None = None, iou_threshold: float = 0.5, negatives_per_positive: int = 3,
                 ignore_iof: float = 0.5, min_anchors: int = 0) -> None:
        super().__init__()
        self.box_coder = box_coder or BoxCoder()
        self.iou_threshold = iou_threshold
        self.negatives_per_positive = negatives_per_positive
        self.ignore_iof = ignore_iof
        self.min_anchors = min_anchors

    def match(self, targets: list[dict[str, Tensor]], anchors: Tensor) -> list[Tensor]:
        """Per image, the matched box index of each anchor: >= 0 a box, -1 background, -2 ignored.

        Box indices refer to the target's own ``boxes``; ignore regions (label < 0) are never matched."""
        all_matches = []
        for t in targets:
            labels = t["labels"]
            real = (labels > 0).nonzero().squeeze(1)
            matches = match_anchors(t["boxes"][real], anchors, self.iou_threshold, self.min_anchors)
            if real.numel():
                matches = torch.where(matches >= 0, real[matches.clamp(min=0)], matches)  # back to t's indices
            ignore_boxes = t["boxes"][labels < 0]
            if ignore_boxes.numel():
                matches[(matches < 0) & ignored_anchors(ignore_boxes, anchors, self.ignore_iof)] = -2
            all_matches.append(matches)
        return all_matches

    def hard_negatives(self, cls_loss: Tensor, matches: Tensor) -> Tensor:
        """Hard negative mining: per image, the negatives (matches == -1) with the highest classification
        loss, ``negatives_per_positive`` per positive. cls_loss and matches (B, A) -> mask (B, A)."""
        negative_loss = cls_loss.detach().clone()
        negative_loss[matches != -1] = -float("inf")  # positives and ignored anchors are never negatives
        order = negative_loss.sort(dim=1, descending=True)[1]
        rank = order.sort(dim=1)[1]  # rank of each anchor among its image's negatives
        num_negative = self.negatives_per_positive * (matches >= 0).sum(dim=1, keepdim=True)  # (B, 1)
        return (rank < num_negative) & (matches == -1)

    def forward(self, cls_logits: Tensor, box_regression: Tensor, anchors: Tensor,
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """cls_logits (B, A, K+1), box_regression (B, A, 4), anchors (A, 4) xyxy; targets with
        ``boxes`` (G, 4) xyxy in input pixels and ``labels`` (G,) in 1..K -> {"loss_box", "loss_cls"}."""
        # the loss in float32 whatever the head's autocast dtype (bf16/fp16 outputs under AMP)
        cls_logits, box_regression, anchors = cls_logits.float(), box_regression.float(), anchors.float()
        matches = torch.stack(self.match(targets, anchors))  # (B, A)
        positive = matches >= 0  # (B, A)

        target_labels = torch.zeros_like(matches)
        target_offsets = torch.zeros_like(box_regression)
        for i, target in enumerate(targets):
            anchor_idx = positive[i].nonzero().squeeze(1)
            box_idx = matches[i, anchor_idx]
            target_labels[i, anchor_idx] = target["labels"][box_idx].to(matches.dtype)
            target_offsets[i, anchor_idx] = self.box_coder.encode(
                target["boxes"][box_idx].to(box_regression.dtype), anchors[anchor_idx])

        num_positive = positive.sum()
        normaliser = num_positive.clamp(min=1).to(box_regression.dtype)
        loss_box = F.smooth_l1_loss(box_regression[positive], target_offsets[positive], reduction="sum", beta=1.0)

        cls_loss = F.cross_entropy(cls_logits.flatten(0, 1).float(), target_labels.flatten(), reduction="none")
        cls_loss = cls_loss.view_as(target_labels)  # (B, A)
        hard_negative = self.hard_negatives(cls_loss, matches)
        loss_cls = (cls_loss[positive].sum() + cls_loss[hard_negative].sum())
        return {"loss_box": loss_box / normaliser, "loss_cls": loss_cls / normaliser}
