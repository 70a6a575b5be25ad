"""What borrowing costs, measured side by side (``borrowcore bench``).

Every latency row comes from the same process, the same input, device and thread count, with the models
run interleaved (round robin, one call each per round) so that a noisy machine slows them all alike and
the ratios hold. Medians and p90 after warm-up; CUDA timings use events after a synchronisation.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from borrowcore.models.config import DEFAULT_KEY_BUDGET, NECKS, DetectorConfig
from borrowcore.models.detector import build_detector

TARGETS = (("full vs ssd latency", "full", "ssd", 1.10), ("full vs torchvision ssd300_vgg16", "full", "torchvision", 1.25),
           ("full explain vs plain", "full+explain", "full", 1.15))


def machine() -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_models(num_classes: int, input_size: int, width: float, device: torch.device) -> dict[str, Callable]:
    """name -> a callable running one batch through the core network (no pre/post-processing)."""
    import torchvision

    models: dict[str, Callable] = {}
    for neck in NECKS:
        torch.manual_seed(0)
        detector = build_detector(DetectorConfig(neck=neck, num_classes=num_classes, input_size=input_size, width=width))
        network = detector.network.eval().to(device)
        models[neck] = lambda x, n=network: n(x)
        if neck == "full":
            models["full+explain"] = lambda x, n=network: n(x, return_matching=True)
    reference = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    reference = reference.eval().to(device)

    def torchvision_core(x: torch.Tensor, model=reference) -> Any:
        # backbone + head: the same part of the network as ours (no transform, anchors, post-processing)
        features = list(model.backbone(x).values())
        return model.head(features)

    models["torchvision"] = torchvision_core
    return models


def time_interleaved(models: dict[str, Callable], inputs: torch.Tensor, repeats: int, warmup: int,
                     amp: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each model, run round robin."""
    device = inputs.device
    times: dict[str, list[float]] = {name: [] for name in models}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        for round_index in range(warmup + repeats):
            for name, run in models.items():
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda.synchronize()
                    start.record()
                    run(inputs)
                    end.record()
                    torch.cuda.synchronize()
                    elapsed = start.elapsed_time(end) / 1000
                else:
                    t0 = time.perf_counter()
                    run(inputs)
                    elapsed = time.perf_counter() - t0
                if round_index >= warmup:
                    times[name].append(elapsed)
    return times


def latency_rows(times: dict[str, list[float]], batch: int, device: str, precision: str) -> list[dict]:
    rows = []
    for name, values in times.items():
        values = np.array(values)
        rows.append({"model": name, "batch": batch, "device": device, "precision": precision,
                     "median_ms": round(1000 * float(np.median(values)), 2), "p90_ms": round(1000 * float(np.percentile(values, 90)), 2),
                     "images_per_s": round(batch / float(np.median(values)), 2), "runs": len(values)})
    return rows


def flop_rows(num_classes: int, input_size: int, width: float) -> list[dict]:
    """Measured FLOPs (torch.utils.flop_counter) per variant, and FMB / FRB against their analytic count."""
    rows = []
    x = torch.zeros(1, 3, input_size, input_size)
    for neck in NECKS:
        detector = build_detector(DetectorConfig(neck=neck, num_classes=num_classes, input_size=input_size, width=width)).eval()
        # with gradients on, attention runs as the plain product, the paper's arithmetic (inference's fused
        # kernel pads V to the keys' width: more multiply-adds for less time, neck.attend)
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            output = detector.network(x, return_matching=True)
        counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        row = {"model": neck, "gmacs": round(counter.get_total_flops() / 2e9, 3)}
        if neck in ("borrow", "full"):
            # FMB and FRB run inside the neck's own forward (phi and g as one conv, attention in blocks):
            # the neck's count less FFB's
            neck_flops = next(v for k, v in counts.items() if k.endswith(".neck"))
            fusion = sum(v for k, v in counts.items() if k.count(".") == 3 and ".neck.fusion." in k)
            measured = (neck_flops - fusion) / 2
            backbone = detector.network.backbone
            channels = backbone.out_channels
            cells = [h * w for h, w in output.grid_sizes]
            c = detector.network.neck.representing[0].g[0].out_channels
            analytic = 0
            for n in range(len(cells) - 1):
                d_n = sum(cells[n + 1:])
                analytic += cells[n] * channels[n] * channels[n]  # theta
                analytic += sum(cells[k] * channels[k] * channels[n] for k in range(n + 1, len(cells)))  # phi
                analytic += cells[n] * d_n * channels[n]  # S = Q K^T
                analytic += sum(cells[k] * channels[k] * c for k in range(n + 1, len(cells)))  # g
                analytic += cells[n] * d_n * c  # Z = S_hat V
            row["fmb_frb_gmacs_measured"] = round(measured / 1e9, 4)
            row["fmb_frb_gmacs_analytic"] = round(analytic / 1e9, 4)
        rows.append(row)
    return rows


PEAK_SCRIPT = """
import gc, sys, threading, time, torch
from borrowcore.deploy.bench import core_model
name, batch, size, classes, width, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[7])
torch.set_num_threads(int(sys.argv[6]))
run = core_model(name, width, classes, torch.device("cpu"), budget, sys.argv[8] == "True")
x = torch.rand(batch, 3, size, size)

def anonymous_kib():
    # anonymous memory only: code pages of libtorch faulted in by a first call are file-backed
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

gc.collect()
before, peak, running = anonymous_kib(), [0], [True]

def sample():
    while running[0]:
        peak[0] = max(peak[0], anonymous_kib())
        time.sleep(0.0005)

sampler = threading.Thread(target=sample)
sampler.start()
with torch.inference_mode():
    run(x)
running[0] = False
sampler.join()
print(max(peak[0], anonymous_kib()) - before)
"""


def core_model(name: str, width: float, num_classes: int, device: torch.device, key_budget: int = 0,
               batch_norm: bool = True) -> Callable:
    """A callable running one batch through a core network (no pre/post-processing), in eval mode:
    an ablation by name ("ssd", "full", ...: the default fast matching, ``key_budget`` keys per deeper map,
    0 for the default), "full+exact" (every deeper cell matched, the paper), "full+explain" (matching
    scores returned) or "torchvision" (ssd300_vgg16's backbone and head, width 1)."""
    import torchvision

    torch.manual_seed(0)
    if name == "torchvision":
        reference = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes + 1)
        reference = reference.eval().to(device)
        return lambda x, model=reference: model.head(list(model.backbone(x).values()))
    neck = name.split("+")[0]
    exact = name.endswith("+exact")
    config = DetectorConfig(neck=neck, num_classes=num_classes, width=width, batch_norm=batch_norm,
                            matching="exact" if exact else "fast", key_budget=0 if exact else key_budget)
    network = build_detector(config).network.eval().to(device)
    return lambda x, n=network, matching=name.endswith("+explain"): n(x, return_matching=matching)


def cpu_peak_memory_mb(neck: str, batch: int, size: int, classes: int, width: float, key_budget: int = 0,
                       batch_norm: bool = False) -> float:
    """Peak anonymous memory of a fresh process during one forward of ``core_model(neck)``, above that with
    the model built, in MiB (sampled every 0.5 ms; file-backed pages such as library code are left out;
    large blocks are unmapped when freed, so it follows the tensors alive)."""
    args = [sys.executable, "-c", PEAK_SCRIPT, neck, str(batch), str(size), str(classes), str(width),
            str(torch.get_num_threads()), str(key_budget), str(batch_norm)]
    # glibc's mmap threshold, fixed: every allocation of 64 KiB or more is its own mapping, returned on free,
    # so resident memory follows the live tensors (left dynamic, freed blocks stay resident by chance)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)


# ---- How cost grows with the image (``--sections scale``) ----

SCALE_SIZES = (300, 512, 768, 1024, 1536, 2048)
SCALE_LIMIT = 1.25  # full, fast by default (time and memory), and full exact (memory) against ssd


def scale_rows(sizes: tuple[int, ...] = SCALE_SIZES, widths: tuple[float, ...] = (0.125, 1.0), key_budget: int = 0,
               num_classes: int = 1, repeats: int = 3, warmup: int = 1, device: torch.device | None = None,
               batch: int = 1) -> list[dict]:
    """Median time and peak memory of ssd, full as it runs by default (fast matching, ``key_budget`` keys per
    deeper map, 0: DEFAULT_KEY_BUDGET), full with exact matching and (at width 1) torchvision's
    ssd300_vgg16 at square inputs of ``sizes``, one class, BatchNorm; ratios to ssd at the same width and
    input. CPU memory is measured in a fresh process per row, CUDA memory as the allocator's peak."""
    device = device or torch.device("cpu")
    rows = []
    for width in widths:
        names = ["ssd", "full", "full+exact"] + (["torchvision"] if width == 1.0 else [])
        models = {name: core_model(name, width, num_classes, device, key_budget) for name in names}
        for size in sizes:
            inputs = torch.rand(batch, 3, size, size, device=device)
            times = time_interleaved(models, inputs, repeats, warmup)
            for name in names:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    resident = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    with torch.inference_mode():
                        models[name](inputs)
                    torch.cuda.synchronize()
                    peak = round((torch.cuda.max_memory_allocated() - resident) / 2**20, 1)
                else:
                    peak = cpu_peak_memory_mb(name, batch, size, num_classes, width, key_budget, batch_norm=True)
                rows.append({"model": name, "width": width, "input": size, "megapixels": round(size * size / 1e6, 3),
                             "batch": batch, "device": device.type,
                             "key_budget": (key_budget or DEFAULT_KEY_BUDGET) if name == "full" else 0,
                             "median_ms": round(1000 * float(np.median(times[name])), 2), "peak_mb": peak})
            ssd = next(r for r in rows if r["model"] == "ssd" and r["width"] == width and r["input"] == size)
            for row in rows[-len(names):]:
                row["time_vs_ssd"] = round(row["median_ms"] / ssd["median_ms"], 3)
                row["memory_vs_ssd"] = round(row["peak_mb"] / ssd["peak_mb"], 3) if ssd["peak_mb"] > 0 else None
    return rows


def scale_targets(rows: list[dict], limit: float = SCALE_LIMIT) -> list[dict]:
    """PASS/FAIL per width and input: full's time and peak memory (its default, fast matching), and full
    exact's peak memory, each within ``limit`` x ssd's."""
    out = []
    for row in rows:
        checks = {"full": [("time", "time_vs_ssd"), ("peak memory", "memory_vs_ssd")],
                  "full+exact": [("peak memory", "memory_vs_ssd")]}.get(row["model"], [])
        for what, key in checks:
            ratio = row[key]
            out.append({"target": f"{row['model']} {what} vs ssd", "width": row["width"], "input": row["input"],
                        "ratio": ratio, "limit": limit, "result": "PASS" if ratio is not None and ratio <= limit else "FAIL"})
    return out


def plot_scale(rows: list[dict], path: str | Path) -> None:
    """Time and peak memory against pixels, log-log: one line per model (colour) and width (style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ssd": "tab:blue", "full+exact": "tab:red", "full": "tab:orange", "torchvision": "tab:gray"}
    styles = ["-", "--", ":", "-."]
    widths = sorted({r["width"] for r in rows})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((axes[0], "median_ms", "median time (ms)"), (axes[1], "peak_mb", "peak memory (MiB)")):
        for name, colour in colours.items():
            for width, style in zip(widths, styles):
                line = sorted((r for r in rows if r["model"] == name and r["width"] == width), key=lambda r: r["input"])
                if line:
                    budget = f" K={line[0]['key_budget']}" if line[0].get("key_budget") else ""
                    axis.plot([r["megapixels"] for r in line], [r[key] for r in line], style, color=colour, marker="o",
                              markersize=3, label=f"{name}{budget} w{width:g}" if name != "torchvision" else "torchvision ssd300_vgg16")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("input megapixels (300 to 2048 px square)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"borrowcore bench --sections scale ({rows[0]['device']}, batch {rows[0]['batch']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def training_rows(steps: int = 6, batch: int = 8, width: float = 0.125, size: int = 256) -> list[dict]:
    """Training images/s of `full` on the shipped tiny benchmark: one process, then two under torchrun."""
    root = Path(__file__).resolve().parents[2]
    tiny = root / "assets" / "synth-tiny"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"train.train_images={tiny / 'images'}", f"train.train_annotations={tiny / 'annotations.json'}",
                "train.val_annotations=", f"train.max_steps={steps}", f"train.batch_size={batch}", "train.workers=0",
                f"model.width={width}", f"model.input_size={size}", "train.log_every=1", "train.checkpoint_every=1000"]
        for processes in (1, 2):
            out = Path(tmp) / f"p{processes}"
            threads = max(1, (os.cpu_count() or 2) // processes)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            train = ["-m", "borrowcore", "train", "--config", str(root / "configs" / "full.yaml"), "--out", str(out),
                     "--device", "cpu", "--set", *sets]
            command = [sys.executable, *train] if processes == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561", *train]
            subprocess.run(command, env=env, capture_output=True, check=True, cwd=root)
            records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
            speeds = [r["images_per_s"] for r in records if r.get("event") == "step"][2:]  # after warm-up
            rows.append({"model": "full", "processes": processes, "threads_each": threads, "batch_per_process": batch,
                         "width": width, "input": size, "images_per_s": round(float(np.median(speeds)), 2)})
    return rows


def coco_eval_rows(num_images: int = 5000, seed: int = 0) -> list[dict]:
    """pycocotools against faster-coco-eval (when installed) on a large synthetic detections file."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(1, 8)):
            w, h = rng.uniform(8, 200, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            category = int(rng.integers(1, 11))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(3):  # a near hit, a looser one, a wrong class
                jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
                results.append({"image_id": image_id, "category_id": category if rng.random() < 0.8 else int(rng.integers(1, 11)),
                                "bbox": [float(v) for v in np.array([x, y, w, h]) + jitter], "score": float(rng.random())})
    data = {"images": images, "annotations": annotations, "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 11)]}
    rows, stats = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "gt.json"
        gt_path.write_text(json.dumps(data))
        for name in ("pycocotools", "faster-coco-eval"):
            if name == "faster-coco-eval":
                try:
                    from faster_coco_eval import COCO as FastCOCO, COCOeval_faster as FastEval
                except ImportError:
                    rows.append({"library": name, "images": num_images, "seconds": None, "note": "not installed"})
                    continue
                coco_cls, eval_cls = FastCOCO, FastEval
            else:
                coco_cls, eval_cls = COCO, COCOeval
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                gt = coco_cls(str(gt_path))
                evaluator = eval_cls(gt, gt.loadRes(results), "bbox")
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            stats[name] = np.array(evaluator.stats[:12])
            rows.append({"library": name, "images": num_images, "detections": len(results),
                         "seconds": round(time.perf_counter() - start, 2)})
    if len(stats) == 2:
        if not np.allclose(stats["pycocotools"], stats["faster-coco-eval"], atol=1e-4):
            raise AssertionError(f"faster-coco-eval differs from pycocotools: {stats}")
        rows[-1]["identical_to_pycocotools"] = True
    return rows


def onnx_rows(batches: tuple[int, ...] = (1, 8), input_size: int = 300, width: float = 1.0, num_classes: int = 80,
              repeats: int = 5, warmup: int = 1) -> list[dict]:
    """onnxruntime against PyTorch eager on the same exported computation (network + box decoding)."""
    from borrowcore.deploy.export import export_onnx
    from borrowcore.deploy.runtime import benchmark_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for neck in ("ssd", "full"):
            torch.manual_seed(0)
            detector = build_detector(DetectorConfig(neck=neck, num_classes=num_classes, input_size=input_size, width=width)).eval()
            path = Path(tmp) / f"{neck}.onnx"
            export_onnx(detector, path, input_size=input_size, with_nms=False, dynamic_batch=True)
            for batch in batches:
                result = benchmark_onnx(detector, path, batch, repeats, warmup)
                rows.append({"model": neck, "batch": batch, "threads": result["threads"],
                             "eager_ms": round(1000 * result["eager_s"], 2), "onnxruntime_ms": round(1000 * result["onnxruntime_s"], 2),
                             "speedup": round(result["speedup"], 2)})
    return rows


def compile_rows(num_classes: int, input_size: int, width: float, device: torch.device, batches: tuple[int, ...],
                 repeats: int, warmup: int, mode: str = "default") -> list[dict]:
    """torch.compile (inductor) against eager for `ssd` and `full`: compile time, latency and speed-up,
    with the compiled outputs checked against eager ones (AMP bf16 on CUDA, fp32 on the CPU)."""
    amp = device.type == "cuda"
    rows = []
    for neck in ("ssd", "full"):
        torch.manual_seed(0)
        detector = build_detector(DetectorConfig(neck=neck, num_classes=num_classes, input_size=input_size, width=width))
        network = detector.network.eval().to(device)

        def core(x: torch.Tensor, n=network) -> tuple[torch.Tensor, torch.Tensor]:
            out = n(x)
            return out.cls_logits, out.box_regression

        for batch in batches:
            torch._dynamo.reset()
            compiled = torch.compile(core, mode=mode, dynamic=False)
            inputs = torch.rand(batch, 3, input_size, input_size, device=device)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp) if amp else torch.autocast("cpu", enabled=False)
            start = time.perf_counter()
            with torch.inference_mode(), autocast:
                reference, result = core(inputs), compiled(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            difference = max(float((a.float() - b.float()).abs().max()) for a, b in zip(reference, result))
            times = time_interleaved({"eager": core, "compiled": compiled}, inputs, repeats, warmup, amp=amp)
            eager, fast = float(np.median(times["eager"])), float(np.median(times["compiled"]))
            rows.append({"model": neck, "batch": batch, "device": device.type, "precision": "amp-bf16" if amp else "fp32",
                         "mode": mode, "compile_s": round(compile_s, 1), "eager_ms": round(1000 * eager, 2),
                         "compiled_ms": round(1000 * fast, 2), "speedup": round(eager / fast, 2),
                         "max_abs_difference": float(f"{difference:.3g}")})
    return rows


def run_benchmark(out: str | Path = "reports/bench", repeats: int = 10, warmup: int = 3, batches: tuple[int, ...] = (1, 16),
                  input_size: int = 300, width: float = 1.0, num_classes: int = 80, threads: int | None = None,
                  device: str | None = None, sections: tuple[str, ...] = ("latency", "memory", "flops", "onnx", "training", "eval"),
                  eval_images: int = 5000, compile_mode: str = "default", scale_sizes: tuple[int, ...] = SCALE_SIZES,
                  scale_widths: tuple[float, ...] = (0.125, 1.0), key_budget: int = 0) -> dict[str, Any]:
    """Run the benchmark; write OUT/bench.json and OUT/bench.md; return the results."""
    if threads:
        torch.set_num_threads(threads)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict[str, Any] = {"machine": machine(), "settings": {
        "input_size": input_size, "width": width, "num_classes": num_classes, "repeats": repeats, "warmup": warmup,
        "batches": list(batches), "device": str(torch_device)}, "command": " ".join(["borrowcore bench", *sys.argv[2:]])}
    if "latency" in sections:
        models = build_models(num_classes, input_size, width, torch_device)
        rows = []
        precisions = ["fp32"] + (["amp-bf16"] if torch_device.type == "cuda" else [])
        for precision in precisions:
            for batch in batches:
                inputs = torch.rand(batch, 3, input_size, input_size, device=torch_device)
                times = time_interleaved(models, inputs, repeats, warmup, amp=precision != "fp32")
                rows += latency_rows(times, batch, torch_device.type, precision)
                if torch_device.type == "cuda":
                    for name in models:  # peak memory of one forward above what is resident (every model's weights)
                        torch.cuda.synchronize()
                        resident = torch.cuda.memory_allocated()
                        torch.cuda.reset_peak_memory_stats()
                        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision != "fp32"):
                            models[name](inputs)
                        torch.cuda.synchronize()
                        next(r for r in rows if r["model"] == name and r["batch"] == batch and r["precision"] == precision)[
                            "peak_mem_mb"] = round((torch.cuda.max_memory_allocated() - resident) / 2**20, 1)
        results["latency"] = rows
        results["targets"] = targets(rows)
    if "scale" in sections:
        results["scale"] = scale_rows(scale_sizes, scale_widths, key_budget, 1, repeats, warmup, torch_device)
        results["scale_targets"] = scale_targets(results["scale"])
    if "compile" in sections:
        results["compile"] = compile_rows(num_classes, input_size, width, torch_device, batches, repeats, warmup, compile_mode)
    if "memory" in sections and torch_device.type == "cpu":
        results["cpu_peak_memory"] = [
            {"model": name, "batch": batch, "peak_rss_growth_mb": cpu_peak_memory_mb(name, batch, input_size, num_classes, width)}
            for batch in batches for name in (*NECKS, "full+explain")]
    if "flops" in sections:
        results["flops"] = flop_rows(num_classes, input_size, width)
    if "onnx" in sections and torch_device.type == "cpu":
        results["onnx"] = onnx_rows(input_size=input_size, width=width, num_classes=num_classes)
    if "training" in sections:
        results["training"] = training_rows()
    if "eval" in sections:
        results["coco_eval"] = coco_eval_rows(eval_images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text(format_markdown(results) + "\n")
    if "scale" in results:
        plot_scale(results["scale"], out / "scale.png")
    return results


def targets(rows: list[dict]) -> list[dict]:
    """PASS/FAIL of each latency target, per batch and precision (ratios of medians)."""
    out = []
    groups = {(r["batch"], r["precision"]) for r in rows}
    for batch, precision in sorted(groups):
        median = {r["model"]: r["median_ms"] for r in rows if r["batch"] == batch and r["precision"] == precision}
        for name, a, b, limit in TARGETS:
            ratio = median[a] / median[b]
            out.append({"target": name, "batch": batch, "precision": precision, "ratio": round(ratio, 3), "limit": limit,
                        "result": "PASS" if ratio <= limit else "FAIL"})
    return out


def format_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('threads')} threads"
             + (f", GPU {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}.",
             f"Command: `{results['command']}`", ""]
    if "latency" in results:
        lines += ["| model | batch | device | precision | median ms | p90 ms | images/s |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['device']} | {r['precision']} | {r['median_ms']} | {r['p90_ms']} | {r['images_per_s']} |"
                  for r in results["latency"]]
        lines += ["", "| target | batch | precision | ratio | limit | result |", "|---|---|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['batch']} | {t['precision']} | {t['ratio']} | {t['limit']} | {t['result']} |"
                  for t in results["targets"]]
    if "scale" in results:
        lines += ["", "| scale: model | width | input | median ms | peak MiB | time / ssd | memory / ssd |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']}{' K=' + str(r['key_budget']) if r['key_budget'] else ''} | {r['width']:g} | {r['input']} | "
                  f"{r['median_ms']} | {r['peak_mb']} | {r['time_vs_ssd']} | {r['memory_vs_ssd']} |" for r in results["scale"]]
        lines += ["", "| scale target | width | input | ratio | limit | result |", "|---|---|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['width']:g} | {t['input']} | {t['ratio']} | {t['limit']} | {t['result']} |"
                  for t in results["scale_targets"]]
    if "compile" in results:
        lines += ["", "| torch.compile | batch | device | precision | mode | compile s | eager ms | compiled ms | speed-up | max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['device']} | {r['precision']} | {r['mode']} | {r['compile_s']} | "
                  f"{r['eager_ms']} | {r['compiled_ms']} | {r['speedup']} | {r['max_abs_difference']} |" for r in results["compile"]]
    if "cpu_peak_memory" in results:
        lines += ["", "| model | batch | peak RSS growth (MiB) |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['peak_rss_growth_mb']} |" for r in results["cpu_peak_memory"]]
    if "flops" in results:
        lines += ["", "| model | GMACs | FMB+FRB GMACs measured | analytic |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['gmacs']} | {r.get('fmb_frb_gmacs_measured', '')} | {r.get('fmb_frb_gmacs_analytic', '')} |"
                  for r in results["flops"]]
    if "onnx" in results:
        keys = [k for k in results["onnx"][0] if k not in ("model", "batch")] if results["onnx"] else []
        lines += ["", "| onnx vs eager | batch | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        lines += [f"| {r['model']} | {r['batch']} | " + " | ".join(str(r[k]) for k in keys) + " |" for r in results["onnx"]]
    if "training" in results:
        lines += ["", "| training | processes | threads each | batch/process | images/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} w{r['width']} @{r['input']} | {r['processes']} | {r['threads_each']} | {r['batch_per_process']} | {r['images_per_s']} |"
                  for r in results["training"]]
    if "coco_eval" in results:
        lines += ["", "| COCO evaluation | images | detections | seconds | note |", "|---|---|---|---|---|"]
        lines += [f"| {r['library']} | {r['images']} | {r.get('detections', '')} | {r['seconds']} | "
                  f"{r.get('note', 'identical numbers' if r.get('identical_to_pycocotools') else '')} |" for r in results["coco_eval"]]
    return "\n".join(lines)
