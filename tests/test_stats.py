"""Dataset statistics against counts worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from borrowcore.data.synth import generate
from borrowcore.evaluation.stats import dataset_stats, format_stats

# (bbox, extra fields) -> sqrt(area), COCO size, aspect ratio, worked out by hand
HAND_MADE = {
    "images": [{"id": i, "file_name": f"{i}.png", "width": 640, "height": 480} for i in (1, 2, 3)],
    "categories": [
        {"id": 1, "name": "car", "supercategory": "vehicle"},
        {"id": 2, "name": "bus", "supercategory": "vehicle"},
        {"id": 7, "name": "boat", "supercategory": "vehicle"},  # no boxes
    ],
    "annotations": [
        # side 10, small, ratio 1
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        # side 28.3, small, ratio 2 (lands in "2-3": bins are closed on the left)
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 40], "area": 800, "iscrowd": 0},
        # side 32 exactly: medium, "32-64"
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [5, 5, 32, 32], "area": 1024, "iscrowd": 0},
        # side 96 exactly: large, "96-128"
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 96, 96], "area": 9216, "iscrowd": 0},
        # no area field: w * h = 1500, side 38.7, medium, ratio 15
        {"id": 5, "image_id": 2, "category_id": 2, "bbox": [0, 0, 150, 10]},
        # the area field (a mask area) wins over the box's 40000: side 94.9, medium, "64-96"
        {"id": 6, "image_id": 2, "category_id": 1, "bbox": [5, 5, 200, 200], "area": 9000, "iscrowd": 0},
        # zero height: area 0, small, "0-16", no aspect ratio
        {"id": 7, "image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 0], "area": 0, "iscrowd": 0},
        # crowd: counted apart only; image 3 has no other box
        {"id": 8, "image_id": 3, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 1},
    ],
}


@pytest.fixture
def hand_made(tmp_path) -> Path:
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(HAND_MADE))
    return path


def test_counts_by_hand(hand_made):
    stats = dataset_stats(hand_made)
    assert stats["file"] == str(hand_made)
    assert (stats["images"], stats["boxes"], stats["crowd_boxes"], stats["images_without_boxes"]) == (3, 7, 1, 1)
    assert stats["by_coco_size"] == {"small": 3, "medium": 3, "large": 1}
    assert stats["by_side"] == {"0-16": 2, "16-32": 1, "32-64": 2, "64-96": 1, "96-128": 1, "128+": 0}
    aspect = stats["aspect_ratio"]
    assert aspect["bins"] == {"1-1.5": 4, "1.5-2": 0, "2-3": 1, "3-5": 0, "5-10": 0, "10+": 1}
    assert aspect["degenerate"] == 1
    # ratios sorted: 1, 1, 1, 1, 2, 15; numpy's linear rule: 2 + 0.95 * (15 - 2)
    assert aspect["p99"] == pytest.approx(14.35)
    assert stats["per_class"] == {"car": 4, "bus": 3, "boat": 0}


def test_format_shows_the_numbers(hand_made):
    text = format_stats(dataset_stats(hand_made))
    lines = text.splitlines()
    assert lines[0] == str(hand_made)
    assert "3 images (1 without boxes), 7 boxes, 1 crowd boxes" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip()}
    assert rows["small"] == ["3", "42.9%"]
    assert rows["medium"] == ["3", "42.9%"] and rows["64-96"] == ["1", "14.3%"] and rows["128+"] == ["0", "0.0%"]
    assert rows["car"] == ["4", "57.1%"]
    assert "boat" not in rows and "(1 classes without boxes not shown)" in text
    assert "99th percentile aspect ratio: 14.35" in text


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]), "not a COCO detection file"),
        (json.dumps({"images": [], "categories": []}), "annotations"),
        (json.dumps({**HAND_MADE, "annotations": [{"id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}), "bbox"),
        (json.dumps({**HAND_MADE, "annotations": [{"id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]}]}), "id 9"),
    ],
)
def test_malformed_files_name_themselves(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        dataset_stats(path)
    assert str(path) in str(info.value)


def test_borrow_benchmark_sizes(tmp_path):
    summary = generate(tmp_path, 4, seed=0)
    stats = dataset_stats(tmp_path / "annotations.json")
    small, large = summary["instances"]["small"], summary["instances"]["large"]
    # 24-31 px smalls and 97-112 px larges sit in one COCO range and one side bin each
    assert stats["by_coco_size"] == {"small": small, "medium": 0, "large": large}
    assert stats["by_side"]["16-32"] == small and stats["by_side"]["96-128"] == large
    assert stats["boxes"] == sum(stats["per_class"].values()) == small + large


def test_checkpoint_anchor_recall_on_whole_photos(tmp_path, tiny_config):
    """A box equal to one of the detector's anchors on a whole 200 x 130 photo (padded to 256 x 192 in
    the network) is recalled at IoU 1; a 4 px box, a quarter of the smallest anchor's side, is not."""
    from borrowcore import DetectorConfig
    from borrowcore.evaluation.stats import checkpoint_anchor_recall
    from conftest import make_detector

    detector = make_detector(DetectorConfig(**{**tiny_config.__dict__, "inference": "whole", "anchor_scale": 2.0}))
    anchors = detector.anchors([(24, 32), (12, 16), (6, 8), (3, 4)], None)  # 192 x 256 at strides 8-64
    x0, y0, x1, y1 = anchors[len(anchors) // 3].tolist()
    assert x0 >= 0 and y0 >= 0 and x1 <= 200 and y1 <= 130  # inside the photo, so no clipping differs
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 130, "width": 200}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 60, 4, 4]}],
            "categories": [{"id": 1, "name": "face"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    recall = checkpoint_anchor_recall(detector, tmp_path / "a.json", iou=0.35, side_bins=(0, 8))
    tiny, large = recall["bins"]
    assert (tiny["boxes"], tiny["recall"]) == (1, 0.0) and tiny["median_best_iou"] == pytest.approx(16 / 256)  # inside a 16 px anchor
    assert (large["boxes"], large["recall"], large["median_best_iou"]) == (1, 1.0, pytest.approx(1.0))
    assert recall["recall"] == 0.5
