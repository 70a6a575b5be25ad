"""The explain API: matching scores placed on the image, top sources and links to larger instances."""

import math

import numpy as np
import pytest
import torch

from borrowcore.evaluation.explain import (
    Explanation,
    borrow_view,
    borrowed_from,
    cell_at,
    cell_boxes,
    default_query,
    detections_to_coco,
    explain,
    heatmaps,
    layer_maps,
    place_grid,
    with_instances,
)
from borrowcore.models.neck import MatchingScores

from conftest import make_detector

# A hand-made layer 1 at input 128: query grid 16 x 16 (stride 8), deeper grids 8 x 8, 4 x 4, 2 x 2.
GRIDS, STRIDES = [(8, 8), (4, 4), (2, 2)], [16, 32, 64]
D = 64 + 16 + 4
QUERY = 2 * 16 + 3  # cell (2, 3): centre (28, 20) in input pixels
SOURCE = 64 + 1 * 4 + 2  # layer 3's cell (1, 2): centre (80, 48)


def hand_explanation(image_size=(128, 128)) -> Explanation:
    scores = torch.full((256, D), 1.0 / D)
    scores[QUERY] = 0.0
    scores[QUERY, SOURCE] = 1.0  # the query cell puts all its mass on one deeper cell
    matching = MatchingScores(1, scores, (16, 16), 8, [2, 3, 4], GRIDS, STRIDES)
    sy, sx = image_size[0] / 128, image_size[1] / 128
    boxes = torch.tensor([[24.0, 16, 32, 24],  # 0: small, around the query cell
                          [66.0, 34, 110, 78],  # 1: large, around the source cell
                          [0.0, 100, 6, 106]])  # 2: tiny, elsewhere
    detections = {"boxes": boxes * torch.tensor([sx, sy, sx, sy]), "labels": torch.tensor([2, 2, 1]),
                  "scores": torch.tensor([0.9, 0.8, 0.7])}
    return Explanation(detections, [matching], image_size, 128, ["a", "b"])


def test_a_cell_maps_to_the_image_where_its_stride_puts_it():
    explanation = hand_explanation(image_size=(64, 256))  # (H, W): x scaled by 2, y by 0.5
    # layer 1, stride 8, cell (3, 5): centre (5.5 * 8, 3.5 * 8) = (44, 28) at the input -> (88, 14)
    view = borrow_view(explanation, cell=(3, 5), layer=1)
    assert view.query_boxes.tolist() == [[80.0, 12.0, 96.0, 16.0]]
    assert cell_at(explanation, 1, 88, 14) == (3, 5) and cell_at(explanation, 1, 1e6, -5) == (0, 15)
    # layer 2, stride 16, cell (1, 2): centre (40, 24) -> (80, 12); layer 4, stride 64, cell (1, 1): (96, 96) -> (192, 48)
    assert view.maps[0].centre(1, 2) == (80.0, 12.0) and view.maps[2].centre(1, 1) == (192.0, 48.0)
    assert view.maps[0].cell_size == (32.0, 8.0)
    assert place_grid(1, np.zeros((16, 16)), 8, (2.0, 0.5)).centre(3, 5) == (88.0, 14.0)
    assert cell_boxes((16, 16), 8, (2.0, 0.5))[3 * 16 + 5].tolist() == [80.0, 12.0, 96.0, 16.0]


def test_each_cell_mass_sums_to_one_on_a_real_detector(tiny_config):
    detector = make_detector(tiny_config).eval()  # full neck, input 128: grids 16, 8, 4, 2 tile it exactly
    image = torch.rand(3, 96, 160)
    explanation = explain(detector, image)
    assert [m.layer for m in explanation.matching] == [1, 2, 3]
    for matching in explanation.matching:
        scores = matching.dense()
        assert torch.allclose(scores.sum(1), torch.ones(scores.shape[0]), atol=1e-5)
        for row in (0, scores.shape[0] - 1):
            assert sum(float(m.sum()) for m in heatmaps(matching, [row])) == pytest.approx(1.0, abs=1e-5)
            view = borrow_view(explanation, cell=divmod(row, matching.query_grid[1]), layer=matching.layer)
            assert sum(m.values.sum() for m in view.maps) == pytest.approx(1.0, abs=1e-5)
            assert view.combined.values.sum() == pytest.approx(1.0, abs=1e-5)
            assert 0.0 <= view.entropy <= 1.0
    assert len(explanation.detection_layers) == len(explanation.detections["boxes"])
    assert set(explanation.detection_layers) <= {1, 2, 3, 4}
    # ground-truth instances in place of the detections: a 20 px box sits on layer 1, a 100 px one deeper
    truth = with_instances(explanation, torch.tensor([[10.0, 10, 30, 30], [40, 0, 140, 96]]), torch.tensor([1, 1]),
                           ["thing"])
    assert truth.detection_layers[0] == 1 and truth.detection_layers[1] > 1
    view = borrow_view(truth, detection=0)
    assert [link["detection"] for link in view.links] == [1] and view.layer == 1
    assert truth.matching is explanation.matching and len(explanation.detections["boxes"]) != 2


def test_combined_map_spreads_a_coarse_cell_over_the_fine_cells_it_covers():
    view = borrow_view(hand_explanation(), cell=(2, 3), layer=1)
    combined = view.combined.values  # finest deeper grid: layer 2's 8 x 8 at stride 16
    assert combined.shape == (8, 8) and view.combined.cell_size == (16.0, 16.0)
    # layer 3's cell (1, 2) (stride 32) covers layer 2's cells rows 2-3, cols 4-5: a quarter each
    assert combined[2:4, 4:6].tolist() == [[0.25, 0.25], [0.25, 0.25]] and combined.sum() == pytest.approx(1.0)


def test_links_go_to_larger_instances_with_share_and_chance():
    explanation = hand_explanation(image_size=(256, 256))  # image pixels = 2 x input pixels
    view = borrow_view(explanation, detection=0)
    assert view.layer == 1 and view.rows == [QUERY] and view.entropy == pytest.approx(0.0)
    [link] = view.links  # detection 2 is smaller: not a source
    assert link["detection"] == 1 and link["share"] == pytest.approx(1.0)
    # deeper cell centres inside the large box (66, 34, 110, 78): 3 x 3 of layer 2, 1 of layer 3
    assert link["chance"] == pytest.approx(10 / D)
    assert link["lift"] == pytest.approx(D / 10) and link["borrowed"] and link["same_class"]
    assert view.uniform_share == pytest.approx(1 / D)
    # a uniform row's combined map: 1/D from layer 2's own cell + 1/(4D) and 1/(16D) spread from layers 3 and 4
    assert view.uniform_combined == pytest.approx((1 + 1 / 4 + 1 / 16) / D)
    assert link["start"] == [56.0, 40.0] and link["end"] == [176.0, 112.0]
    assert view.sources[0]["layer"] == 3 and (view.sources[0]["row"], view.sources[0]["col"]) == (1, 2)
    assert view.sources[0]["box"] == [128.0, 64.0, 192.0, 128.0] and view.sources[0]["share"] == pytest.approx(1.0)
    # borrowed_from: the same share, restricted to the candidates given
    assert borrowed_from(explanation, 0)[0]["share"] == pytest.approx(1.0)
    assert borrowed_from(explanation, 0, among=[2]) == []


def test_layer_view_names_the_source_layer_and_entropy():
    maps = layer_maps(hand_explanation(), 1)
    source, entropy = maps["source_layer"].values, maps["entropy"].values
    assert source.shape == (16, 16) and source[2, 3] == 3  # the query cell's arg-max is on layer 3
    assert entropy[2, 3] == pytest.approx(0.0) and entropy[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert maps["peak"].values[2, 3] == pytest.approx(1.0) and maps["peak"].values[0, 0] == pytest.approx(1 / D)


def test_default_query_is_the_smallest_with_a_larger_instance_of_its_class():
    explanation = hand_explanation()
    assert default_query(explanation, [0, 1, 2]) == 0  # 2 is smaller, but 0 borrowed from its larger twin 1
    assert default_query(explanation, [1, 2]) == 2  # no twins, no borrowing: the smallest with a larger instance
    assert default_query(explanation, [1]) == 1 and default_query(explanation, []) is None
    explanation.matching[0].scores[QUERY] = 1.0 / D  # 0 no longer borrows: it still has a larger twin
    explanation.detections["labels"][2] = 2
    assert default_query(explanation, [0, 1, 2]) == 2  # now the tiny one has a larger twin too, and is smaller


def test_ssd_has_nothing_to_show(tiny_config):
    explanation = explain(make_detector(tiny_config, neck="ssd").eval(), torch.rand(3, 64, 64))
    assert not explanation.borrows and explanation.detection_layers == []
    with pytest.raises(ValueError, match="does not borrow"):
        borrow_view(explanation, cell=(0, 0), layer=1)


def test_detections_to_coco_writes_xywh():
    coco = detections_to_coco(hand_explanation(), "x.png", keep=[1])
    [ann] = coco["annotations"]
    assert ann["bbox"] == [66.0, 34.0, 44.0, 44.0] and ann["category_id"] == 2 and ann["score"] == pytest.approx(0.8)
    assert coco["images"][0] == {"id": 1, "file_name": "x.png", "width": 128, "height": 128}
    assert [c["name"] for c in coco["categories"]] == ["a", "b"] and math.isclose(ann["area"], 44 * 44)


def hand_dataset(with_large: bool = True) -> list:
    """One 128 x 128 image (the detector's input size: no rescaling). Class 1: A 20 px, B 26 px (1.69x A's
    area: a sibling, not a larger instance), C 64 px (10x A); class 2: D 20 px, alone."""
    from torchvision import tv_tensors

    boxes = [[0, 0, 20, 20], [100, 0, 126, 26], [0, 100, 20, 120]] + ([[32, 32, 96, 96]] if with_large else [])
    labels = [1, 1, 2] + ([1] if with_large else [])
    image = tv_tensors.Image(torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=(128, 128)),
              "labels": torch.tensor(labels)}
    return [(image, target)]


def test_borrow_precision_by_hand(tiny_config):
    from borrowcore.evaluation.explain import borrow_precision

    detector = make_detector(tiny_config).eval()
    with torch.no_grad():
        for block in detector.network.neck.matching:
            block.log_tau.fill_(-30.0)  # tau ~ 0: every S_hat row uniform, so the share on C is its cover
    measured = borrow_precision(detector, hand_dataset())
    # A and B (layer 1, 32 px anchors) borrow from C; D has no larger instance of its class. C = [32, 96]^2
    # covers 4 x 4 of layer 2's 8 x 8 centres (8, 24, .., 120), 2 x 2 of layer 3's (16, 48, 80, 112) and all
    # 2 x 2 of layer 4's (32, 96): 24 of 84 deeper cells
    assert (measured["instances"], measured["skipped"]) == (2, 1)
    assert measured["chance"] == pytest.approx(24 / 84)
    assert measured["borrow_precision"] == pytest.approx(24 / 84, abs=1e-6)
    # without C, B is not A's larger instance (1.69x < 2x, the same rule as borrow_view's links): none borrow
    assert borrow_precision(detector, hand_dataset(with_large=False)) == {
        "borrow_precision": -1.0, "chance": -1.0, "instances": 0, "skipped": 3}


def test_borrow_view_links_use_the_same_larger_instance_rule():
    from borrowcore.evaluation.explain import LARGER_AREA_RATIO, is_larger_instance

    explanation = hand_explanation()
    side = 8 * math.sqrt(LARGER_AREA_RATIO)  # detection 0 is 8 x 8: a box of exactly twice its area
    for extra, linked in ((side - 0.5, False), (side + 0.5, True)):
        boxes = torch.cat([explanation.detections["boxes"][:1], torch.tensor([[66.0, 34, 66 + extra, 34 + extra]])])
        two = Explanation({"boxes": boxes, "labels": torch.tensor([2, 2]), "scores": torch.tensor([0.9, 0.8])},
                          explanation.matching, (128, 128), 128, ["a", "b"])
        assert bool(is_larger_instance(extra ** 2, 64.0)) == linked
        assert [link["detection"] for link in borrow_view(two, detection=0).links] == ([1] if linked else [])


def test_explain_places_pooled_keys_with_a_key_budget(tiny_config):
    """With a budget of 16 cells, layer 1's sources are layer 2 pooled to 4 x 4 cells of stride 32, and
    layers 3 and 4 whole: every view still sums to 1 and the pooled cells sit where they cover the image."""
    from borrowcore import DetectorConfig

    detector = make_detector(DetectorConfig(**{**tiny_config.__dict__, "key_budget": 16})).eval()
    explanation = explain(detector, torch.rand(3, 128, 128))
    first = explanation.matching[0]
    assert first.source_grids == [(4, 4), (4, 4), (2, 2)] and first.source_strides == [32, 32, 64]
    view = borrow_view(explanation, cell=(5, 9), layer=1)
    assert [m.values.shape for m in view.maps] == [(4, 4), (4, 4), (2, 2)]
    assert view.maps[0].origin == (16.0, 16.0) and view.maps[0].cell_size == (32.0, 32.0)
    assert sum(m.values.sum() for m in view.maps) == pytest.approx(1.0, abs=1e-5)
    assert view.combined.values.shape == (4, 4) and view.combined.values.sum() == pytest.approx(1.0, abs=1e-5)


def test_summaries_computed_with_the_inference_are_the_layer_views(tiny_config, monkeypatch):
    """explain(summaries=True) holds every borrowing layer's view (the app computes them in its queue);
    layer_maps then reads them instead of computing them again, and draws the same maps."""
    import borrowcore.evaluation.explain as explain_module

    detector = make_detector(tiny_config).eval()
    image = torch.rand(3, 96, 160, generator=torch.Generator().manual_seed(0))
    plain, summarised = explain(detector, image), explain(detector, image, summaries=True)
    assert plain.layer_views == {} and sorted(summarised.layer_views) == [1, 2, 3]
    expected = {layer: layer_maps(plain, layer) for layer in (1, 2, 3)}
    monkeypatch.setattr(explain_module, "layer_view", lambda matching: pytest.fail("computed again"))
    for layer in (1, 2, 3):
        for name, grid in layer_maps(summarised, layer).items():
            np.testing.assert_array_equal(grid.values, expected[layer][name].values)
