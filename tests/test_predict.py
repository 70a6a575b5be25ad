"""``borrowcore predict`` (borrowcore.deploy.predict): sources, bad files, detections.json, tiles, drawn images."""

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from borrowcore import save_checkpoint
from borrowcore.cli import main
from borrowcore.data.dataset import read_image_rgb
from borrowcore.deploy.predict import EagerDetector, class_filter, collect_sources, predict, predict_files

from conftest import make_detector, png_header_bomb

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from borrowcore import DetectorConfig

    detector = make_detector(DetectorConfig(neck="full", num_classes=3, input_size=128, width=0.125, batch_norm=True))
    with torch.no_grad():
        for block in detector.network.neck.fusion:
            block.combine.weight.normal_(std=0.1)
    detector.class_names = ["car", "person", "sign"]
    path = tmp_path_factory.mktemp("predict") / "tiny.pt"
    save_checkpoint(path, detector)
    return path


@pytest.fixture
def folder(tmp_path):
    """Good images of every kind read_image_rgb converts, and bad files with image names."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    photo = sorted((ASSETS / "photos" / "images").glob("*.jpg"))[0]
    (root / photo.name).write_bytes(photo.read_bytes())
    synth = sorted((ASSETS / "synth-tiny" / "images").glob("*.png"))[0]
    (root / "sub" / synth.name).write_bytes(synth.read_bytes())
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "sub" / "gray.png"), rng.integers(0, 256, (90, 70), dtype=np.uint8))
    cv2.imwrite(str(root / "sub" / "rgba.png"), rng.integers(0, 256, (60, 80, 4), dtype=np.uint8))
    cv2.imwrite(str(root / "deep16.png"), rng.integers(0, 65536, (50, 40, 3), dtype=np.uint16))
    # 40 wide, 20 high as stored; EXIF orientation 6 (rotate 90) makes it 20 wide, 40 high
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(buffer, "JPEG", exif=exif)
    (root / "rotated.jpg").write_bytes(buffer.getvalue())
    # bad: a truncated JPEG, text named .png, an empty file, a PNG header claiming 40000 x 40000 pixels (libpng
    # segfaulted on it before the header was checked)
    (root / "truncated.jpg").write_bytes(photo.read_bytes()[:300])
    (root / "sub" / "notes.png").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    (root / "sub" / "bomb.png").write_bytes(png_header_bomb(40000, 40000))
    (root / "README.md").write_text("not listed: no image suffix")
    return root


GOOD = {"000000000110.jpg", "deep16.png", "rotated.jpg", "sub/000000.png", "sub/gray.png", "sub/rgba.png"}
BAD = {"bomb.png", "empty.jpg", "truncated.jpg", "notes.png"}


def test_folder_with_good_and_bad_files(checkpoint, folder, tmp_path):
    out = tmp_path / "out"
    summary = predict_files([folder], out, checkpoint=checkpoint, device="cpu", conf=0.0, batch_size=4,
                            save_images=True, progress=False)
    assert summary["images"] == len(GOOD) and summary["skipped"] == len(BAD)
    data = json.loads((out / "detections.json").read_text())
    assert {image["file_name"] for image in data["images"]} == GOOD
    assert {Path(s["path"]).name for s in data["skipped"]} == BAD
    reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert all(reason and str(folder) not in reason for reason in reasons.values())  # the reason, not the path again
    assert reasons["bomb.png"].startswith("refused: 1,600,000,000 pixels is over the limit of 40,000,000")
    assert reasons["empty.jpg"] == "the file is empty" and reasons["notes.png"].startswith("not an image (it is text)")
    assert "corrupt" in reasons["truncated.jpg"]  # cut inside its header
    # ids: images 1..N, every detection on a listed image, its box inside that image
    ids = [image["id"] for image in data["images"]]
    assert ids == list(range(1, len(GOOD) + 1))
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    assert [d["id"] for d in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    assert summary["detections"] == len(data["annotations"]) > 0
    for d in data["annotations"]:
        width, height = sizes[d["image_id"]]
        x, y, w, h = d["bbox"]
        assert d["category_id"] in (1, 2, 3) and 0 <= x and 0 <= y and x + w <= width + 0.01 and y + h <= height + 0.01
    assert data["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}, {"id": 3, "name": "sign"}]
    by_name = {image["file_name"]: image for image in data["images"]}
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (20, 40)  # EXIF honoured
    assert (by_name["sub/gray.png"]["width"], by_name["sub/gray.png"]["height"]) == (70, 90)
    assert data["summary"]["images"] == len(GOOD) and data["info"]["model"]["ablation"] == "full"
    # pycocotools reads the file as it is
    coco = COCO(str(out / "detections.json"))
    assert len(coco.getImgIds()) == len(GOOD) and len(coco.getAnnIds()) == len(data["annotations"])
    # drawn images, by the same relative names
    drawn = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.*"))
    assert drawn == sorted(GOOD)
    assert read_image_rgb(out / "images" / "sub" / "gray.png").shape == (3, 90, 70)


def test_detections_are_the_detectors(checkpoint, folder, tmp_path):
    # batching mixed sizes changes nothing: each image's detections are those of the detector alone
    from borrowcore.models.checkpoint import load_detector

    detector = load_detector(checkpoint)
    summary = predict(EagerDetector(detector), detector.class_names, [folder], tmp_path, conf=0.2, batch_size=3,
                      progress=False)
    data = json.loads((tmp_path / "detections.json").read_text())
    assert summary["detections"] == len(data["annotations"])
    for image in data["images"]:
        with torch.no_grad():
            alone = detector([read_image_rgb(image["path"])])[0]
        keep = alone["scores"] > 0.2
        mine = sorted((d for d in data["annotations"] if d["image_id"] == image["id"]), key=lambda d: -d["score"])
        assert len(mine) == int(keep.sum())
        expected_xywh = torch.cat([alone["boxes"][keep][:, :2], alone["boxes"][keep][:, 2:] - alone["boxes"][keep][:, :2]], 1)
        if mine:
            assert np.allclose([d["bbox"] for d in mine], expected_xywh.numpy(), atol=0.02)
            assert [d["category_id"] for d in mine] == alone["labels"][keep].tolist()


def test_list_file_and_missing_sources(checkpoint, folder, tmp_path, capsys):
    listing = folder / "list.txt"
    listing.write_text("# images to check\nrotated.jpg\n\nsub/gray.png\nnowhere.jpg\n" + str(folder / "deep16.png") + "\n")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), "--source", str(listing), str(folder / "rotated.jpg"),
                 str(tmp_path / "absent"), "--out", str(out), "--conf", "0.3", "--device", "cpu"])
    assert code == 0
    data = json.loads((out / "detections.json").read_text())
    assert [image["file_name"] for image in data["images"]] == ["rotated.jpg", "gray.png", "deep16.png"]  # once each
    assert sorted(s["reason"] for s in data["skipped"]) == ["no such file or folder"] * 2
    assert "3 images (2 skipped)" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no images found"):
        predict_files([tmp_path / "absent"], out, checkpoint=checkpoint, device="cpu", progress=False)


def test_cli_reports_a_png_bomb_and_goes_on(checkpoint, tmp_path, capsys):
    # a 40000 x 40000 PNG header in a folder: named on stderr and skipped, the other image still predicted
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_header_bomb(40000, 40000))
    synth = sorted((ASSETS / "synth-tiny" / "images").glob("*.png"))[0]
    (folder / "good.png").write_bytes(synth.read_bytes())
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), "--source", str(folder), "--out", str(out),
                 "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr()
    assert f"predict: skipped {folder / 'bomb.png'}: refused: 1,600,000,000 pixels is over the limit" in printed.err
    assert "1 images (1 skipped)" in printed.out
    data = json.loads((out / "detections.json").read_text())
    assert [image["file_name"] for image in data["images"]] == ["good.png"]


def test_collect_sources_order_and_suffixes(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.PNG", "b/1.jpg", "a.jpeg", "notes.txt.bak", "c.webp"):
        (tmp_path / name).write_bytes(b"x")
    images, problems = collect_sources([tmp_path, tmp_path / "a.jpeg"])
    assert [s.file_name for s in images] == ["a.jpeg", "b/1.jpg", "b/2.PNG", "c.webp"] and problems == []


def test_class_filter():
    names = ["car", "person", "sign"]
    assert class_filter(None, names) is None
    assert class_filter(["person", "3"], names) == {2, 3}
    with pytest.raises(ValueError, match="'bus'.*car, person, sign"):
        class_filter(["bus"], names)


def test_tiled_predict_on_a_large_image(checkpoint, tmp_path, monkeypatch):
    """The detector sees the 8 tiles of 160 px that cover a 200 x 420 image (overlap 0.25: x 0, 120, 240, 260;
    y 0, 40), and the file holds what detect_tiled made of them (conf, classes and edge merging applied):
    a predict that ignored its tile size would show the detector one image, or tiles of another size (its
    input size, 128, is not the tile size)."""
    import borrowcore.deploy.predict as predict_module
    from borrowcore.data.tiling import tile_windows

    real_detect_tiled, calls = predict_module.detect_tiled, []

    def detect_tiled(detect, image, tile_size, *args, **kwargs):
        seen = []

        def recording(tiles):
            seen.extend(tuple(tile.shape) for tile in tiles)
            return detect(tiles)

        found = real_detect_tiled(recording, image, tile_size, *args, **kwargs)
        calls.append((tuple(image.shape), seen, found))
        return found

    monkeypatch.setattr(predict_module, "detect_tiled", detect_tiled)
    large = tmp_path / "large.png"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(large), rng.integers(0, 256, (200, 420, 3), dtype=np.uint8))
    out = tmp_path / "out"
    summary = predict_files([large], out, checkpoint=checkpoint, device="cpu", conf=0.25, batch_size=4,
                            tile_size=160, overlap=0.25, merge_edges=True, classes=["car", "sign"], progress=False)
    data = json.loads((out / "detections.json").read_text())
    assert data["info"]["tile_size"] == 160 and data["info"]["merge_edges"] is True
    assert summary["detections"] == len(data["annotations"]) > 0
    assert len(calls) == 1, "predict cut no tiles"
    [(shape, seen, found)] = calls
    assert shape == (3, 200, 420) and len(tile_windows(200, 420, 160, 0.25)) == 8
    assert seen == [(3, 160, 160)] * 8
    keep = (found["scores"] > 0.25) & ((found["labels"] == 1) | (found["labels"] == 3))
    assert keep.sum() < len(keep)  # the class filter had something to drop
    boxes = found["boxes"][keep]
    expected = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], found["scores"][keep][:, None]], 1)
    written = torch.tensor([[*d["bbox"], d["score"]] for d in data["annotations"]])
    assert written.shape == expected.shape and torch.allclose(written, expected, atol=0.006)
    assert [d["category_id"] for d in data["annotations"]] == found["labels"][keep].tolist()
