"""``borrowcore summary`` and ``anchors``: what a detector is, and the anchors a data set asks for."""

from __future__ import annotations

import argparse
import json


def add_summary(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("summary", help="print a detector's layers, anchors and parameter counts")
    p.add_argument("--config", help="YAML/JSON experiment config (configs/*.yaml)")
    p.add_argument("--checkpoint", help="summarise a checkpoint's detector instead")
    p.add_argument("--neck", choices=["ssd", "context", "borrow", "full"])
    p.add_argument("--width", type=float)
    p.add_argument("--input-size", dest="input_size", type=int)
    p.add_argument("--num-classes", dest="num_classes", type=int)
    p.set_defaults(func=cmd_summary)


def cmd_summary(args: argparse.Namespace) -> int:
    """Print a detector's layers, grids, anchors and parameter counts."""
    from borrowcore.engine.config import load_config
    from borrowcore.models.config import DetectorConfig
    from borrowcore.models.summary import detector_summary

    if args.checkpoint:
        from borrowcore.models.checkpoint import load_detector

        detector = load_detector(args.checkpoint, fold_bn=False)  # the modules and parameters as trained
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


def add_anchors(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("anchors", help="Eq. (1): anchor aspect ratios from a COCO file's boxes")
    p.add_argument("--coco", required=True, help="COCO annotation json")
    p.add_argument("--iou", type=float, default=0.5, help="IoU an anchor must reach (0 < IoU <= 2/3)")
    p.add_argument("--percentile", type=float, default=99.0, help="percentile of box ARs taken as mAR_obj")
    p.add_argument("--checkpoint", help="instead: recall of this checkpoint's anchors by box size, on the inputs "
                                        "it builds (whole photos at their own size); use --iou 0.35 for face models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_anchors)


def cmd_anchors(args: argparse.Namespace) -> int:
    """Eq. (1) on a COCO file: 99th-percentile box AR, mAR_anchor and the aspect-ratio set."""
    from borrowcore.data.coco import read_coco_boxes
    from borrowcore.models.anchors import design_aspect_ratios

    if args.checkpoint:  # recall of the checkpoint's own anchors, by box size, on the inputs it builds
        from borrowcore.evaluation.stats import checkpoint_anchor_recall
        from borrowcore.models.checkpoint import load_detector

        recall = checkpoint_anchor_recall(load_detector(args.checkpoint), args.coco, args.iou)
        if args.json:
            print(json.dumps(recall, indent=2))
            return 0
        print(f"{recall['boxes']} boxes, anchor recall at IoU {args.iou:g}: {recall['recall']:.3f}")
        for b in recall["bins"]:
            print(f"  side {b['label']:>8} px: {b['boxes']:6d} boxes, recall {b['recall']:.3f}, "
                  f"at IoU 0.5 {b['recall_at_0.5']:.3f}, median best IoU {b['median_best_iou']:.2f}")
        return 0
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
