"""The detector: backbone, borrowing neck and head composed (STYLE: composed, not configured).

``BorrowSSD`` is the core network (normalised S x S images in, raw tensors out: what ONNX export and the
explain path use). ``Detector`` is the thin torchvision-compatible wrapper: a list of images of any size
in; the loss parts in train mode, one dict of boxes / labels / scores per image in eval mode.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_area

from borrowcore.models.anchors import AnchorGenerator
from borrowcore.models.backbone import VGGBackbone, scaled_channels
from borrowcore.models.borrow_targets import LARGER_AREA_RATIO, matching_loss
from borrowcore.models.boxes import BoxCoder, drop_inside
from borrowcore.models.config import DetectorConfig
from borrowcore.models.head import SSDHead
from borrowcore.models.loss import MultiBoxLoss
from borrowcore.models.neck import BorrowNeck, MatchingScores
from borrowcore.models.postprocess import PostProcess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_MULTIPLE = 64  # the coarsest stride: a whole image is padded to H x W multiples of it (SPEC §1)


class NetworkOutput(NamedTuple):
    cls_logits: Tensor  # (B, num_anchors, K + 1)
    box_regression: Tensor  # (B, num_anchors, 4)
    grid_sizes: list[tuple[int, int]]  # (h_n, w_n) per detection layer
    matching: list[MatchingScores]  # per borrowing layer, shallow first; empty unless asked


class BorrowSSD(nn.Module):
    """Backbone -> neck -> head on a normalised batch (B, 3, S, S)."""

    def __init__(self, backbone: VGGBackbone, neck: BorrowNeck, head: SSDHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def forward(self, images: Tensor, return_matching: bool = False, detach_matching: bool = False) -> NetworkOutput:
        features = self.backbone(images)  # [X(1)..X(N)], X(n) (B, c_n, h_n, w_n)
        outputs, matching = self.neck(features, return_matching, detach_matching)  # [Y(1)..Y(N)]
        cls_logits, box_regression = self.head(outputs)
        grid_sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        return NetworkOutput(cls_logits, box_regression, grid_sizes, matching)


class Detector(nn.Module):
    """torchvision-style detector around ``BorrowSSD``.

    Args:
        network: the core network.
        anchors: anchor generator with the network's strides.
        loss: the training criterion.
        postprocess: decoding + NMS.
        input_size: S; images are resized to S x S.
        class_names: names of labels 1..K.
        whole_image: take each image at native resolution, padded right and bottom to multiples of 64
            (SPEC §1's whole-image mode), instead of resizing it to S x S; boxes need no scaling.
        shrink_above: whole-image mode, photos whose longer side exceeds it are scaled down to it (0: never).
        zoom_out: whole-image mode, one more pass per scale here, adding its boxes of at least
            ``zoom_out_min`` px (the objects beyond the largest anchors); empty: one pass.
        drop_inside: > 0, after NMS drop a box with at least this share of its area inside a better-scoring
            box of its class (``boxes.drop_inside``); 0: NMS alone.
        matching_loss: > 0, the weight of the supervised matching loss (``borrow_targets.matching_loss``),
            added to the loss parts as ``loss_match`` when the neck borrows; 0: off (the paper).
        matching_loss_background: its background term's weight relative to it (``L_bg``); 0: off.
        matching_loss_area_ratio: its targets are the instances of the class with at least this many times
            the query's area (2: the larger ones); 0: every other one.
        matching_loss_detach: the matching loss trains theta and phi only, not the backbone under them
            (``BorrowNeck.forward``'s ``detach_matching``).
    """

    def __init__(self, network: BorrowSSD, anchors: AnchorGenerator, loss: MultiBoxLoss, postprocess: PostProcess,
                 input_size: int, class_names: list[str], mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, whole_image: bool = False, shrink_above: int = 0,
                 zoom_out: tuple[float, ...] = (), zoom_out_min: int = 256, drop_inside: float = 0.0,
                 matching_loss: float = 0.0, matching_loss_background: float = 0.0,
                 matching_loss_detach: bool = False, matching_loss_area_ratio: float = LARGER_AREA_RATIO) -> None:
        super().__init__()
        self.whole_image = whole_image
        self.shrink_above = shrink_above  # whole-image mode: photos with a longer side above it are scaled to it
        self.zoom_out = tuple(zoom_out)  # whole-image mode: extra passes at these scales, for the largest objects
        self.zoom_out_min = zoom_out_min  # ... keeping their boxes of at least this side (px in the photo)
        self.drop_inside = drop_inside  # > 0: drop boxes with this share of their area inside a better one
        self.matching_loss = matching_loss
        self.matching_loss_background = matching_loss_background
        self.matching_loss_detach = matching_loss_detach
        self.matching_loss_area_ratio = matching_loss_area_ratio
        self.precision = "fp32"  # inference on the CPU: "fp32", or "bf16" autocast (load_detector's precision)
        self.network = network
        self.anchors = anchors
        self.loss = loss
        self.postprocess = postprocess
        self.input_size = input_size
        self.class_names = list(class_names)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def anchor_image_size(self) -> int | None:
        """What the anchor generator's S'_N follows: S, or None for whole images (SPEC §3)."""
        return None if self.whole_image else self.input_size

    def whole_size(self, height: int, width: int, zoom: float = 1.0) -> tuple[int, int]:
        """(H, W) a photo has at the network input in whole-image mode: itself, or shrunk so that its longer
        side is ``shrink_above`` (config ``oversize: shrink``); then scaled by ``zoom`` (a zoom-out pass)."""
        longest = max(height, width)
        factor = zoom * (self.shrink_above / longest if self.shrink_above and longest > self.shrink_above else 1)
        if factor == 1:
            return height, width
        return max(1, round(height * factor)), max(1, round(width * factor))

    def input_scales(self, sizes: list[tuple[int, int]], zoom: float = 1.0) -> list[tuple[float, float]]:
        """Per image (x, y) factors from its pixels to the network input's."""
        if self.whole_image:
            scales = []
            for h, w in sizes:
                new_h, new_w = self.whole_size(h, w, zoom)
                scales.append((new_w / w, new_h / h))
            return scales
        return [(self.input_size / w, self.input_size / h) for h, w in sizes]

    def preprocess(self, images: list[Tensor] | Tensor, zoom: float = 1.0) -> tuple[Tensor, list[tuple[int, int]]]:
        """Images (3, H, W) float in [0, 1] (uint8 is scaled) -> normalised (B, 3, S, S) and their (H, W).

        Whole-image mode: (B, 3, H', W'), every image at native resolution (or ``whole_size``) in the
        top-left corner, zero (the mean colour) to the right and below, H' and W' the largest sides rounded
        up to 64."""
        if isinstance(images, Tensor) and images.dim() == 3:
            images = [images]
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        s = self.input_size
        batch = []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected images of shape (3, H, W), got {tuple(img.shape)}")
            img = img.to(self.mean.device)
            img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
            img = (img - self.mean[0]) / self.std[0]
            if not self.whole_image and img.shape[-2:] != (s, s):  # SPEC §1: a plain resize, no letterbox
                img = F.interpolate(img[None], size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0]
            elif self.whole_image and self.whole_size(*img.shape[-2:], zoom) != tuple(img.shape[-2:]):
                img = F.interpolate(img[None], size=self.whole_size(*img.shape[-2:], zoom), mode="bilinear",
                                    align_corners=False, antialias=True)[0]
            batch.append(img)
        if not self.whole_image:
            return torch.stack(batch), sizes  # (B, 3, S, S)
        height = -(-max(img.shape[-2] for img in batch) // PAD_MULTIPLE) * PAD_MULTIPLE
        width = -(-max(img.shape[-1] for img in batch) // PAD_MULTIPLE) * PAD_MULTIPLE
        padded = batch[0].new_zeros((len(batch), 3, height, width))  # (B, 3, H', W')
        for i, img in enumerate(batch):
            padded[i, :, : img.shape[-2], : img.shape[-1]] = img
        return padded, sizes

    def scale_targets(self, targets: list[dict[str, Tensor]], sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Targets' boxes from each image's pixels to the S x S input."""
        scaled = []
        for target, (sx, sy) in zip(targets, self.input_scales(sizes)):
            factor = torch.tensor([sx, sy] * 2, device=self.mean.device)
            scaled.append({"boxes": target["boxes"].to(self.mean.device).float().reshape(-1, 4) * factor,
                           "labels": target["labels"].to(self.mean.device)})
        return scaled

    def compute_loss(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The loss parts in either mode (validation loss runs in eval mode)."""
        batch, sizes = self.preprocess(images)
        output = self.network(batch, return_matching=self.matching_loss > 0, detach_matching=self.matching_loss_detach)
        anchors = self.anchors(output.grid_sizes, self.anchor_image_size, device=batch.device)
        targets = self.scale_targets(targets, sizes)
        # fp32 whatever autocast ran the network in: hard-negative ranking and the sums need the precision
        losses = self.loss(output.cls_logits.float(), output.box_regression.float(), anchors, targets)
        if output.matching:
            per_layer = [h * w * a for (h, w), a in zip(output.grid_sizes, self.anchors.anchors_per_layer())]
            losses["loss_match"] = self.matching_loss * matching_loss(
                output.matching, anchors, per_layer, targets, min_area_ratio=self.matching_loss_area_ratio,
                background_weight=self.matching_loss_background)
        return losses

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None,
                return_matching: bool = False) -> dict[str, Tensor] | list[dict]:
        """Train mode with targets: {"loss_box", "loss_cls"}. Eval mode: per image {"boxes" (D, 4) xyxy
        in that image's pixels, "labels" (D,), "scores" (D,)}, plus "matching" (a list of
        ``MatchingScores`` of that image, on the CPU) when ``return_matching``."""
        if self.training:
            if targets is None:
                raise ValueError("in train mode the detector needs targets")
            return self.compute_loss(images, targets)
        detections, matching = self.detect(images, return_matching=return_matching)
        if self.whole_image and self.zoom_out:
            detections = self.merge_zoomed_out(images, detections)
        if self.drop_inside:
            for detection in detections:
                keep = drop_inside(detection["boxes"], detection["scores"], detection["labels"], self.drop_inside)
                detection.update({k: v[keep] for k, v in detection.items()})
        if return_matching:  # the native pass's scores: what the heatmaps show
            for i, detection in enumerate(detections):
                detection["matching"] = [m.select(i) for m in matching]
        return detections

    def detect(self, images: list[Tensor] | Tensor, zoom: float = 1.0,
               return_matching: bool = False) -> tuple[list[dict[str, Tensor]], list[MatchingScores]]:
        """One eval pass (the photos scaled by ``zoom`` in whole-image mode): detections in each image's
        own pixels and, when asked, the matching scores of the batch."""
        batch, sizes = self.preprocess(images, zoom)
        bf16 = self.precision == "bf16" and batch.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = self.network(batch, return_matching=return_matching)
        anchors = self.anchors(output.grid_sizes, self.anchor_image_size, device=batch.device)
        detections = self.postprocess(output.cls_logits.float(), output.box_regression.float(), anchors,
                                      self.input_scales(sizes, zoom), sizes)
        matching = output.matching
        if bf16:  # the app's summaries and heatmaps in fp32
            matching = [dataclasses.replace(m, queries=m.queries.float(), keys=m.keys.float()) for m in matching]
        return detections, matching

    def merge_zoomed_out(self, images: list[Tensor] | Tensor,
                         detections: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Add the zoom-out passes' large boxes (side >= ``zoom_out_min`` px in the photo) to the native
        pass's detections, then class-wise NMS and the best ``detections_per_image``, as one pass would."""
        parts = [[d] for d in detections]
        for zoom in self.zoom_out:
            for part, extra in zip(parts, self.detect(images, zoom)[0]):
                part.append({k: v[box_area(extra["boxes"]).sqrt() >= self.zoom_out_min] for k, v in extra.items()})
        merged = []
        for part in parts:
            boxes, scores, labels = (torch.cat([d[k] for d in part]) for k in ("boxes", "scores", "labels"))
            keep = batched_nms(boxes, scores, labels, self.postprocess.nms_iou)[: self.postprocess.detections_per_image]
            merged.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return merged


def build_detector(config: DetectorConfig, class_names: list[str] | None = None) -> Detector:
    """Wire a Detector from its config: the one place that reads a DetectorConfig."""
    if class_names is None:
        class_names = [f"class{i}" for i in range(1, config.num_classes + 1)]
    if len(class_names) != config.num_classes:
        raise ValueError(f"{len(class_names)} class names for num_classes={config.num_classes}")
    backbone = VGGBackbone(config.width, config.batch_norm, config.fc6_dilation)
    neck = BorrowNeck(backbone.out_channels, backbone.strides, config.neck,
                      scaled_channels(config.borrow_channels, config.width), config.similarity, config.keys_per_map,
                      config.matching_top_k)
    anchors = AnchorGenerator(backbone.strides, config.anchor_scale, config.aspect_ratios, config.top_octaves)
    head = SSDHead(backbone.out_channels, anchors.anchors_per_layer(), config.num_classes + 1,
                   config.prior_prob)
    box_coder = BoxCoder()
    postprocess = PostProcess(box_coder, config.score_threshold, config.candidates_per_class,
                              config.nms_iou, config.detections_per_image)
    detector = Detector(BorrowSSD(backbone, neck, head), anchors, MultiBoxLoss(box_coder, config.match_iou,
                                                                              min_anchors=config.min_anchors_per_box), postprocess,
                        config.input_size, class_names, whole_image=config.inference == "whole",
                        shrink_above=config.max_whole_side if config.oversize == "shrink" else 0,
                        zoom_out=config.zoom_out, zoom_out_min=config.zoom_out_min, drop_inside=config.drop_inside,
                        matching_loss=config.matching_loss,
                        matching_loss_background=config.matching_loss_background,
                        matching_loss_detach=config.matching_loss_detach,
                        matching_loss_area_ratio=config.matching_loss_area_ratio)
    detector.config = config  # what a checkpoint records to rebuild it
    return detector
