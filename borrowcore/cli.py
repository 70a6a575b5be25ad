"""The ``borrowcore`` command: one subcommand per capability, each a thin call into the package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_summary(args: argparse.Namespace) -> int:
    """Print a detector's layers, grids, anchors and parameter counts."""
    from borrowcore.config import DetectorConfig, load_config
    from borrowcore.summary import detector_summary

    if args.checkpoint:
        from borrowcore.checkpoint import load_detector

        detector = load_detector(args.checkpoint)
        config = detector.config
    else:
        config = load_config(args.config).model if args.config else DetectorConfig()
        for name in ("neck", "width", "input_size", "num_classes"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        config.__post_init__()
        detector = None
    print(detector_summary(config, detector))
    return 0


def cmd_anchors(args: argparse.Namespace) -> int:
    """Eq. (1) on a COCO file: 99th-percentile box AR, mAR_anchor and the aspect-ratio set."""
    from borrowcore.anchors import design_aspect_ratios
    from borrowcore.coco import read_coco_boxes

    boxes = read_coco_boxes(args.coco)
    result = design_aspect_ratios(boxes, iou=args.iou, percentile=args.percentile)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"boxes:                     {result['num_boxes']}")
    print(f"mAR_obj ({args.percentile:g}th pct box AR): {result['max_object_ratio']:.3f}")
    print(f"mAR_anchor at IoU {args.iou:g}:     {result['max_anchor_ratio']:.3f}   (Eq. 1)")
    print("aspect ratios:             {" + ", ".join(f"{r:.3g}" for r in result["aspect_ratios"]) + "}")
    print(f"config aspect_ratios:      {[round(r, 4) for r in result['config_aspect_ratios']]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="borrowcore", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("summary", help="print a detector's layers, anchors and parameter counts")
    p.add_argument("--config", help="YAML/JSON experiment config (configs/*.yaml)")
    p.add_argument("--checkpoint", help="summarise a checkpoint's detector instead")
    p.add_argument("--neck", choices=["ssd", "context", "borrow", "full"])
    p.add_argument("--width", type=float)
    p.add_argument("--input-size", dest="input_size", type=int)
    p.add_argument("--num-classes", dest="num_classes", type=int)
    p.set_defaults(func=cmd_summary)

    p = commands.add_parser("anchors", help="Eq. (1): anchor aspect ratios from a COCO file's boxes")
    p.add_argument("--coco", required=True, help="COCO annotation json")
    p.add_argument("--iou", type=float, default=0.5, help="IoU an anchor must reach (0 < IoU <= 2/3)")
    p.add_argument("--percentile", type=float, default=99.0, help="percentile of box ARs taken as mAR_obj")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_anchors)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:  # our clear errors: no traceback for the user
        print(f"borrowcore {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
