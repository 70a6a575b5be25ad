"""The trainer: ``borrowcore train`` on one CPU, one GPU, or many under torchrun (DDP).

Resumable: ``last.pt`` holds the model, optimizer, scheduler, grad scaler, EMA, step and RNG states, and
augmentation is a pure function of (seed, epoch, index), so a run killed and resumed (on this machine or,
from a copy of OUT, on another) ends with the same weights as one that was not. ``weights.pt``, written at
the end, holds the weights to ship (the EMA when there is one) without the training state.
The log records the wall-clock and CPU hours spent, summed over resumptions.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from borrowcore.data.dataset import CocoDetection, collate_detection
from borrowcore.data.presets import build_preset
from borrowcore.engine.config import ExperimentConfig, save_config
from borrowcore.engine.steps import ModelEMA, lr_factor, parameter_groups, to_device, train_step, validation_loss
from borrowcore.evaluation.explain import borrow_precision
from borrowcore.evaluation.neck_stats import fusion_weight_norms, gradient_norms
from borrowcore.models.checkpoint import load_state, read_checkpoint, save_checkpoint
from borrowcore.models.detector import build_detector
from borrowcore.utils.distributed import DistributedContext, barrier, cleanup, init_distributed, reduce_mean, reduce_sum

REFERENCE_BATCH = 32  # SPEC §6: lr is given for a global batch of 32 and scaled linearly


class SkipSampler(Sampler):
    """The first ``skip`` indices of ``sampler`` dropped: resuming in the middle of an epoch."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def rng_state() -> dict[str, Any]:
    """Every RNG as plain types and tensors (weights-only loading refuses numpy objects)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    key, version = state["python"]
    random.setstate((version, tuple(key), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class JsonLog:
    """One JSON object per line in OUT/log.jsonl (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the data-loader workers of past epochs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def build_loaders(config: ExperimentConfig, context: DistributedContext):
    t = config.train
    size = config.model.input_size
    # crowd boxes (WIDER's invalid faces) travel with the targets as ignore regions (label -1)
    train_set = CocoDetection(t.train_images, t.train_annotations, build_preset(t.augmentation, size, t.scale_range),
                              skip_bad=t.skip_bad, seed=t.seed, repeats=t.repeats, ignore_regions=True)
    val_set = None
    if t.val_annotations:
        val_set = CocoDetection(t.val_images, t.val_annotations, build_preset("eval", size), skip_bad=t.skip_bad,
                                seed=t.seed, ignore_regions=True)
    return train_set, val_set


def make_loader(dataset, sampler, batch_size: int, workers: int, drop_last: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_detection, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)  # fresh workers each epoch see the dataset's new epoch


def validation_ap(detector, t, context: DistributedContext) -> float:
    """COCO AP of the detector on the validation set (every rank a shard; the same value on all ranks)."""
    from borrowcore.evaluation.coco_eval import coco_metrics
    from borrowcore.evaluation.evaluate import gather_results, predict

    dataset = CocoDetection(t.val_images, t.val_annotations, skip_bad=t.skip_bad)
    results, _ = predict(detector, dataset, context.device, t.batch_size, 0, context, show_progress=False)
    results = gather_results(results, context)
    ap = coco_metrics(dataset.coco, results)["metrics"]["AP"]
    detector.train()
    return max(ap, 0.0)


def train(config: ExperimentConfig, out_dir: str | Path, resume: bool = False, device: str | None = None,
          show_progress: bool = True) -> dict[str, Any]:
    """Train ``config`` into ``out_dir`` (last.pt, best.pt, log.jsonl, config.yaml); returns a summary."""
    context = init_distributed(device)
    try:
        return _train(config, Path(out_dir), resume, context, show_progress)
    finally:
        cleanup(context)


def _train(config: ExperimentConfig, out_dir: Path, resume: bool, context: DistributedContext,
           show_progress: bool) -> dict[str, Any]:
    t = config.train
    seed_everything(t.seed)
    train_set, val_set = build_loaders(config, context)
    if config.model.num_classes != len(train_set.class_names):
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=len(train_set.class_names)))

    detector = build_detector(config.model, train_set.class_names)
    if t.pretrained:
        detector.network.backbone.load_vgg16(t.pretrained)
    detector.to(context.device)
    if t.channels_last:
        detector.to(memory_format=torch.channels_last)
    model = detector
    if context.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            detector, device_ids=[context.local_rank] if context.device.type == "cuda" else None)

    global_batch = t.batch_size * context.world_size
    base_lr = t.lr * global_batch / REFERENCE_BATCH
    optimizer = torch.optim.SGD(parameter_groups(detector, t.weight_decay), lr=base_lr, momentum=t.momentum)
    sampler = DistributedSampler(train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                                 seed=t.seed, drop_last=True)
    steps_per_epoch = len(sampler) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{t.train_annotations}: {len(train_set)} samples per epoch give no full batch of {t.batch_size} "
                         f"per process ({context.world_size} processes)")
    total_steps = t.max_steps if t.max_steps > 0 else t.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, t.warmup_steps, t.schedule, t.milestones))
    use_fp16_scaler = context.device.type == "cuda" and t.amp == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16_scaler) if use_fp16_scaler else torch.amp.GradScaler("cpu", enabled=False)

    ema = ModelEMA(detector, t.ema_decay, t.ema_tau) if t.ema_decay > 0 else None
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    log = JsonLog(out_dir / "log.jsonl" if context.is_main else None)
    step, best_val = 0, float("inf")
    spent = {"wall_s": 0.0, "cpu_s": 0.0}  # this process's share (rank 0), summed over resumptions
    if not resume and last_path.exists():
        raise ValueError(f"{out_dir} already holds a run (last.pt): pass --resume to continue it, "
                         f"or choose another --out")
    if resume and last_path.exists():
        checkpoint = read_checkpoint(last_path)
        load_state(detector, checkpoint, last_path)
        state = checkpoint.get("train_state")
        if not state:
            raise ValueError(f"{last_path}: has no training state to resume from")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, best_val = state["step"], state["best_val"]
        if ema is not None:
            if "ema" not in state:
                raise ValueError(f"{last_path}: the config keeps an EMA (train.ema_decay {t.ema_decay}) but the "
                                 f"checkpoint has none: resume with the run's own config")
            ema.load_state_dict(state["ema"])
        spent = dict(state.get("spent", spent))
        set_rng_state(state["rng"])
        log.write({"event": "resume", "step": step, "time": time.time(), "host": os.uname().nodename})
    elif context.is_main:
        save_config(config, out_dir / "config.yaml")
        log.write({"event": "start", "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                   "world_size": context.world_size, "global_batch": global_batch, "lr": base_lr,
                   "device": str(context.device), "train_images": len(train_set.ids), "repeats": t.repeats,
                   "skipped_annotations": getattr(train_set, "skipped", {}), "time": time.time()})

    clock = {"wall": time.perf_counter(), "cpu": cpu_seconds()}

    def account() -> dict[str, float]:
        """Add the time since the last call to ``spent``; the totals in hours."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        spent["wall_s"] += wall - clock["wall"]
        spent["cpu_s"] += cpu - clock["cpu"]
        clock.update(wall=wall, cpu=cpu)
        return {"wall_hours": round(spent["wall_s"] / 3600, 4), "cpu_hours": round(spent["cpu_s"] / 3600, 4)}

    evaluated = detector  # what validation scores and best.pt / weights.pt hold: the EMA when kept
    if ema is not None:
        evaluated = copy.deepcopy(detector)

    def refresh_evaluated() -> None:
        if ema is not None:
            ema.copy_to(evaluated)

    def checkpoint_now(path: Path, epoch: int, weights: torch.nn.Module | None = None) -> None:
        if not context.is_main:
            return
        account()
        save_checkpoint(path, weights or detector, config.model, train_state={
            "step": step, "epoch": epoch, "best_val": best_val, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
            "train_config": dataclasses.asdict(t), "spent": dict(spent),
            **({"ema": ema.state_dict()} if ema is not None and weights is None else {}),
        })

    val_loader = None
    if val_set is not None:  # every rank computes the same validation loss; it is cheap next to training
        val_loader = make_loader(val_set, None, t.batch_size, t.workers, drop_last=False)

    progress = tqdm(total=total_steps, initial=step, disable=not (context.is_main and show_progress),
                    desc=f"train {config.model.neck}", dynamic_ncols=True)
    model.train()
    window: dict[str, float] = {}
    window_images, window_batches, window_start = 0, 0, time.perf_counter()
    skipped_images = 0  # unreadable images dropped from batches under skip_bad (this rank), since the start
    last_val: dict[str, float] = {}
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader = make_loader(train_set, SkipSampler(sampler, done_in_epoch * t.batch_size), t.batch_size,
                             t.workers, drop_last=True)
        for images, targets in loader:
            images, targets = to_device(images, targets, context.device, t.channels_last)
            parts = train_step(model, optimizer, scaler, images, targets, step + 1, context.device, t.amp, t.grad_clip,
                               t.cpu_bf16)
            scheduler.step()
            if ema is not None:
                ema.update(detector)
            step += 1
            progress.update(1)
            parts["clipped"] = float(0 < t.grad_clip < parts["grad_norm"])  # its window mean: the share clipped
            for name, value in parts.items():
                window[name] = window.get(name, 0.0) + value
            window_images += len(targets)
            window_batches += 1
            skipped_images += t.batch_size - len(targets)  # drop_last: every batch was batch_size before
            if step % t.log_every == 0 or step == total_steps:
                seconds = time.perf_counter() - window_start
                means = reduce_mean({k: v / window_batches for k, v in window.items()}, context)
                record = {"event": "step", "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                          **{k: round(v, 5) for k, v in means.items()},
                          "images_per_s": round(window_images * context.world_size / seconds, 2)}
                if t.skip_bad:  # all ranks together, since this run (or its resumption) started
                    record["skipped_images"] = round(reduce_sum(float(skipped_images), context))
                if detector.network.neck.neck != "ssd":  # this step's gradients, after clipping, by part
                    record["grad_norms"] = {k: round(v, 5) for k, v in gradient_norms(detector).items()}
                if context.device.type == "cuda":
                    record["gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(context.device) / 2**20, 1)
                record.update(account())
                log.write(record)
                progress.set_postfix(loss=f"{means['loss']:.3f}", crops_s=f"{record['images_per_s']:.1f}",
                                     lr=f"{record['lr']:.4g}", cpu_h=f"{record['cpu_hours']:.2f}")
                window, window_images, window_batches, window_start = {}, 0, 0, time.perf_counter()
            if step % t.checkpoint_every == 0 and step % steps_per_epoch != 0:
                checkpoint_now(last_path, epoch)
            if step >= total_steps:
                break
        # end of an epoch (or of the run): validate, keep best.pt, write last.pt
        finished_epoch = (step - 1) // steps_per_epoch
        record = {"event": "epoch", "epoch": finished_epoch, "step": step}
        if val_loader is not None:
            refresh_evaluated()
            last_val = validation_loss(evaluated, val_loader, context.device, t.amp)
            if t.val_metric == "AP":
                last_val["val_AP"] = validation_ap(evaluated, t, context)
            record.update({k: round(v, 5) for k, v in last_val.items()})
            if detector.network.neck.neck != "ssd":
                record["fusion_weight_norms"] = fusion_weight_norms(evaluated.network.neck)
            if t.val_borrow and evaluated.network.neck.borrows and context.is_main:
                record["val_borrow"] = borrow_precision(
                    evaluated, CocoDetection(t.val_images, t.val_annotations, skip_bad=t.skip_bad), context.device)
            # best_val is minimised: the loss, or minus the AP
            current = -last_val["val_AP"] if t.val_metric == "AP" else last_val.get("val_loss", float("inf"))
            if last_val and current < best_val:
                best_val = current
                checkpoint_now(best_path, finished_epoch, evaluated if ema is not None else None)
                record["best"] = True
            model.train()
        checkpoint_now(last_path, finished_epoch)
        record.update(account())
        log.write(record)
    progress.close()
    if context.is_main:
        refresh_evaluated()
        save_checkpoint(out_dir / "weights.pt", evaluated, config.model)
        log.write({"event": "end", "step": step, "ema": ema is not None, **account(), "time": time.time()})
    barrier(context)
    return {"steps": step, "out_dir": str(out_dir), "best_val_loss": best_val if val_loader is not None else None,
            **last_val}
