"""``borrowcore eval``, ``diagnose``, ``analyze`` and ``compare``: measuring a checkpoint and its reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from borrowcore.cli.options import add_matching_arguments, add_precision_argument, add_recipe_argument, parse_recipe


def add_eval(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval", help="COCO evaluation by object size (also under torchrun)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--detections", help="another detector's COCO results json (image_id, category_id, bbox, "
                        "score), scored by the same evaluator into the same report")
    p.add_argument("--model-name", dest="model_name", default="", help="with --detections: the model's name in tables")
    p.add_argument("--coco", required=True, help="ground-truth COCO json")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--out", help="report json (default: beside the checkpoint, eval_<coco stem>.json)")
    p.add_argument("--split", help="split name recorded in the report (default: the json's stem)")
    p.add_argument("--name", help="dataset name recorded in the report (default: the json's folder)")
    p.add_argument("--size-bins", dest="size_bins", default="0,16,32,64,96,128",
                   help="edges on sqrt(area) in px; the last bin is open (default 0,16,32,64,96,128)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--tile", type=int, help="sliced inference: tile x tile windows at native resolution")
    p.add_argument("--overlap", type=float, default=0.2, help="share of a tile that neighbouring tiles overlap")
    p.add_argument("--input-size", dest="input_size", type=int,
                   help="run the detector at S x S (default: the checkpoint's); with --tile S, tiles of any size stay "
                        "at native resolution")
    add_matching_arguments(p)
    p.add_argument("--nms-iou", dest="nms_iou", type=float,
                   help="NMS drops a box above this IoU with a better one of its class (default: the checkpoint's)")
    add_recipe_argument(p)
    add_precision_argument(p)
    p.add_argument("--borrow-precision", dest="borrow_precision", action="store_true",
                   help="borrow/full only: the share of small instances' matching mass on larger same-class ones")
    p.add_argument("--skip-bad", dest="skip_bad", action="store_true",
                   help="leave unreadable images (and bad annotations) out of the evaluation, counted in the report, "
                        "instead of stopping at the first")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """COCO evaluation by object size of a checkpoint (or of another detector's results file); writes the
    report and its detections."""
    from borrowcore.evaluation.coco_eval import parse_size_bins
    from borrowcore.evaluation.evaluate import evaluate_checkpoint, evaluate_results, format_metrics

    source = args.checkpoint or args.detections
    out = args.out or str(Path(source).with_name(f"eval_{Path(args.coco).stem}.json"))
    if args.detections:
        report = evaluate_results(args.detections, args.coco, args.images, out, model_name=args.model_name,
                                  split=args.split, dataset_name=args.name, size_bins=parse_size_bins(args.size_bins))
    else:
        report = evaluate_checkpoint(args.checkpoint, args.coco, args.images, out, device=args.device,
                                     split=args.split, dataset_name=args.name,
                                     size_bins=parse_size_bins(args.size_bins), batch_size=args.batch_size,
                                     workers=args.workers, tile=args.tile, overlap=args.overlap,
                                     input_size=args.input_size, key_budget=args.key_budget,
                                     exact=args.exact or None, nms_iou=args.nms_iou,
                                     recipe=parse_recipe(args.recipe), precision=args.precision, fold_bn=args.fold_bn,
                                     borrow_precision=args.borrow_precision,
                                     skip_bad=args.skip_bad)
    if report is not None:
        print(format_metrics(report))
        print(f"report: {out}")
    return 0


def add_diagnose(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("diagnose", help="what a borrowing neck learned: tau, fusion reads, borrow precision by "
                                             "layer, gradients")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--coco", required=True, help="val COCO json (borrow precision, fusion contributions)")
    p.add_argument("--images", required=True, help="its image folder")
    p.add_argument("--train-coco", dest="train_coco", help="a training COCO json: gradient norms on one batch of it")
    p.add_argument("--train-images", dest="train_images", help="its image folder (default: --images)")
    p.add_argument("--augmentation", default="faces", help="the training preset of that batch (default faces)")
    p.add_argument("--scale-range", dest="scale_range", type=float, nargs=2, default=[0.35, 2.0])
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--contribution-images", dest="contribution_images", type=int, default=20)
    p.add_argument("--exact", action="store_true", help="borrow/full: match every deeper cell")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="also write the result as json")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """What a checkpoint's neck learned: tau, how much each fusion reads X, Z and the context, where small
    instances' matching mass goes (by layer), and the gradient each neck part gets on a training batch."""
    import torch

    from borrowcore.data.dataset import CocoDetection, collate_detection
    from borrowcore.data.presets import build_preset
    from borrowcore.evaluation.neck_stats import diagnose
    from borrowcore.models.checkpoint import load_detector
    from borrowcore.utils.atomic import write_json_atomic

    # as trained: the diagnosis runs a training batch through the BatchNorms
    detector = load_detector(args.checkpoint, device=args.device, exact=args.exact or None, fold_bn=False)
    val_set = CocoDetection(args.images, args.coco)
    train_batch = None
    if args.train_coco:
        config = detector.config
        train_set = CocoDetection(args.train_images or args.images, args.train_coco,
                                  build_preset(args.augmentation, config.input_size, args.scale_range), seed=0,
                                  ignore_regions=True)
        images, targets = collate_detection([train_set[i] for i in range(min(args.batch_size, len(train_set)))])
        device = next(detector.parameters()).device
        train_batch = ([image.to(device) for image in images] if isinstance(images, list) else images.to(device),
                       [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(device), "labels": t["labels"].to(device)}
                        for t in targets])
    result = {"checkpoint": args.checkpoint, **diagnose(detector, val_set, train_batch, args.contribution_images)}
    print(json.dumps(result, indent=1))
    if args.out:
        write_json_atomic(result, args.out)
    return 0


def add_analyze(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("analyze", help="COCO error analysis by size of an eval report")
    p.add_argument("--report", required=True)
    p.add_argument("--coco", help="ground truth (default: the path recorded in the report)")
    p.add_argument("--no-write", dest="no_write", action="store_true", help="do not store the result in the report")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    """COCO error breakdown (C75, C50, Loc, Sim, Oth, BG, FN) per size range, stored in the report."""
    from borrowcore.evaluation.analysis import analyze_report, format_analysis

    print(format_analysis(analyze_report(args.report, args.coco, write=not args.no_write)))
    return 0


def add_compare(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("compare", help="two reports on the same images, head to head by size")
    p.add_argument("a", help="report A (the baseline)")
    p.add_argument("b", help="report B")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="the same two arms at another training seed (repeat it): AP is then the mean over the seeds, "
                        "each bootstrap draw resampling the images once for all of them")
    p.add_argument("--coco", help="ground truth (default: the path recorded in report A)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap draws over images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-threshold", dest="score_threshold", type=float, default=0.5,
                   help="a detection counts for fixed/broken lists above this score")
    p.add_argument("--out", help="write the comparison as JSON")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Head to head: per-size AP difference with a paired bootstrap interval, fixed and broken instances."""
    from borrowcore.evaluation.analysis import compare_reports, format_comparison
    from borrowcore.utils.atomic import write_json_atomic

    comparison = compare_reports(args.a, args.b, args.coco, args.bootstrap, args.seed, args.score_threshold,
                                 [tuple(pair) for pair in args.pair])
    print(format_comparison(comparison))
    if args.out:
        write_json_atomic(comparison, args.out)
    return 0
