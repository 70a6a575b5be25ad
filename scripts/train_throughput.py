"""Training crops/s of the face detector by width, crop size and precision (a benchmark, not a test).

Times forward + loss + backward + SGD step on random crops holding face-like boxes; no data loading.
Run two copies side by side with OMP_NUM_THREADS=1 to see what two release runs on 2 cores get each:

    OMP_NUM_THREADS=1 python scripts/train_throughput.py --necks full --widths 0.125 0.25 --sizes 256 384
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from borrowcore.models.config import DetectorConfig
from borrowcore.models.detector import build_detector


def random_targets(batch: int, size: int, generator: torch.Generator) -> list[dict]:
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 20, (), generator=generator))
        side = torch.exp(torch.empty(n).uniform_(2.0, 5.5, generator=generator))  # 7-245 px
        xy = torch.rand(n, 2, generator=generator) * (size - side[:, None]).clamp(min=1)
        boxes = torch.cat([xy, xy + side[:, None]], dim=1).clamp(max=size)
        targets.append({"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64)})
    return targets


def crops_per_second(neck: str, width: float, size: int, bf16: bool, batch: int, steps: int, warmup: int,
                     top_octaves: int = 0) -> float:
    torch.manual_seed(0)
    config = DetectorConfig(neck=neck, num_classes=1, input_size=size, width=width, batch_norm=True,
                            anchor_scale=2.0, aspect_ratios=[1.1538], match_iou=0.35, prior_prob=0.25,
                            inference="whole", **({"top_octaves": top_octaves} if top_octaves else {}))
    detector = build_detector(config, ["face"]).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(detector.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    targets = random_targets(batch, size, generator)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = sum(detector(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return batch / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--necks", nargs="+", default=["full"])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.125, 0.25])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 384])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    for neck in args.necks:
        for width in args.widths:
            for size in args.sizes:
                for precision in args.precisions:
                    rate = crops_per_second(neck, width, size, precision == "bf16", args.batch, args.steps, args.warmup)
                    print(json.dumps({"neck": neck, "width": width, "size": size, "precision": precision,
                                      "threads": torch.get_num_threads(), "crops_per_s": round(rate, 2)}), flush=True)


if __name__ == "__main__":
    main()
