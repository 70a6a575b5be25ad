"""Comparing evaluation reports by object size: rows of mean and std over the reports of each group.

A group is what one bar stands for: an ablation (the reports of its seeds) or a single report. Reports
come in as (name, report) pairs, already validated (``report.load_report`` / ``validate_report``).
Metrics of -1 (no ground truth in that range) are left out of means; a mean over none is -1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from borrowcore.evaluation.coco_eval import COCO_RANGES
from borrowcore.evaluation.report import ReportError, sha256_file, validate_report

COCO_SIZE_METRICS = {"AP": ("AP", "AP_S", "AP_M", "AP_L"), "AR": ("AR100", "AR_S", "AR_M", "AR_L")}
SIZE_NAMES = ("all", "small", "medium", "large")
GROUP_BY = ("ablation", "report")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the values >= 0 (-1 marks a range without ground truth); (-1, 0) for none."""
    values = [v for v in values if v >= 0]
    if not values:
        return -1.0, 0.0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def parse_report(data: bytes, name: str) -> dict:
    """A report from uploaded bytes, validated; ReportError naming ``name`` otherwise."""
    try:
        report = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{name}: not valid JSON ({error})") from error
    return validate_report(report, name)


def group_of(name: str, report: dict, by: str) -> str:
    """The bar a report belongs to: its ablation (model.ablation, else the neck in its config) or itself."""
    if by == "ablation":
        return report["model"].get("ablation") or report["model"]["config"].get("neck") or name
    if by == "report":
        return name
    raise ValueError(f"group by one of {GROUP_BY}, got {by!r}")


def _groups(reports: Sequence[tuple[str, dict]], by: str) -> dict[tuple[str, str], list[dict]]:
    """(group, split) -> reports, in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for name, report in reports:
        groups.setdefault((group_of(name, report, by), report["dataset"]["split"]), []).append(report)
    return groups


def _row(group: str, split: str, size: str, values: list[float], **extra) -> dict:
    mean, std = mean_std(values)
    return {"group": group, "split": split, "size": size, "mean": mean, "std": std,
            "reports": len(values), **extra}


def how_it_ran(report: dict) -> str:
    """How a report's detector saw the images, matching included. Reports of borrow/full written before fast
    matching became the default say nothing of it: they matched every cell (or name their key budget)."""
    inference = report.get("extra", {}).get("inference", "")
    borrows = report.get("model", {}).get("ablation") in ("borrow", "full")
    if borrows and "matching" not in inference and "key budget" not in inference:
        inference += "; exact matching (every deeper cell)"
    return inference or "not recorded"


def coco_size_table(reports: Sequence[tuple[str, dict]], by: str = "ablation", metric: str = "AP") -> list[dict]:
    """Rows (group, split, size in all/small/medium/large, mean, std, reports) of AP or AR."""
    keys = COCO_SIZE_METRICS[metric]
    rows = []
    for (group, split), members in _groups(reports, by).items():
        for size, key in zip(SIZE_NAMES, keys):
            rows.append(_row(group, split, size, [r["metrics"][key] for r in members], metric=key))
    return rows


def size_bin_table(reports: Sequence[tuple[str, dict]], by: str = "ablation", metric: str = "AP") -> list[dict]:
    """Rows (group, split, size = the fine bin's label, mean, std, reports, num_gt) of AP, AP50 or AR100."""
    if metric not in ("AP", "AP50", "AR100"):
        raise ValueError(f"size bins hold AP, AP50 and AR100, not {metric!r}")
    rows = []
    for (group, split), members in _groups(reports, by).items():
        labels = [b["label"] for b in members[0]["size_bins"]]
        for label in labels:
            bins = [b for r in members for b in r["size_bins"] if b["label"] == label]
            rows.append(_row(group, split, label, [b[metric] for b in bins], metric=metric,
                             num_gt=bins[0]["num_gt"]))
    return rows


def subset_table(reports: Sequence[tuple[str, dict]], by: str = "ablation", metric: str = "AP") -> list[dict]:
    """Rows (group, split, size = "twins" / "orphans", mean, std, reports, instances) of AP or AP50 on the small
    twins and orphans (``coco_eval.instance_subsets``), over the reports that hold them (none before issue 15)."""
    if metric not in ("AP", "AP50"):
        raise ValueError(f"twins and orphans hold AP and AP50, not {metric!r}")
    rows = []
    for (group, split), members in _groups(reports, by).items():
        measured = [r["subsets"] for r in members if isinstance(r.get("subsets"), dict)]
        for name in measured[0] if measured else ():
            rows.append(_row(group, split, name, [s[name][metric] for s in measured], metric=metric,
                             instances=measured[0][name]["instances"]))
    return rows


def pr_curves(reports: Sequence[tuple[str, dict]], by: str = "ablation", size: str = "all",
              iou: str = "iou50") -> list[dict]:
    """Per (group, split): recall thresholds and the mean precision over its reports (-1 points dropped)."""
    curves = []
    for (group, split), members in _groups(reports, by).items():
        ranges = [r["pr_curves"]["ranges"].get(size) for r in members]
        ranges = [r for r in ranges if r and iou in r]
        if not ranges:
            continue
        precision = np.array([r[iou] for r in ranges], dtype=np.float64)  # (reports, R)
        masked = np.ma.masked_less(precision, 0)
        mean = masked.mean(axis=0).filled(-1.0)
        recall = members[0]["pr_curves"]["recall"]
        points = [(r, p) for r, p in zip(recall, mean) if p >= 0]
        curves.append({"group": group, "split": split, "reports": len(ranges),
                       "recall": [p[0] for p in points], "precision": [float(p[1]) for p in points]})
    return curves


def per_class_table(reports: Sequence[tuple[str, dict]], by: str = "ablation", metric: str = "AP") -> list[dict]:
    """Rows (class, group, split, mean, std, reports, num_gt) of per-class AP, AP50 or AP_S."""
    rows = []
    for (group, split), members in _groups(reports, by).items():
        names = [c["name"] for c in members[0]["per_class"]]
        for name in names:
            entries = [c for r in members for c in r["per_class"] if c["name"] == name]
            mean, std = mean_std([c[metric] for c in entries])
            rows.append({"class": name, "group": group, "split": split, "mean": mean, "std": std,
                         "reports": len(entries), "num_gt": entries[0]["num_gt"]})
    return rows


def borrow_precision_table(reports: Sequence[tuple[str, dict]], by: str = "ablation") -> list[dict]:
    """Rows (group, split, mean, std, chance, reports) of the reports that measured borrow precision."""
    rows = []
    for (group, split), members in _groups(reports, by).items():
        found = [r["extra"]["borrow_precision"] for r in members
                 if isinstance(r.get("extra", {}).get("borrow_precision"), dict)]
        if found:
            mean, std = mean_std([p.get("borrow_precision", -1.0) for p in found])
            chance, _ = mean_std([p.get("chance", -1.0) for p in found])
            rows.append({"group": group, "split": split, "mean": mean, "std": std, "chance": chance,
                         "reports": len(found)})
    return rows


# ---- error breakdown and head to head (issue 8): report -> its files, breakdown rows, instance crops ----

REPO = Path(__file__).resolve().parents[2]


def resolve_report_path(recorded: str, report_path: str | Path | None = None,
                        roots: Sequence[Path] = ()) -> Path | None:
    """A path a report records (``dataset.annotations``, ``dataset.images``), found on this machine: as
    written when absolute, else under ``roots``, the repository root, the working directory or the report's
    folder, in that order; None when it exists nowhere."""
    if not recorded:
        return None
    path = Path(recorded)
    if path.is_absolute():
        return path if path.exists() else None
    bases = [*roots, REPO, Path.cwd()] + ([Path(report_path).parent] if report_path else [])
    return next((base / path for base in bases if (base / path).exists()), None)


def report_checkpoint(report: dict, checkpoints: Sequence[Path],
                      digest: Callable[[Path], str] = sha256_file) -> Path | None:
    """The checkpoint among ``checkpoints`` that a report evaluated: the same weights (``model.checkpoint_sha256``,
    as ``release`` records it), else the same file name; None when none is."""
    sha = report["model"].get("checkpoint_sha256")
    if sha:
        found = next((path for path in checkpoints if digest(path) == sha), None)
        if found is not None:
            return found
    name = Path(report["model"].get("checkpoint", "")).name
    return next((path for path in checkpoints if name and path.name == name), None)


def size_ranges(report: dict) -> list[tuple[str, float, float]]:
    """(label, low, high) in box side sqrt(area) px: COCO's all/small/medium/large, then the report's bins."""
    bins = [(row["label"], row["min"], row["max"]) for row in report["size_bins"]]
    return list(COCO_RANGES) + bins


def default_pair(reports: Sequence[tuple[str, dict]]) -> tuple[int, int]:
    """Indices (A, B) of two reports to compare first: on the same ground truth, a baseline ``ssd`` against
    a borrowing neck when there are such, else any two on the same ground truth, else the first two."""
    pairs = [(i, j) for i in range(len(reports)) for j in range(len(reports)) if i != j
             and reports[i][1]["dataset"]["annotations_sha256"] == reports[j][1]["dataset"]["annotations_sha256"]]

    def neck(i: int) -> str:
        return group_of(*reports[i], "ablation")

    preferences = [lambda i, j: neck(i) == "ssd" and neck(j) == "full", lambda i, j: neck(i) == "ssd" != neck(j),
                   lambda i, j: neck(i) != neck(j), lambda i, j: True]
    for preferred in preferences:
        found = next(((i, j) for i, j in pairs if preferred(i, j)), None)
        if found:
            return found
    return (0, min(1, len(reports) - 1))


def pair_report_uploads(files: dict[str, bytes]) -> tuple[list[tuple[str, dict, bytes]], list[str]]:
    """Uploaded reports with their detections: (name, report, detections bytes) for each report json whose
    ``detections`` file was uploaded beside it, and a message for each one that was not (or that is no report)."""
    pairs, problems = [], []
    for name, data in files.items():
        if not name.endswith(".json"):
            continue
        try:
            report = parse_report(data, name)
        except ReportError as error:
            problems.append(str(error))
            continue
        wanted = Path(report["detections"]).name
        if wanted not in files:
            problems.append(f"{name}: its detections `{wanted}` were not uploaded; upload the report json together "
                            "with the .detections.json.gz written beside it")
            continue
        pairs.append((name, report, files[wanted]))
    return pairs, problems


def breakdown_rows(name: str, analysis: dict) -> list[dict]:
    """Rows (report, range, condition, AP, band) of an ``error_analysis``: AP under each condition, and the
    band it adds over the previous one (C75 over 0, ..., FN = 1 - BG), so a range's bands stack to 1."""
    rows = []
    for label, entry in analysis["ranges"].items():
        if "AP" not in entry:
            continue  # no ground truth in the range
        below = 0.0
        for condition in analysis["conditions"]:
            ap = float(entry["AP"][condition])
            rows.append({"report": name, "range": label, "condition": condition, "AP": ap, "band": ap - below})
            below = ap
    return rows


def crop_with_context(image: np.ndarray, bbox: Sequence[float], context: float = 1.0,
                      min_side: int = 64) -> tuple[np.ndarray, list[float]]:
    """An instance with its surroundings: the box grown by ``context`` times its side on every side (at
    least ``min_side`` px square), clipped to the image. image (H, W, C); bbox xywh. Returns the crop and
    the box in the crop's pixels (xywh)."""
    height, width = image.shape[:2]
    x, y, w, h = (float(v) for v in bbox)
    cx, cy = x + w / 2, y + h / 2
    half_w = max(w * (0.5 + context), min_side / 2)
    half_h = max(h * (0.5 + context), min_side / 2)
    x0, y0 = max(0, int(np.floor(cx - half_w))), max(0, int(np.floor(cy - half_h)))
    x1, y1 = min(width, int(np.ceil(cx + half_w))), min(height, int(np.ceil(cy + half_h)))
    return image[y0:y1, x0:x1], [x - x0, y - y0, w, h]


def matching_instance(boxes: np.ndarray | torch.Tensor, bbox: Sequence[float], min_iou: float = 0.1) -> int | None:
    """Index of the box (rows xyxy) that overlaps ``bbox`` (xywh) most, None when none reaches ``min_iou``."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    if not len(boxes):
        return None
    target = box_convert(torch.tensor([list(bbox)], dtype=torch.float64), "xywh", "xyxy")
    iou = box_iou(target, boxes)[0]  # (n,)
    best = int(iou.argmax())
    return best if float(iou[best]) >= min_iou else None
