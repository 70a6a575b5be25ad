"""What a detector is: its detection layers (Table 1), anchors, borrowing sizes and parameters."""

from __future__ import annotations

import torch

from borrowcore.models.backbone import receptive_fields
from borrowcore.models.config import DetectorConfig


def describe_detector(config: DetectorConfig, detector=None) -> dict:
    """A plain dict describing ``config``'s detector (built here unless given)."""
    from borrowcore.models.detector import build_detector

    detector = detector or build_detector(config)
    backbone = detector.network.backbone
    with torch.no_grad():
        grids = [tuple(x.shape[-2:]) for x in backbone.eval()(torch.zeros(1, 3, config.input_size, config.input_size))]
    anchors = detector.anchors
    per_cell = anchors.num_anchors_per_location()
    per_layer = anchors.anchors_per_layer()
    sizes = anchors.sizes(config.input_size)
    cells = [h * w for h, w in grids]
    layers = []
    for n, (name, stride, grid, channels, field, (s, s2)) in enumerate(zip(
            ("conv4_3", "conv5_3", "conv_fc7", "conv6_2"), backbone.strides, grids, backbone.out_channels,
            receptive_fields(backbone), sizes)):
        layers.append({
            "layer": name, "stride": stride, "grid": list(grid), "channels": channels, "receptive_field": field,
            "anchor_size": s, "second_anchor_size": round(s2, 2), "anchors": cells[n] * per_layer[n],
            # d_n: how many deeper cells this layer's cells match against (SPEC §4)
            "deeper_cells": sum(cells[n + 1:]) if config.neck in ("borrow", "full") and n < len(cells) - 1 else 0,
        })

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {
        "neck": config.neck, "input_size": config.input_size, "width": config.width,
        "num_classes": config.num_classes, "anchors_per_cell": per_cell, "top_octaves": config.top_octaves,
        "aspect_ratios": [1.0] + [r for a in config.aspect_ratios for r in (a, 1 / a)],
        "num_anchors": sum(layer["anchors"] for layer in layers), "layers": layers,
        "parameters": {"backbone": count(backbone), "neck": count(detector.network.neck),
                       "head": count(detector.network.head), "total": count(detector)},
    }


def format_summary(summary: dict) -> str:
    lines = [f"neck={summary['neck']}  input={summary['input_size']}  width={summary['width']}  "
             f"classes={summary['num_classes']}  anchors/cell={summary['anchors_per_cell']}  "
             f"anchors={summary['num_anchors']}",
             f"{'layer':<9} {'stride':>6} {'grid':>7} {'ch':>5} {'RF':>5} {'S_k':>5} {'S_k`':>7} {'anchors':>8} {'d_n':>5}"]
    for layer in summary["layers"]:
        grid = "x".join(map(str, layer["grid"]))
        lines.append(f"{layer['layer']:<9} {layer['stride']:>6} {grid:>7} {layer['channels']:>5} "
                     f"{layer['receptive_field']:>5} {layer['anchor_size']:>5g} {layer['second_anchor_size']:>7} "
                     f"{layer['anchors']:>8} {layer['deeper_cells']:>5}")
    p = summary["parameters"]
    lines.append(f"parameters: backbone {p['backbone']:,}  neck {p['neck']:,}  head {p['head']:,}  total {p['total']:,}")
    return "\n".join(lines)


def detector_summary(config: DetectorConfig, detector=None) -> str:
    return format_summary(describe_detector(config, detector))
