"""Detectors and their results, shared by every session of the app.

- A detector is loaded once per checkpoint file (``st.cache_resource``) and never changed afterwards:
  sessions only call it. Uploaded checkpoints are stored under their content hash, so the same bytes
  uploaded twice load once.
- Inference runs through one bounded queue served by one worker thread (``InferenceQueue``), in arrival
  order, with torch's thread count set once for the machine: sessions never run inferences side by side,
  so they do not oversubscribe the cores, and each sees its place in the queue while it waits.
- Results are cached by (checkpoint, image content hash, settings): the same image is explained once, and
  a request already queued by another session is joined, not run twice.
"""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import torch

from borrowcore import CheckpointError, Detector, load_detector
from borrowcore.data.images import MAX_PIXELS, decode_upload
from borrowcore.evaluation.explain import Explanation, explain
from borrowcore.models.checkpoint import checkpoint_config, read_checkpoint
from viewer import assets

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
UPLOADS = Path(tempfile.gettempdir()) / "borrowscope-uploads"


def device_label() -> str:
    """"CUDA (NVIDIA H100 ...)" or "CPU"."""
    return f"CUDA ({torch.cuda.get_device_name(0)})" if DEVICE == "cuda" else "CPU"


def file_key(path: Path) -> str:
    """Identifies a checkpoint file's current content: its path and modification time."""
    return f"{path.resolve()}@{path.stat().st_mtime_ns}"


@st.cache_resource(max_entries=4, show_spinner=False)
def _load(path: str, key: str, exact: bool | None) -> Detector:
    return load_detector(path, DEVICE, exact=exact)


def load_model(path: Path, exact: bool | None = None) -> Detector:
    """The shared detector of a checkpoint file (CheckpointError with a clear message otherwise); ``exact``
    True or False runs borrow/full with exact or fast matching, None as the checkpoint says."""
    if not path.is_file():
        raise CheckpointError(f"{path.name}: checkpoint file not found")
    return _load(str(path), file_key(path), exact)


@st.cache_data(max_entries=64, show_spinner=False)
def _checkpoint_info(path: str, key: str) -> dict:
    checkpoint = read_checkpoint(path)
    config = checkpoint_config(checkpoint, path)
    state = checkpoint.get("train_state") or {}
    return {"neck": config.neck, "classes": len(checkpoint["class_names"]), "input_size": config.input_size,
            "matching": config.matching,
            "width": config.width, "inference": config.inference, "max_whole_side": config.max_whole_side, "step": state.get("step") if isinstance(state, dict) else None,
            "class_names": list(checkpoint["class_names"])}


def checkpoint_info(path: Path) -> dict:
    """neck, classes, input size, width, class names (and the training step when recorded)."""
    return _checkpoint_info(str(path), file_key(path))


def input_label(info: dict) -> str:
    """What the detector of ``checkpoint_info`` is run on, as text: "whole photo", "256 px tiles", "256 px"."""
    if info["inference"] == "whole":
        return "whole photo"
    return f"{info['input_size']} px tiles" if info["inference"] == "tiles" else f"{info['input_size']} px"


def checkpoints_table(paths: list[Path]) -> pd.DataFrame:
    """One row per checkpoint file (Home's table), one type per column so that Arrow takes it as is; an
    unreadable file gets its error in ``neck`` and empty cells elsewhere."""
    rows = []
    for path in paths:
        try:
            info = checkpoint_info(path)
            rows.append({"checkpoint": path.name, "use it for": assets.checkpoint_use(path) or "—",
                         "neck": info["neck"], "classes": info["classes"], "input": input_label(info),
                         "width": info["width"], "size (MB)": round(path.stat().st_size / 1e6, 1)})
        except CheckpointError as error:
            rows.append({"checkpoint": path.name, "neck": f"unreadable: {error}"})
    return pd.DataFrame(rows)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[:100] or "upload"


def store_upload(data: bytes, name: str) -> Path:
    """Save uploaded bytes under their content hash (written atomically; the same bytes share a file)."""
    folder = UPLOADS / hashlib.sha256(data).hexdigest()[:32]
    path = folder / _safe_name(name)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def without_upload_path(message: str, path: Path, name: str) -> str:
    """An error message about a stored upload, naming the file as the person uploaded it."""
    return message.replace(str(path), name)


def machine_threads() -> int:
    """The cores this process may use (its CPU affinity), the torch thread count of the one worker."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class QueueFull(RuntimeError):
    """More requests wait than the queue holds; the message says to try again."""


class InferenceQueue:
    """Every inference of the server, one at a time, in arrival order, on one worker thread.

    ``submit(key, job)`` returns a Future of ``job()``: at once from the result cache (an LRU of
    ``cache_size`` results by key), the Future of the same key when another session already queued it,
    or a new one; ``position(future)`` is how many requests run or wait before it (0: running now). At most
    ``max_pending`` requests wait; beyond that ``submit`` raises QueueFull rather than letting the wait grow
    without bound. ``cache=False`` keeps a result out of the cache (the slices of an evaluation, which would
    push out everyone's explanations). The worker sets torch's intra-op threads to ``threads`` once, for the
    machine."""

    def __init__(self, max_pending: int = 64, cache_size: int = 64, threads: int | None = None) -> None:
        self.threads = threads or machine_threads()
        self.max_pending, self.cache_size = max_pending, cache_size
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._order: collections.OrderedDict[Any, Future] = collections.OrderedDict()  # waiting or running
        self._cache: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self.completed = 0
        self._worker = threading.Thread(target=self._run, name="borrowscope-inference", daemon=True)
        self._worker.start()

    def submit(self, key: Any, job: Callable[[], Any], cache: bool = True) -> Future:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                done: Future = Future()
                done.set_result(self._cache[key])
                return done
            if key in self._order:
                return self._order[key]
            if len(self._order) >= self.max_pending:
                raise QueueFull(f"{len(self._order)} images are waiting for the detector; try again in a moment")
            future: Future = Future()
            self._order[key] = future
        self._jobs.put((key, job, future, cache))
        return future

    def position(self, future: Future) -> int:
        """Requests before ``future`` (0: it is running or done)."""
        with self._lock:
            for index, queued in enumerate(self._order.values()):
                if queued is future:
                    return index
        return 0

    def pending(self) -> int:
        with self._lock:
            return len(self._order)

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            key, job, future, cache = self._jobs.get()
            try:
                result = job()
            except BaseException as error:  # noqa: BLE001 - the session that asked shows it
                with self._lock:
                    self._order.pop(key, None)
                future.set_exception(error)
                continue
            with self._lock:
                if cache:
                    self._cache[key] = result
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
                self._order.pop(key, None)
                self.completed += 1
            future.set_result(result)


@st.cache_resource(show_spinner=False)
def inference_queue() -> InferenceQueue:
    """The server's one inference queue (one per process, shared by every session)."""
    return InferenceQueue()


def explain_image(model: str, digest: str, detector: Detector, image: torch.Tensor,
                  on_wait: Callable[[int], None] | None = None, poll_s: float = 0.2) -> Explanation:
    """Detections and matching scores of one image through the server's queue, cached by (checkpoint key,
    image hash, matching). ``on_wait(position)`` is called while the request waits or runs, once each time
    its position changes: each call redraws the waiting message in the person's browser, and eight people
    waiting need not redraw it forty times a second between them."""
    key = (model, digest, detector.config.describe_matching() if hasattr(detector, "config") else "")
    work = inference_queue()
    future = work.submit(key, lambda: explain(detector, image, summaries=True))  # the layer views too
    shown = None
    while on_wait is not None and not future.done():
        if (position := work.position(future)) != shown:
            on_wait(position)
            shown = position
        time.sleep(poll_s)
    return future.result()


@st.cache_data(max_entries=128, show_spinner=False)
def decode_image(digest: str, name: str, _data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """An upload decoded to uint8 (3, H, W), cached by its hash (BadImageError otherwise)."""
    return decode_upload(_data, name, max_pixels)
