"""Three small fixes: Home's checkpoint table converts to Arrow as is, shift writes JPEGs without
torchvision.io, and the app says where the bundled aerial models hold."""

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from borrowcore import DetectorConfig, build_detector, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
HOME = str(ROOT / "viewer" / "Home.py")
INSPECT = "../pages/inspect_image.py"
TIMEOUT = 180
AERIAL = ["car", "bus", "minibus"]


def tiny(path: Path, class_names: list[str], inference: str = "resize") -> Path:
    torch.manual_seed(0)
    config = DetectorConfig(neck="full", num_classes=len(class_names), input_size=128, width=0.125, batch_norm=True,
                            inference=inference, score_threshold=0.05, detections_per_image=50)
    save_checkpoint(path, build_detector(config, class_names).eval())
    return path


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> Path:
    """An assets folder with checkpoints/{aerial-full,faces-full}.pt (no samples: pages stop before inference)."""
    root = tmp_path_factory.mktemp("assets")
    tiny(root / "checkpoints" / "aerial-full.pt", AERIAL)
    tiny(root / "checkpoints" / "faces-full.pt", ["face"], inference="whole")
    return root


def start(root: Path, monkeypatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("BORROWSCOPE_ASSETS", str(root))
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def said(elements) -> str:
    return "\n".join(e.value for e in elements)


# ---- 1. Home's checkpoint table: one type per column ----

def test_checkpoints_table_converts_to_arrow_as_is(bundled, tmp_path):
    from viewer.models import checkpoints_table

    broken = tmp_path / "broken-full.pt"
    broken.write_bytes(b"not a checkpoint")
    paths = [bundled / "checkpoints" / "aerial-full.pt", bundled / "checkpoints" / "faces-full.pt", broken]
    table = checkpoints_table(paths)
    assert list(table["input"][:2]) == ["128 px", "whole photo"]
    assert table["neck"][2].startswith("unreadable: ")
    arrow = pa.Table.from_pandas(table)  # what st.dataframe does first; ArrowInvalid on a mixed column
    kind = arrow.schema.field("input").type
    assert pa.types.is_string(kind) or pa.types.is_large_string(kind), kind


def test_home_table_needs_no_arrow_fixes_and_notes_the_aerial_family(bundled, monkeypatch):
    """Streamlit logs ArrowInvalid and falls back to fix_arrow_incompatible_column_types for a mixed column:
    here that fallback fails the page."""
    import streamlit.dataframe_util

    def refuse(df):
        raise AssertionError(f"a dataframe needed Streamlit's Arrow fix-ups: {list(df.columns)}")

    monkeypatch.setattr(streamlit.dataframe_util, "fix_arrow_incompatible_column_types", refuse)
    at = start(bundled, monkeypatch)
    table = at.dataframe[0].value
    assert sorted(table["input"]) == ["128 px", "whole photo"]
    from viewer.assets import BUNDLED_NOTES

    assert f"**aerial-\\***: {BUNDLED_NOTES['aerial']}" in said(at.caption)


# ---- 2. shift's JPEGs: OpenCV's encoder, RGB kept, no deprecation warning ----

def test_write_shifted_jpeg_round_trips_keeps_rgb_and_warns_nothing(tmp_path):
    from borrowcore.data.shift import write_shifted

    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)  # pure red on the left: swapped channels would make it blue
    y, x = np.mgrid[:48, :32]
    image[:, 32:] = np.stack([x * 6 + 20, y * 4 + 30, np.full_like(x, 128)], axis=-1)  # gradients on the right
    Image.fromarray(image).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "face"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
                             "iscrowd": 0}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision.io's encoder raised a DeprecationWarning here
        write_shifted(tmp_path / "a.json", tmp_path, tmp_path / "out")
    data = (tmp_path / "out" / "images" / "a.jpg").read_bytes()
    assert data[:2] == b"\xff\xd8"  # a JPEG
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert decoded.shape == image.shape
    assert np.abs(decoded - image).mean() < 2  # quality 95
    red = decoded[8:40, 4:24].mean(axis=(0, 1))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15, red


def test_encode_jpeg_matches_torchvisions_bytes():
    """The same libjpeg settings as the deprecated encoder it replaces: byte for byte, while that one exists."""
    from borrowcore.data.shift import encode_jpeg

    legacy = pytest.importorskip("torchvision.io").encode_jpeg
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 56), dtype=np.uint8))
    image[:, 10:30, 8:40] = torch.tensor([200, 30, 30], dtype=torch.uint8)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = legacy(image, quality=95).numpy().tobytes()
    assert encode_jpeg(image, quality=95) == expected


def test_encode_jpeg_quality_is_passed_on():
    from borrowcore.data.shift import encode_jpeg

    noise = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 64, 64), dtype=np.uint8))
    assert len(encode_jpeg(noise, quality=30)) < len(encode_jpeg(noise, quality=95)) / 2


# ---- 3. where the bundled aerial models hold ----

def test_inspect_notes_where_an_aerial_checkpoint_holds_and_a_face_one_gets_no_note(bundled, monkeypatch):
    from viewer.assets import BUNDLED_NOTES

    note = BUNDLED_NOTES["aerial"]
    assert "0.0-0.2" in note and "KIT" in note  # the measured scale shift and the training set, in one place
    at = start(bundled, monkeypatch, INSPECT)
    assert at.sidebar.selectbox(key="inspect_checkpoint").value == "faces-full.pt"
    assert note not in said(at.sidebar.warning)
    at.sidebar.selectbox(key="inspect_checkpoint").set_value("aerial-full.pt").run()
    assert not at.exception
    assert note in said(at.sidebar.warning)
    at.sidebar.selectbox(key="inspect_checkpoint").set_value("faces-full.pt").run()
    assert note not in said(at.sidebar.warning)


def test_inspect_upload_named_aerial_gets_no_note(bundled, monkeypatch):
    """The note is measured on the bundled weights: an uploaded file of the same name may hold others."""
    from viewer.assets import BUNDLED_NOTES

    at = start(bundled, monkeypatch, INSPECT)
    at.sidebar.selectbox(key="inspect_checkpoint").set_value("Upload a checkpoint…").run()
    at.sidebar.file_uploader(key="inspect_checkpoint_upload").upload(
        "aerial-full.pt", (bundled / "checkpoints" / "aerial-full.pt").read_bytes()).run()
    assert not at.exception
    assert BUNDLED_NOTES["aerial"] not in said(at.sidebar.warning)
