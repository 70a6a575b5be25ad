"""COCO dataset validation, image decoding, deterministic augmentation, presets and collate."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors

from borrowcore.data.dataset import (
    BadAnnotationError,
    BadDataWarning,
    BadImageError,
    CocoDetection,
    augmentation_seed,
    collate_detection,
)
from borrowcore.data.presets import build_preset, eval_preset, flip_train_preset, ssd_train_preset

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"

# BGR colours as cv2 writes them; the dataset must return them as RGB.
RGB_BGR = (10, 20, 30)
GRAY_VALUE = 77


def _images(root: Path) -> list[dict]:
    """Write the fixture images: an RGB JPEG, a grayscale PNG, an RGBA PNG and one without boxes."""
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "rgb.jpg"), np.full((80, 100, 3), RGB_BGR, np.uint8))
    cv2.imwrite(str(root / "gray.png"), np.full((50, 60), GRAY_VALUE, np.uint8))
    cv2.imwrite(str(root / "rgba.png"), np.dstack([np.full((30, 40, 3), RGB_BGR, np.uint8),
                                                  np.full((30, 40), 128, np.uint8)]))
    cv2.imwrite(str(root / "empty.jpg"), np.zeros((64, 64, 3), np.uint8))
    return [
        {"id": 1, "file_name": "rgb.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "gray.png", "width": 60, "height": 50},
        {"id": 5, "file_name": "rgba.png", "width": 40, "height": 30},
        {"id": 9, "file_name": "empty.jpg", "width": 64, "height": 64},
    ]


GOOD_ANNOTATIONS = [
    {"id": 10, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
    {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 80], "iscrowd": 0},
    {"id": 12, "image_id": 2, "category_id": 3, "bbox": [5.5, 6.5, 10, 20], "iscrowd": 0},
    {"id": 13, "image_id": 1, "category_id": 7, "bbox": [50, 10, 20, 20], "iscrowd": 1},
    # Overshoots the 40x30 image by 0.5 px on the left and top: within tolerance, clipped.
    {"id": 14, "image_id": 5, "category_id": 7, "bbox": [-0.5, -0.5, 20, 30.5], "iscrowd": 0},
]


def write_coco(tmp_path: Path, extra_annotations: list[dict] = (), extra_images: list[dict] = ()) -> Path:
    images = _images(tmp_path / "images") + list(extra_images)
    dataset = {
        "images": images,
        "annotations": GOOD_ANNOTATIONS + list(extra_annotations),
        # Out of order and non-contiguous on purpose: ids 3, 7 -> labels 1, 2.
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(dataset))
    return ann_file


def target_of(dataset: CocoDetection, image_id: int) -> dict:
    return dataset[dataset.ids.index(image_id)][1]


# Reading and validation


def test_normal_case_boxes_labels_and_ids(tmp_path):
    ann_file = write_coco(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CocoDetection(tmp_path / "images", ann_file)
    assert dataset.class_names == ["cat", "dog"]
    assert dataset.cat_id_to_label == {3: 1, 7: 2} and dataset.label_to_cat_id == {1: 3, 2: 7}
    assert [c["id"] for c in dataset.categories] == [3, 7]
    assert dataset.ids == [1, 2, 5, 9] and len(dataset) == 4

    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 80, 100)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(target["boxes"].canvas_size) == (80, 100) and target["boxes"].dtype == torch.float32
    # xywh [10, 20, 30, 40] -> xyxy [10, 20, 40, 60]; the crowd box (id 13) is not a target.
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor),
                       torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 100.0, 80.0]]))
    assert torch.equal(target["labels"], torch.tensor([2, 1])) and target["labels"].dtype == torch.int64
    assert target["image_id"] == 1 and tuple(target["orig_size"]) == (80, 100)

    assert torch.equal(target_of(dataset, 2)["boxes"].as_subclass(torch.Tensor),
                       torch.tensor([[5.5, 6.5, 15.5, 26.5]]))
    assert torch.equal(target_of(dataset, 5)["boxes"].as_subclass(torch.Tensor),
                       torch.tensor([[0.0, 0.0, 19.5, 30.0]]))  # clipped
    assert dataset.coco.anns[14]["bbox"] == [0.0, 0.0, 19.5, 30.0]  # evaluation sees the clipped box too

    empty = target_of(dataset, 9)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert dataset.skipped["total"] == 0


def test_grayscale_and_rgba_become_rgb(tmp_path):
    dataset = CocoDetection(tmp_path / "images", write_coco(tmp_path))
    rgb = torch.tensor(RGB_BGR[::-1], dtype=torch.uint8).view(3, 1, 1)
    gray, _ = dataset[dataset.ids.index(2)]
    assert gray.shape == (3, 50, 60) and bool((gray == GRAY_VALUE).all())
    rgba, _ = dataset[dataset.ids.index(5)]
    # half transparent: composited on white, as the app (the same decoder, borrowcore.data.images) shows it
    on_white = (rgb.float() * 128 + 255 * 127) / 255
    assert rgba.shape == (3, 30, 40) and (rgba.float() - on_white).abs().max() <= 1
    jpeg, _ = dataset[0]
    assert (jpeg.float() - rgb.float()).abs().max() <= 3  # JPEG is lossy, but R and B are not swapped


def test_sixteen_bit_png_becomes_uint8(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "deep.png"), np.full((8, 12), 0x4D00 + 0x7F, np.uint16))
    ann_file = tmp_path / "deep.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "deep.png", "width": 12, "height": 8}],
        "annotations": [], "categories": [{"id": 1, "name": "car"}],
    }))
    image, _ = CocoDetection(images, ann_file)[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 12) and bool((image == 0x4D).all())


@pytest.mark.parametrize("json_size, expected_shape", [((20, 40), (3, 40, 20)), ((40, 20), (3, 20, 40))])
def test_exif_orientation_follows_the_annotation_size(tmp_path, json_size, expected_shape):
    # Raw pixels 40 wide x 20 tall, EXIF orientation 6 (display rotated 90 degrees: 20 x 40).
    images = tmp_path / "images"
    images.mkdir()
    exif = PILImage.Exif()
    exif[0x0112] = 6
    PILImage.fromarray(np.zeros((20, 40, 3), np.uint8)).save(images / "rotated.jpg", exif=exif)
    width, height = json_size
    ann_file = tmp_path / "rotated.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "rotated.jpg", "width": width, "height": height}],
        "annotations": [], "categories": [{"id": 1, "name": "car"}],
    }))
    image, target = CocoDetection(images, ann_file)[0]
    assert image.shape == expected_shape and tuple(target["orig_size"]) == expected_shape[1:]


BAD_ANNOTATIONS = {
    "non_positive_size": {"id": 99, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5]},  # zero width
    "outside_image": {"id": 99, "image_id": 1, "category_id": 3, "bbox": [90, 10, 20, 5]},  # x + w = 110 > 101
    "unknown_category": {"id": 99, "image_id": 1, "category_id": 42, "bbox": [10, 10, 5, 5]},
    "malformed_bbox": {"id": 99, "image_id": 1, "category_id": 3, "bbox": [10, 10, 5]},
}
BAD_ANNOTATIONS_MORE = [
    ("non_positive_size", {"id": 99, "image_id": 1, "category_id": 3, "bbox": [10, 10, 5, -3]}),  # negative height
    ("outside_image", {"id": 99, "image_id": 1, "category_id": 3, "bbox": [-2, 10, 5, 5]}),
    ("malformed_bbox", {"id": 99, "image_id": 1, "category_id": 3, "bbox": [10, "a", 5, 5]}),
    ("malformed_bbox", {"id": 99, "image_id": 1, "category_id": 3, "bbox": [10, float("nan"), 5, 5]}),
]
BAD_CASES = list(BAD_ANNOTATIONS.items()) + BAD_ANNOTATIONS_MORE


@pytest.mark.parametrize("kind, annotation", BAD_CASES)
def test_bad_annotation_raises_naming_file_annotation_and_image(tmp_path, kind, annotation):
    ann_file = write_coco(tmp_path, [annotation])
    with pytest.raises(BadAnnotationError) as raised:
        CocoDetection(tmp_path / "images", ann_file)
    message = str(raised.value)
    assert "instances.json" in message and "annotation 99" in message and "rgb.jpg" in message


@pytest.mark.parametrize("kind, annotation", BAD_CASES)
def test_bad_annotation_skipped_with_a_warning_and_counted(tmp_path, kind, annotation):
    ann_file = write_coco(tmp_path, [annotation])
    with pytest.warns(BadDataWarning, match="annotation 99") as caught:
        dataset = CocoDetection(tmp_path / "images", ann_file, skip_bad=True)
    assert len([w for w in caught if issubclass(w.category, BadDataWarning)]) == 1
    assert dataset.skipped[kind] == 1 and dataset.skipped["total"] == 1
    assert sum(v for k, v in dataset.skipped.items() if k != "total") == 1
    assert len(target_of(dataset, 1)["boxes"]) == 2  # only the two good, non-crowd boxes
    assert 99 not in dataset.coco.anns  # evaluation does not count a box the model never saw


def test_annotation_of_unknown_image(tmp_path):
    annotation = {"id": 99, "image_id": 1234, "category_id": 3, "bbox": [1, 1, 5, 5]}
    ann_file = write_coco(tmp_path, [annotation])
    with pytest.raises(BadAnnotationError, match=r"instances\.json: annotation 99 .*1234"):
        CocoDetection(tmp_path / "images", ann_file)
    with pytest.warns(BadDataWarning):
        dataset = CocoDetection(tmp_path / "images", ann_file, skip_bad=True)
    assert dataset.skipped["unknown_image"] == 1 and dataset.ids == [1, 2, 5, 9]


def test_missing_or_non_coco_annotation_file(tmp_path):
    with pytest.raises(BadAnnotationError, match="nope.json"):
        CocoDetection(tmp_path, tmp_path / "nope.json")
    not_coco = tmp_path / "labels.json"
    not_coco.write_text(json.dumps({"images": [], "labels": []}))
    with pytest.raises(BadAnnotationError, match=r"labels\.json.*annotations, categories"):
        CocoDetection(tmp_path, not_coco)
    not_json = tmp_path / "broken.json"
    not_json.write_text("{ not json")
    with pytest.raises(BadAnnotationError, match="broken.json"):
        CocoDetection(tmp_path, not_json)


def test_crowd_boxes_dropped_from_targets(tmp_path):
    dataset = CocoDetection(tmp_path / "images", write_coco(tmp_path))
    assert dataset.num_crowd == 1
    boxes = target_of(dataset, 1)["boxes"].as_subclass(torch.Tensor)
    assert not any(torch.equal(box, torch.tensor([50.0, 10.0, 70.0, 30.0])) for box in boxes)
    assert dataset.coco.anns[13]["iscrowd"] == 1  # kept for COCOeval, which ignores detections on it


# Unreadable images

CORRUPT = {"id": 7, "file_name": "corrupt.jpg", "width": 32, "height": 32}


def _with_corrupt_image(tmp_path: Path) -> Path:
    ann_file = write_coco(tmp_path, [{"id": 70, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]}],
                          [CORRUPT])
    (tmp_path / "images" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    return ann_file


def test_corrupt_image_raises_naming_the_file(tmp_path):
    dataset = CocoDetection(tmp_path / "images", _with_corrupt_image(tmp_path))
    with pytest.raises(BadImageError, match="corrupt.jpg: not an image"):
        dataset[dataset.ids.index(7)]
    with pytest.raises(BadImageError, match="corrupt.jpg"):
        CocoDetection(tmp_path / "images", tmp_path / "instances.json", verify_images=True)


def test_missing_image_file_raises_naming_the_file(tmp_path):
    ann_file = write_coco(tmp_path, extra_images=[{"id": 8, "file_name": "gone.jpg", "width": 5, "height": 5}])
    dataset = CocoDetection(tmp_path / "images", ann_file)
    with pytest.raises(BadImageError, match="gone.jpg.*No such file"):
        dataset[dataset.ids.index(8)]


def test_corrupt_image_with_skip_bad(tmp_path):
    ann_file = _with_corrupt_image(tmp_path)
    with pytest.warns(BadDataWarning, match="corrupt.jpg"):
        verified = CocoDetection(tmp_path / "images", ann_file, skip_bad=True, verify_images=True)
    assert 7 not in verified.ids and len(verified) == 4
    assert verified.skipped["unreadable_image"] == 1 and verified.skipped["total"] == 1

    lazy = CocoDetection(tmp_path / "images", ann_file, skip_bad=True)
    assert 7 in lazy.ids
    with pytest.warns(BadDataWarning, match="corrupt.jpg"):
        assert lazy[lazy.ids.index(7)] is None
    with pytest.warns(BadDataWarning):
        images, targets = collate_detection([lazy[i] for i in range(len(lazy))])
    assert [t["image_id"] for t in targets] == [1, 2, 5, 9]


def test_image_size_disagreeing_with_annotation_file(tmp_path):
    ann_file = write_coco(tmp_path, extra_images=[{"id": 8, "file_name": "rgb.jpg", "width": 50, "height": 80}])
    dataset = CocoDetection(tmp_path / "images", ann_file)
    with pytest.raises(BadImageError, match="rgb.jpg: image is 100x80 px but the annotation file says 50x80"):
        dataset[dataset.ids.index(8)]


# Augmentation


def _two_corner_boxes(tmp_path: Path) -> Path:
    """A 200x200 image with two 12 px boxes in opposite corners: IoU crops often keep only one."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "corners.png"), np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
    ann_file = tmp_path / "corners.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "corners.png", "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 12, 12], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [186, 186, 12, 12], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }))
    return ann_file


def test_ssd_preset_invariants_over_many_seeds(tmp_path):
    size = 96
    ann_file = _two_corner_boxes(tmp_path)
    counts = []
    for seed in range(40):
        dataset = CocoDetection(tmp_path / "images", ann_file, transforms=ssd_train_preset(size), seed=seed)
        image, target = dataset[0]
        boxes = target["boxes"].as_subclass(torch.Tensor)
        assert image.dtype == torch.float32 and image.shape == (3, size, size)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert tuple(target["boxes"].canvas_size) == (size, size)
        assert len(target["labels"]) == len(boxes) and target["labels"].dtype == torch.int64
        assert bool((boxes >= 0).all()) and bool((boxes <= size).all())
        assert bool((boxes[:, 2] > boxes[:, 0]).all()) and bool((boxes[:, 3] > boxes[:, 1]).all())
        assert set(target["labels"].tolist()) <= {1, 2}
        counts.append(len(boxes))
    assert min(counts) < 2, "some IoU crop should have cut a corner box out, and it must be dropped"
    assert max(counts) == 2


def test_sanitize_drops_degenerate_boxes_with_their_labels():
    image = tv_tensors.Image(torch.zeros(3, 40, 40, dtype=torch.uint8))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([[10.0, 10.0, 30.0, 30.0], [20.0, 5.0, 20.0, 25.0], [5.0, 5.0, 5.5, 5.5], [1, 2, 8, 6]]),
            format="XYXY", canvas_size=(40, 40)),
        "labels": torch.tensor([1, 2, 3, 4]),
    }
    for preset in (flip_train_preset(40), ssd_train_preset(40)):
        torch.manual_seed(0)
        _, out = preset(image, target)
        assert 2 not in out["labels"].tolist() and 3 not in out["labels"].tolist()
        assert len(out["labels"]) == len(out["boxes"])
    torch.manual_seed(0)
    _, out = flip_train_preset(40)(image, target)
    assert out["labels"].tolist() == [1, 4]


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    ann_file = write_coco(tmp_path)
    first = CocoDetection(tmp_path / "images", ann_file, transforms=ssd_train_preset(64), seed=3)
    again = CocoDetection(tmp_path / "images", ann_file, transforms=ssd_train_preset(64), seed=3)
    torch.manual_seed(123)  # the global RNG must neither matter nor move
    a_image, a_target = first[0]
    after = torch.rand(1)
    torch.manual_seed(999)
    b_image, b_target = again[0]
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)
    assert torch.equal(a_image, b_image) and torch.equal(a_target["boxes"], b_target["boxes"])
    assert torch.equal(a_target["labels"], b_target["labels"])

    first.set_epoch(1)
    assert first.epoch == 1
    c_image, _ = first[0]
    assert not torch.equal(a_image, c_image)
    first.set_epoch(0)
    assert torch.equal(first[0][0], a_image)  # a resumed run replays epoch 0 exactly

    other_seed = CocoDetection(tmp_path / "images", ann_file, transforms=ssd_train_preset(64), seed=4)
    assert not torch.equal(other_seed[0][0], a_image)


def test_repeats_visit_every_image_that_often_with_different_tiles():
    aerial = PHOTOS.parent / "aerial-cars"
    from borrowcore.data.presets import tiles_train_preset

    once = CocoDetection(aerial / "images", aerial / "val.json")
    thrice = CocoDetection(aerial / "images", aerial / "val.json", transforms=tiles_train_preset(128), repeats=3)
    n = len(once)
    assert len(thrice) == 3 * n
    first, second = thrice[1], thrice[1 + n]
    assert first[1]["image_id"] == second[1]["image_id"] == once[1][1]["image_id"]
    assert not torch.equal(first[0], second[0])  # another window of the same image
    with pytest.raises(ValueError, match="repeats"):
        CocoDetection(aerial / "images", aerial / "val.json", repeats=0)


def test_tiles_jitter_shows_a_car_from_half_to_twice_its_size_and_flips_both_ways():
    torch.manual_seed(0)
    image = torch.zeros(3, 400, 1200, dtype=torch.uint8)
    image[:, 180:200, 580:620] = 255  # a 40 x 20 px car, longer than tall: bright front, grey back,
    image[:, 180:200, 600:620] = 128  # light roof, grey bumper
    image[:, 190:200, 580:600] = 128
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[580.0, 180, 620, 200]]), format="XYXY",
                                                canvas_size=(400, 1200)), "labels": torch.tensor([1])}
    preset = build_preset("tiles-jitter", 128)
    widths, corners = [], set()
    for _ in range(80):
        out_image, out = preset(tv_tensors.Image(image), target)
        assert out_image.shape == (3, 128, 128)
        boxes = out["boxes"].as_subclass(torch.Tensor)[out["labels"] == 1]
        if not len(boxes) or float(boxes[0].min()) < 0.5 or float(boxes[0].max()) > 127.5:
            continue  # cut by the window
        x0, y0, x1, y1 = boxes[0].tolist()
        widths.append(x1 - x0)
        assert y1 - y0 == pytest.approx(widths[-1] / 2, abs=1)  # the shape is kept
        # which quarter holds the only bright one: photometric jitter keeps the order of two greys
        quarters = [out_image[:, round(ya):round(yb), round(xa):round(xb)].float().mean()
                    for ya, yb in ((y0, (y0 + y1) / 2), ((y0 + y1) / 2, y1)) for xa, xb in ((x0, (x0 + x1) / 2), ((x0 + x1) / 2, x1))]
        corners.add(int(torch.stack(quarters).argmax()))
    assert len(widths) >= 20
    assert 20 - 1 <= min(widths) < 28 and 56 < max(widths) <= 80 + 1  # 0.5x-2x of 40 px, log-uniform
    assert corners == {0, 1, 2, 3}  # flipped left-right and up-down


def test_augmentation_seed_mixes_all_three_and_is_stable():
    seeds = {augmentation_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)
    assert augmentation_seed(0, 1, 2) != augmentation_seed(0, 2, 1)
    assert augmentation_seed(5, 6, 7) == augmentation_seed(5, 6, 7)


def test_workers_do_not_change_augmentation_even_when_persistent(tmp_path):
    dataset = CocoDetection(tmp_path / "images", write_coco(tmp_path), transforms=ssd_train_preset(48), seed=1)

    def epochs(loader) -> list[torch.Tensor]:
        images = []
        for epoch in range(2):
            dataset.set_epoch(epoch)
            images += [batch_images for batch_images, _ in loader]
        return images

    kwargs = dict(batch_size=2, collate_fn=collate_detection, shuffle=False)
    serial = epochs(torch.utils.data.DataLoader(dataset, num_workers=0, **kwargs))
    parallel = epochs(torch.utils.data.DataLoader(dataset, num_workers=2, persistent_workers=True, **kwargs))
    assert len(serial) == len(parallel) == 4
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel))
    assert not torch.equal(serial[0], serial[2])  # epoch 1 differs from epoch 0


# Presets and collate


def test_eval_preset_resizes_boxes_by_hand():
    image = tv_tensors.Image(torch.zeros(3, 80, 100, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[10.0, 20.0, 40.0, 60.0]]), format="XYXY",
                                                canvas_size=(80, 100)),
              "labels": torch.tensor([1]), "orig_size": (80, 100)}
    out_image, out = eval_preset(50)(image, target)
    assert out_image.shape == (3, 50, 50) and out_image.dtype == torch.float32
    # x scaled by 50/100, y by 50/80.
    assert torch.allclose(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[5.0, 12.5, 20.0, 37.5]]))
    assert out["orig_size"] == (80, 100)


def test_build_preset_names():
    for name in ("ssd", "overhead", "tiles", "tiles-jitter", "faces", "flip", "eval"):
        image, _ = build_preset(name, 32)(
            tv_tensors.Image(torch.full((3, 40, 50), 255, dtype=torch.uint8)),
            {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(40, 50)),
             "labels": torch.zeros(0, dtype=torch.int64)})
        assert image.shape == (3, 32, 32) and float(image.max()) <= 1.0
    with pytest.raises(ValueError, match="ssd, overhead, tiles, tiles-jitter, faces, flip, eval"):
        build_preset("mosaic", 32)


def test_collate_stacks_equal_sizes_and_drops_none(tmp_path):
    dataset = CocoDetection(tmp_path / "images", write_coco(tmp_path), transforms=eval_preset(32))
    images, targets = collate_detection([dataset[0], None, dataset[1], dataset[3]])
    assert isinstance(images, torch.Tensor) and images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert [t["image_id"] for t in targets] == [1, 2, 9]
    assert torch.equal(images[1], dataset[1][0])

    raw = CocoDetection(tmp_path / "images", write_coco(tmp_path))
    images, targets = collate_detection([raw[0], raw[1]])
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 80, 100), (3, 50, 60)]


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="shared COCO photos not present")
def test_real_coco_photos_smoke():
    dataset = CocoDetection(PHOTOS / "images", PHOTOS / "instances.json", transforms=eval_preset(300),
                            verify_images=True)
    raw = json.loads((PHOTOS / "instances.json").read_text())
    crowd = sum(a.get("iscrowd", 0) for a in raw["annotations"])
    assert len(dataset) == 12 and dataset.num_crowd == crowd and dataset.skipped["total"] == 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_detection)
    total = 0
    for images, targets in loader:
        assert images.shape[1:] == (3, 300, 300)
        total += sum(len(t["boxes"]) for t in targets)
    assert total == 229 - crowd
    assert len(dataset.class_names) == 25
