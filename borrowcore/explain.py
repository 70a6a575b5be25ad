"""Where each shallow cell borrowed from: matching scores mapped to image coordinates.

The explain path runs the detector with ``return_matching=True`` and turns each borrowing layer's S_hat
(m_n x d_n) into things a person can look at: per-cell heatmaps over the deeper layers, the top source
cells, and which other detections a small detection borrowed from. ``borrow_precision`` measures the
paper's claim on the borrow benchmark: how much of a small instance's matching mass lands on a larger
instance of the same class, against the chance level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from borrowcore.neck import MatchingScores


@dataclass
class Explanation:
    """One image's detections and matching scores, with the geometry to draw them on the image."""

    detections: dict[str, Tensor]  # boxes (D, 4) xyxy in image pixels, labels, scores
    matching: list[MatchingScores]  # per borrowing layer, shallow first; scores (m_n, d_n)
    image_size: tuple[int, int]  # (H, W) of the image
    input_size: int  # S of the network input
    class_names: list[str]

    @property
    def borrows(self) -> bool:
        return bool(self.matching)

    def layer(self, layer: int) -> MatchingScores:
        for m in self.matching:
            if m.layer == layer:
                return m
        raise ValueError(f"layer {layer} does not borrow (borrowing layers: {[m.layer for m in self.matching]})")

    def scale(self) -> tuple[float, float]:
        """(sx, sy) from network-input pixels to image pixels."""
        h, w = self.image_size
        return w / self.input_size, h / self.input_size


def cell_centres(grid: tuple[int, int], stride: int) -> Tensor:
    """(h * w, 2) cell centres (x, y) in network-input pixels, row-major (as the anchors)."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride], dim=1).float()


def cell_boxes(grid: tuple[int, int], stride: int, scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """(h * w, 4) xyxy box of each cell, scaled to image pixels by ``scale`` = (sx, sy)."""
    centres = cell_centres(grid, stride)
    half = stride / 2
    boxes = torch.cat([centres - half, centres + half], dim=1)
    return boxes * torch.tensor([scale[0], scale[1], scale[0], scale[1]])


def cells_in_box(grid: tuple[int, int], stride: int, box: Tensor) -> Tensor:
    """Indices of the cells whose centre lies in ``box`` (xyxy, network-input pixels); the cell under
    the box's centre when none does (a box smaller than a cell)."""
    centres = cell_centres(grid, stride)
    inside = ((centres[:, 0] >= box[0]) & (centres[:, 0] <= box[2]) & (centres[:, 1] >= box[1]) & (centres[:, 1] <= box[3]))
    if inside.any():
        return inside.nonzero().squeeze(1)
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    h, w = grid
    i, j = min(h - 1, max(0, int(cy // stride))), min(w - 1, max(0, int(cx // stride)))
    return torch.tensor([i * w + j])


def source_cell_centres(matching: MatchingScores) -> Tensor:
    """(d_n, 2) centres of all deeper cells, in S_hat's column order, network-input pixels."""
    return torch.cat([cell_centres(g, s) for g, s in zip(matching.source_grids, matching.source_strides)])


def split_by_source_layer(matching: MatchingScores, values: Tensor) -> list[Tensor]:
    """A (d_n,) vector over deeper cells -> one (h', w') map per deeper layer."""
    maps, start = [], 0
    for h, w in matching.source_grids:
        maps.append(values[start:start + h * w].reshape(h, w))
        start += h * w
    return maps


def heatmaps(matching: MatchingScores, rows: Tensor | list[int]) -> list[Tensor]:
    """Mean S_hat row of ``rows`` (query cells) as one (h', w') mass map per deeper layer; sums to 1."""
    scores = matching.scores[0] if matching.scores.dim() == 3 else matching.scores  # (m_n, d_n)
    return split_by_source_layer(matching, scores[torch.as_tensor(rows)].float().mean(0))


def top_sources(matching: MatchingScores, rows: Tensor | list[int], k: int = 5) -> list[dict]:
    """The k deeper cells with the most mass: layer, grid cell, centre (input pixels) and share."""
    scores = matching.scores[0] if matching.scores.dim() == 3 else matching.scores
    mass = scores[torch.as_tensor(rows)].float().mean(0)
    values, columns = mass.topk(min(k, mass.numel()))
    offsets = np.cumsum([0] + [h * w for h, w in matching.source_grids])
    centres = source_cell_centres(matching)
    out = []
    for value, column in zip(values.tolist(), columns.tolist()):
        n = int(np.searchsorted(offsets, column, side="right") - 1)
        h, w = matching.source_grids[n]
        cell = int(column - offsets[n])
        out.append({"layer": matching.source_layers[n], "row": cell // w, "col": cell % w, "column": column,
                    "centre": centres[column].tolist(), "share": value})
    return out


def layer_view(matching: MatchingScores) -> dict[str, Tensor]:
    """For every query cell: the deeper layer and cell holding most of its mass, and its row's entropy."""
    scores = (matching.scores[0] if matching.scores.dim() == 3 else matching.scores).float()  # (m_n, d_n)
    h, w = matching.query_grid
    offsets = torch.tensor(np.cumsum([0] + [gh * gw for gh, gw in matching.source_grids]))
    argmax = scores.argmax(dim=1)
    source_layer = torch.bucketize(argmax, offsets[1:], right=True)
    entropy = -(scores * scores.clamp_min(1e-12).log()).sum(dim=1)
    return {"argmax": argmax.reshape(h, w), "source_layer_index": source_layer.reshape(h, w),
            "entropy": entropy.reshape(h, w), "max_entropy": torch.tensor(float(np.log(scores.shape[1])))}


def best_anchor_layer(box_input: Tensor, anchors: Tensor, anchors_per_layer: list[int]) -> int:
    """1-based detection layer of the anchor with the highest IoU with ``box_input`` (network pixels)."""
    best = int(box_iou(box_input[None], anchors).argmax())
    return int(np.searchsorted(np.cumsum(anchors_per_layer), best, side="right")) + 1


def borrowed_from(explanation: Explanation, index: int, layer: int | None = None) -> list[dict]:
    """Which other detections detection ``index`` borrowed from, with the share of its mass on each.

    Its query cells are those inside its box on ``layer`` (default: the shallowest borrowing layer);
    a deeper cell counts for a detection when its centre lies inside that detection's box.
    """
    if not explanation.borrows:
        return []
    matching = explanation.layer(layer) if layer else explanation.matching[0]
    sx, sy = explanation.scale()
    to_input = torch.tensor([1 / sx, 1 / sy, 1 / sx, 1 / sy])
    boxes = explanation.detections["boxes"].cpu().float() * to_input  # network-input pixels
    rows = cells_in_box(matching.query_grid, matching.query_stride, boxes[index])
    scores = matching.scores[0] if matching.scores.dim() == 3 else matching.scores
    mass = scores[rows].float().mean(0)  # (d_n,)
    centres = source_cell_centres(matching)
    links = []
    for other, box in enumerate(boxes):
        if other == index:
            continue
        inside = ((centres[:, 0] >= box[0]) & (centres[:, 0] <= box[2]) & (centres[:, 1] >= box[1]) & (centres[:, 1] <= box[3]))
        share = float(mass[inside].sum())
        if inside.any():
            links.append({"detection": other, "share": share, "cells": int(inside.sum()),
                          "label": int(explanation.detections["labels"][other])})
    return sorted(links, key=lambda link: -link["share"])


@torch.inference_mode()
def explain(detector: torch.nn.Module, image: Tensor) -> Explanation:
    """Run ``detector`` on one image (3, H, W) with matching scores returned."""
    detector.eval()
    device = next(detector.parameters()).device
    [detection] = detector([image.to(device)], return_matching=True)
    matching = [MatchingScores(m.layer, m.scores[0].cpu(), m.query_grid, m.query_stride, m.source_layers,
                               m.source_grids, m.source_strides) for m in detection.pop("matching")]
    return Explanation({k: v.cpu() for k, v in detection.items()}, matching, tuple(image.shape[-2:]),
                       detector.input_size, list(detector.class_names))


@torch.inference_mode()
def borrow_precision(detector: torch.nn.Module, dataset, device: str | torch.device = "cpu",
                     small_side: float = 32.0) -> dict[str, float]:
    """Share of each small ground-truth instance's matching mass on larger same-class instances.

    For each small instance (sqrt(area) < ``small_side``): the S_hat rows of its cells (centres inside
    its box) on the layer of its best anchor; the mass on deeper cells whose centres lie inside a larger
    ground-truth instance of the same class; averaged over its cells, then over instances. The chance
    level is the share of deeper cells those instances cover (what a uniform row would give).
    """
    detector.eval().to(device)
    network, s = detector.network, detector.input_size
    shares, chances, skipped = [], [], 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        h, w = image.shape[-2:]
        batch, _ = detector.preprocess([image.as_subclass(Tensor).to(device)])
        output = network(batch, return_matching=True)
        if not output.matching:
            raise ValueError("borrow precision needs a borrowing ablation (borrow or full)")
        anchors = detector.anchors(output.grid_sizes, s, device=torch.device("cpu"))
        per_layer = [gh * gw * detector.anchors.num_anchors_per_location() for gh, gw in output.grid_sizes]
        boxes = target["boxes"].as_subclass(Tensor).float() * torch.tensor([s / w, s / h, s / w, s / h])
        labels = target["labels"]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        original_areas = areas * (w / s) * (h / s)
        for i in range(len(boxes)):
            if original_areas[i].sqrt() >= small_side:
                continue
            layer = best_anchor_layer(boxes[i], anchors, per_layer)
            matching = next((m for m in output.matching if m.layer == layer), None)
            larger = (labels == labels[i]) & (areas > areas[i])
            if matching is None or not larger.any():
                skipped += 1
                continue
            rows = cells_in_box(matching.query_grid, matching.query_stride, boxes[i])
            centres = source_cell_centres(matching)
            on_twin = torch.zeros(len(centres), dtype=torch.bool)
            for box in boxes[larger]:
                on_twin |= ((centres[:, 0] >= box[0]) & (centres[:, 0] <= box[2]) & (centres[:, 1] >= box[1]) & (centres[:, 1] <= box[3]))
            scores = matching.scores[0].float().cpu()  # (m_n, d_n)
            shares.append(float(scores[rows][:, on_twin].sum(1).mean()))
            chances.append(float(on_twin.float().mean()))
    if not shares:
        return {"borrow_precision": -1.0, "chance": -1.0, "instances": 0, "skipped": skipped}
    return {"borrow_precision": float(np.mean(shares)), "chance": float(np.mean(chances)),
            "instances": len(shares), "skipped": skipped}
