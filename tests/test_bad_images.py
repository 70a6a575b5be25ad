"""One image decoder everywhere: a PNG header claiming 40000 x 40000 pixels (libpng segfaulted on it) in a
COCO set under ``eval`` and in a training set gives a clear message naming the file, never a crash.
(``predict`` on such a file: tests/test_predict.py.)"""

import json
import warnings

import pytest
import torch

from borrowcore import save_checkpoint
from borrowcore.cli import main
from borrowcore.data.dataset import BadDataWarning, BadImageError, CocoDetection
from borrowcore.engine.train import train
from borrowcore.evaluation.analysis import analyze_report
from borrowcore.evaluation.report import load_report

from conftest import make_detector, png_header_bomb
from test_train import TINY, tiny_experiment

BOMB_ID = 1000


@pytest.fixture
def coco_with_bomb(tmp_path):
    """The tiny benchmark's twins set, plus bomb.png (a few hundred bytes claiming 40000 x 40000) with one box."""
    images = tmp_path / "images"
    images.mkdir()
    coco = json.loads((TINY / "twins.json").read_text())
    for image in coco["images"]:
        (images / image["file_name"]).write_bytes((TINY / "images" / image["file_name"]).read_bytes())
    (images / "bomb.png").write_bytes(png_header_bomb(40000, 40000))
    coco["images"].append({"id": BOMB_ID, "file_name": "bomb.png", "width": 40000, "height": 40000})
    coco["annotations"].append({"id": 10_000, "image_id": BOMB_ID, "category_id": coco["categories"][0]["id"],
                                "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0})
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(coco))
    return images, ann_file, len(coco["images"]) - 1


def test_the_pixel_limit_is_checked_on_the_header(tmp_path, monkeypatch):
    import borrowcore.data.images as images

    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_bomb(40000, 40000))
    with pytest.raises(BadImageError, match=r"bomb.png: refused: 1,600,000,000 pixels is over the limit of 40,000,000"):
        images.read_image_rgb(path)
    # one number everywhere, settable: a 300 x 200 image passes 60,000 and is refused below it
    small = tmp_path / "small.png"
    small.write_bytes(png_header_bomb(300, 200))
    monkeypatch.setattr(images, "MAX_PIXELS", 59_999)
    with pytest.raises(BadImageError, match=r"small.png: refused: 300 x 200 = 60,000 pixels is over the limit of 59,999"):
        images.read_image_rgb(small)
    with pytest.raises(BadImageError, match=r"^upload.png: refused: 300 x 200"):
        images.decode_upload(small.read_bytes(), "upload.png")  # the app's uploads: the same limit
    with pytest.raises(BadImageError, match="small.png: truncated or corrupt PNG file"):
        images.read_image_rgb(small, max_pixels=60_000)  # under the limit: decoded, and its IDAT is short


def test_the_pixel_limit_from_the_environment(monkeypatch):
    import borrowcore.data.images as images

    monkeypatch.setenv("BORROWCORE_MAX_PIXELS", "1e6")
    assert images._pixel_limit_from_env() == 1_000_000
    monkeypatch.setenv("BORROWCORE_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match="BORROWCORE_MAX_PIXELS='many'"):
        images._pixel_limit_from_env()


@pytest.fixture
def checkpoint(tmp_path, tiny_config):
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_detector(tiny_config.__class__(**{**tiny_config.__dict__, "num_classes": 6})))
    return path


def test_eval_stops_naming_the_bomb_or_skips_and_counts_it(coco_with_bomb, checkpoint, tmp_path, capsys):
    images, ann_file, good_images = coco_with_bomb
    out = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(checkpoint), "--coco", str(ann_file), "--images", str(images),
            "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{images / 'bomb.png'}: refused: 1,600,000,000 pixels is over the limit" in error
    assert not out.exists()

    with pytest.warns(BadDataWarning, match="bomb.png"):
        assert main(args + ["--skip-bad"]) == 0
    report = load_report(out)
    assert report["dataset"]["num_images"] == good_images
    [unreadable] = report["dataset"]["unreadable_images"]
    assert unreadable["id"] == BOMB_ID and "bomb.png: refused" in unreadable["reason"]
    assert report["dataset"]["skipped"]["unreadable_image"] == 1
    # the bomb's box is not a miss: the metrics are those of the set without it
    without = json.loads(ann_file.read_text())
    without["images"] = [i for i in without["images"] if i["id"] != BOMB_ID]
    without["annotations"] = [a for a in without["annotations"] if a["image_id"] != BOMB_ID]
    (tmp_path / "without.json").write_text(json.dumps(without))
    from borrowcore.evaluation.coco_eval import coco_metrics
    from borrowcore.evaluation.report import load_detections

    expected = coco_metrics(CocoDetection(images, tmp_path / "without.json").coco, load_detections(report, out))
    assert report["metrics"] == pytest.approx(expected["metrics"])
    assert report["dataset"]["num_boxes"] == sum(1 for a in without["annotations"] if not a.get("iscrowd", 0))
    # analyze reads the same ground truth (the bomb left out), so its FN range has the same boxes
    analysis = analyze_report(out, write=False)
    analysis_without = analyze_report(out, tmp_path / "without.json", write=False)
    assert analysis == analysis_without


def test_training_stops_naming_the_bomb_or_skips_it(coco_with_bomb, tmp_path):
    images, ann_file, _ = coco_with_bomb
    config = tiny_experiment(max_steps=1, batch_size=17)  # one batch holds every image, the bomb too
    config.train.train_images, config.train.train_annotations = str(images), str(ann_file)
    with pytest.raises(BadImageError, match=r"bomb.png: refused: 1,600,000,000 pixels"):
        train(config, tmp_path / "stops", show_progress=False)
    config.train.skip_bad = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, tmp_path / "skips", show_progress=False)
    assert result["steps"] == 1 and (tmp_path / "skips" / "last.pt").exists()
    [step] = [r for r in map(json.loads, (tmp_path / "skips" / "log.jsonl").read_text().splitlines()) if r["event"] == "step"]
    assert torch.isfinite(torch.tensor(step["loss"]))  # trained on the 16 good images
    assert step["skipped_images"] == 1  # and the log counts the one it left out
    assert any(issubclass(w.category, BadDataWarning) and "bomb.png" in str(w.message) for w in caught)
