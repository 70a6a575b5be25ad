"""Where each shallow cell borrowed from: matching scores mapped to image coordinates.

The explain path runs the detector with ``return_matching=True`` and turns each borrowing layer's S_hat
(m_n x d_n) into things a person can look at: per-cell heatmaps over the deeper layers, the top source
cells, and which other detections a small detection borrowed from; ``borrow_view`` gathers all of it
for one query (a detection or a cell), placed in image pixels, for the app to draw. ``borrow_precision``
measures the paper's claim on the borrow benchmark: how much of a small instance's matching mass lands on
a larger instance of the same class, against the chance level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from borrowcore.models.borrow_targets import (  # noqa: F401  (re-exported: the app and tests read them here)
    LARGER_AREA_RATIO, borrow_targets, cell_centres, cells_in_box, is_larger_instance, points_in_boxes,
    source_cell_centres,
)
from borrowcore.models.neck import MatchingScores


@dataclass
class Explanation:
    """One image's detections and matching scores, with the geometry to draw them on the image."""

    detections: dict[str, Tensor]  # boxes (D, 4) xyxy in image pixels, labels, scores
    matching: list[MatchingScores]  # per borrowing layer, shallow first; one image (batch of 1)
    image_size: tuple[int, int]  # (H, W) of the image
    input_size: int  # S of the network input
    class_names: list[str]
    # per detection, the 1-based layer of its best anchor (where it was most likely detected); empty
    # for checkpoints that do not borrow
    detection_layers: list[int] = field(default_factory=list)
    anchors: Tensor | None = None  # (A, 4) xyxy in input pixels, when the checkpoint borrows
    anchors_per_layer: list[int] = field(default_factory=list)
    whole_image: bool = False  # the network saw the image itself, padded (SPEC §1), not an S x S resize
    # whole-image mode: (x, y) factors from image pixels to the network input's (below 1 for a shrunk photo)
    input_scale: tuple[float, float] = (1.0, 1.0)
    # layer -> layer_view(its matching scores), computed once (explain's ``summaries``), else on demand
    layer_views: dict[int, dict[str, Tensor]] = field(default_factory=dict)

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
        if self.whole_image:
            return 1.0 / self.input_scale[0], 1.0 / self.input_scale[1]
        h, w = self.image_size
        return w / self.input_size, h / self.input_size


def cell_boxes(grid: tuple[int, int], stride: int, scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """(h * w, 4) xyxy box of each cell, scaled to image pixels by ``scale`` = (sx, sy)."""
    centres = cell_centres(grid, stride)
    half = stride / 2
    boxes = torch.cat([centres - half, centres + half], dim=1)
    return boxes * torch.tensor([scale[0], scale[1], scale[0], scale[1]])


def split_by_source_layer(matching: MatchingScores, values: Tensor) -> list[Tensor]:
    """A (d_n,) vector over deeper cells -> one (h', w') map per deeper layer."""
    maps, start = [], 0
    for h, w in matching.source_grids:
        maps.append(values[start:start + h * w].reshape(h, w))
        start += h * w
    return maps


def heatmaps(matching: MatchingScores, rows: Tensor | list[int]) -> list[Tensor]:
    """Mean S_hat row of ``rows`` (query cells) as one (h', w') mass map per deeper layer; sums to 1."""
    return split_by_source_layer(matching, row_mass(matching, rows))


def top_sources(matching: MatchingScores, rows: Tensor | list[int], k: int = 5) -> list[dict]:
    """The k deeper cells with the most mass: layer, grid cell, centre (input pixels) and share."""
    mass = row_mass(matching, rows)
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
    """For every query cell: the deeper layer and cell holding most of its mass, that share ("peak"), and
    its row's entropy; a block of rows at a time (``MatchingScores.summary``)."""
    summary = matching.summary()
    h, w = matching.query_grid
    offsets = torch.tensor(np.cumsum([0] + [gh * gw for gh, gw in matching.source_grids]))
    source_layer = torch.bucketize(summary["argmax"], offsets[1:], right=True)
    return {"argmax": summary["argmax"].reshape(h, w), "source_layer_index": source_layer.reshape(h, w),
            "peak": summary["peak"].reshape(h, w), "entropy": summary["entropy"].reshape(h, w),
            "max_entropy": torch.tensor(float(np.log(matching.num_sources)))}


def best_anchor_layer(box_input: Tensor, anchors: Tensor, anchors_per_layer: list[int]) -> int:
    """1-based detection layer of the anchor with the highest IoU with ``box_input`` (network pixels)."""
    best = int(box_iou(box_input[None], anchors).argmax())
    return int(np.searchsorted(np.cumsum(anchors_per_layer), best, side="right")) + 1


def borrowed_from(explanation: Explanation, index: int, layer: int | None = None,
                  among: Sequence[int] | None = None) -> list[dict]:
    """Which other detections detection ``index`` borrowed from, with the share of its mass on each.

    Its query cells are those inside its box on ``layer`` (default: the shallowest borrowing layer);
    a deeper cell counts for a detection when its centre lies inside that detection's box. ``among``
    limits the candidates (default: every detection). ``chance`` is the share a uniform row would give.
    """
    if not explanation.borrows:
        return []
    matching = explanation.layer(layer) if layer else explanation.matching[0]
    boxes = detection_boxes_input(explanation)
    rows = cells_in_box(matching.query_grid, matching.query_stride, boxes[index])
    mass = row_mass(matching, rows)  # (d_n,)
    centres = source_cell_centres(matching)
    links = []
    for other in range(len(boxes)) if among is None else among:
        if other == index:
            continue
        inside = points_in_box(centres, boxes[other])
        if inside.any():
            links.append({"detection": other, "share": float(mass[inside].sum()), "cells": int(inside.sum()),
                          "chance": float(inside.float().mean()),
                          "label": int(explanation.detections["labels"][other])})
    return sorted(links, key=lambda link: -link["share"])


def points_in_box(points: Tensor, box: Tensor) -> Tensor:
    """(n,) mask of the points (n, 2) (x, y) inside ``box`` (xyxy, edges included)."""
    return (points[:, 0] >= box[0]) & (points[:, 0] <= box[2]) & (points[:, 1] >= box[1]) & (points[:, 1] <= box[3])


def detection_boxes_input(explanation: Explanation) -> Tensor:
    """(D, 4) detection boxes in network-input pixels."""
    sx, sy = explanation.scale()
    return explanation.detections["boxes"].cpu().float() / torch.tensor([sx, sy, sx, sy])


def row_mass(matching: MatchingScores, rows: Tensor | Sequence[int]) -> Tensor:
    """(d_n,) mean S_hat row of the query cells ``rows``: a distribution over all deeper cells."""
    return matching.rows(rows).mean(0)


@torch.inference_mode()
def explain(detector: torch.nn.Module, image: Tensor, summaries: bool = False) -> Explanation:
    """Run ``detector`` on one image (3, H, W) with matching scores returned; with ``summaries`` also every
    borrowing layer's ``layer_view`` (the app computes them with the inference, in its one queue: they cost
    about what the inference does)."""
    detector.eval()
    device = next(detector.parameters()).device
    [detection] = detector([image.to(device)], return_matching=True)
    matching = detection.pop("matching")  # this image's, on the CPU
    explanation = Explanation({k: v.cpu() for k, v in detection.items()}, matching, tuple(image.shape[-2:]),
                              detector.input_size, list(detector.class_names),
                              whole_image=getattr(detector, "whole_image", False),
                              input_scale=tuple(detector.input_scales([tuple(image.shape[-2:])])[0]))
    if matching and matching[0].layer == 1:  # layer 1 borrows from all the others: every grid is known
        grids = [matching[0].query_grid, *matching[0].source_grids]
        explanation.anchors = detector.anchors(grids, detector.anchor_image_size, device=torch.device("cpu")).clone()
        explanation.anchors_per_layer = [h * w * a for (h, w), a in zip(grids, detector.anchors.anchors_per_layer())]
        explanation.detection_layers = instance_layers(explanation, explanation.detections["boxes"])
    if summaries:
        explanation.layer_views = {m.layer: layer_view(m) for m in matching}
    return explanation


def instance_layers(explanation: Explanation, boxes: Tensor) -> list[int]:
    """The layer of each box's best anchor; boxes (n, 4) xyxy in image pixels."""
    if explanation.anchors is None:
        return []
    sx, sy = explanation.scale()
    boxes = boxes.cpu().float() / torch.tensor([sx, sy, sx, sy])
    return [best_anchor_layer(box, explanation.anchors, explanation.anchors_per_layer) for box in boxes]


def with_instances(explanation: Explanation, boxes: Tensor, labels: Tensor, class_names: list[str]) -> Explanation:
    """The same matching scores with other instances (e.g. the ground truth) in place of the detections,
    so queries and links use them; boxes (n, 4) xyxy in image pixels, labels 1-based into ``class_names``."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    instances = {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
                 "scores": torch.ones(len(boxes))}
    return dataclasses.replace(explanation, detections=instances, class_names=list(class_names),
                               detection_layers=instance_layers(explanation, boxes))


@torch.inference_mode()
def borrow_precision(detector: torch.nn.Module, dataset, device: str | torch.device = "cpu",
                     small_side: float = 32.0, min_area_ratio: float = LARGER_AREA_RATIO,
                     background_queries: int = 256) -> dict:
    """Where each small ground-truth instance's matching mass goes: on larger same-class instances (the
    borrow precision), on other instances, or on background; overall and per borrowing layer.

    For each small instance (sqrt(area) < ``small_side`` in the image's own pixels) with a larger instance
    of its class (``borrow_targets``): the S_hat rows of its query cells on the layer of its best anchor;
    the mass on its target cells, averaged over its cells, then over instances. ``chance`` is the share
    of deeper cells the targets cover (what a uniform row would give); ``background`` the mass on cells in
    no instance (ignore regions count as instances), ``background_chance`` their share. Small instances
    without a usable larger one are counted in ``skipped``.

    Borrowing can only tell a small instance from background if background cells borrow differently:
    ``background_queries_on_objects`` is the mass that cells of the shallowest borrowing layer lying in no
    instance (up to ``background_queries`` of them an image, evenly spaced) put on deeper cells inside
    instances, against ``objects_chance``; compare it with ``1 - background``, the small instances' own.
    """
    detector.eval().to(device)
    network = detector.network
    records = []  # (layer, precision, chance, background, background chance) per small instance
    skipped = 0
    background_rows = []  # (mass on objects, objects' share of the deeper cells) per image
    for index in range(len(dataset)):
        image, target = dataset[index]
        h, w = image.shape[-2:]
        batch, _ = detector.preprocess([image.as_subclass(Tensor).to(device)])
        output = network(batch, return_matching=True)
        if not output.matching:
            raise ValueError("borrow precision needs a borrowing ablation (borrow or full)")
        anchors = detector.anchors(output.grid_sizes, detector.anchor_image_size, device=torch.device("cpu"))
        per_layer = [gh * gw * a for (gh, gw), a in zip(output.grid_sizes, detector.anchors.anchors_per_layer())]
        [(sx, sy)] = detector.input_scales([(h, w)])
        boxes = target["boxes"].as_subclass(Tensor).float() * torch.tensor([sx, sy, sx, sy])
        original_sides = (target["boxes"][:, 2:] - target["boxes"][:, :2]).as_subclass(Tensor).float().prod(1).sqrt()
        small = (original_sides < small_side) & (target["labels"] > 0)
        found, missed = borrow_targets(boxes, target["labels"], anchors, per_layer, output.matching, small,
                                       min_area_ratio)
        skipped += missed
        by_layer = {m.layer: m for m in output.matching}
        first = output.matching[0]
        objects = points_in_boxes(source_cell_centres(first), boxes).any(dim=1)  # (d_1,)
        empty = ~points_in_boxes(cell_centres(first.query_grid, first.query_stride), boxes).any(dim=1)  # (m_1,)
        if len(boxes) and empty.any() and objects.any():
            rows = empty.nonzero().squeeze(1)
            rows = rows[torch.linspace(0, len(rows) - 1, min(background_queries, len(rows))).long()]
            background_rows.append((float(first.rows(rows)[:, objects].sum(1).mean()), float(objects.float().mean())))
        for t in found:
            rows = by_layer[t.layer].rows(t.rows)  # (r, d_n)
            records.append((t.layer, float(rows[:, t.targets].sum(1).mean()), float(t.targets.float().mean()),
                            float(rows[:, ~t.objects].sum(1).mean()), float((~t.objects).float().mean())))
    if not records:
        return {"borrow_precision": -1.0, "chance": -1.0, "instances": 0, "skipped": skipped}

    def summarise(rows: list[tuple]) -> dict:
        values = np.array([r[1:] for r in rows])
        means = values.mean(0)
        return {"borrow_precision": float(means[0]), "chance": float(means[1]), "background": float(means[2]),
                "background_chance": float(means[3]), "instances": len(rows)}

    layers = sorted({r[0] for r in records})
    on_objects, objects_chance = np.mean(background_rows, axis=0) if background_rows else (-1.0, -1.0)
    return {**summarise(records), "skipped": skipped, "background_queries_on_objects": float(on_objects),
            "objects_chance": float(objects_chance),
            "by_layer": {str(layer): summarise([r for r in records if r[0] == layer]) for layer in layers}}


# ---- What the app draws for one query, placed on the image (image pixels throughout) ----

@dataclass
class GridMap:
    """Values on one layer's cells, placed on the image: cell (i, j) is centred at
    ``origin + (j * cell_size[0], i * cell_size[1])`` in image pixels."""

    layer: int
    values: np.ndarray  # (h, w)
    origin: tuple[float, float]  # (x, y) of cell (0, 0)'s centre
    cell_size: tuple[float, float]  # (w, h) of one cell

    def centre(self, row: int, col: int) -> tuple[float, float]:
        return self.origin[0] + col * self.cell_size[0], self.origin[1] + row * self.cell_size[1]


@dataclass
class BorrowView:
    """One query (a detection or a cell of a shallow layer) and where its matching mass went.

    ``maps`` hold the share of the query's S_hat row on each deeper cell (together they sum to 1);
    ``combined`` spreads each cell's share evenly over the finest deeper grid, so it too sums to 1 and
    cells of different layers compare as mass per area. ``links`` are the instances it borrowed from.
    """

    layer: int  # the shallow (query) layer
    rows: list[int]  # its query cells, row-major on the layer's grid
    query_boxes: np.ndarray  # (q, 4) xyxy of those cells
    maps: list[GridMap]  # one per deeper layer, shallow first
    combined: GridMap
    sources: list[dict]  # top-k deeper cells: layer, row, col, share, box (xyxy)
    links: list[dict]  # detection, label, same_class, share, chance, lift, borrowed, start (x, y) at the query, end
    detection: int | None = None  # the queried detection, if any
    anchor_layer: int | None = None  # that detection's best-anchor layer (may be the deepest, which borrows nothing)
    entropy: float = 0.0  # of the query's mean row, divided by log(d_n): 0 = one cell, 1 = uniform
    uniform_share: float = 0.0  # 1 / d_n: what an unfocused row puts on each deeper cell
    uniform_combined: float = 0.0  # the same row's value on the combined map (away from the edges)


def place_grid(layer: int, values: np.ndarray, stride: float, scale: tuple[float, float]) -> GridMap:
    """A layer's (h, w) values at their image positions: cell centres at (j + 0.5, i + 0.5) * stride."""
    sx, sy = scale
    return GridMap(layer, values, (stride / 2 * sx, stride / 2 * sy), (stride * sx, stride * sy))


def combined_mass(matching: MatchingScores, mass: Tensor) -> tuple[np.ndarray, int]:
    """A (d_n,) mass vector on one grid: each cell's share split evenly over the finest deeper grid's
    cells it covers. Returns the (h, w) map (sums to 1 when the grids tile the input) and its stride."""
    finest = min(matching.source_strides)
    h, w = matching.source_grids[matching.source_strides.index(finest)]
    combined = np.zeros((h, w))
    for values, stride in zip(split_by_source_layer(matching, mass), matching.source_strides):
        k = stride // finest  # strides are powers of two: a deeper cell covers k x k finest cells
        spread = np.kron(values.numpy(), np.ones((k, k))) / (k * k)  # (h' k, w' k)
        hh, ww = min(h, spread.shape[0]), min(w, spread.shape[1])  # deeper grids round up: crop the overhang
        combined[:hh, :ww] += spread[:hh, :ww]
    return combined, finest


def query_rows(explanation: Explanation, layer: int, detection: int | None = None,
               cell: tuple[int, int] | None = None) -> list[int]:
    """The query cells of a detection (cells whose centre lies in its box) or of one (row, col) cell."""
    matching = explanation.layer(layer)
    h, w = matching.query_grid
    if cell is not None:
        row, col = cell
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"cell {cell} is outside layer {layer}'s {h} x {w} grid")
        return [row * w + col]
    if detection is None:
        raise ValueError("give a detection or a cell")
    box = detection_boxes_input(explanation)[detection]
    return cells_in_box(matching.query_grid, matching.query_stride, box).tolist()


def cell_at(explanation: Explanation, layer: int, x: float, y: float) -> tuple[int, int]:
    """(row, col) of the cell of ``layer`` under image point (x, y)."""
    matching = explanation.layer(layer)
    sx, sy = explanation.scale()
    h, w = matching.query_grid
    s = matching.query_stride
    return min(h - 1, max(0, int(y / sy // s))), min(w - 1, max(0, int(x / sx // s)))


def borrow_view(explanation: Explanation, *, detection: int | None = None, cell: tuple[int, int] | None = None,
                layer: int | None = None, among: Sequence[int] | None = None, k: int = 5,
                min_area_ratio: float = LARGER_AREA_RATIO, min_lift: float = 1.25) -> BorrowView:
    """Everything to draw for one query, in image pixels.

    Args:
        detection: query a detection: its cells on ``layer``, by default the layer of its best anchor
            (the deepest borrowing layer when that is the last layer, which borrows nothing).
        cell: or query one (row, col) cell of ``layer``.
        among: detections that may be linked (default all); for a detection query only its larger
            instances (``is_larger_instance``: at least ``min_area_ratio`` times its area) are linked.
        k: how many top source cells.
        min_lift: a link counts as ``borrowed`` when its share is at least this many times ``chance``
            (the share an unfocused, uniform row would put on that instance).
    """
    if not explanation.borrows:
        raise ValueError("this checkpoint does not borrow: it has no matching scores to show")
    borrowing = [m.layer for m in explanation.matching]
    anchor_layer = None
    if detection is not None and explanation.detection_layers:
        anchor_layer = explanation.detection_layers[detection]
    if layer is None:
        if cell is not None:
            raise ValueError("a cell query needs its layer")
        layer = min(anchor_layer or borrowing[0], borrowing[-1])
    matching = explanation.layer(layer)
    scale = explanation.scale()
    rows = query_rows(explanation, layer, detection, cell)
    mass = row_mass(matching, rows)  # (d_n,)
    maps = [place_grid(n, values.numpy(), stride, scale) for n, values, stride in
            zip(matching.source_layers, split_by_source_layer(matching, mass), matching.source_strides)]
    combined, finest = combined_mass(matching, mass)
    query_boxes = cell_boxes(matching.query_grid, matching.query_stride, scale)[torch.as_tensor(rows)].numpy()

    sources = []
    for source in top_sources(matching, rows, k):
        n = matching.source_layers.index(source["layer"])
        grid, stride = matching.source_grids[n], matching.source_strides[n]
        box = cell_boxes(grid, stride, scale)[source["row"] * grid[1] + source["col"]]
        sources.append({"layer": source["layer"], "row": source["row"], "col": source["col"],
                        "share": source["share"], "box": box.tolist()})

    boxes = explanation.detections["boxes"].cpu().float()  # image pixels
    if detection is not None:
        start = ((boxes[detection, :2] + boxes[detection, 2:]) / 2).tolist()
        area = float((boxes[detection, 2:] - boxes[detection, :2]).prod())
    else:
        start = query_boxes[0].reshape(2, 2).mean(0).tolist()
        area = 0.0
    candidates = range(len(boxes)) if among is None else among
    centres = source_cell_centres(matching)  # input pixels
    to_input = torch.tensor([1 / scale[0], 1 / scale[1]] * 2)
    links = []
    for other in candidates:
        if other == detection:
            continue
        box = boxes[other]
        if detection is not None and not is_larger_instance(float((box[2:] - box[:2]).prod()), area, min_area_ratio):
            continue
        if detection is None and bool(points_in_box(torch.tensor([start]), box)[0]):
            continue  # a cell inside a detection does not borrow "from" it
        inside = points_in_box(centres, box * to_input)
        if inside.any():
            share, chance = float(mass[inside].sum()), float(inside.float().mean())
            label = int(explanation.detections["labels"][other])
            same_class = detection is not None and label == int(explanation.detections["labels"][detection])
            links.append({"detection": int(other), "label": label, "same_class": same_class,
                          "share": share, "chance": chance, "lift": share / chance,
                          "borrowed": share >= min_lift * chance,
                          "start": start, "end": ((box[:2] + box[2:]) / 2).tolist()})
    links.sort(key=lambda link: -link["share"])
    entropy = float(-(mass * mass.clamp_min(1e-12).log()).sum() / np.log(mass.numel())) if mass.numel() > 1 else 0.0
    uniform, _ = combined_mass(matching, torch.full_like(mass, 1.0 / mass.numel()))
    return BorrowView(layer, rows, query_boxes, maps, place_grid(0, combined, finest, scale), sources, links,
                      detection, anchor_layer, entropy, 1.0 / mass.numel(), float(np.median(uniform)))


def layer_maps(explanation: Explanation, layer: int) -> dict[str, GridMap]:
    """The layer view on the image: for every cell of ``layer``, the deeper layer holding its arg-max
    ("source_layer"), its row's entropy over log(d_n) ("entropy", 0..1) and its largest share ("peak")."""
    matching = explanation.layer(layer)
    view = explanation.layer_views.get(layer) or layer_view(matching)
    source_layer = torch.tensor(matching.source_layers)[view["source_layer_index"]]
    scale = explanation.scale()
    place = lambda values: place_grid(layer, values.numpy(), matching.query_stride, scale)  # noqa: E731
    return {"source_layer": place(source_layer), "entropy": place(view["entropy"] / view["max_entropy"]),
            "peak": place(view["peak"])}


def default_query(explanation: Explanation, among: Sequence[int], min_area_ratio: float = LARGER_AREA_RATIO,
                  min_lift: float = 1.25, candidates: int = 30) -> int | None:
    """The detection to show first, the smallest of ``among`` (on a borrowing layer) that, in this order:
    borrowed from a larger instance of its own class (what the paper says borrowing is for); borrowed
    from any larger instance; has a larger instance of its class; has any larger instance. Else the
    smallest; None when ``among`` is empty. Only the ``candidates`` smallest are examined."""
    if not among:
        return None
    boxes = explanation.detections["boxes"].cpu().float()
    labels = explanation.detections["labels"]
    areas = {i: float((boxes[i, 2:] - boxes[i, :2]).prod()) for i in among}
    borrowing = {m.layer for m in explanation.matching}
    by_size = sorted(among, key=lambda i: areas[i])
    on_borrowing_layer = [i for i in by_size[:candidates]
                          if not explanation.detection_layers or explanation.detection_layers[i] in borrowing]
    links = {i: borrow_view(explanation, detection=i, among=among, k=1, min_area_ratio=min_area_ratio,
                            min_lift=min_lift).links if explanation.borrows else [] for i in on_borrowing_layer}
    larger = {i: [j for j in among if j != i and is_larger_instance(areas[j], areas[i], min_area_ratio)]
              for i in on_borrowing_layer}
    tiers = [lambda i: any(link["borrowed"] and link["same_class"] for link in links[i]),
             lambda i: any(link["borrowed"] for link in links[i]),
             lambda i: any(labels[j] == labels[i] for j in larger[i]),
             lambda i: bool(larger[i])]
    for tier in tiers:
        found = next((i for i in on_borrowing_layer if tier(i)), None)
        if found is not None:
            return found
    return by_size[0]


def detections_to_coco(explanation: Explanation, file_name: str, keep: Sequence[int] | None = None,
                       image_id: int = 1) -> dict:
    """Detections as a COCO detection file (images, categories, annotations with scores; xywh boxes)."""
    det = explanation.detections
    h, w = explanation.image_size
    annotations = []
    for n, i in enumerate(range(len(det["boxes"])) if keep is None else keep, start=1):
        x0, y0, x1, y1 = (round(float(v), 2) for v in det["boxes"][i])
        annotations.append({"id": n, "image_id": image_id, "category_id": int(det["labels"][i]),
                            "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                            "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0,
                            "score": round(float(det["scores"][i]), 4)})
    return {"images": [{"id": image_id, "file_name": file_name, "width": w, "height": h}],
            "categories": [{"id": k, "name": name} for k, name in enumerate(explanation.class_names, start=1)],
            "annotations": annotations}
