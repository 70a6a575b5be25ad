"""The ``borrowcore`` command: one subcommand per capability, each a thin call into the package."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from borrowcore.models.config import DEFAULT_KEY_BUDGET


def cmd_summary(args: argparse.Namespace) -> int:
    """Print a detector's layers, grids, anchors and parameter counts."""
    from borrowcore.engine.config import load_config
    from borrowcore.models.config import DetectorConfig
    from borrowcore.models.summary import detector_summary

    if args.checkpoint:
        from borrowcore.models.checkpoint import load_detector

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


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate the borrow benchmark: images plus COCO json (twins, orphans, shuffled)."""
    from borrowcore.data.synth import generate

    summary = generate(args.out, args.images, seed=args.seed, image_size=args.image_size,
                       twins_fraction=args.twins_fraction)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Box counts by size, aspect-ratio histogram and per-class counts of a COCO file."""
    from borrowcore.evaluation.stats import dataset_stats, format_stats

    stats = dataset_stats(args.coco)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """What a checkpoint's neck learned: tau, how much each fusion reads X, Z and the context, where small
    instances' matching mass goes (by layer), and the gradient each neck part gets on a training batch."""
    import torch

    from borrowcore.data.dataset import CocoDetection, collate_detection
    from borrowcore.data.presets import build_preset
    from borrowcore.evaluation.neck_stats import diagnose
    from borrowcore.models.checkpoint import load_detector
    from borrowcore.utils.atomic import write_json_atomic

    detector = load_detector(args.checkpoint, device=args.device, exact=args.exact or None)
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


def cmd_eval(args: argparse.Namespace) -> int:
    """COCO evaluation by object size of a checkpoint (or of another detector's results file); writes the
    report and its detections."""
    from borrowcore.evaluation.evaluate import evaluate_checkpoint, evaluate_results, format_metrics, parse_size_bins

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
                                     recipe=parse_recipe(args.recipe), precision=args.precision,
                                     borrow_precision=args.borrow_precision,
                                     skip_bad=args.skip_bad)
    if report is not None:
        print(format_metrics(report))
        print(f"report: {out}")
    return 0


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


def cmd_analyze(args: argparse.Namespace) -> int:
    """COCO error breakdown (C75, C50, Loc, Sim, Oth, BG, FN) per size range, stored in the report."""
    from borrowcore.evaluation.analysis import analyze_report, format_analysis

    print(format_analysis(analyze_report(args.report, args.coco, write=not args.no_write)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Head to head: per-size AP difference with a paired bootstrap interval, fixed and broken instances."""
    from borrowcore.evaluation.analysis import compare_reports, format_comparison
    from borrowcore.utils.atomic import write_json_atomic

    comparison = compare_reports(args.a, args.b, args.coco, args.bootstrap, args.seed, args.score_threshold)
    print(format_comparison(comparison))
    if args.out:
        write_json_atomic(comparison, args.out)
    return 0


def add_matching_arguments(p: argparse.ArgumentParser) -> None:
    """--exact and --key-budget, the matching a borrow/full checkpoint runs with (default: its own)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--exact", action="store_true",
                       help="borrow/full: match every cell of every deeper map (the paper's full softmax; time "
                            "grows with the square of the image)")
    group.add_argument("--key-budget", dest="key_budget", type=int,
                       help="borrow/full: fast matching with at most this many keys per deeper map, larger maps "
                            f"average-pooled (time linear in the image; default {DEFAULT_KEY_BUDGET})")


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision, of inference on the CPU (``checkpoint.resolve_precision``)."""
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="CPU inference: bf16 autocast or fp32; auto (default) takes bf16 where the CPU computes it "
                        "natively (AVX-512 BF16, AMX)")


def add_recipe_argument(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--recipe KEY=VALUE: an inference-recipe field in place of the checkpoint's (repeatable)."""
    p.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                   help=help or "run with this inference-recipe field (YAML value) in place of the checkpoint's, "
                                "e.g. oversize=shrink or zoom_out=[0.5]; repeatable")


def parse_recipe(items: list[str]) -> dict:
    """--recipe's KEY=VALUE items as overrides (borrowcore.models.checkpoint.parse_recipe)."""
    from borrowcore.models.checkpoint import parse_recipe as parse

    return parse(items)


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency, memory, FLOPs, training and evaluation speed of the ablations, side by side."""
    from borrowcore.deploy.bench import format_markdown, run_benchmark

    results = run_benchmark(args.out, args.repeats, args.warmup, tuple(args.batches), args.input, args.width,
                            args.num_classes, args.threads, args.device, tuple(args.sections), args.eval_images,
                            args.compile_mode, tuple(args.scale_sizes), tuple(args.scale_widths), args.key_budget)
    print(format_markdown(results))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Detections on images, folders or path lists, from a checkpoint or an exported ONNX file."""
    from borrowcore.deploy.predict import predict_files

    summary = predict_files(args.source, args.out, checkpoint=args.checkpoint, onnx=args.onnx, device=args.device,
                            conf=args.conf, batch_size=args.batch, tile_size=args.tile, overlap=args.overlap,
                            merge_edges=args.merge_edges, save_images=args.save_images, classes=args.classes,
                            key_budget=args.key_budget, exact=args.exact or None,
                            recipe=parse_recipe(args.recipe) or None, precision=args.precision)
    if summary["skipped"]:
        for skipped in json.loads(Path(summary["detections_file"]).read_text())["skipped"]:
            print(f"predict: skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    print(f"predict: {summary['images']} images ({summary['skipped']} skipped), {summary['detections']} detections, "
          f"{summary['images_per_s']:.2f} images/s -> {summary['detections_file']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX and check onnxruntime against PyTorch."""
    import torch

    from borrowcore.deploy.export import export_onnx, verify_export
    from borrowcore.models.checkpoint import load_detector

    detector = load_detector(args.checkpoint, "cpu")
    metadata = export_onnx(detector, args.out, input_size=args.input_size, with_nms=args.with_nms,
                           dynamic_batch=args.dynamic_batch, batch_size=args.batch_size, exporter=args.exporter,
                           checkpoint=args.checkpoint, canvas=args.canvas)
    shape = "x".join(map(str, metadata["canvas"])) + " canvas" if metadata["canvas"] else metadata["input_size"]
    print(f"export: {args.out} ({metadata['ablation']}, input {shape}, "
          f"{'NMS in graph' if metadata['with_nms'] else 'scores + boxes'}, {metadata['exporter']} exporter, "
          f"opset {metadata['opset']})")
    if metadata["exporter_note"]:
        print(f"export: {metadata['exporter_note']}")
    if detector.config.zoom_out or detector.config.drop_inside:
        print(f"export: the graph is the native pass: the checkpoint's zoom_out {detector.config.zoom_out} and "
              f"drop_inside {detector.config.drop_inside} run in PyTorch only (predict/eval --checkpoint)")
    if not args.no_verify:
        if args.verify_images:
            from borrowcore.data.dataset import read_image_rgb
            from borrowcore.deploy.predict import collect_sources

            images = [read_image_rgb(s.path) for s in collect_sources(args.verify_images)[0]]
        else:
            generator = torch.Generator().manual_seed(0)
            images = [torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8, generator=generator) for _ in range(2)]
        print("parity (onnxruntime vs PyTorch): " + json.dumps(verify_export(detector, args.out, images)))
    return 0


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


def cmd_shift(args: argparse.Namespace) -> int:
    """An off-distribution copy of a COCO set: its images rescaled and/or recoloured, boxes moved."""
    from borrowcore.data.shift import write_shifted

    path = write_shifted(args.coco, args.images, args.out, args.scale, args.hue, args.saturation, args.brightness)
    print(f"{path}: images in {Path(args.out) / 'images'}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    """Copy an ablation's checkpoints (without training state), reports and logs into assets/."""
    from borrowcore.engine.ablation import release_ablation

    for path in release_ablation(args.runs, args.assets, args.necks, args.name, args.reports_folder, args.best_by,
                                 args.weights_necks, args.matching, args.nms_iou, parse_recipe(args.recipe)):
        print(path)
    return 0


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
    p.add_argument("--checkpoint", help="instead: recall of this checkpoint's anchors by box size, on the inputs "
                                        "it builds (whole photos at their own size); use --iou 0.35 for face models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_anchors)

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

    p = commands.add_parser("analyze", help="COCO error analysis by size of an eval report")
    p.add_argument("--report", required=True)
    p.add_argument("--coco", help="ground truth (default: the path recorded in the report)")
    p.add_argument("--no-write", dest="no_write", action="store_true", help="do not store the result in the report")
    p.set_defaults(func=cmd_analyze)

    p = commands.add_parser("compare", help="two reports on the same images, head to head by size")
    p.add_argument("a", help="report A (the baseline)")
    p.add_argument("b", help="report B")
    p.add_argument("--coco", help="ground truth (default: the path recorded in report A)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap draws over images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-threshold", dest="score_threshold", type=float, default=0.5,
                   help="a detection counts for fixed/broken lists above this score")
    p.add_argument("--out", help="write the comparison as JSON")
    p.set_defaults(func=cmd_compare)

    p = commands.add_parser("bench", help="what borrowing costs: latency, memory, FLOPs, training and eval speed")
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--input", type=int, default=300)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--num-classes", dest="num_classes", type=int, default=80)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--sections", nargs="+", default=["latency", "memory", "flops", "onnx", "training", "eval"],
                   choices=["latency", "memory", "flops", "onnx", "training", "eval", "compile", "scale"],
                   help="compile (torch.compile against eager) and scale (cost against image size) run only when named")
    p.add_argument("--scale-sizes", dest="scale_sizes", type=int, nargs="+", default=[300, 512, 768, 1024, 1536, 2048],
                   help="scale: square inputs in px")
    p.add_argument("--scale-widths", dest="scale_widths", type=float, nargs="+", default=[0.125, 1.0],
                   help="scale: network widths (torchvision's ssd300_vgg16 is timed with width 1)")
    p.add_argument("--key-budget", dest="key_budget", type=int, default=0,
                   help=f"full's fast matching: keys per deeper map (default {DEFAULT_KEY_BUDGET}); the scale "
                        "section also times full+exact (every cell)")
    p.add_argument("--eval-images", dest="eval_images", type=int, default=5000)
    p.add_argument("--compile-mode", dest="compile_mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    p.set_defaults(func=cmd_bench)

    p = commands.add_parser("convert", help="YOLO txt, Pascal VOC xml or WIDER FACE labels to COCO json")
    p.add_argument("--from", dest="source", choices=["yolo", "voc", "wider"], required=True)
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--labels", required=True, help="YOLO labels folder (<stem>.txt), VOC Annotations folder (*.xml) "
                   "or a WIDER FACE ground-truth file (wider_face_*_bbx_gt.txt)")
    p.add_argument("--names", help="class names: a names file (one per line) or an ultralytics data.yaml")
    p.add_argument("--out", required=True, help="COCO json to write")
    p.set_defaults(func=cmd_convert)

    p = commands.add_parser("shift", help="an off-distribution copy of a COCO set: rescaled and/or recoloured")
    p.add_argument("--coco", required=True, help="COCO annotation json")
    p.add_argument("--images", required=True, help="its image folder")
    p.add_argument("--out", required=True, help="folder for images/ and instances.json")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor (boxes scale with it)")
    p.add_argument("--hue", type=float, default=0.0, help="hue shift, a fraction of the colour wheel (-0.5..0.5)")
    p.add_argument("--saturation", type=float, default=1.0, help="saturation factor")
    p.add_argument("--brightness", type=float, default=1.0, help="brightness factor")
    p.set_defaults(func=cmd_shift)

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

    p = commands.add_parser("synth", help="generate the borrow benchmark (images + COCO json)")
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, required=True, help="number of images (twins + orphans)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", dest="image_size", type=int, default=256)
    p.add_argument("--twins-fraction", dest="twins_fraction", type=float, default=0.5)
    p.set_defaults(func=cmd_synth)

    p = commands.add_parser("stats", help="box counts by size, aspect ratios and classes of a COCO file")
    p.add_argument("--coco", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)
    p = commands.add_parser("predict", help="detect on images, folders or path lists (checkpoint or ONNX)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a borrowcore checkpoint (PyTorch)")
    source.add_argument("--onnx", help="a file from `borrowcore export` (onnxruntime)")
    p.add_argument("--source", nargs="+", required=True, help="image files, folders (recursive), .txt lists of paths")
    p.add_argument("--out", default="runs/predict", help="output folder for detections.json (and images/)")
    p.add_argument("--conf", type=float, default=0.25, help="keep detections scoring above this")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch", type=int, default=8, help="images (or tiles, with --tile) per forward pass")
    p.add_argument("--tile", type=int, help="sliced inference: S x S tiles at native resolution")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap, a fraction of S")
    p.add_argument("--merge-edges", dest="merge_edges", action="store_true",
                   help="join boxes cut at a tile edge with the box that continues them")
    p.add_argument("--save-images", dest="save_images", action="store_true", help="write images with boxes drawn")
    p.add_argument("--classes", nargs="+", help="class names or labels (1..K) to keep")
    add_matching_arguments(p)
    add_recipe_argument(p)
    add_precision_argument(p)
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("export", help="export a checkpoint to ONNX (onnxruntime parity checked)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--input-size", dest="input_size", type=int, help="S of the graph (default: the checkpoint's)")
    p.add_argument("--canvas", nargs=2, type=int, metavar=("H", "W"),
                   help="whole-image models: the graph's fixed input, multiples of 64, photos placed top-left at "
                        "native resolution (larger ones scaled down to fit); default 1024 1024")
    p.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", help="a symbolic batch dimension")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1, help="the fixed batch otherwise")
    p.add_argument("--with-nms", dest="with_nms", action="store_true",
                   help="end in NonMaxSuppression: final detections from onnxruntime alone")
    p.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="auto: dynamo, falling back to torchscript when it fails")
    p.add_argument("--verify-images", dest="verify_images", nargs="+",
                   help="images for the parity check (default: two random images)")
    p.add_argument("--no-verify", dest="no_verify", action="store_true", help="skip the parity check")
    p.set_defaults(func=cmd_export)
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
