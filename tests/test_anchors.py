import json
import math

import numpy as np
import pytest
import torch

from borrowcore.cli import main
from borrowcore.models.anchors import AnchorGenerator, aspect_ratio_set, design_aspect_ratios, max_anchor_aspect_ratio


def test_anchor_count_and_grids_at_300():
    anchors = AnchorGenerator((8, 16, 32, 64))
    grids = [(38, 38), (19, 19), (10, 10), (5, 5)]
    boxes = anchors(grids, 300)
    assert anchors.num_anchors_per_location() == 6
    assert boxes.shape == (6 * (1444 + 361 + 100 + 25), 4) == (11580, 4)


def test_one_cell_by_hand():
    """Layer 2 (stride 16), cell row 1, column 2 at input 300: centre (40, 24)."""
    anchors = AnchorGenerator((8, 16, 32, 64))(((38, 38), (19, 19), (10, 10), (5, 5)), 300)
    first = 1444 * 6 + (1 * 19 + 2) * 6
    cell = anchors[first:first + 6]
    cx, cy = 2.5 * 16, 1.5 * 16
    s, s2 = 64.0, math.sqrt(64 * 128)  # S_2 and S'_2
    expected_wh = [(s, s), (s2, s2),
                   (s * math.sqrt(1.5), s / math.sqrt(1.5)), (s / math.sqrt(1.5), s * math.sqrt(1.5)),
                   (s * math.sqrt(3), s / math.sqrt(3)), (s / math.sqrt(3), s * math.sqrt(3))]
    expected = torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for w, h in expected_wh])
    torch.testing.assert_close(cell, expected.float())


def test_last_layer_second_size_is_input_size():
    gen = AnchorGenerator((8, 16, 32, 64))
    assert gen.sizes(300)[-1] == (256.0, 300.0)
    assert gen.sizes(256)[-1] == (256.0, 256.0)
    last = gen(((32, 32), (16, 16), (8, 8), (4, 4)), 256)[-6:]  # last cell of conv6_2, centre (224, 224)
    assert torch.allclose(last[1], torch.tensor([224 - 128, 224 - 128, 224 + 128, 224 + 128.0]))


def test_other_ratio_set_changes_anchor_count():
    gen = AnchorGenerator((8, 16, 32, 64), aspect_ratios=(2.0,))
    assert gen.num_anchors_per_location() == 4
    assert gen(((38, 38), (19, 19), (10, 10), (5, 5)), 300).shape[0] == 4 * 1930


def test_eq1_paper_values():
    # mAR_obj = 6 at IoU 0.5: terms (2/3)^2, 1/2, 1/2 -> 6 * 0.5 = 3
    assert max_anchor_aspect_ratio(6.0, 0.5) == pytest.approx(3.0)
    assert aspect_ratio_set(3.0) == pytest.approx([1, 1.5, 3, 2 / 3, 1 / 3])
    assert aspect_ratio_set(1.5) == pytest.approx([1, 1.5, 1 / 1.5])
    assert aspect_ratio_set(0.9) == [1.0]
    # IoU 0.6: terms (2 / (1 + 1/0.6))^2 = 0.5625, 0.6 / 0.8 = 0.75, 0.6 -> 0.75
    assert max_anchor_aspect_ratio(2.0, 0.6) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="2/3"):
        max_anchor_aspect_ratio(6.0, 0.7)


def test_design_from_boxes_uses_percentile():
    boxes = np.array([[0, 0, 10, 10]] * 99 + [[0, 0, 40, 10]], dtype=float)  # ARs: 99 x 1, one 4
    result = design_aspect_ratios(boxes, percentile=50)
    assert result["max_object_ratio"] == pytest.approx(1.0)
    assert result["aspect_ratios"] == [1.0]


def write_coco(path, boxes):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 500, "height": 500}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for i, b in enumerate(boxes)]}
    path.write_text(json.dumps(data))


def test_anchors_command(tmp_path, capsys):
    # ARs 1, 2, 6 (h/w) and 2: the 99th percentile (linear interpolation) of [1, 2, 2, 6] is 5.88
    coco = tmp_path / "tiny.json"
    write_coco(coco, [[0, 0, 20, 20], [0, 0, 40, 20], [0, 0, 10, 60], [10, 10, 20, 40]])
    assert main(["anchors", "--coco", str(coco), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_boxes"] == 4
    assert result["max_object_ratio"] == pytest.approx(np.percentile([1, 2, 6, 2], 99))
    assert result["max_object_ratio"] == pytest.approx(5.88)
    m = result["max_object_ratio"] * 0.5  # Eq. (1) at IoU 0.5
    assert m > 2
    assert result["max_anchor_ratio"] == pytest.approx(m)
    assert result["aspect_ratios"] == pytest.approx([1, m / 2, m, 2 / m, 1 / m])
    assert main(["anchors", "--coco", str(coco)]) == 0
    assert "mAR_anchor" in capsys.readouterr().out


def test_anchors_command_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    assert main(["anchors", "--coco", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_top_octaves_extend_the_last_layer_only():
    """top_octaves 1 on the face anchors (a = 2, one ratio pair): the stride-64 cells also carry 256 and
    362 px; whole-image mode, S'_4 = sqrt(128 * 256) = 181."""
    plain = AnchorGenerator((8, 16, 32, 64), 2.0, (1.2,))
    extended = AnchorGenerator((8, 16, 32, 64), 2.0, (1.2,), top_octaves=1)
    assert plain.anchors_per_layer() == [4, 4, 4, 4]
    assert extended.anchors_per_layer() == [4, 4, 4, 8]
    grids = [(8, 8), (4, 4), (2, 2), (1, 1)]
    a, b = plain(grids, None), extended(grids, None)
    assert b.shape[0] == a.shape[0] + 4
    torch.testing.assert_close(b[:-8], a[:-4])  # every other anchor unchanged, in the same order
    cell = b[-8:]  # the one stride-64 cell, centre (32, 32)
    s, s2, r = 128.0, math.sqrt(128 * 256), math.sqrt(1.2)
    wh = [(s, s), (s2, s2), (s * r, s / r), (s / r, s * r),
          (2 * s, 2 * s), (2 * s2, 2 * s2), (2 * s * r, 2 * s / r), (2 * s / r, 2 * s * r)]
    expected = torch.tensor([[32 - w / 2, 32 - h / 2, 32 + w / 2, 32 + h / 2] for w, h in wh])
    torch.testing.assert_close(cell, expected.float())
    with pytest.raises(ValueError, match="top_octaves"):
        AnchorGenerator((8, 16, 32, 64), top_octaves=-1)


def test_top_octaves_detector_heads_and_outputs_agree():
    from borrowcore.models.config import DetectorConfig
    from borrowcore.models.detector import build_detector

    config = DetectorConfig(neck="full", num_classes=1, input_size=128, width=0.0625, anchor_scale=2.0,
                            aspect_ratios=[1.2], top_octaves=2, inference="whole", prior_prob=0.25)
    detector = build_detector(config).eval()
    assert [conv.out_channels for conv in detector.network.head.classification] == [8, 8, 8, 24]
    batch, _ = detector.preprocess([torch.rand(3, 128, 192)])
    output = detector.network(batch)
    anchors = detector.anchors(output.grid_sizes, None)
    assert output.cls_logits.shape[1] == output.box_regression.shape[1] == anchors.shape[0]
    # prior_prob's background bias is on the extra anchors too: log(1 * 0.75 / 0.25) for all 12 of them
    bias = detector.network.head.classification[3].bias.view(12, 2)
    torch.testing.assert_close(bias[:, 0], torch.full((12,), math.log(3.0)))
    assert (bias[:, 1] == 0).all()
