"""Sliced inference (borrowcore.data.tiling): windows, the shift back to image pixels, merging across tiles.

A stand-in detector makes the arithmetic exact: objects are painted as rectangles whose channel 0 holds an
object id (1..99) and channel 1 its label, and it returns, per tile, the bounding box of each id's
visible pixels, clipped by the tile as a real detector's box of a truncated object is.
"""

import pytest
import torch

from borrowcore.data.tiling import Window, detect_tiled, merge_cut_boxes, tile_windows

SCORE = 0.9


def paint(height: int, width: int, objects: list[tuple[int, int, int, int, int]]) -> torch.Tensor:
    """A uint8 image (3, H, W) with objects (x1, y1, x2, y2, label), ids 1.. in order."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for object_id, (x1, y1, x2, y2, label) in enumerate(objects, start=1):
        image[0, y1:y2, x1:x2] = object_id
        image[1, y1:y2, x1:x2] = label
    return image


class RectangleDetector:
    """Per tile, the box of each painted id's visible pixels; records the tiles of each call."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, ...]]] = []

    def __call__(self, tiles: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls.append([tuple(tile.shape) for tile in tiles])
        detections = []
        for tile in tiles:
            boxes, labels = [], []
            for object_id in tile[0].unique().tolist():
                if not 1 <= object_id < 100:  # 0 is background; the mean-colour padding is 124
                    continue
                ys, xs = torch.nonzero(tile[0] == object_id, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                labels.append(int(tile[1, ys[0], xs[0]]))
            detections.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                               "scores": torch.full((len(boxes),), SCORE), "labels": torch.tensor(labels, dtype=torch.int64)})
        return detections


def as_rows(detection: dict[str, torch.Tensor]) -> list[tuple]:
    return sorted((*[round(v, 3) for v in box], label)
                  for box, label in zip(detection["boxes"].tolist(), detection["labels"].tolist()))


def test_windows_by_hand():
    # 260 px at T = 100, overlap 0.2: stride 80, starts 0, 80, then flush with the end at 160
    assert tile_windows(100, 260, 100, 0.2) == [Window(0, 0, 100, 100), Window(80, 0, 180, 100), Window(160, 0, 260, 100)]
    # one of the aerial tiles, 1764 x 430 at T = 300: stride 240, x 0..1440 then 1464; y 0 then 130
    windows = tile_windows(430, 1764, 300, 0.2)
    assert len(windows) == 16
    assert windows[7] == Window(1464, 0, 1764, 300) and windows[-1] == Window(1464, 130, 1764, 430)
    assert all(w.x1 - w.x0 == 300 and w.y1 - w.y0 == 300 for w in windows)
    assert tile_windows(50, 70, 100) == [Window(0, 0, 70, 50)]  # smaller than a tile: one, padded later
    assert tile_windows(300, 300, 100, 0.0) == [Window(x, y, x + 100, y + 100) for y in (0, 100, 200) for x in (0, 100, 200)]
    assert Window(80, 0, 180, 100).inner_sides(100, 260) == (True, False, True, False)
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 50, 1.0)


def test_shift_back_and_duplicate_in_overlap_merged():
    # A lies in the overlap of tiles 0 and 1 (both see it whole); B only in the last tile, at x 200..240
    image = paint(100, 260, [(85, 20, 95, 40, 1), (200, 50, 240, 70, 2)])
    detector = RectangleDetector()
    found = detect_tiled(detector, image, tile_size=100, overlap=0.2, batch_size=2)
    assert as_rows(found) == [(85, 20, 95, 40, 1), (200, 50, 240, 70, 2)]  # image pixels, A once
    assert detector.calls == [[(3, 100, 100)] * 2, [(3, 100, 100)]]  # 3 tiles in batches of 2
    assert torch.allclose(found["scores"], torch.full((2,), SCORE))


def test_object_cut_by_a_tile_edge_is_merged():
    # B spans x 170..200: tile 1 (80..180) sees a 10 px sliver cut at its right edge, tile 2 (160..260) all
    # of it; IoU 10/30 < 0.45, so NMS alone keeps the sliver
    image = paint(100, 260, [(170, 30, 200, 60, 1)])
    plain = detect_tiled(RectangleDetector(), image, tile_size=100, overlap=0.2)
    assert as_rows(plain) == [(170, 30, 180, 60, 1), (170, 30, 200, 60, 1)]
    merged = detect_tiled(RectangleDetector(), image, tile_size=100, overlap=0.2, merge_edges=True)
    assert as_rows(merged) == [(170, 30, 200, 60, 1)]


def test_split_without_overlap_and_at_a_corner_is_merged():
    # no overlap: x 90..130 is cut in two at x = 100; the second object lies on the corner of four tiles
    image = paint(300, 300, [(90, 10, 130, 40, 1), (180, 170, 220, 230, 2)])
    plain = detect_tiled(RectangleDetector(), image, tile_size=100, overlap=0.0)
    assert len(plain["boxes"]) == 6  # 2 halves + 4 quarters
    merged = detect_tiled(RectangleDetector(), image, tile_size=100, overlap=0.0, merge_edges=True)
    assert as_rows(merged) == [(90, 10, 130, 40, 1), (180, 170, 220, 230, 2)]


def test_neighbours_of_another_class_or_row_stay_apart():
    # two objects abutting at the tile edge x = 100 but of different classes; two of one class abutting
    # there but at different heights (no shared extent in y)
    image = paint(300, 300, [(80, 10, 100, 40, 1), (100, 10, 120, 40, 2),
                             (80, 100, 100, 130, 1), (100, 150, 120, 180, 1)])
    merged = detect_tiled(RectangleDetector(), image, tile_size=100, overlap=0.0, merge_edges=True)
    assert len(merged["boxes"]) == 4


def test_small_image_padded_to_a_tile():
    image = paint(50, 70, [(60, 30, 70, 50, 3)])  # touching the image's own corner: not a tile cut
    detector = RectangleDetector()
    found = detect_tiled(detector, image, tile_size=100, merge_edges=True)
    assert detector.calls == [[(3, 100, 100)]]
    assert as_rows(found) == [(60, 30, 70, 50, 3)]


def test_merge_cut_boxes_golden():
    # a box cut at its right side (x = 100) and its continuation: the union, the higher score, and the
    # union keeps no cut on the right (the continuation was not cut there)
    boxes = torch.tensor([[90.0, 10, 100, 40], [100, 12, 130, 38]])
    cuts = torch.tensor([[False, False, True, False], [True, False, False, False]])
    merged, scores, labels, merged_cuts = merge_cut_boxes(boxes, torch.tensor([0.6, 0.8]), torch.tensor([1, 1]), cuts)
    assert merged.tolist() == [[90.0, 10, 130, 40]]
    assert scores.tolist() == [pytest.approx(0.8)] and labels.tolist() == [1]
    assert merged_cuts.tolist() == [[False, False, False, False]]


def test_real_detector_on_a_large_image(tiny_config):
    """A Detector (uint8 tiles, resized to its input) plugs into detect_tiled: every box found is one of that
    detector's own boxes on one of the 8 windows, moved by where the window lies."""
    from conftest import make_detector

    from borrowcore.data.tiling import crop_window

    detector = make_detector(tiny_config).eval()
    image = torch.randint(0, 256, (3, 200, 330), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tiles, alone = [], []  # what the detector was shown and what it answered, tile by tile

    def recording(batch):
        with torch.no_grad():
            answers = detector(batch)
        tiles.extend(batch)
        alone.extend(answers)
        return answers

    found = detect_tiled(recording, image, tile_size=128, overlap=0.25, batch_size=4)
    windows = tile_windows(200, 330, 128, 0.25)  # x 0, 96, 192, 202; y 0, 72
    assert len(windows) == len(tiles) == 8
    assert all(torch.equal(tile, crop_window(image, w, 128)) for tile, w in zip(tiles, windows))
    candidates = torch.cat([torch.cat([d["boxes"] + torch.tensor([w.x0, w.y0] * 2), d["scores"][:, None],
                                       d["labels"][:, None].float()], 1) for w, d in zip(windows, alone)])
    rows = torch.cat([found["boxes"], found["scores"][:, None], found["labels"][:, None].float()], 1)
    assert len(rows) > 0 and set(found["labels"].tolist()) <= {1, 2, 3}
    distance = (rows[:, None] - candidates[None]).abs().amax(-1)  # (found, candidates)
    assert (distance.min(1).values < 1e-3).all()  # each one a window's detection, shifted to image pixels
    assert found["scores"][0] == pytest.approx(candidates[:, 4].max().item(), abs=1e-5)  # the best of all windows
    assert (found["boxes"][:, 0] > 128).any() and (found["boxes"][:, 1] > 72).any()  # from the later windows too
    assert (found["scores"][:-1] >= found["scores"][1:]).all()  # best first


def test_tiled_dataset_windows_and_their_ground_truth_by_hand(tmp_path):
    """A 300 x 150 image in 128 px tiles at overlap 0.25 (stride 96): x 0, 96, 172; y 0, 22. Box A lies
    inside the first window; box B (100..140) has 28/40 = 70% of its width in it (kept, clipped to 128);
    box C (110..160) has 18/50 = 36% (dropped there, whole in the second window)."""
    import json

    from PIL import Image as PILImage

    from borrowcore.data.dataset import CocoDetection
    from borrowcore.data.tiling import TiledDataset

    pixels = torch.randint(0, 255, (150, 300, 3), dtype=torch.uint8)
    (tmp_path / "images").mkdir()
    PILImage.fromarray(pixels.numpy()).save(tmp_path / "images" / "a.png")
    boxes = {"A": [10, 10, 20, 20], "B": [100, 50, 40, 20], "C": [110, 90, 50, 20]}  # xywh
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 300, "height": 150}],
            "categories": [{"id": 1, "name": "car"}],
            "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for i, b in enumerate(boxes.values(), start=1)]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    tiles = TiledDataset(CocoDetection(tmp_path / "images", tmp_path / "a.json"), 128, 0.25)
    assert [(w.x0, w.y0) for _, w in tiles.windows] == [(0, 0), (96, 0), (172, 0), (0, 22), (96, 22), (172, 22)]
    image, target = tiles[0]
    assert torch.equal(image, pixels[:128, :128].permute(2, 0, 1))
    assert target["boxes"].tolist() == [[10, 10, 30, 30], [100, 50, 128, 70]]  # A, and B clipped; C dropped
    _, second = tiles[1]  # x 96..224: B at 4..44, C at 14..64, A outside
    assert second["boxes"].tolist() == [[4, 50, 44, 70], [14, 90, 64, 110]] and second["labels"].tolist() == [1, 1]
    assert second["window"] == (96, 0)


def test_eval_measures_borrow_precision_on_the_tiles_it_detected_on(tiny_config, tmp_path):
    """Three real aerial tiles (3 classes, like tiny_config): the report says where small instances'
    matching mass went, measured on the same 128 px windows, with chance the share of cells covered."""
    from pathlib import Path

    from conftest import make_detector

    from borrowcore.evaluation.evaluate import evaluate_detector
    from borrowcore.evaluation.report import load_report

    aerial = Path(__file__).resolve().parents[1] / "assets" / "aerial"
    detector = make_detector(tiny_config).eval()
    out = tmp_path / "eval_tile128.json"
    evaluate_detector(detector, aerial / "instances.json", aerial / "images", out, tile=128, overlap=0.2,
                      borrow_precision=True, show_progress=False)
    measured = load_report(out)["extra"]["borrow_precision"]
    assert measured["inputs"] == "tiles 128 px" and measured["instances"] > 10
    assert 0 < measured["chance"] < 0.5 and 0 <= measured["borrow_precision"] <= 1
    # every small instance of every window is measured or skipped: counted here on the windows themselves
    from borrowcore.data.dataset import CocoDetection
    from borrowcore.data.tiling import TiledDataset

    windows = TiledDataset(CocoDetection(aerial / "images", aerial / "instances.json"), 128, 0.2)
    small = 0
    for _, target in windows:
        boxes = target["boxes"].as_subclass(torch.Tensor)
        small += int((((boxes[:, 2:] - boxes[:, :2]).prod(1)).sqrt() < 32).sum())  # tiles are at native scale
    assert measured["instances"] + measured["skipped"] == small
    # with uniform S_hat rows (tau ~ 0) the share on larger instances is exactly the share of cells they cover
    with torch.no_grad():
        for block in detector.network.neck.matching:
            block.log_tau.fill_(-30.0)
    evaluate_detector(detector, aerial / "instances.json", aerial / "images", out, tile=128, overlap=0.2,
                      borrow_precision=True, show_progress=False)
    uniform = load_report(out)["extra"]["borrow_precision"]
    assert uniform["chance"] == pytest.approx(measured["chance"])
    assert uniform["borrow_precision"] == pytest.approx(uniform["chance"], abs=1e-6)
