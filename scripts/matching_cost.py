"""What exact matching costs on a whole photo, and why (a benchmark, not a test): the FLOPs of each checkpoint
on one photo (the matching counted as the matrix products it is), the time a score of layer 1's fused
softmax(Q K^T) V takes at several embedding widths, and the neck's median time. Run it on idle cores (pause
training first: `pkill -STOP -f "borrowcore train"`).

    python scripts/matching_cost.py assets/checkpoints/faces-{ssd,full}.pt --threads 1 2 --json OUT
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from borrowcore import load_detector
from borrowcore.data.images import read_image_rgb

VAL = Path("data/wider/val.json")
IMAGES = Path("../shared/data/wider-faces/images")


def median_ms(run, repeats: int) -> float:
    run()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def whole_photo_flops(path: Path, photo: torch.Tensor) -> int:
    """FLOPs of one whole-photo inference (the recipe's passes). With gradients on, the matching runs as the
    matrix products the counter sees (at inference SDPA's fused CPU kernel computes the same products)."""
    detector = load_detector(path, precision="fp32")
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        detector([photo])
    return counter.get_total_flops()


def captured_neck_input(path: Path, photo: torch.Tensor):
    """The detector and the backbone maps [X(1)..X(N)] its neck reads on the photo's whole-size pass."""
    detector = load_detector(path)
    neck, captured = detector.network.neck, []
    forward = neck.forward
    neck.forward = lambda features, *args, **kwargs: (captured.append(features), forward(features, *args, **kwargs))[1]
    with torch.inference_mode():
        detector([photo])
    neck.forward = forward
    return detector, captured[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--coco", type=Path, default=VAL)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--photo", type=int, default=1, help="index of the photo in the COCO file")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    image = json.loads(args.coco.read_text())["images"][args.photo]
    photo = read_image_rgb(args.images / image["file_name"])
    result = {"photo": image["file_name"], "size": list(photo.shape[-2:]), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "flops": {}, "neck_ms": {}, "scores": {}}
    for path in args.checkpoints:
        result["flops"][str(path)] = whole_photo_flops(path, photo)
        print(f"{path}: {result['flops'][str(path)] / 1e9:.2f} GFLOP on {image['file_name']} ({photo.shape[-1]}x{photo.shape[-2]})")
    for path in args.checkpoints:
        detector, features = captured_neck_input(path, photo)
        if not detector.network.neck.borrows:
            continue
        queries = features[0].shape[-2] * features[0].shape[-1]
        keys = sum(f.shape[-2] * f.shape[-1] for f in features[1:])
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=detector.precision == "bf16"):
                ms = median_ms(lambda: detector.network.neck(features), args.repeats)
            result["neck_ms"][f"{path} {threads} threads"] = round(ms, 2)
            print(f"{path} neck at layer 1 {tuple(features[0].shape[-2:])}: {ms:.1f} ms, {threads} threads")
        for threads in args.threads:
            torch.set_num_threads(threads)
            for width in (32, 64, 128):  # the score count fixed, the embedding (and the values) this wide
                q, k, v = (torch.randn(1, 1, n, width, dtype=torch.bfloat16) for n in (queries, keys, keys))
                with torch.inference_mode():
                    ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=1.0), args.repeats // 2)
                ns = 1e6 * ms / (queries * keys)
                result["scores"][f"{queries}x{keys} e={width} {threads} threads"] = {"ms": round(ms, 2), "ns_a_score": round(ns, 3)}
                print(f"layer 1's softmax(Q K^T) V, {queries} x {keys} scores, e = {width}, bf16: {ms:.1f} ms "
                      f"({ns:.2f} ns a score), {threads} threads")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
