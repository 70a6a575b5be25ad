"""Detectors and their results, shared by every session of the app.

- A detector is loaded once per checkpoint file (``st.cache_resource``) and never changed afterwards:
  sessions only call it. Uploaded checkpoints are stored under their content hash, so the same bytes
  uploaded twice load once.
- Inference runs one image at a time on the device behind one lock; other sessions wait (with a spinner).
- Results are cached by (checkpoint, image content hash): the same image is explained once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path

import streamlit as st
import torch

from borrowcore import CheckpointError, Detector, load_detector
from borrowcore.checkpoint import checkpoint_config, read_checkpoint
from borrowcore.explain import Explanation, explain
from borrowcore.images import MAX_PIXELS, decode_upload

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
UPLOADS = Path(tempfile.gettempdir()) / "borrowscope-uploads"


def device_label() -> str:
    """"CUDA (NVIDIA H100 ...)" or "CPU"."""
    return f"CUDA ({torch.cuda.get_device_name(0)})" if DEVICE == "cuda" else "CPU"


def file_key(path: Path) -> str:
    """Identifies a checkpoint file's current content: its path and modification time."""
    return f"{path.resolve()}@{path.stat().st_mtime_ns}"


@st.cache_resource(max_entries=4, show_spinner=False)
def _load(path: str, key: str) -> Detector:
    return load_detector(path, DEVICE)


def load_model(path: Path) -> Detector:
    """The shared detector of a checkpoint file (CheckpointError with a clear message otherwise)."""
    if not path.is_file():
        raise CheckpointError(f"{path.name}: checkpoint file not found")
    return _load(str(path), file_key(path))


@st.cache_data(max_entries=64, show_spinner=False)
def _checkpoint_info(path: str, key: str) -> dict:
    checkpoint = read_checkpoint(path)
    config = checkpoint_config(checkpoint, path)
    state = checkpoint.get("train_state") or {}
    return {"neck": config.neck, "classes": len(checkpoint["class_names"]), "input_size": config.input_size,
            "width": config.width, "inference": config.inference, "max_whole_side": config.max_whole_side, "step": state.get("step") if isinstance(state, dict) else None,
            "class_names": list(checkpoint["class_names"])}


def checkpoint_info(path: Path) -> dict:
    """neck, classes, input size, width, class names (and the training step when recorded)."""
    return _checkpoint_info(str(path), file_key(path))


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


@st.cache_resource(show_spinner=False)
def inference_lock() -> threading.Lock:
    """One lock for the whole server: one inference at a time on the device."""
    return threading.Lock()


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def explain_image(model: str, digest: str, _detector: Detector, _image: torch.Tensor) -> Explanation:
    """Detections and matching scores of one image, cached by (checkpoint key, image hash)."""
    with inference_lock():
        return explain(_detector, _image)


@st.cache_data(max_entries=128, show_spinner=False)
def decode_image(digest: str, name: str, _data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """An upload decoded to uint8 (3, H, W), cached by its hash (BadImageError otherwise)."""
    return decode_upload(_data, name, max_pixels)
