"""The evaluation report: one versioned JSON schema, defined here and checked on every load.

The app reads only these reports, so a report describes itself: the model config and checkpoint hash,
the dataset and its hash, the split, every metric, the PR curves and the timing, and where its detections
and ground truth are (so analysis and comparison can be recomputed from it; SPEC §7).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from borrowcore.utils.atomic import write_json_atomic

SCHEMA = "borrowcore-eval-report"
SCHEMA_VERSION = 1  # optional keys ("key?") come without a bump: every version-1 reader skips unknown keys

NUMBER = (int, float)
METRIC_KEYS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")

# key -> expected type, or a nested spec (dict) for a mapping, or [spec] for a list of such items.
# Optional keys are written "key?".
REPORT_SPEC: dict[str, Any] = {
    "schema": str,
    "schema_version": int,
    "created": str,
    "model": {"config": dict, "class_names": [str], "checkpoint": str, "checkpoint_sha256": str,
              "ablation": str},
    "dataset": {"name": str, "split": str, "annotations": str, "annotations_sha256": str, "images": str,
                "num_images": int, "num_boxes": int,
                # eval --skip-bad: images left out of the evaluation (ids) and why; older reports lack them
                "skip_bad?": bool, "unreadable_images?": [{"id": int, "reason": str}], "skipped?": dict},
    "detections": str,  # path of the COCO results json, relative to the report's folder
    "metrics": {key: NUMBER for key in METRIC_KEYS},
    "size_bins": [{"label": str, "min": NUMBER, "max": NUMBER, "num_gt": int, "AP": NUMBER, "AP50": NUMBER,
                   "AR100": NUMBER}],
    "per_class": [{"name": str, "category_id": int, "AP": NUMBER, "AP50": NUMBER, "AP_S": NUMBER, "num_gt": int}],
    "pr_curves": {"recall": [NUMBER], "iou": [NUMBER], "ranges": dict},
    "timing": {"images": int, "seconds": NUMBER, "images_per_s": NUMBER, "device": str},
    # small twins and orphans (coco_eval.instance_subsets); optional: reports before issue 15 lack it
    "subsets?": {name: {"AP": NUMBER, "AP50": NUMBER, "instances": int} for name in ("twins", "orphans")},
    "extra?": dict,
}


class ReportError(ValueError):
    """A report that does not follow the schema; the message names the file and the field."""


def _check(value: Any, spec: Any, where: str, errors: list[str]) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        for key, sub in spec.items():
            optional = key.endswith("?")
            name = key.rstrip("?")
            if name not in value:
                if not optional:
                    errors.append(f"{where}.{name}: missing")
                continue
            _check(value[name], sub, f"{where}.{name}", errors)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]", errors)
            if len(errors) > 20:
                return
    else:
        ok = isinstance(value, spec) and not (spec is not bool and isinstance(value, bool))
        if spec is NUMBER or spec == NUMBER:
            ok = isinstance(value, NUMBER) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            expected = "a number" if spec == NUMBER else spec.__name__
            errors.append(f"{where}: expected {expected}, got {value!r:.60}")


def validate_report(report: Any, source: str = "report") -> dict:
    """Raise ReportError listing every problem, or return the report."""
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ReportError(f"{source}: not a borrowcore evaluation report (no schema '{SCHEMA}')")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"{source}: report schema version {report.get('schema_version')!r}, "
                          f"this borrowcore reads version {SCHEMA_VERSION}")
    errors: list[str] = []
    _check(report, REPORT_SPEC, "report", errors)
    if errors:
        raise ReportError(f"{source}: malformed report: " + "; ".join(errors[:10]))
    return report


def load_report(path: str | Path) -> dict:
    """Read and validate a report file."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except OSError as error:
        raise ReportError(f"{path}: cannot read report ({error.strerror})") from error
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error})") from error
    return validate_report(report, str(path))


def read_json(path: str | Path) -> Any:
    """JSON or gzip-compressed JSON, with an error naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
        return json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
    except OSError as error:
        raise ReportError(f"{path}: cannot read ({error})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: not valid JSON ({error})") from error


def save_report(report: dict, path: str | Path) -> None:
    """Validate, then write atomically."""
    validate_report(report, str(path))
    write_json_atomic(report, path)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def report_detections_path(report: dict, report_path: str | Path) -> Path:
    """Where a report's detections json is (stored relative to the report)."""
    return (Path(report_path).parent / report["detections"]).resolve()


def load_detections(report: dict, report_path: str | Path) -> list[dict]:
    """A report's detections (COCO results format), checked to be a list of result dicts."""
    path = report_detections_path(report, report_path)
    results = read_json(path)
    keys = {"image_id", "category_id", "bbox", "score"}
    if not isinstance(results, list) or any(not isinstance(r, dict) or not keys <= set(r) for r in results[:1000]):
        raise ReportError(f"{path}: not a COCO results list (each item needs {sorted(keys)})")
    return results
