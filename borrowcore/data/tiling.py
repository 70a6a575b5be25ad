"""Sliced inference on large images (SPEC §1, "tiles ... at native resolution").

An image is cut into overlapping T x T windows at native resolution (no downscaling that erases
10-30 px objects), the windows go through any detector in batches, each window's detections are shifted
back to the image's pixels and the whole set is merged with class-wise NMS. Objects cut by a window edge
give truncated boxes that IoU-based NMS often keeps (a 10 px sliver of a 30 px car has IoU 0.33 with the
full box); ``merge_edges`` joins such a box with the box that continues it across the edge.

``detect_tiled`` takes a plain callable (a ``Detector``, or predict's onnxruntime backend), so ``predict``
and ``eval`` share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area

from borrowcore.data.presets import IMAGENET_MEAN, crop_boxes

# a detector: images (3, h, w) -> per image {"boxes" (D, 4) xyxy in that image's pixels, "scores", "labels"}
DetectFn = Callable[[list[Tensor]], list[dict[str, Tensor]]]

@dataclass(frozen=True)
class Window:
    """One tile: pixels [x0, x1) x [y0, y1) of the image (smaller than T x T only where the image is)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def inner_sides(self, height: int, width: int) -> tuple[bool, bool, bool, bool]:
        """Which of (left, top, right, bottom) lie inside the image, where an object can be cut."""
        return self.x0 > 0, self.y0 > 0, self.x1 < width, self.y1 < height


def window_starts(length: int, tile_size: int, overlap: float) -> list[int]:
    """Start offsets along one axis: stride T - round(T * overlap), the last window flush with the end."""
    if length <= tile_size:
        return [0]
    stride = max(1, tile_size - round(tile_size * overlap))
    starts = list(range(0, length - tile_size, stride))
    return starts + [length - tile_size]  # every window full size; the last overlaps a bit more


def tile_windows(height: int, width: int, tile_size: int, overlap: float = 0.2) -> list[Window]:
    """Row-major T x T windows covering an H x W image, neighbours sharing ``overlap`` of T."""
    if tile_size < 1:
        raise ValueError(f"tile size must be a positive number of pixels, got {tile_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"tile overlap is a fraction of the tile in [0, 1), got {overlap}")
    return [Window(x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height))
            for y0 in window_starts(height, tile_size, overlap) for x0 in window_starts(width, tile_size, overlap)]


def crop_window(image: Tensor, window: Window, tile_size: int,
                fill: Sequence[float] = IMAGENET_MEAN) -> Tensor:
    """The window's pixels (3, T, T), padded right/bottom with ``fill`` (in [0, 1]) where the image is smaller.

    The mean colour normalises to 0, as RandomZoomOut's fill does in training (SPEC §6).
    """
    crop = image[:, window.y0:window.y1, window.x0:window.x1]  # (3, h, w), h, w <= T
    if crop.shape[-2:] == (tile_size, tile_size):
        return crop
    value = torch.tensor(fill, device=image.device).view(3, 1, 1)
    if image.dtype == torch.uint8:
        value = (value * 255).round()
    tile = value.to(image.dtype).expand(3, tile_size, tile_size).clone()
    tile[:, :crop.shape[-2], :crop.shape[-1]] = crop
    return tile


def cut_flags(boxes: Tensor, window: Window, inner: tuple[bool, bool, bool, bool], margin: float) -> Tensor:
    """(D, 4) bool per (left, top, right, bottom): the box ends within ``margin`` px of an inner window edge.

    boxes (D, 4) xyxy in image pixels.
    """
    edges = torch.tensor([window.x0, window.y0, window.x1, window.y1], dtype=boxes.dtype, device=boxes.device)
    near = torch.cat([boxes[:, :2] <= edges[:2] + margin, boxes[:, 2:] >= edges[2:] - margin], dim=1)  # (D, 4)
    return near & torch.tensor(inner, device=boxes.device)


def continuations(box: Tensor, cut: Tensor, boxes: Tensor, margin: float, min_overlap: float) -> Tensor:
    """(D,) bool: which of ``boxes`` carry ``box`` on across an edge it was cut at.

    For a cut at the box's right side (x = x2): the other box reaches past it (x2' > x2 + margin), starts at
    or before it (x1' <= x2 + margin: overlapping, from the next overlapping tile, or abutting, with no
    overlap), and the two share at least ``min_overlap`` of the shorter one's extent in y. The other
    three sides alike. box (4,) xyxy, cut (4,) bool (left, top, right, bottom), boxes (D, 4).
    """
    x1, y1, x2, y2 = box.tolist()
    others_x1, others_y1, others_x2, others_y2 = boxes.unbind(1)  # (D,) each

    def shared(lo: float, hi: float, others_lo: Tensor, others_hi: Tensor) -> Tensor:
        inter = (others_hi.clamp(max=hi) - others_lo.clamp(min=lo)).clamp(min=0)
        return inter / (others_hi - others_lo).clamp(max=hi - lo).clamp(min=1e-6)  # over the shorter extent

    along_y = shared(y1, y2, others_y1, others_y2) >= min_overlap
    along_x = shared(x1, x2, others_x1, others_x2) >= min_overlap
    left, top, right, bottom = cut.tolist()
    follows = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if left:
        follows |= (others_x1 < x1 - margin) & (others_x2 >= x1 - margin) & along_y
    if right:
        follows |= (others_x2 > x2 + margin) & (others_x1 <= x2 + margin) & along_y
    if top:
        follows |= (others_y1 < y1 - margin) & (others_y2 >= y1 - margin) & along_x
    if bottom:
        follows |= (others_y2 > y2 + margin) & (others_y1 <= y2 + margin) & along_x
    return follows


def merge_cut_boxes(boxes: Tensor, scores: Tensor, labels: Tensor, cuts: Tensor, margin: float = 2.0,
                    min_overlap: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Greedily join each box cut at a tile edge with the box of its class that continues it.

    Best score first, each cut box takes its best-scoring continuation (see ``continuations``); the pair
    becomes their union with the higher score, cut where the part reaching each of its sides was cut, and
    joins again while it is still cut and continued (an object over four tiles). Every pair is a guess from
    geometry alone, so drop low scores first (``score_threshold`` of ``detect_tiled``).
    boxes (D, 4) xyxy, scores (D,), labels (D,), cuts (D, 4) bool -> the same, D' <= D.
    """
    boxes, scores, cuts = boxes.clone(), scores.clone(), cuts.clone()
    alive = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for p in scores.argsort(descending=True).tolist():
        while alive[p] and cuts[p].any():
            follows = continuations(boxes[p], cuts[p], boxes, margin, min_overlap) & alive & (labels == labels[p])
            follows[p] = False
            if not follows.any():
                break
            q = int(torch.where(follows, scores, scores.new_tensor(-1.0)).argmax())
            union = torch.cat([torch.minimum(boxes[p, :2], boxes[q, :2]), torch.maximum(boxes[p, 2:], boxes[q, 2:])])
            # a side of the union is cut if the part that reaches it was cut there
            reaches = torch.stack([torch.cat([boxes[i, :2] <= union[:2] + margin, boxes[i, 2:] >= union[2:] - margin])
                                   for i in (p, q)])  # (2, 4)
            cuts[p] = (reaches & cuts[[p, q]]).any(0)
            boxes[p], scores[p] = union, torch.maximum(scores[p], scores[q])
            alive[q] = False
    return boxes[alive], scores[alive], labels[alive], cuts[alive]


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float = 0.45,
                     cuts: Tensor | None = None, edge_margin: float = 2.0,
                     max_detections: int | None = None) -> dict[str, Tensor]:
    """All tiles' detections in image pixels -> one set: edge merging (when ``cuts`` is given), then
    class-wise NMS (``batched_nms``), best first, at most ``max_detections``."""
    if cuts is not None:
        boxes, scores, labels, _ = merge_cut_boxes(boxes, scores, labels, cuts, edge_margin)
    keep = batched_nms(boxes, scores, labels, iou_threshold)  # sorted by score, descending
    if max_detections is not None:
        keep = keep[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


@torch.inference_mode()
def recipe_tile_size(detector: object, height: int, width: int, tile: int | None = None) -> int | None:
    """The tile size T the checkpoint's inference recipe asks for on an H x W image, or None for one pass.

    An explicit ``tile`` wins. Else the detector's config decides (SPEC §1): "tiles" cuts S x S tiles;
    "whole" takes the image whole unless a side exceeds ``max_whole_side`` (then S x S tiles, so memory
    stays bounded, or with ``oversize: shrink`` the detector scales it down itself); "resize" never tiles. A detector without a config (ONNX) never tiles."""
    if tile:
        return tile
    config = getattr(detector, "config", None)
    if config is None or config.inference == "resize":
        return None
    if config.inference == "tiles":
        return config.input_size
    if max(height, width) > config.max_whole_side and getattr(config, "oversize", "tiles") == "tiles":
        return config.input_size
    return None


def detect_tiled(detect: DetectFn, image: Tensor, tile_size: int, overlap: float = 0.2, batch_size: int = 8,
                 iou_threshold: float = 0.45, score_threshold: float = 0.0, merge_edges: bool = False,
                 edge_margin: float = 2.0, max_detections: int | None = None) -> dict[str, Tensor]:
    """Detections on one image (3, H, W) from overlapping T x T tiles at native resolution.

    Args:
        detect: images -> detections in each image's pixels (a ``Detector`` resizes a T x T tile to its
            input size S: T = S is native resolution, T = S / 2 a 2x zoom).
        tile_size: T; images smaller than T in a dimension are padded with the mean colour.
        overlap: neighbouring tiles share this fraction of T; objects up to about overlap * T px fit
            whole in some tile.
        batch_size: tiles per call of ``detect``.
        iou_threshold: class-wise NMS across tiles (0.45, the detector's own).
        score_threshold: detections at or below it are dropped before merging.
        merge_edges: join boxes cut at a tile edge with the box that continues them (a guess from geometry:
            pair it with a real ``score_threshold``, such as predict's --conf, not 0.01).
        edge_margin: px from a tile edge within which a box counts as cut.
        max_detections: keep the best this many after merging (None: all).

    Returns {"boxes" (D, 4) xyxy in the image's pixels, "scores" (D,), "labels" (D,)}, best first.
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    windows = tile_windows(height, width, tile_size, overlap)
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        detections = detect([crop_window(image, w, tile_size) for w in chunk])
        for window, detection in zip(chunk, detections):
            keep = detection["scores"] > score_threshold
            offset = torch.tensor([window.x0, window.y0] * 2, dtype=torch.float32)
            boxes = detection["boxes"][keep].float().cpu() + offset  # tile -> image pixels
            boxes = torch.minimum(boxes, torch.tensor([width, height] * 2, dtype=torch.float32))  # drop the padding
            cuts = cut_flags(boxes, window, window.inner_sides(height, width), edge_margin)
            parts.append((boxes, detection["scores"][keep].float().cpu(), detection["labels"][keep].cpu(), cuts))
    boxes, scores, labels, cuts = (torch.cat(column) for column in zip(*parts))
    valid = box_area(boxes) > 0  # a box wholly in the padding
    return merge_detections(boxes[valid], scores[valid], labels[valid], iou_threshold,
                            cuts[valid] if merge_edges else None, edge_margin, max_detections)


class TiledDataset(torch.utils.data.Dataset):
    """The T x T windows of every image of a COCO dataset (no transforms), as a dataset of their own: the
    window's pixels (padded like ``crop_window``) and the ground truth moved into it, boxes kept when at
    least ``min_visibility`` of their area is inside (the training crop's rule). What sliced inference
    sees, for measures that run the detector one input at a time (``explain.borrow_precision``)."""

    def __init__(self, dataset, tile_size: int, overlap: float = 0.2, min_visibility: float = 0.5) -> None:
        self.dataset, self.tile_size, self.min_visibility = dataset, tile_size, min_visibility
        self.windows: list[tuple[int, Window]] = []
        for index, image_id in enumerate(dataset.ids):
            info = dataset.coco.imgs[image_id]
            self.windows += [(index, w) for w in tile_windows(info["height"], info["width"], tile_size, overlap)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        source, window = self.windows[index]
        image, target = self.dataset[source]
        boxes, keep = crop_boxes(target["boxes"].as_subclass(Tensor), window.x0, window.y0, self.tile_size,
                                 self.min_visibility)
        size = (self.tile_size, self.tile_size)
        return tv_tensors.Image(crop_window(image.as_subclass(Tensor), window, self.tile_size)), {
            **target, "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
            "labels": target["labels"][keep], "window": (window.x0, window.y0)}
