"""Which deeper cells a small instance should borrow from, and the loss that teaches FMB to find them.

The paper's small instance borrows from "larger instances" of its class. On a labelled image that is
known: for instance i, its query cells are the cells of its best anchor's layer whose centres lie in its
box, and its targets are the deeper cells (FMB's keys, in S_hat's column order) whose centres lie in an
instance of its class with at least ``min_area_ratio`` x its area. ``borrow_targets`` computes both; the
borrow precision (``explain.borrow_precision``) measures S_hat's mass on the targets, and the supervised
matching loss (config ``model.matching_loss``) trains it:

    L_match = mean over such instances i, mean over its query rows r of  -log sum_{j in T_i} S_hat(n)[r, j]

i.e. the cross-entropy of the row's softmax against "any target cell". At test time FMB gets no boxes and
must find the larger instances unaided.

The borrowed map helps a cell only if it differs between an instance and background; with
``background_weight`` > 0 background rows are supervised too, towards background:

    L_bg = mean over background rows r (cells in no instance, up to ``background_rows`` evenly spaced per
           image and layer) of  -log sum_{j in B} S_hat(n)[r, j],   B the deeper cells in no instance

and the loss is L_match + background_weight * L_bg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou

from borrowcore.models.neck import MatchingScores

# What a small instance borrows from (paper §1 and §3: small objects borrow features from "larger instances"
# of their class; SPEC §10: small twins of 24-31 px and their large instance of 97-112 px): another instance
# with at least this many times its area. A sibling barely larger than it is not a larger instance.
LARGER_AREA_RATIO = 2.0


def is_larger_instance(areas: Tensor | float, area: Tensor | float, ratio: float = LARGER_AREA_RATIO) -> Tensor | bool:
    """Whether instances of ``areas`` are larger instances than one of ``area``: at least ``ratio`` x its area."""
    return areas >= ratio * area


def cell_centres(grid: tuple[int, int], stride: int) -> Tensor:
    """(h * w, 2) cell centres (x, y) in network-input pixels, row-major (as the anchors)."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride], dim=1).float()


def points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """(P, G) mask: point p (x, y) inside box g (xyxy, edges included)."""
    x, y = points[:, None, 0], points[:, None, 1]
    return (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])


def cells_in_box(grid: tuple[int, int], stride: int, box: Tensor) -> Tensor:
    """Indices of the cells whose centre lies in ``box`` (xyxy, network-input pixels); the cell under
    the box's centre when none does (a box smaller than a cell)."""
    inside = points_in_boxes(cell_centres(grid, stride), box.reshape(1, 4).cpu().float())[:, 0]
    if inside.any():
        return inside.nonzero().squeeze(1)
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    h, w = grid
    i, j = min(h - 1, max(0, int(cy // stride))), min(w - 1, max(0, int(cx // stride)))
    return torch.tensor([i * w + j])


def source_cell_centres(matching: MatchingScores) -> Tensor:
    """(d_n, 2) centres of all deeper cells, in S_hat's column order, network-input pixels."""
    return torch.cat([cell_centres(g, s) for g, s in zip(matching.source_grids, matching.source_strides)])


def best_anchor_layers(boxes: Tensor, anchors: Tensor, anchors_per_layer: list[int]) -> Tensor:
    """(G,) 1-based detection layer of each box's highest-IoU anchor; boxes (G, 4) and anchors (A, 4) in
    network-input pixels."""
    best = box_iou(boxes.float(), anchors.float()).argmax(dim=1)  # (G,)
    ends = torch.tensor(np.cumsum(anchors_per_layer), device=best.device)
    return torch.bucketize(best, ends, right=True) + 1


@dataclass
class BorrowTarget:
    """One instance that has a larger instance of its class: where it queries and what it should find."""

    instance: int  # index into the image's boxes
    layer: int  # 1-based borrowing layer of its best anchor
    rows: Tensor  # (r,) its query cells on that layer (S_hat rows)
    targets: Tensor  # (d_n,) bool: deeper cells inside a larger instance of its class
    objects: Tensor  # (d_n,) bool: deeper cells inside any instance (the rest is background)


def borrow_targets(boxes: Tensor, labels: Tensor, anchors: Tensor, anchors_per_layer: list[int],
                   matching: list[MatchingScores], queries: Tensor | None = None,
                   min_area_ratio: float = LARGER_AREA_RATIO) -> tuple[list[BorrowTarget], int]:
    """Each query instance's borrowing layer, query rows and target cells, for one image.

    Args:
        boxes: (G, 4) xyxy in network-input pixels; labels (G,), those < 1 (ignore regions) are never
            queries nor targets but count as objects.
        anchors, anchors_per_layer: the image's anchors and how many each layer has (best-anchor layers).
        matching: the borrowing layers' scores (only their grids and strides are read).
        queries: (G,) bool, which instances to consider (default: every labelled one).

    Returns the targets and how many query instances were skipped: no larger instance of their class, a
    best anchor on a layer that does not borrow, or no deeper cell inside their larger instances.
    """
    boxes, labels = boxes.detach().cpu().float(), labels.cpu()
    real = labels > 0
    queries = real if queries is None else (queries.cpu() & real)
    if not queries.any():
        return [], 0
    by_layer = {m.layer: m for m in matching}
    layers = best_anchor_layers(boxes, anchors.detach().cpu(), anchors_per_layer)
    areas = box_area(boxes)
    inside = {layer: points_in_boxes(source_cell_centres(m), boxes) for layer, m in by_layer.items()}  # (d_n, G)
    found, skipped = [], 0
    for i in queries.nonzero().squeeze(1).tolist():
        layer = int(layers[i])
        larger = real & (labels == labels[i]) & is_larger_instance(areas, areas[i], min_area_ratio)
        larger[i] = False
        if layer not in by_layer or not larger.any():
            skipped += 1
            continue
        m = by_layer[layer]
        targets = inside[layer][:, larger].any(dim=1)
        if not targets.any():
            skipped += 1
            continue
        found.append(BorrowTarget(i, layer, cells_in_box(m.query_grid, m.query_stride, boxes[i]), targets,
                                  inside[layer].any(dim=1)))
    return found, skipped


def background_queries(matching: MatchingScores, boxes: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Up to ``count`` query cells of one layer in no box, evenly spaced (rows,), and the deeper cells in no box
    (d_n,) bool; boxes (G, 4) in network-input pixels, ignore regions included."""
    boxes = boxes.detach().cpu().float()
    free = ~points_in_boxes(cell_centres(matching.query_grid, matching.query_stride), boxes).any(dim=1)  # (m_n,)
    rows = free.nonzero().squeeze(1)
    if len(rows) > count:
        rows = rows[torch.linspace(0, len(rows) - 1, count).long()]
    return rows, ~points_in_boxes(source_cell_centres(matching), boxes).any(dim=1)


def log_mass(queries: Tensor, keys: Tensor, rows: Tensor, on: Tensor) -> Tensor:
    """(R,) -log of the S_hat mass of query rows ``rows`` on the deeper cells ``on`` (R, d_n) or (d_n,) bool;
    queries (m_n, e) and keys (d_n, e) of one image, scaled (S_hat = softmax(queries keys^T))."""
    logits = queries[rows] @ keys.T  # (R, d_n): these rows' S_hat logits only
    return logits.logsumexp(dim=1) - logits.masked_fill(~on, float("-inf")).logsumexp(dim=1)


def matching_loss(matching: list[MatchingScores], anchors: Tensor, anchors_per_layer: list[int],
                  targets: list[dict[str, Tensor]], min_area_ratio: float = LARGER_AREA_RATIO,
                  background_weight: float = 0.0, background_rows: int = 64) -> Tensor:
    """L_match (+ background_weight L_bg) over a batch (module docstring): the mean over instances with a larger
    same-class instance of -log(S_hat mass on its target cells), averaged over its query rows; 0 (with a graph)
    when the batch has none. ``matching`` holds the batch's factors (queries (B, m_n, e), keys (B, d_n, e));
    ``targets`` the boxes in network-input pixels with their labels."""
    # one unbind per layer: indexing the batch per instance would give every instance a batch-sized gradient
    with torch.autocast(anchors.device.type, enabled=False):  # fp32 logits under bf16 training
        queries = {m.layer: m.queries.float().unbind(0) for m in matching}  # B x (m_n, e)
        keys = {m.layer: m.keys.float().unbind(0) for m in matching}  # B x (d_n, e)
        losses, background = [], []
        for b, target in enumerate(targets):
            found, _ = borrow_targets(target["boxes"], target["labels"], anchors, anchors_per_layer, matching,
                                      min_area_ratio=min_area_ratio)
            for layer in sorted({t.layer for t in found}):
                group = [t for t in found if t.layer == layer]
                device = queries[layer][b].device
                rows = torch.cat([t.rows for t in group]).to(device)  # (R,) the group's query cells
                on_target = torch.cat([t.targets.expand(len(t.rows), -1) for t in group]).to(device)  # (R, d_n)
                owner = torch.cat([torch.full((len(t.rows),), k) for k, t in enumerate(group)]).to(device)  # (R,)
                row_loss = log_mass(queries[layer][b], keys[layer][b], rows, on_target)
                counts = torch.bincount(owner, minlength=len(group)).float()
                losses.append(torch.zeros(len(group), device=device).index_add(0, owner, row_loss) / counts)
            if background_weight > 0:
                for m in matching:
                    rows, on_background = background_queries(m, target["boxes"], background_rows)
                    if len(rows) and on_background.any():
                        device = queries[m.layer][b].device
                        background.append(log_mass(queries[m.layer][b], keys[m.layer][b], rows.to(device),
                                                   on_background.to(device)))
    loss = sum(m.queries.sum() for m in matching) * 0.0  # keeps the graph (DDP: every rank has the same params)
    if losses:
        loss = loss + torch.cat(losses).mean()
    if background:
        loss = loss + background_weight * torch.cat(background).mean()
    return loss
