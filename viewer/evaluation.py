"""The Evaluate page's sets, its run kept in the session, and this session's reports.

- A run (``Run``) is what a session asked to evaluate: checkpoints on one set. It lives in the session, so a
  rerun (a click anywhere, leaving the page and coming back) carries it on from the last finished slice.
- ``advance`` runs its slices (``borrowcore.evaluation.evaluate_upload.SlicedEvaluation``) one at a time through the
  server's one inference queue: a slice is submitted only when the one before it is done, so requests that
  other sessions (Inspect) queue meanwhile run between two slices; slices stay out of the result cache.
- An uploaded set is unpacked anew by each script run into a temporary folder that is removed when the run
  ends (``borrowcore.evaluation.evaluate_upload.unpacked_coco_set``); the uploaded bytes stay in the session meanwhile.
- Finished reports go to the session (``REPORTS``: the report, its detections, an uploaded set's json);
  Compare and Head to head list them (``session_reports``) beside the bundled ones.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import re
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from borrowcore import Detector
from borrowcore.data.coco import read_coco_json
from borrowcore.data.dataset import CocoDetection
from borrowcore.data.derived import ROOT as DATA_ROOT
from borrowcore.data.derived import WIDER, missing_ground_truth
from borrowcore.evaluation.evaluate_upload import SlicedEvaluation, check_classes, seconds_left, unpacked_coco_set
from viewer import assets
from viewer.models import DEVICE, InferenceQueue, QueueFull, file_key

RUN, ERROR, REPORTS = "evaluate_run", "evaluate_error", "evaluate_reports"  # session keys
SESSION = "this session"  # the study that Compare lists this session's reports under
WIDER_VAL = "data/wider/val.json"


@dataclass(frozen=True)
class BundledSet:
    """A COCO file and the folder its ``file_name``s are relative to."""

    annotations: Path
    images: Path


@dataclass(frozen=True)
class UploadedSet:
    """An uploaded COCO json and zip of its images, as bytes (unpacked only while a script run uses them)."""

    annotations: bytes
    annotations_name: str
    archive: bytes
    archive_name: str


def bundled_sets() -> tuple[dict[str, BundledSet], list[str]]:
    """The sets to evaluate on ("synth-tiny/twins": every ``<set>/*.json`` beside ``<set>/images/`` under the
    assets root, and WIDER val when ../shared/data holds its photos), and notes on those that cannot be offered."""
    sets = {f"{path.parent.name}/{path.stem}": BundledSet(path, path.parent / "images")
            for path in assets.coco_files() if (path.parent / "images").is_dir()}
    notes = []
    photos = DATA_ROOT / WIDER / "images"
    if photos.is_dir():
        if (DATA_ROOT / WIDER_VAL).is_file():
            sets["WIDER val"] = BundledSet(DATA_ROOT / WIDER_VAL, photos)
        else:
            notes.append(f"WIDER val is not offered: {missing_ground_truth(WIDER_VAL)}.")
    return sets, notes


@st.cache_data(max_entries=64, show_spinner=False)
def _class_names(path: str, mtime: int) -> list[str]:
    return [c.get("name") for c in sorted(read_coco_json(path)["categories"], key=lambda c: c.get("id"))]


def set_class_names(path: Path) -> list[str]:
    """A bundled set's category names in id order (the order a checkpoint's classes must have); [] if unreadable."""
    try:
        return _class_names(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError, TypeError):
        return []


@dataclass
class Run:
    """Checkpoints (name as shown, file) to evaluate on one set, and how far each has come."""

    set_name: str
    source: BundledSet | UploadedSet
    checkpoints: list[tuple[str, Path]]
    jobs: dict[str, SlicedEvaluation] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)  # report name -> session entry (``entry``)
    images: int = 0  # per checkpoint, known once the set is open

    def report_name(self, checkpoint: str) -> str:
        return f"{Path(checkpoint).stem} on {self.set_name}"

    def progress(self, checkpoint: str, waiting: int = 0) -> Progress:
        done = sum(job.done for job in self.jobs.values())
        total = self.images * len(self.checkpoints)
        wall = sum(job.wall for job in self.jobs.values())
        return Progress(done, total, checkpoint, seconds_left(done, total, wall), waiting)


@dataclass(frozen=True)
class Progress:
    done: int  # images, over every checkpoint
    total: int
    checkpoint: str  # the one running now
    seconds_left: float | None
    waiting: int  # requests ahead of this slice in the queue (0: it runs)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def text(self) -> str:
        left = ("estimating the time left…" if self.seconds_left is None else
                f"about {duration(self.seconds_left)} left")
        wait = (f"; waiting for the detector: {self.waiting} request{'s' if self.waiting > 1 else ''} ahead"
                if self.waiting else "")
        return f"{self.done} / {self.total} images ({self.checkpoint}), {left}{wait}"


def duration(seconds: float) -> str:
    """"45 s", "3 min 20 s", "1 h 05 min"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@contextlib.contextmanager
def opened(run: Run) -> Iterator[tuple[CocoDetection, str]]:
    """The run's dataset and a key for its images, for this script run: a bundled set as it is, an upload
    unpacked into a temporary folder removed on leaving (its key is that folder: a slice of an earlier
    unpacking, already removed, is never joined). Errors name the upload, not the temporary folder."""
    source = run.source
    if isinstance(source, BundledSet):
        yield CocoDetection(source.images, source.annotations), file_key(source.annotations)
        return
    with unpacked_coco_set(source.annotations, source.annotations_name, source.archive, source.archive_name) as dataset:
        try:
            yield dataset, str(dataset.image_dir)
        except ValueError as error:  # an image that does not decode: name the zip, not the temporary folder
            folder = str(dataset.image_dir.parent.parent)
            if folder not in str(error):
                raise
            message = re.sub(re.escape(str(dataset.image_dir)) + r"/?", f"{source.archive_name}: ", str(error))
            raise ValueError(message.replace(folder, source.archive_name)) from None


def _submit(work: InferenceQueue, key: tuple, job: Callable, on_wait: Callable[[int], None], poll_s: float):
    """``work.submit`` without caching, waiting (and saying so) while the queue is full."""
    while True:
        try:
            return work.submit(key, job, cache=False)
        except QueueFull:
            on_wait(work.pending())
            time.sleep(poll_s * 5)


def advance(run: Run, work: InferenceQueue, load: Callable[[Path], Detector],
            on_progress: Callable[[Progress], None] = lambda progress: None, poll_s: float = 0.2) -> None:
    """Carry ``run`` on, one slice at a time through ``work``, until every checkpoint's report is in
    ``run.reports``. ``load(path)`` gives a checkpoint's detector. Raises what stops it (UploadError,
    CheckpointError, BadImageError, a class mismatch: ValueError), the message naming the file."""
    with opened(run) as (dataset, images_key):
        run.images = len(dataset)
        for checkpoint, path in run.checkpoints:
            name = run.report_name(checkpoint)
            if name in run.reports:
                continue
            detector = load(path)
            check_classes(detector, dataset, checkpoint, run.set_name)
            job = run.jobs.setdefault(checkpoint, SlicedEvaluation.plan(detector, dataset))
            while (bounds := job.next_slice()) is not None:
                submitted = time.perf_counter()
                future = _submit(work, ("evaluate", file_key(path), images_key, *bounds),
                                 functools.partial(job.run_slice, detector, dataset, *bounds, DEVICE),
                                 lambda ahead: on_progress(run.progress(checkpoint, ahead)), poll_s)
                while not future.done():
                    on_progress(run.progress(checkpoint, work.position(future)))
                    time.sleep(poll_s)
                results, seconds = future.result()
                job.add(bounds[1], results, seconds, time.perf_counter() - submitted)
                on_progress(run.progress(checkpoint))
            run.reports[name] = entry(run, checkpoint, path, job, detector, dataset)


def entry(run: Run, checkpoint: str, path: Path, job: SlicedEvaluation, detector: Detector,
          dataset: CocoDetection) -> dict:
    """A finished evaluation as the session keeps it: {"report", "detections" (gzip json), "annotations"
    (an uploaded set's json bytes, else None)}. The report names the checkpoint and an upload as shown."""
    source = run.source
    if isinstance(source, UploadedSet):
        report = job.report(detector, dataset, path, DEVICE, split=Path(source.annotations_name).stem,
                            dataset_name=Path(source.archive_name).stem, annotations=source.annotations_name,
                            images=source.archive_name)
    else:  # synth-tiny/twins.json: split twins of synth-tiny, as `borrowcore eval` names it
        report = job.report(detector, dataset, path, DEVICE)
    report["model"]["checkpoint"] = checkpoint
    report["detections"] = f"{file_stem(run.report_name(checkpoint))}.detections.json.gz"
    return {"report": report, "detections": gzip.compress(json.dumps(job.results).encode(), mtime=0),
            "annotations": source.annotations if isinstance(source, UploadedSet) else None}


def file_stem(name: str) -> str:
    """A report name as a file name: "synth-full on synth-tiny/twins" -> "synth-full_on_synth-tiny_twins"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "report"


def session_reports(state: MutableMapping) -> dict[str, Path]:
    """This session's reports, stored beside their detections (and an upload's ground truth) so that the pages
    that read report files can: "this session/<name>" -> the report's path."""
    from viewer.loaders import store_evaluation

    return {f"{SESSION}/{name}": store_evaluation(item["report"], item["detections"], item["annotations"])
            for name, item in state.get(REPORTS, {}).items()}
