"""Reading a training run's OUT/log.jsonl (written by ``train.JsonLog``): one JSON object per line, with
"event" start, step, epoch or resume. A run still in progress may end in half a line; that is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

STEP_FIELDS = ("loss", "loss_box", "loss_cls", "lr", "images_per_s", "grad_norm", "clipped", "cpu_hours")


@dataclass
class TrainingLog:
    """One run's log, split by event; records keep every field they were written with."""

    name: str
    start: dict | None = None
    steps: list[dict] = field(default_factory=list)  # step, epoch, loss, loss_box, loss_cls, lr, images_per_s,
    # grad_norm (window mean before clipping), clipped (share of the window's steps clipped); older logs lack the last two
    epochs: list[dict] = field(default_factory=list)  # epoch, step, val_loss, val_loss_box, val_loss_cls, best
    resumes: list[dict] = field(default_factory=list)  # step
    end: dict | None = None  # step, wall_hours, cpu_hours (runs that finished; older logs have none)
    skipped_lines: int = 0  # lines that were not a JSON object with a known event


def parse_training_log(lines: Iterable[str], name: str) -> TrainingLog:
    """Parse log lines; ValueError naming ``name`` when no line is a training-log record."""
    log = TrainingLog(name)
    lines = [line for line in lines if line.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.skipped_lines += 1
            continue
        event = record.get("event") if isinstance(record, dict) else None
        if event == "start":
            log.start = record
        elif event == "step" and isinstance(record.get("step"), (int, float)):
            log.steps.append(record)
        elif event == "epoch":
            log.epochs.append(record)
        elif event == "resume":
            log.resumes.append(record)
            # a run resumes from its last checkpoint: the steps logged after it were redone, keep the redone ones
            if isinstance(record.get("step"), (int, float)):
                log.steps = [r for r in log.steps if r["step"] <= record["step"]]
                log.epochs = [r for r in log.epochs if r.get("step", 0) <= record["step"]]
        elif event == "end":
            log.end = record
        else:
            log.skipped_lines += 1
    if not (log.start or log.steps or log.epochs):
        raise ValueError(f"{name}: not a training log (no JSON lines with \"event\": start / step / epoch"
                         f"{'; the file is empty' if not lines else ''})")
    return log


def read_training_log(path: str | Path, name: str | None = None) -> TrainingLog:
    """Read OUT/log.jsonl; ValueError naming the file when it cannot be read or is no training log."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read training log ({error})") from error
    return parse_training_log(text.splitlines(), name or str(path))


def step_series(log: TrainingLog, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one step field, leaving out records without it."""
    pairs = [(r["step"], r[key]) for r in log.steps if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]
