import types

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from borrowcore.models.anchors import AnchorGenerator
from borrowcore.models.boxes import BoxCoder, match_anchors
from borrowcore.models.loss import MultiBoxLoss
from borrowcore.models.postprocess import PostProcess

from conftest import make_detector


def random_boxes(n: int, size: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size * 0.7
    wh = 4 + torch.rand(n, 2, generator=generator) * size * 0.3
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors, boxes = random_boxes(100, 300, g), random_boxes(100, 300, g)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, rtol=1e-5, atol=1e-4)


def test_encode_by_hand():
    """Anchor centred (50, 50), 20x40; box centred (52, 46), 40x40."""
    offsets = BoxCoder().encode(torch.tensor([[32.0, 26, 72, 66]]), torch.tensor([[40.0, 30, 60, 70]]))
    expected = torch.tensor([[2 / (20 * 0.1), -4 / (40 * 0.1), torch.log(torch.tensor(2.0)) / 0.2, 0.0]])
    torch.testing.assert_close(offsets, expected)


def test_encoding_matches_torchvision_box_coder():
    g = torch.Generator().manual_seed(1)
    anchors, boxes = random_boxes(50, 300, g), random_boxes(50, 300, g)
    theirs = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode_single(boxes, anchors)
    torch.testing.assert_close(BoxCoder().encode(boxes, anchors), theirs, rtol=1e-5, atol=1e-5)


def test_matching_by_hand():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [100, 100, 110, 110]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [21, 21, 24, 24]])  # the second overlaps anchor 2 at IoU 0.09
    matches = match_anchors(boxes, anchors)
    # anchor 1 has IoU 0.9 with box 0; anchor 2 is box 1's best anchor, forced positive
    assert matches.tolist() == [0, 0, 1, -1]
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [-1, -1, -1, -1]


def test_scale_compensation_by_hand():
    """S3FD's scale compensation: a 6 px face between the 16 px anchors reaches IoU 0.25 at best; with
    min_anchors 2 it also takes its next anchor of IoU > 0.1, never one at 0.04 nor one already taken."""
    anchors = torch.tensor([[0.0, 0, 16, 16], [4, 0, 20, 16], [0, 4, 16, 20], [-2, -2, 10, 10],  # IoU .14 .04 .04 .25
                            [40, 40, 60, 60], [42, 40, 62, 60], [100, 100, 120, 120]])  # the large face: 1, .82, 0
    boxes = torch.tensor([[0.0, 0, 6, 6], [40, 40, 60, 60]])
    assert match_anchors(boxes, anchors, 0.35).tolist() == [-1, -1, -1, 0, 1, 1, -1]  # one forced anchor
    assert match_anchors(boxes, anchors, 0.35, min_anchors=2).tolist() == [0, -1, -1, 0, 1, 1, -1]
    assert match_anchors(boxes, anchors, 0.35, min_anchors=5).tolist() == [0, -1, -1, 0, 1, 1, -1]
    loss = MultiBoxLoss(iou_threshold=0.35, min_anchors=2)
    assert loss.match([{"boxes": boxes, "labels": torch.tensor([1, 1])}], anchors)[0].tolist() == [0, -1, -1, 0, 1, 1, -1]


def test_matching_matches_torchvision_ssd_matcher():
    g = torch.Generator().manual_seed(2)
    anchors = AnchorGenerator((8, 16, 32, 64))(((16, 16), (8, 8), (4, 4), (2, 2)), 128)
    boxes = random_boxes(7, 128, g)
    theirs = det_utils.SSDMatcher(0.5)(box_iou(boxes, anchors))
    assert torch.equal(match_anchors(boxes, anchors), theirs)


def test_loss_equals_torchvision_ssd_compute_loss():
    """SPEC §9: same anchors, logits, offsets and matches give torchvision's SSD loss."""
    g = torch.Generator().manual_seed(3)
    anchors = AnchorGenerator((8, 16, 32, 64))(((16, 16), (8, 8), (4, 4), (2, 2)), 128)
    num_anchors, num_classes = anchors.shape[0], 4
    targets = [{"boxes": random_boxes(3, 128, g), "labels": torch.tensor([1, 3, 2])},
               {"boxes": random_boxes(1, 128, g), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    logits = torch.randn(3, num_anchors, num_classes, generator=g)
    offsets = torch.randn(3, num_anchors, 4, generator=g)
    ours = MultiBoxLoss()(logits, offsets, anchors, targets)

    fake_ssd = types.SimpleNamespace(box_coder=det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=3)
    matched = [det_utils.SSDMatcher(0.5)(box_iou(t["boxes"], anchors)) if len(t["boxes"])
               else torch.full((num_anchors,), -1, dtype=torch.int64) for t in targets]
    theirs = SSD.compute_loss(fake_ssd, targets, {"cls_logits": logits, "bbox_regression": offsets},
                              [anchors] * 3, matched)
    torch.testing.assert_close(ours["loss_box"], theirs["bbox_regression"])
    torch.testing.assert_close(ours["loss_cls"], theirs["classification"])


def test_postprocess_thresholds_and_nms():
    anchors = torch.tensor([[0.0, 0, 50, 50], [1, 1, 51, 51], [60, 60, 100, 100], [0, 0, 10, 10]])
    logits = torch.full((1, 4, 3), -10.0)
    logits[0, 0, 1] = 5.0  # class 1, best
    logits[0, 1, 1] = 4.0  # class 1, overlaps anchor 0 at IoU ~0.92: suppressed
    logits[0, 1, 2] = 4.5  # class 2 on the same box: NMS is per class, kept
    logits[0, 2, 2] = 3.0
    logits[0, 3, 0] = 10.0  # background
    post = PostProcess(score_threshold=0.3)
    [out] = post(logits, torch.zeros(1, 4, 4), anchors, input_size=100, image_sizes=[(200, 100)])
    assert out["labels"].tolist() == [1, 2, 2]
    # boxes back in the image's pixels: x scaled by 100/100, y by 200/100
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0.0, 0, 50, 100]))
    torch.testing.assert_close(out["boxes"][1], torch.tensor([60.0, 120, 100, 200]))
    torch.testing.assert_close(out["boxes"][2], torch.tensor([1.0, 2, 51, 102]))
    expected = torch.softmax(logits[0, [0, 2, 1]], dim=-1)[torch.arange(3), torch.tensor([1, 2, 2])]
    torch.testing.assert_close(out["scores"], expected)


def test_loss_falls_when_overfitting_two_images(tiny_config):
    detector = make_detector(tiny_config, "full").train()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=g)
    targets = [{"boxes": torch.tensor([[10.0, 12, 40, 44], [60, 50, 120, 110]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[20.0, 70, 50, 100]]), "labels": torch.tensor([3])}]
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(40):
        parts = detector(images, targets)
        loss = parts["loss_box"] + parts["loss_cls"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_loss_is_computed_in_float32_from_half_precision_head_outputs():
    """Under CUDA autocast the head returns bf16; the loss must equal the float32 loss of those values
    (it once failed here: bf16 target offsets refused the float32 encodings)."""
    g = torch.Generator().manual_seed(4)
    anchors = AnchorGenerator((8, 16, 32, 64))(((16, 16), (8, 8), (4, 4), (2, 2)), 128)
    targets = [{"boxes": random_boxes(3, 128, g), "labels": torch.tensor([1, 2, 1])}]
    logits = torch.randn(1, anchors.shape[0], 3, generator=g).bfloat16()
    offsets = torch.randn(1, anchors.shape[0], 4, generator=g).bfloat16()
    half = MultiBoxLoss()(logits, offsets, anchors, targets)
    full = MultiBoxLoss()(logits.float(), offsets.float(), anchors, targets)
    for name in ("loss_box", "loss_cls"):
        assert half[name].dtype == torch.float32
        torch.testing.assert_close(half[name], full[name])
