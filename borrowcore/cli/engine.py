"""``borrowcore train``, ``ablate``, ``release`` and ``table``: training, the ablation study and shipping it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from borrowcore.cli.options import add_recipe_argument, parse_recipe


def add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a detector (CPU, one GPU, or torchrun -m borrowcore train ...)")
    p.add_argument("--config", required=True, help="experiment config, e.g. configs/full.yaml")
    p.add_argument("--data", help="a folder with train/{images,annotations.json} (and val/...), e.g. from `synth`")
    p.add_argument("--out", help="output folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when it exists")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--set", nargs="*", metavar="SECTION.FIELD=VALUE",
                   help="override config fields, e.g. train.max_steps=50 model.width=0.25")
    p.add_argument("--skip-bad", dest="skip_bad", action="store_true",
                   help="train.skip_bad: skip unreadable images and bad annotations with a warning instead of stopping")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a detector from an experiment config (also under torchrun)."""
    from borrowcore.engine.config import apply_overrides, load_config
    from borrowcore.engine.train import train

    config = apply_overrides(load_config(args.config), args.set or [])
    if args.skip_bad:
        config.train.skip_bad = True
    if args.data:
        data = Path(args.data)
        config.train.train_images, config.train.train_annotations = str(data / "train" / "images"), str(data / "train" / "annotations.json")
        if (data / "val" / "annotations.json").exists():
            config.train.val_images, config.train.val_annotations = str(data / "val" / "images"), str(data / "val" / "annotations.json")
        else:
            config.train.val_images = config.train.val_annotations = ""
    out = args.out or str(Path("runs") / Path(args.config).stem)
    result = train(config, out, resume=args.resume, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 prints
        print(json.dumps(result))
    return 0


def add_ablate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("ablate", help="train + evaluate ssd/context/borrow/full over seeds; mean/std table")
    p.add_argument("--data", required=True, help="folder with train/ and val/ made by `borrowcore synth`")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--necks", nargs="+", default=["ssd", "context", "borrow", "full"])
    p.add_argument("--width", type=float)
    p.add_argument("--input", type=int, help="input size S")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="optimiser steps per run (overrides epochs)")
    p.add_argument("--configs", default="configs", help="folder with <neck>.yaml")
    p.add_argument("--device")
    p.add_argument("--set", nargs="*", metavar="SECTION.FIELD=VALUE", help="more config overrides")
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args: argparse.Namespace) -> int:
    """Train and evaluate the four ablations over seeds; write the mean/std table."""
    from borrowcore.engine.ablation import format_table, run_ablation

    overrides = list(args.set or [])
    for field, value in (("model.width", args.width), ("model.input_size", args.input),
                         ("train.epochs", args.epochs), ("train.max_steps", args.steps)):
        if value is not None:
            overrides.append(f"{field}={value}")
    if args.epochs is not None and args.steps is None:
        overrides.append("train.max_steps=0")  # epochs decide
    rows = run_ablation(args.data, args.out, args.seeds, args.necks, overrides, args.configs, device=args.device)
    print(format_table(rows))
    return 0


def add_release(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("release", help="ship an ablation's weights, reports and logs in assets/")
    p.add_argument("--runs", required=True, help="the ablate --out folder")
    p.add_argument("--assets", default="assets")
    p.add_argument("--name", default="synth", help="prefix of the shipped checkpoint names")
    p.add_argument("--necks", nargs="+", default=["ssd", "context", "borrow", "full"])
    p.add_argument("--reports-folder", dest="reports_folder", default="ablation", help="assets/reports/<this>/")
    p.add_argument("--best-by", dest="best_by", metavar="SPLIT",
                   help="ship only each neck's best seed's weights, by AP on eval_SPLIT.json")
    p.add_argument("--weights-necks", dest="weights_necks", nargs="+", help="ship weights of these necks only")
    p.add_argument("--matching", choices=["fast", "exact"],
                   help="the matching the shipped checkpoints run with by default (default: as trained); measure "
                        "both with eval --exact first")
    p.add_argument("--nms-iou", dest="nms_iou", type=float,
                   help="the NMS IoU the shipped checkpoints run with (default: as trained); measure with eval --nms-iou")
    add_recipe_argument(p, "the shipped checkpoints' inference recipe (default: as trained); measure with eval --recipe")
    p.set_defaults(func=cmd_release)


def cmd_release(args: argparse.Namespace) -> int:
    """Copy an ablation's checkpoints (without training state), reports and logs into assets/."""
    from borrowcore.engine.ablation import release_ablation

    for path in release_ablation(args.runs, args.assets, args.necks, args.name, args.reports_folder, args.best_by,
                                 args.weights_necks, args.matching, args.nms_iou, parse_recipe(args.recipe)):
        print(path)
    return 0


def add_table(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("table", help="mean/std table of existing reports under a runs folder (no training)")
    p.add_argument("--runs", required=True, help="a folder of <neck>/seed<k>/eval_<split>.json")
    p.add_argument("--splits", nargs="+", required=True, help="report names: eval_<split>.json")
    p.add_argument("--necks", nargs="+", default=["ssd", "context", "borrow", "full"])
    p.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: all found)")
    p.add_argument("--fine-bins", dest="fine_bins", action="store_true", help="AP per fine size bin too")
    p.add_argument("--classes", action="store_true", help="AP per class too")
    p.add_argument("--add-subsets", dest="add_subsets", action="store_true",
                   help="first store AP on small twins and orphans in reports that lack it (needs their ground truth)")
    p.add_argument("--no-borrow-columns", dest="no_borrow_columns", action="store_true",
                   help="leave out the borrow benchmark's small top-1 and borrow precision")
    p.set_defaults(func=cmd_table)


def cmd_table(args: argparse.Namespace) -> int:
    """Mean/std table of the reports already under a runs folder (<neck>/seed<k>/eval_<split>.json)."""
    from borrowcore.engine.ablation import add_subsets, format_table, summarize_ablation, write_tables

    if args.add_subsets:  # reports written before issue 15: twins / orphans AP from their detections
        for neck in args.necks:
            for split in args.splits:
                for path in sorted((Path(args.runs) / neck).glob(f"seed*/eval_{split}.json")):
                    if add_subsets(path):
                        print(f"{path}: twins and orphans added")
    rows = summarize_ablation(args.runs, args.necks, args.seeds, args.splits)
    if not rows:
        print(f"{args.runs}: no reports eval_<split>.json for splits {args.splits} under <neck>/seed<k>/")
        return 1
    write_tables(rows, args.runs, args.fine_bins, not args.no_borrow_columns, args.classes)
    print(format_table(rows, args.fine_bins, not args.no_borrow_columns, args.classes))
    return 0
