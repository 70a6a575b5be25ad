"""Evaluating where requests are shared: a checkpoint on a COCO set in slices, and an uploaded set unpacked safely.

- In slices: ``SlicedEvaluation`` runs ``evaluate.predict`` on a few images at a time, so that a worker serving
  several people (the app's one inference queue) can run other requests between two slices; the report is
  ``evaluate.build_report`` of the slices' detections, the same numbers as ``evaluate_detector`` on the whole
  set (a slice is one of ``predict``'s batches, or one image where ``predict`` runs images one at a time).
- Uploaded: a COCO json and a zip of its images, checked before anything is unpacked (a ``..`` or absolute
  entry, a link, a zip bomb, too many entries or bytes, images the json names that the zip lacks, a huge set),
  then unpacked into a temporary folder that ``unpacked_coco_set`` removes on leaving, error or not.
  Every problem is an ``UploadError`` whose message names the upload (never the temporary path) and the entry.
"""

from __future__ import annotations

import contextlib
import io
import re
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from borrowcore.data.coco import read_coco_json
from borrowcore.data.dataset import BadAnnotationError, CocoDetection
from borrowcore.evaluation.coco_eval import DEFAULT_SIZE_BINS
from borrowcore.evaluation.evaluate import build_report, inference_description, model_entry, predict, timing_entry


class UploadError(ValueError):
    """An uploaded COCO set that cannot be evaluated; the message names the file and the problem."""


@dataclass(frozen=True)
class UploadLimits:
    """What an uploaded set may hold. A zip entry that unpacks to more than ``max_ratio`` times its compressed
    size (past ``ratio_from_bytes``: tiny files compress well and harm nothing) is taken for a zip bomb; JPEG
    and PNG barely compress, so real images stay near 1x."""

    max_images: int = 5000
    max_entries: int = 20_000
    max_bytes: int = 4 << 30
    max_ratio: float = 100.0
    ratio_from_bytes: int = 1 << 20


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _parts(name: str) -> list[str]:
    """A zip or COCO path's components, whichever slash it uses, without empty ones and ``.``."""
    return [part for part in re.split(r"[\\/]+", name) if part not in ("", ".")]


def _unsafe(name: str) -> str:
    """Why a relative path from an upload could land outside its folder ('' when it cannot)."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in _parts(name):
        return "a '..' component"
    return ""


def check_zip_entries(archive: zipfile.ZipFile, archive_name: str, limits: UploadLimits = UploadLimits()) -> None:
    """Refuse the whole zip before unpacking anything: entries with an absolute path or a ``..`` component,
    links, encrypted entries, more than ``max_entries`` entries, more than ``max_bytes`` unpacked, or an entry
    that expands more than ``max_ratio`` times."""
    entries = archive.infolist()
    if len(entries) > limits.max_entries:
        raise UploadError(f"{archive_name}: {len(entries)} entries, more than the {limits.max_entries} allowed")
    unpacked = 0
    for entry in entries:
        name = entry.filename
        if why := _unsafe(name):
            raise UploadError(f"{archive_name}: entry '{name}' has {why}; it would be written outside the folder "
                              "it is unpacked into")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise UploadError(f"{archive_name}: entry '{name}' is a symbolic link; links are not unpacked")
        if entry.flag_bits & 0x1:
            raise UploadError(f"{archive_name}: entry '{name}' is encrypted")
        if entry.file_size > limits.ratio_from_bytes and entry.file_size > limits.max_ratio * max(entry.compress_size, 1):
            raise UploadError(f"{archive_name}: entry '{name}' expands {entry.file_size / max(entry.compress_size, 1):.0f}"
                              f" times (from {_size(entry.compress_size)} to {_size(entry.file_size)}; at most "
                              f"{limits.max_ratio:g} times): a zip bomb?")
        unpacked += entry.file_size
        if unpacked > limits.max_bytes:
            raise UploadError(f"{archive_name}: unpacks to more than {_size(limits.max_bytes)} (at entry '{name}')")


def extract_zip(archive: zipfile.ZipFile, folder: Path, archive_name: str, limits: UploadLimits = UploadLimits()) -> None:
    """Unpack a zip that ``check_zip_entries`` passed into ``folder``, counting the bytes actually written (an
    entry's recorded size can lie) and checking that every file lands inside ``folder``."""
    root = folder.resolve()
    written = 0
    for entry in archive.infolist():
        target = root.joinpath(*_parts(entry.filename))
        if not target.resolve().is_relative_to(root):  # _unsafe refused these already; a second line of defence
            raise UploadError(f"{archive_name}: entry '{entry.filename}' would be written outside its folder")
        if entry.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(entry) as source, open(target, "wb") as sink:
            while block := source.read(1 << 20):
                written += len(block)
                if written > limits.max_bytes:
                    raise UploadError(f"{archive_name}: unpacks to more than {_size(limits.max_bytes)} "
                                      f"(at entry '{entry.filename}')")
                sink.write(block)


def image_root(members: set[str], file_names: list[str]) -> tuple[str, list[str]]:
    """The folder inside the zip (``members``: its file paths) that the json's ``file_name``s are relative to:
    the zip's top or one of its top-level folders (``images/``), whichever lacks the fewest; and those it lacks."""
    tops = {name.split("/", 1)[0] + "/" for name in members if "/" in name}
    candidates = ["", *sorted(tops)]
    best: tuple[str, list[str]] | None = None
    for prefix in candidates:
        missing = [name for name in file_names if prefix + name not in members]
        if best is None or len(missing) < len(best[1]):
            best = (prefix, missing)
        if not missing:
            break
    return best


def _renamed(error: Exception, path: Path, name: str) -> str:
    return str(error).replace(str(path), name)


def _check_coco(path: Path, name: str, limits: UploadLimits) -> list[str]:
    """The COCO file's image file names, normalised; UploadError for a file that is no COCO detection file,
    names more than ``max_images`` images, or names an image outside its folder."""
    try:
        coco = read_coco_json(path)
    except ValueError as error:  # UnicodeDecodeError too: a binary file
        message = _renamed(error, path, name)
        raise UploadError(message if message.startswith(name) else f"{name}: not a JSON text file ({error})") from None
    if len(coco["images"]) > limits.max_images:
        raise UploadError(f"{name}: {len(coco['images'])} images, more than the {limits.max_images} evaluated here "
                          "(evaluate a set that large with `borrowcore eval`)")
    if not coco["images"]:
        raise UploadError(f"{name}: names no images")
    file_names = []
    for image in coco["images"]:
        file_name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(file_name, str) or not _parts(file_name):
            raise UploadError(f"{name}: image entry {str(image)[:200]} has no file_name")
        if why := _unsafe(file_name):
            raise UploadError(f"{name}: image file_name '{file_name}' has {why}")
        file_names.append("/".join(_parts(file_name)))
    return file_names


def open_coco_upload(annotations: bytes, annotations_name: str, archive: bytes | BinaryIO | Path, archive_name: str,
                     folder: Path, limits: UploadLimits = UploadLimits()) -> CocoDetection:
    """Check an uploaded COCO json and zip of its images, unpack them into ``folder`` (which must be empty and
    is the caller's to remove) and return the dataset; UploadError naming the problem otherwise.

    Checked in this order, nothing unpacked before the last: the json (a COCO detection file of at most
    ``max_images`` images, file names inside their folder), the zip's entries (``check_zip_entries``), every
    image the json names present in the zip, the annotations (``CocoDetection``'s checks)."""
    json_path = folder / "annotations" / (re.sub(r"[^A-Za-z0-9._-]", "_", Path(annotations_name).name) or "upload.json")
    json_path.parent.mkdir(parents=True)
    json_path.write_bytes(annotations)
    file_names = _check_coco(json_path, annotations_name, limits)
    try:
        zipped = zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, bytes) else archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadError(f"{archive_name}: not a zip file ({error})") from None
    with zipped:
        check_zip_entries(zipped, archive_name, limits)
        members = {"/".join(_parts(entry.filename)) for entry in zipped.infolist() if not entry.is_dir()}
        prefix, missing = image_root(members, file_names)
        if missing:
            raise UploadError(f"{archive_name}: lacks {len(missing)} of the {len(file_names)} images that "
                              f"{annotations_name} names: {', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}")
        images = folder / "images"
        images.mkdir()
        try:
            dataset = CocoDetection(images / prefix, json_path)
        except BadAnnotationError as error:
            raise UploadError(_renamed(error, json_path, annotations_name)) from None
        try:
            extract_zip(zipped, images, archive_name, limits)
        except (zipfile.BadZipFile, OSError, EOFError) as error:  # a corrupt entry, a CRC that does not match
            raise UploadError(f"{archive_name}: cannot be unpacked ({error})") from None
    return dataset


@contextlib.contextmanager
def unpacked_coco_set(annotations: bytes, annotations_name: str, archive: bytes | BinaryIO | Path, archive_name: str,
                      limits: UploadLimits = UploadLimits()) -> Iterator[CocoDetection]:
    """``open_coco_upload`` in a new temporary folder, removed on leaving the block, on error too."""
    with tempfile.TemporaryDirectory(prefix="borrowscope-eval-") as folder:
        yield open_coco_upload(annotations, annotations_name, archive, archive_name, Path(folder), limits)


# ---- evaluation in slices ----

class DatasetSlice(torch.utils.data.Dataset):
    """Images ``start`` to ``stop`` of a CocoDetection, with the label -> category id map ``predict`` reads."""

    def __init__(self, dataset: CocoDetection, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, min(stop, len(dataset))
        self.label_to_cat_id = dataset.label_to_cat_id

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.dataset[self.start + index]


def one_at_a_time(detector: torch.nn.Module, tile: int | None = None) -> bool:
    """Whether ``predict`` runs this detector's images one by one (whole photos, tiles), not in batches."""
    config = getattr(detector, "config", None)
    return bool(tile) or getattr(detector, "whole_image", False) or getattr(config, "inference", "resize") != "resize"


def check_classes(detector: torch.nn.Module, dataset: CocoDetection, checkpoint_name: str, set_name: str) -> None:
    """ValueError unless the detector's classes are the set's categories (sorted by id), in the same order."""
    own, annotated = list(detector.class_names), list(dataset.class_names)
    if own != annotated:
        raise ValueError(f"{checkpoint_name} detects {', '.join(own[:8])}{' …' if len(own) > 8 else ''}, but "
                         f"{set_name} annotates {', '.join(annotated[:8])}{' …' if len(annotated) > 8 else ''}: "
                         "evaluate it on a set of its own classes")


@dataclass
class SlicedEvaluation:
    """One detector on one COCO set, a slice at a time: ``next_slice``, run it (``run_slice``), ``add`` its
    detections, until ``finished``; then ``report``. Holds only plain values, so it can wait between slices
    (the app keeps it in the session and carries on after a rerun)."""

    total: int
    size: int  # images per slice: predict's batch, or 1 where it runs images one at a time
    batch_size: int = 8
    tile: int | None = None
    overlap: float = 0.2
    results: list[dict] = field(default_factory=list)
    done: int = 0
    seconds: float = 0.0  # inference time as predict measures it: the report's timing
    wall: float = 0.0  # each slice from submitted to done, waits included: the rate of the time left

    @classmethod
    def plan(cls, detector: torch.nn.Module, dataset: CocoDetection, batch_size: int = 8, tile: int | None = None,
             overlap: float = 0.2) -> SlicedEvaluation:
        size = 1 if one_at_a_time(detector, tile) else batch_size
        return cls(len(dataset), size, batch_size, tile, overlap)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def next_slice(self) -> tuple[int, int] | None:
        """(start, stop) of the next images, None when all are done."""
        return None if self.finished else (self.done, min(self.done + self.size, self.total))

    def run_slice(self, detector: torch.nn.Module, dataset: CocoDetection, start: int, stop: int,
                  device: str | torch.device = "cpu") -> tuple[list[dict], float]:
        """COCO detections of images ``start`` to ``stop`` and the inference seconds (``evaluate.predict``)."""
        return predict(detector, DatasetSlice(dataset, start, stop), device, self.batch_size, show_progress=False,
                       tile=self.tile, overlap=self.overlap)

    def add(self, stop: int, results: list[dict], seconds: float, wall: float) -> None:
        self.results.extend(results)
        self.done, self.seconds, self.wall = stop, self.seconds + seconds, self.wall + wall

    def run(self, detector: torch.nn.Module, dataset: CocoDetection, device: str | torch.device = "cpu") -> None:
        """Every remaining slice here and now (what the app does through its queue)."""
        while (bounds := self.next_slice()) is not None:
            start = time.perf_counter()
            results, seconds = self.run_slice(detector, dataset, *bounds, device)
            self.add(bounds[1], results, seconds, time.perf_counter() - start)

    def report(self, detector: torch.nn.Module, dataset: CocoDetection, checkpoint: str | Path = "",
               device: str | torch.device = "cpu", split: str | None = None, dataset_name: str | None = None,
               size_bins: Sequence[tuple[float, float]] = DEFAULT_SIZE_BINS, annotations: str | None = None,
               images: str | None = None) -> dict:
        """The evaluation report of the finished slices, as ``evaluate_detector`` builds it; ``annotations`` and
        ``images`` are recorded in place of the dataset's paths (an upload's names: its folder is temporary)."""
        if not self.finished:
            raise RuntimeError(f"{self.done} of {self.total} images evaluated: finish the slices first")
        report = build_report(dataset, self.results, model_entry(detector, checkpoint),
                              timing_entry(self.total, self.seconds, device),
                              inference_description(detector, self.tile, self.overlap), size_bins, split, dataset_name)
        report["dataset"]["annotations"] = annotations or report["dataset"]["annotations"]
        report["dataset"]["images"] = images or report["dataset"]["images"]
        return report


def seconds_left(done: int, total: int, wall: float) -> float | None:
    """The time the ``total - done`` images left take at the rate so far (None before the first is done)."""
    if done <= 0 or wall <= 0:
        return None
    return max(0, total - done) * wall / done


__all__ = ["UploadError", "UploadLimits", "check_zip_entries", "extract_zip", "image_root", "open_coco_upload",
           "unpacked_coco_set", "DatasetSlice", "one_at_a_time", "check_classes", "SlicedEvaluation", "seconds_left"]
