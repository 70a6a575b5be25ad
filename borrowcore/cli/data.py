"""``borrowcore synth``, ``convert``, ``shift`` and ``stats``: making, converting and describing COCO sets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_synth(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("synth", help="generate the borrow benchmark (images + COCO json)")
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, required=True, help="number of images (twins + orphans)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", dest="image_size", type=int, default=256)
    p.add_argument("--twins-fraction", dest="twins_fraction", type=float, default=0.5)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate the borrow benchmark: images plus COCO json (twins, orphans, shuffled)."""
    from borrowcore.data.synth import generate

    summary = generate(args.out, args.images, seed=args.seed, image_size=args.image_size,
                       twins_fraction=args.twins_fraction)
    print(json.dumps(summary, indent=2))
    return 0


def add_convert(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("convert", help="YOLO txt, Pascal VOC xml or WIDER FACE labels to COCO json")
    p.add_argument("--from", dest="source", choices=["yolo", "voc", "wider"], required=True)
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--labels", required=True, help="YOLO labels folder (<stem>.txt), VOC Annotations folder (*.xml) "
                   "or a WIDER FACE ground-truth file (wider_face_*_bbx_gt.txt)")
    p.add_argument("--names", help="class names: a names file (one per line) or an ultralytics data.yaml")
    p.add_argument("--out", required=True, help="COCO json to write")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    """YOLO txt, Pascal VOC xml or WIDER FACE labels -> one COCO json."""
    from borrowcore.data.formats import read_names, read_voc, read_wider, read_yolo
    from borrowcore.utils.atomic import write_json_atomic

    if args.source == "yolo":
        if not args.names:
            raise ValueError("--from yolo needs --names (a names file or an ultralytics data.yaml)")
        coco = read_yolo(args.images, args.labels, read_names(args.names))
    elif args.source == "wider":
        coco = read_wider(args.images, args.labels, read_names(args.names)[0] if args.names else "face")
    else:
        coco = read_voc(args.images, args.labels, read_names(args.names) if args.names else None)
    write_json_atomic(coco, args.out)
    print(f"{args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
          f"{len(coco['categories'])} classes")
    return 0


def add_shift(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("shift", help="an off-distribution copy of a COCO set: rescaled and/or recoloured")
    p.add_argument("--coco", required=True, help="COCO annotation json")
    p.add_argument("--images", required=True, help="its image folder")
    p.add_argument("--out", required=True, help="folder for images/ and instances.json")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor (boxes scale with it)")
    p.add_argument("--hue", type=float, default=0.0, help="hue shift, a fraction of the colour wheel (-0.5..0.5)")
    p.add_argument("--saturation", type=float, default=1.0, help="saturation factor")
    p.add_argument("--brightness", type=float, default=1.0, help="brightness factor")
    p.set_defaults(func=cmd_shift)


def cmd_shift(args: argparse.Namespace) -> int:
    """An off-distribution copy of a COCO set: its images rescaled and/or recoloured, boxes moved."""
    from borrowcore.data.shift import write_shifted

    path = write_shifted(args.coco, args.images, args.out, args.scale, args.hue, args.saturation, args.brightness)
    print(f"{path}: images in {Path(args.out) / 'images'}")
    return 0


def add_stats(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("stats", help="box counts by size, aspect ratios and classes of a COCO file")
    p.add_argument("--coco", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    """Box counts by size, aspect-ratio histogram and per-class counts of a COCO file."""
    from borrowcore.evaluation.stats import dataset_stats, format_stats

    stats = dataset_stats(args.coco)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0
