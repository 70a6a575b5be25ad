"""``borrowcore predict``, ``export`` and ``bench``: detections on files, ONNX, and what the detector costs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from borrowcore.cli.options import add_matching_arguments, add_precision_argument, add_recipe_argument, parse_recipe
from borrowcore.models.config import DEFAULT_KEY_BUDGET


def add_predict(commands: argparse._SubParsersAction) -> None:
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


def cmd_predict(args: argparse.Namespace) -> int:
    """Detections on images, folders or path lists, from a checkpoint or an exported ONNX file."""
    from borrowcore.deploy.predict import predict_files

    summary = predict_files(args.source, args.out, checkpoint=args.checkpoint, onnx=args.onnx, device=args.device,
                            conf=args.conf, batch_size=args.batch, tile_size=args.tile, overlap=args.overlap,
                            merge_edges=args.merge_edges, save_images=args.save_images, classes=args.classes,
                            key_budget=args.key_budget, exact=args.exact or None,
                            recipe=parse_recipe(args.recipe) or None, precision=args.precision,
                            fold_bn=args.fold_bn)
    if summary["skipped"]:
        for skipped in json.loads(Path(summary["detections_file"]).read_text())["skipped"]:
            print(f"predict: skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    print(f"predict: {summary['images']} images ({summary['skipped']} skipped), {summary['detections']} detections, "
          f"{summary['images_per_s']:.2f} images/s -> {summary['detections_file']}")
    return 0


def add_export(commands: argparse._SubParsersAction) -> None:
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


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX and check onnxruntime against PyTorch."""
    import torch

    from borrowcore.deploy.export import export_onnx
    from borrowcore.deploy.runtime import verify_export
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


def add_bench(commands: argparse._SubParsersAction) -> None:
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


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency, memory, FLOPs, training and evaluation speed of the ablations, side by side."""
    from borrowcore.deploy.bench import format_markdown, run_benchmark

    results = run_benchmark(args.out, args.repeats, args.warmup, tuple(args.batches), args.input, args.width,
                            args.num_classes, args.threads, args.device, tuple(args.sections), args.eval_images,
                            args.compile_mode, tuple(args.scale_sizes), tuple(args.scale_widths), args.key_budget)
    print(format_markdown(results))
    return 0
