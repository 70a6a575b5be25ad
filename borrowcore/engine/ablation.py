"""The ablation study: `ssd`, `context`, `borrow` and `full`, same recipe and seeds, evaluated on the
borrow benchmark's twins, orphans and shuffled splits; a table of mean and std over seeds.

Every run lives in OUT/<neck>/seed<k>/ (its checkpoints, log, reports), and training resumes, so
re-running the same command after an interruption continues where it stopped and skips finished runs.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Sequence

from borrowcore.engine.config import ExperimentConfig, apply_overrides, load_config
from borrowcore.evaluation.compare import mean_std
from borrowcore.evaluation.report import load_report, save_report
from borrowcore.models.config import NECKS

SPLITS = ("twins", "orphans", "shuffled")
TABLE_METRICS = ("AP", "AP50", "AP_S", "AP_M", "AP_L")
SUBSET_COLUMNS = ("AP_twins", "AP_orphans", "AP50_twins", "AP50_orphans")  # coco_eval.instance_subsets; md: AP only


def ablation_config(config_dir: Path, neck: str, data: Path, seed: int, overrides: Sequence[str] = ()) -> ExperimentConfig:
    config = apply_overrides(load_config(config_dir / f"{neck}.yaml"), list(overrides))
    t = config.train
    t.seed = seed
    t.train_images, t.train_annotations = str(data / "train" / "images"), str(data / "train" / "annotations.json")
    if (data / "val" / "annotations.json").exists():
        t.val_images, t.val_annotations = str(data / "val" / "images"), str(data / "val" / "annotations.json")
    return config


def run_ablation(data: str | Path, out: str | Path, seeds: Sequence[int] = (0, 1, 2), necks: Sequence[str] = NECKS,
                 overrides: Sequence[str] = (), config_dir: str | Path = "configs", splits: Sequence[str] = SPLITS,
                 device: str | None = None, show_progress: bool = True) -> list[dict]:
    """Train (or resume) and evaluate every (neck, seed); write OUT/ablation.{csv,md}; return the rows."""
    from borrowcore.data.dataset import CocoDetection
    from borrowcore.engine.train import train
    from borrowcore.evaluation.evaluate import evaluate_checkpoint
    from borrowcore.evaluation.explain import borrow_precision
    from borrowcore.models.checkpoint import load_detector

    data, out, config_dir = Path(data), Path(out), Path(config_dir)
    for neck in necks:
        if neck not in NECKS:
            raise ValueError(f"unknown neck {neck!r}; choose from {NECKS}")
    for split in splits:
        if not (data / "val" / f"{split}.json").exists():
            raise ValueError(f"{data / 'val' / f'{split}.json'}: missing; make the set with `borrowcore synth --out {data / 'val'} ...`")
    for neck in necks:
        for seed in seeds:
            run_dir = out / neck / f"seed{seed}"
            config = ablation_config(config_dir, neck, data, seed, overrides)
            train(config, run_dir, resume=True, device=device, show_progress=show_progress)
            checkpoint = run_dir / "weights.pt"  # the recipe's final weights (the EMA when the recipe keeps one)
            for split in splits:
                report_path = run_dir / f"eval_{split}.json"
                if report_path.exists():
                    add_small_accuracy(report_path)  # reports written before small_top1 existed
                    add_subsets(report_path)  # ... or before issue 15's twins and orphans
                    continue
                report = evaluate_checkpoint(checkpoint, data / "val" / f"{split}.json", data / "val" / "images",
                                             report_path, device=device, split=split, dataset_name="borrow-benchmark",
                                             show_progress=show_progress)
                if split == "twins" and neck in ("borrow", "full"):
                    detector = load_detector(checkpoint, device or "cpu")
                    dataset = CocoDetection(data / "val" / "images", data / "val" / f"{split}.json")
                    report["extra"]["borrow_precision"] = borrow_precision(detector, dataset, device or "cpu")
                report["extra"]["seed"] = seed
                save_report(report, report_path)
    rows = summarize_ablation(out, necks, seeds, splits)
    write_tables(rows, out)
    return rows


def add_small_accuracy(report_path: Path) -> None:
    """Store ``extra.small_top1`` in a report that lacks it, from its own detections."""
    from borrowcore.evaluation.analysis import report_ground_truth
    from borrowcore.evaluation.coco_eval import small_instance_accuracy
    from borrowcore.evaluation.report import load_detections

    report = load_report(report_path)
    if "small_top1" in report["extra"]:
        return
    coco = report_ground_truth(report)
    report["extra"]["small_top1"] = small_instance_accuracy(coco, load_detections(report, report_path))
    save_report(report, report_path)


def add_subsets(report_path: Path) -> bool:
    """Store ``subsets`` (small twins and orphans) in a report that lacks it, from its own detections and
    ground truth; True when it was added."""
    from borrowcore.evaluation.analysis import report_ground_truth
    from borrowcore.evaluation.coco_eval import subset_metrics
    from borrowcore.evaluation.report import load_detections

    report = load_report(report_path)
    if "subsets" in report:
        return False
    coco = report_ground_truth(report)  # as the metrics saw it: without images eval --skip-bad left out
    report["subsets"] = subset_metrics(coco, load_detections(report, report_path))
    save_report(report, report_path)
    return True


def bin_labels(reports: list[dict]) -> list[str]:
    """The fine size bins (e.g. "16-32") that hold ground truth in the first report, in order."""
    return [b["label"] for b in reports[0].get("size_bins", []) if b["num_gt"] > 0] if reports else []


def summarize_ablation(out: str | Path, necks: Sequence[str] = NECKS, seeds: Sequence[int] | None = None,
                       splits: Sequence[str] = SPLITS) -> list[dict]:
    """One row per (neck, split): mean and std over the seeds' reports found under OUT."""
    out = Path(out)
    rows = []
    for neck in necks:
        for split in splits:
            paths = sorted((out / neck).glob(f"seed*/eval_{split}.json"))
            if seeds is not None:
                paths = [p for p in paths if int(p.parent.name[4:]) in seeds]
            reports = [load_report(p) for p in paths]
            if not reports:
                continue
            row = {"neck": neck, "split": split, "seeds": len(reports)}
            for key in TABLE_METRICS:
                row[key], row[f"{key}_std"] = mean_std([r["metrics"][key] for r in reports])
            measured = [r["subsets"] for r in reports if "subsets" in r]  # reports before issue 15 have none
            for key in SUBSET_COLUMNS if measured else ():
                metric, name = key.split("_")
                row[key], row[f"{key}_std"] = mean_std([s[name][metric] for s in measured])
            for label in bin_labels(reports):  # COCOeval's fine size bins with ground truth in them
                row[f"AP[{label}]"], row[f"AP[{label}]_std"] = mean_std(
                    [b["AP"] for r in reports for b in r["size_bins"] if b["label"] == label])
            for name in [c["name"] for c in reports[0].get("per_class", [])]:
                row[f"AP/{name}"], row[f"AP/{name}_std"] = mean_std(
                    [c["AP"] for r in reports for c in r.get("per_class", []) if c["name"] == name])
            top1 = [r["extra"]["small_top1"]["accuracy"] for r in reports if "small_top1" in r.get("extra", {})]
            if top1:
                row["small_top1"], row["small_top1_std"] = mean_std(top1)
            precision = [r["extra"]["borrow_precision"] for r in reports if "borrow_precision" in r.get("extra", {})]
            if precision:
                row["borrow_precision"], row["borrow_precision_std"] = mean_std([p["borrow_precision"] for p in precision])
                row["borrow_chance"], _ = mean_std([p["chance"] for p in precision])
            rows.append(row)
    return rows


def fine_bin_keys(rows: list[dict], prefix: str = "AP[") -> list[str]:
    """The rows' fine-bin AP keys ("AP[16-32]", ...; per class "AP/car" with prefix "AP/"), first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row if k.startswith(prefix) and not k.endswith("_std")))


def subset_keys(rows: list[dict], metrics: Sequence[str] = ("AP", "AP50")) -> list[str]:
    """The twins / orphans columns the rows hold ("AP_twins", ...), for ``metrics``; none for old reports."""
    return [k for k in SUBSET_COLUMNS if k.split("_")[0] in metrics and any(k in row for row in rows)]


def write_tables(rows: list[dict], out: str | Path, fine_bins: bool = False, borrow_columns: bool = True,
                 classes: bool = False) -> None:
    """OUT/ablation.csv (every number) and OUT/ablation.md (percent, mean ± std)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bins = subset_keys(rows) + fine_bin_keys(rows) + fine_bin_keys(rows, "AP/")
    columns = ["neck", "split", "seeds"] + [f"{k}{s}" for k in [*TABLE_METRICS, *bins] for s in ("", "_std")] + [
        "small_top1", "small_top1_std", "borrow_precision", "borrow_precision_std", "borrow_chance"]
    with (out / "ablation.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "ablation.md").write_text(format_table(rows, fine_bins, borrow_columns, classes) + "\n")


def format_table(rows: list[dict], fine_bins: bool = False, borrow_columns: bool = True, classes: bool = False) -> str:
    """Markdown, percent as mean ± std; with ``fine_bins``, AP per fine size bin after the COCO columns;
    with ``classes``, AP per class; ``borrow_columns`` adds the borrow benchmark's small top-1 and borrow
    precision. AP on small twins and orphans follows the COCO columns when the reports measured it."""
    def cell(mean: float, std: float) -> str:
        if mean is None or (isinstance(mean, float) and (math.isnan(mean) or mean < 0)):
            return "n/a"
        return f"{100 * mean:.1f} ± {100 * std:.1f}"

    metrics = [*TABLE_METRICS, *subset_keys(rows, ("AP",)), *(fine_bin_keys(rows) if fine_bins else []),
               *(fine_bin_keys(rows, "AP/") if classes else [])]
    header = ("| neck | split | seeds | " + " | ".join(m.replace("[", " ").replace("/", " ").rstrip("]") for m in metrics) + " |"
              + (" small top-1 | borrow precision (chance) |" if borrow_columns else ""))
    lines = [header, "|" + "---|" * (3 + len(metrics) + 2 * borrow_columns)]
    for row in rows:
        borrow = ""
        if "borrow_precision" in row:
            borrow = f"{cell(row['borrow_precision'], row['borrow_precision_std'])} ({100 * row['borrow_chance']:.1f})"
        top1 = cell(row["small_top1"], row["small_top1_std"]) if "small_top1" in row else ""
        lines.append(f"| {row['neck']} | {row['split']} | {row['seeds']} | "
                     + " | ".join(cell(row.get(k, -1.0), row.get(f"{k}_std", 0.0)) for k in metrics) + " |"
                     + (f" {top1} | {borrow} |" if borrow_columns else ""))
    return "\n".join(lines)


def best_seed(runs: Path, neck: str, split: str) -> int | None:
    """The seed whose ``eval_<split>.json`` has the highest AP (None when no run has that report)."""
    scored = [(load_report(p)["metrics"]["AP"], int(p.parent.name[4:])) for p in (runs / neck).glob(f"seed*/eval_{split}.json")]
    return max(scored)[1] if scored else None


def release_threshold(report_path: Path) -> float:
    """The F1-best score threshold (IoU 0.5) of a report's detections, rounded to 0.05, within [0.05, 0.95]."""
    from borrowcore.evaluation.analysis import report_ground_truth
    from borrowcore.evaluation.coco_eval import best_f1_threshold
    from borrowcore.evaluation.report import read_json

    report = load_report(report_path)
    best = report.get("extra", {}).get("best_f1") or best_f1_threshold(
        report_ground_truth(report), read_json(report_path.parent / report["detections"]))
    return 0.5 if best["score"] < 0 else min(0.95, max(0.05, round(best["score"] * 20) / 20))


def release_ablation(runs: str | Path, assets: str | Path, necks: Sequence[str] = NECKS, name: str = "synth",
                     reports_folder: str = "ablation", best_by: str | None = None,
                     weights_necks: Sequence[str] | None = None, matching: str | None = None,
                     nms_iou: float | None = None, recipe: dict | None = None) -> list[Path]:
    """Copy an ablation's results into the app's assets: weights without training state as
    ``checkpoints/<name>-<neck>.pt`` (seed 0; other seeds ``-s<k>``), reports with their detections under
    ``reports/<reports_folder>/``, training logs under ``logs/``, and the tables. Reports are pointed at
    the shipped checkpoint (same weights; its sha256).

    ``best_by`` ships only the weights of each neck's best seed by that split's AP (as ``<name>-<neck>.pt``)
    and ``weights_necks`` only those necks' weights; every run's reports and logs are shipped, those whose
    weights stay behind with an empty ``model.checkpoint``. ``matching`` ("fast" or "exact") sets the
    matching the shipped checkpoints run with (default: as trained), ``nms_iou`` their NMS IoU and ``recipe``
    other inference-recipe fields (``checkpoint.RECIPE_FIELDS``). Returns the files written."""
    import shutil

    from borrowcore.evaluation.report import sha256_file
    from borrowcore.models.checkpoint import check_recipe, checkpoint_config, load_state, read_checkpoint, save_checkpoint
    from borrowcore.models.detector import build_detector

    runs, assets = Path(runs), Path(assets)
    written: list[Path] = []
    for neck in necks:
        best = best_seed(runs, neck, best_by) if best_by else None
        for run_dir in sorted((runs / neck).glob("seed*")):
            seed = int(run_dir.name[4:])
            source = next((p for p in (run_dir / "weights.pt", run_dir / "last.pt") if p.exists()), None)
            if source is None:
                continue
            shipped = (weights_necks is None or neck in weights_necks) and (best_by is None or seed == best)
            target = None
            if shipped:
                checkpoint = read_checkpoint(source)
                config = checkpoint_config(checkpoint, source)
                detector = build_detector(config, checkpoint["class_names"])
                load_state(detector, checkpoint, source)
                if best_by:  # the app's default threshold: the F1-best score on the split that picked the seed
                    detector.config = dataclasses.replace(
                        detector.config, display_threshold=release_threshold(run_dir / f"eval_{best_by}.json"))
                if matching and matching != detector.config.matching:
                    detector.config = dataclasses.replace(detector.config, matching=matching, key_budget=0)
                if nms_iou is not None:
                    detector.config = dataclasses.replace(detector.config, nms_iou=nms_iou)
                if recipe:
                    check_recipe(recipe)
                    detector.config = dataclasses.replace(detector.config, **recipe)
                suffix = "" if seed == 0 or best_by else f"-s{seed}"
                target = assets / "checkpoints" / f"{name}-{neck}{suffix}.pt"
                save_checkpoint(target, detector)  # weights, config and versions; no optimizer state
                written.append(target)
            log = run_dir / "log.jsonl"
            if log.exists():
                log_target = assets / "logs" / f"{name}-{neck}-seed{seed}.log.jsonl"
                log_target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, log_target)
                written.append(log_target)
            for report_path in sorted(run_dir.glob("eval_*.json")):
                report = load_report(report_path)
                report_dir = assets / "reports" / reports_folder / neck / run_dir.name
                report_dir.mkdir(parents=True, exist_ok=True)
                detections = report_path.parent / report["detections"]
                shutil.copyfile(detections, report_dir / detections.name)
                report["extra"]["evaluated_checkpoint"] = report["model"]["checkpoint"]
                report["model"]["checkpoint"] = str(target) if target else ""
                report["model"]["checkpoint_sha256"] = sha256_file(target) if target else ""
                save_report(report, report_dir / report_path.name)
                written += [report_dir / detections.name, report_dir / report_path.name]
    for table in ("ablation.md", "ablation.csv"):
        if (runs / table).exists():
            shutil.copyfile(runs / table, assets / "reports" / reports_folder / table)
            written.append(assets / "reports" / reports_folder / table)
    return written
