"""Comparing evaluation reports by object size: rows of mean and std over the reports of each group.

A group is what one bar stands for: an ablation (the reports of its seeds) or a single report. Reports
come in as (name, report) pairs, already validated (``report.load_report`` / ``validate_report``).
Metrics of -1 (no ground truth in that range) are left out of means; a mean over none is -1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from borrowcore.ablation import mean_std
from borrowcore.report import ReportError, validate_report

COCO_SIZE_METRICS = {"AP": ("AP", "AP_S", "AP_M", "AP_L"), "AR": ("AR100", "AR_S", "AR_M", "AR_L")}
SIZE_NAMES = ("all", "small", "medium", "large")
GROUP_BY = ("ablation", "report")


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
