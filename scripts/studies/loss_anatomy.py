"""Where the classification loss comes from, checkpoint by checkpoint: a diagnosis of the loss rise that
every face run shows for 100-300 steps around the end of warm-up (docs/results/faces-recipe-history.md).

Each checkpoint's model sees the same fixed training crops (the run's own augmentation, a fixed seed), in
train mode as in training (BatchNorm on batch statistics), and the classification loss is split into its
parts: cross-entropy on the positives, on the hard negatives (3 per positive, SPEC §5) and on all negatives, each divided by the number of positives as the loss is; plus the mean face probability on the
positives and on the negatives, and the share of negatives scored above 0.5 (false alarms in the making).
Checkpoints must hold their training state (a run's last.pt, copied as it trains), which names the crops.
``--init CONFIG`` adds a first row for the untrained model that CONFIG builds (step 0, ``--set`` overrides
applied, seeded by its train.seed): what the loss starts from. ``logit_spread`` is the standard deviation,
over all anchors, of the face-vs-background log-odds: how far from a constant score the model is.

    python scripts/studies/loss_anatomy.py runs/faces3/snap-ssd2/*.pt --crops 64 --out runs/faces3/anatomy-ssd2.csv
    python scripts/studies/loss_anatomy.py --init configs/faces-full.yaml --set model.neck=ssd --out init.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import box_area

from borrowcore.data.dataset import CocoDetection, collate_detection
from borrowcore.data.presets import build_preset
from borrowcore.engine.config import apply_overrides, load_config
from borrowcore.models.checkpoint import checkpoint_config, load_state, read_checkpoint
from borrowcore.models.detector import build_detector


@torch.no_grad()
def anatomy(detector, images, targets) -> dict[str, float]:
    batch, sizes = detector.preprocess(images)
    output = detector.network(batch)
    anchors = detector.anchors(output.grid_sizes, detector.anchor_image_size, device=batch.device)
    targets = detector.scale_targets(targets, sizes)
    loss = detector.loss
    matches = torch.stack(loss.match(targets, anchors))  # (B, A): >= 0 box, -1 background, -2 ignored
    positive, negative = matches >= 0, matches == -1
    labels = torch.zeros_like(matches)
    for i, target in enumerate(targets):
        labels[i, positive[i]] = target["labels"][matches[i, positive[i]]].to(labels.dtype)
    logits = output.cls_logits.float()
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    hard = loss.hard_negatives(ce, matches)  # the negatives the training loss keeps
    n = positive.sum().clamp(min=1).float()
    face = logits.softmax(-1)[..., 1:].sum(-1)  # probability of any non-background class
    log_odds = torch.logsumexp(logits[..., 1:], dim=-1) - logits[..., 0]  # log p(face) / p(background)
    side = torch.zeros_like(face)  # sqrt(area) of each positive anchor's face, in input pixels
    for i, target in enumerate(targets):
        boxes = target["boxes"].as_subclass(torch.Tensor)[matches[i, positive[i]]]
        side[i, positive[i]] = box_area(boxes).sqrt()
    by_size = {}
    for low, high in ((0, 10), (10, 20), (20, 40), (40, 1e9)):
        bin_ = positive & (side >= low) & (side < high)
        name = f"{low}-{high}" if high < 1e9 else f"{low}+"
        by_size[f"share_pos_{name}px"] = float(bin_.sum() / n)
        by_size[f"p_face_pos_{name}px"] = float(face[bin_].mean()) if bin_.any() else float("nan")
    return {"positives": int(positive.sum()), "negatives": int(negative.sum()),
            "logit_spread": float(log_odds.std()), "ce_pos": float(ce[positive].sum() / n), "ce_hard_neg": float(ce[hard].sum() / n),
            "ce_all_neg_per_anchor": float(ce[negative].mean()),
            "p_face_pos": float(face[positive].mean()), "p_face_neg": float(face[negative].mean()),
            "neg_above_0.5": float((face[negative] > 0.5).float().mean()),
            "hard_neg_p_face": float(face[hard].mean()), **by_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--init", type=Path, help="a config: score its untrained model first (step 0)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for --init's config")
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.checkpoints and args.init is None:
        parser.error("give checkpoints, --init CONFIG, or both")
    models = []  # (name, step, train config as a dict, detector)
    if args.init is not None:
        experiment = apply_overrides(load_config(args.init), args.set)
        torch.manual_seed(experiment.train.seed)
        models.append((f"{args.init.name} (untrained)", 0, dataclasses.asdict(experiment.train),
                       build_detector(experiment.model)))
    for path in args.checkpoints:
        checkpoint = read_checkpoint(path)
        if "train_state" not in checkpoint:
            parser.error(f"{path}: no training state (give a run's last.pt, not weights released without it)")
        detector = build_detector(checkpoint_config(checkpoint, path), checkpoint["class_names"])
        load_state(detector, checkpoint, path)
        models.append((path.name, checkpoint["train_state"]["step"], checkpoint["train_state"]["train_config"], detector))
    rows, crops = [], None
    for name, step, t, detector in models:
        if crops is None:  # the same crops for every model
            size = detector.config.input_size
            dataset = CocoDetection(t["train_images"], t["train_annotations"], build_preset(t["augmentation"], size, t.get("scale_range", (0.5, 2.0))),
                                    seed=args.seed, ignore_regions=True)
            torch.manual_seed(args.seed)
            picked = torch.randperm(len(dataset))[:args.crops].tolist()
            crops = collate_detection([dataset[i] for i in picked])
        detector.train()  # BatchNorm on batch statistics, as the training loss sees it (this copy is discarded)
        row = {"checkpoint": name, "step": step, **anatomy(detector, *crops)}
        rows.append(row)
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
