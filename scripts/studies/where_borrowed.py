"""Where small faces borrow from, twins and orphans apart: the share of their matching mass on their own
neighbourhood, on larger faces, on other faces and on background (docs/learning-to-borrow.md, "Knockout").

    python scripts/studies/where_borrowed.py WEIGHTS [WEIGHTS ...] --coco data/wider/val.json \
        --images ../shared/data/wider-faces/images [--photos 199] [--json OUT]

For each small face (sqrt(area) < 32 px in the photo) whose best anchor lies on a borrowing layer: its query
cells there (``cells_in_box``), their S_hat rows averaged, and that row's mass split over the deeper cells by
where their centres lie, in this order (a cell counts once, in the first class it falls in):
- ``own``: in the face's box widened 3x about its centre (what a local context would read);
- ``larger``: in a face whose side is at least twice its own and 48 px (what makes it a twin; an orphan has
  none), the twins of `borrowcore eval`'s subsets (``coco_eval.instance_subsets``);
- ``other faces``: in any other face (similar size or smaller);
- ``background``: in no face. Ignore regions count as faces.
``chance`` columns: each class's share of the deeper cells (a uniform row's split).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torchvision.ops import box_area

from borrowcore.data.dataset import CocoDetection
from borrowcore.models.borrow_targets import (
    best_anchor_layers, cells_in_box, points_in_boxes, source_cell_centres,
)
from borrowcore.models.checkpoint import load_detector

CLASSES = ("own", "larger", "other faces", "background")


def widened(box: torch.Tensor, factor: float) -> torch.Tensor:
    """xyxy box scaled by factor about its centre."""
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * factor
    return torch.cat([centre - half, centre + half])


@torch.inference_mode()
def where_borrowed(detector, dataset, photos: int, small_side: float = 32.0) -> dict:
    """Mean mass and chance per class, for twins and orphans (module docstring)."""
    records = {"twins": [], "orphans": []}  # (mass per class, chance per class)
    for index in range(min(photos, len(dataset))):
        image, target = dataset[index]
        h, w = image.shape[-2:]
        batch, _ = detector.preprocess([image.as_subclass(torch.Tensor)])
        output = detector.network(batch, return_matching=True)
        by_layer = {m.layer: m for m in output.matching}
        anchors = detector.anchors(output.grid_sizes, detector.anchor_image_size, device=torch.device("cpu"))
        per_layer = [gh * gw * a for (gh, gw), a in zip(output.grid_sizes, detector.anchors.anchors_per_layer())]
        [(sx, sy)] = detector.input_scales([(h, w)])
        boxes = target["boxes"].as_subclass(torch.Tensor).float() * torch.tensor([sx, sy, sx, sy])
        labels = target["labels"].as_subclass(torch.Tensor)
        if not len(boxes):
            continue
        sides = box_area(target["boxes"].as_subclass(torch.Tensor).float()).sqrt()
        real = labels > 0
        layers = best_anchor_layers(boxes, anchors, per_layer)
        inside = {layer: points_in_boxes(source_cell_centres(m), boxes) for layer, m in by_layer.items()}
        for i in ((sides < small_side) & real).nonzero().squeeze(1).tolist():
            layer = int(layers[i])
            if layer not in by_layer:
                continue
            m = by_layer[layer]
            row = m.rows(cells_in_box(m.query_grid, m.query_stride, boxes[i])).mean(0)  # (d_n,)
            centres = source_cell_centres(m)
            larger = real & (labels == labels[i]) & (sides >= max(2 * float(sides[i]), 48.0))
            larger[i] = False
            own = points_in_boxes(centres, widened(boxes[i], 3.0).reshape(1, 4))[:, 0]
            in_larger = inside[layer][:, larger].any(1) & ~own
            others = torch.ones(len(boxes), dtype=torch.bool)
            others[i] = False
            in_other = inside[layer][:, others & ~larger].any(1) & ~own & ~in_larger
            background = ~(own | in_larger | in_other)
            masks = [own, in_larger, in_other, background]
            records["twins" if larger.any() else "orphans"].append(
                ([float(row[k].sum()) for k in masks], [float(k.float().mean()) for k in masks]))
    out = {}
    for group, rows in records.items():
        if rows:
            mass, chance = np.mean([r[0] for r in rows], 0), np.mean([r[1] for r in rows], 0)
            out[group] = {"faces": len(rows), **{c: {"mass": float(a), "chance": float(b)}
                                                 for c, a, b in zip(CLASSES, mass, chance)}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--coco", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--photos", type=int, default=199)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    dataset = CocoDetection(args.images, args.coco)
    results = {}
    for path in args.checkpoints:
        detector = load_detector(path, "cpu", exact=True, precision="fp32",  # the study eval's whole-photo recipe
                                 recipe={"oversize": "shrink", "max_whole_side": 1280})
        results[path] = where_borrowed(detector, dataset, args.photos)
        for group, row in results[path].items():
            print(f"{path} {group} ({row['faces']} faces): " + ", ".join(
                f"{c} {100 * row[c]['mass']:.1f}% ({100 * row[c]['chance']:.1f}%)" for c in CLASSES))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
