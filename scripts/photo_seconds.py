"""Whole-photo seconds a photo of each checkpoint, as a user's upload runs (its own inference recipe, default
matching), on the same photos and threads, interleaved so that a change in the machine's load falls on every
model alike: each checkpoint at each ``--precisions`` (the CPU inference precision, ``load_detector``), and with
``--yolo`` the ultralytics peer at ``--yolo-sizes`` (``PYTHONPATH=.peer``, ``make peer``), given the same decoded
photos. Run it on idle cores (pause training first: `pkill -STOP -f "borrowcore train"`).

    python scripts/photo_seconds.py assets/checkpoints/faces-{ssd,full}.pt --photos 40 --json OUT
    python scripts/photo_seconds.py assets/checkpoints/faces-{ssd,full}.pt --key-budgets 2048 --photos 60 --json OUT
    PYTHONPATH=.peer python scripts/photo_seconds.py assets/checkpoints/faces-full.pt --precisions fp32 bf16 \
        --yolo state/faces-release/yolo11n/final.pt --yolo-sizes 1280 --photos 40 --json OUT
    python scripts/photo_seconds.py assets/checkpoints/faces-{ssd,full}.pt --one-pass \
        --onnx ssd.onnx full.onnx --photos 60 --json OUT   # exported with `borrowcore export ... --canvas 768 1024`
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from borrowcore import load_detector
from borrowcore.data.images import read_image_rgb

VAL = Path("data/wider/val.json")
IMAGES = Path("../shared/data/wider-faces/images")


def yolo_runner(weights: Path, size: int):
    """The peer on a decoded photo (3, H, W) uint8 RGB, as its own predict runs it on a file (BGR array)."""
    from ultralytics import YOLO

    model = YOLO(str(weights))

    def run(photo: torch.Tensor) -> None:
        model.predict(photo.permute(1, 2, 0).flip(-1).numpy(), imgsz=size, conf=0.01, iou=0.45, max_det=200,
                      device="cpu", verbose=False)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--coco", type=Path, default=VAL, help="the photos: a COCO file's images (default WIDER val)")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--photos", type=int, default=40, help="the first N photos of the COCO file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exact", action="store_true", help="exact matching for borrow / full checkpoints")
    parser.add_argument("--key-budgets", dest="key_budgets", nargs="*", type=int, default=[],
                        help="borrow / full checkpoints also with fast matching at these keys per deeper map")
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "bf16", "fp32"])
    parser.add_argument("--batch-norms", dest="batch_norms", nargs="+", default=["folded"], choices=["folded", "trained"],
                        help="BatchNorm folded into the convs (the default of predict, eval and the app) or as trained")
    parser.add_argument("--one-pass", dest="one_pass", action="store_true",
                        help="each checkpoint also with its whole-size pass only (zoom_out []): what the half-size pass costs")
    parser.add_argument("--onnx", nargs="*", type=Path, default=[],
                        help="exported graphs (`borrowcore export --canvas H W`), run by onnxruntime on --threads threads")
    parser.add_argument("--yolo", type=Path, help="an ultralytics checkpoint, timed beside the others")
    parser.add_argument("--yolo-sizes", nargs="+", type=int, default=[1280])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    coco = json.loads(args.coco.read_text())
    photos = [read_image_rgb(args.images / image["file_name"]) for image in coco["images"][: args.photos]]
    runners = {}
    for path in args.checkpoints:
        for precision in args.precisions:
            for batch_norm in args.batch_norms:
                fold_bn = batch_norm == "folded"
                detector = load_detector(path, exact=args.exact or None, precision=precision, fold_bn=fold_bn)
                name = f"{path} {detector.precision}" + ("" if fold_bn else " BN as trained")
                runners[name] = lambda photo, d=detector: d([photo])
                for budget in args.key_budgets if detector.network.neck.borrows else []:
                    detector = load_detector(path, key_budget=budget, precision=precision, fold_bn=fold_bn)
                    runners[f"{name} {budget} keys"] = lambda photo, d=detector: d([photo])
                if args.one_pass:
                    detector = load_detector(path, exact=args.exact or None, precision=precision, fold_bn=fold_bn,
                                             recipe={"zoom_out": []})
                    runners[f"{name} whole-size pass only"] = lambda photo, d=detector: d([photo])
    for path in args.onnx:
        from borrowcore.deploy.runtime import OnnxDetector

        # spin=False: onnxruntime's threads otherwise busy-wait after each run, slowing whichever model runs next
        runners[f"{path} onnxruntime"] = lambda photo, d=OnnxDetector(path, "cpu", threads=args.threads, spin=False): d([photo])
    if args.yolo:
        for size in args.yolo_sizes:
            runners[f"{args.yolo} {size} px"] = yolo_runner(args.yolo, size)
    torch.set_num_threads(args.threads)  # ultralytics sets its own count (the cores minus one) on import
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for run in runners.values():  # warm-up
            run(photos[0])
        for photo in photos:
            for name, run in runners.items():
                torch.set_num_threads(args.threads)
                start = time.perf_counter()
                run(photo)
                seconds[name].append(time.perf_counter() - start)
    sizes = [f"{p.shape[-1]}x{p.shape[-2]}" for p in photos]
    rows = [{"model": name, "median_s": round(statistics.median(s), 3), "mean_s": round(statistics.fmean(s), 3),
             "photos": len(s), "threads": args.threads, "matching": "exact" if args.exact else "as shipped"}
            for name, s in seconds.items()]
    for row in rows:
        print(f"{row['model']}: median {row['median_s']:.3f} s, mean {row['mean_s']:.3f} s a photo "
              f"({row['photos']} photos, most {max(set(sizes), key=sizes.count)}, {args.threads} threads)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "machine": platform.processor() or platform.machine(),
                                         "torch": torch.__version__, "photos": str(args.coco)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
