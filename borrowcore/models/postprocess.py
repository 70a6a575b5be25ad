"""Inference post-processing (SPEC §5): softmax, per-class thresholds and top-k, batched NMS."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from borrowcore.models.boxes import BoxCoder


class PostProcess(nn.Module):
    """Raw head outputs -> detections per image, in each image's own pixels.

    Args:
        box_coder: decodes offsets against anchors.
        score_threshold: per-class scores above this are candidates (0.01).
        candidates_per_class: at most this many candidates per class before NMS (400).
        nms_iou: NMS IoU threshold, per class (0.45).
        detections_per_image: kept after NMS, best first (200).
    """

    def __init__(self, box_coder: BoxCoder | None = None, score_threshold: float = 0.01,
                 candidates_per_class: int = 400, nms_iou: float = 0.45, detections_per_image: int = 200) -> None:
        super().__init__()
        self.box_coder = box_coder or BoxCoder()
        self.score_threshold = score_threshold
        self.candidates_per_class = candidates_per_class
        self.nms_iou = nms_iou
        self.detections_per_image = detections_per_image

    @torch.no_grad()
    def forward(self, cls_logits: Tensor, box_regression: Tensor, anchors: Tensor,
                input_size: int | list[tuple[float, float]], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """cls_logits (B, A, K+1), box_regression (B, A, 4), anchors (A, 4) in the network input;
        ``input_size`` S of an S x S resize, or per image the (x, y) factors from its pixels to the input;
        image_sizes the (H, W) each image had -> [{"boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,)}]."""
        scores_all = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (B, A, K): drop background
        boxes_all = self.box_coder.decode(box_regression.float(), anchors.float())  # (B, A, 4)
        return self.select(scores_all, boxes_all, input_size, image_sizes)

    def select(self, scores_all: Tensor, boxes_all: Tensor, input_size: int | list[tuple[float, float]],
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """The steps after softmax and decoding (also for an ONNX graph exported without NMS): class
        scores (B, A, K) without background and boxes (B, A, 4) in the S x S input -> detections."""
        num_anchors, num_classes = scores_all.shape[1:]
        k = min(self.candidates_per_class, num_anchors)
        if isinstance(input_size, (int, float)):  # a plain resize to S x S (SPEC §1)
            input_size = [(input_size / w, input_size / h) for h, w in image_sizes]
        detections = []
        for scores, boxes, (height, width), (sx, sy) in zip(scores_all, boxes_all, image_sizes, input_size):
            top_scores, top_anchor = scores.topk(k, dim=0)  # (k, K): the best anchors of each class
            labels = torch.arange(1, num_classes + 1, device=scores.device).expand(k, -1)  # (k, K)
            keep = top_scores > self.score_threshold
            top_scores, top_anchor, labels = top_scores[keep], top_anchor[keep], labels[keep]
            # back to this image's pixels (the input was a resize to S x S, or the image itself padded)
            scale = torch.tensor([1 / sx, 1 / sy] * 2, device=boxes.device)
            candidate_boxes = clip_boxes_to_image(boxes[top_anchor] * scale, (height, width))
            keep = batched_nms(candidate_boxes, top_scores, labels, self.nms_iou)[: self.detections_per_image]
            detections.append({"boxes": candidate_boxes[keep], "scores": top_scores[keep], "labels": labels[keep]})
        return detections
