"""Borrow targets, the supervised matching loss and sparse (top-k) matching, by hand."""

import math

import pytest
import torch

from borrowcore.models.borrow_targets import best_anchor_layers, borrow_targets, matching_loss
from borrowcore.models.neck import MatchingScores, attend, keep_top_k

# A 32 x 32 input with three layers: layer 1 4 x 4 cells of stride 8, layer 2 2 x 2 of 16, layer 3 1 x 1 of 32.
# One anchor per cell, the cell itself, so a box's best anchor is the cell it fills.
ANCHORS = torch.cat([
    torch.tensor([[x, y, x + s, y + s] for y in range(0, 32, s) for x in range(0, 32, s)], dtype=torch.float32)
    for s in (8, 16, 32)])
PER_LAYER = [16, 4, 1]
# S_hat columns of layer 1: layer 2's centres (8, 8), (24, 8), (8, 24), (24, 24), then layer 3's (16, 16)
SMALL, LARGE, OTHER_CLASS = [0, 0, 7, 7], [17, 0, 32, 15], [1, 17, 15, 31]  # no centre on an edge
BOXES = torch.tensor([SMALL, LARGE, OTHER_CLASS], dtype=torch.float32)
LABELS = torch.tensor([1, 1, 2])


def layer_scores(queries: torch.Tensor | None = None, keys: torch.Tensor | None = None, top_k: int = 0):
    return [MatchingScores(layer=1, scores=None, query_grid=(4, 4), query_stride=8, source_layers=[2, 3],
                           source_grids=[(2, 2), (1, 1)], source_strides=[16, 32], queries=queries, keys=keys,
                           top_k=top_k),
            MatchingScores(layer=2, scores=None, query_grid=(2, 2), query_stride=16, source_layers=[3],
                           source_grids=[(1, 1)], source_strides=[32], queries=queries, keys=keys, top_k=top_k)]


def test_best_anchor_layers_are_the_cells_the_boxes_fill():
    assert best_anchor_layers(BOXES, ANCHORS, PER_LAYER).tolist() == [1, 2, 2]


def test_borrow_targets_by_hand():
    found, skipped = borrow_targets(BOXES, LABELS, ANCHORS, PER_LAYER, layer_scores())
    # LARGE (225 px^2 >= 2 x 49) is SMALL's larger instance; LARGE and OTHER_CLASS have none of their class
    assert skipped == 2 and len(found) == 1
    [target] = found
    assert (target.instance, target.layer, target.rows.tolist()) == (0, 1, [0])  # query cell centred (4, 4)
    assert target.targets.tolist() == [False, True, False, False, False]  # (24, 8) lies in LARGE
    assert target.objects.tolist() == [False, True, True, False, False]  # (8, 24) in OTHER_CLASS


def test_an_instance_barely_larger_is_not_a_target_and_ignore_regions_never_are():
    barely = torch.tensor([SMALL, [17, 0, 26, 9]], dtype=torch.float32)  # 81 px^2 < 2 x 49
    assert borrow_targets(barely, torch.tensor([1, 1]), ANCHORS, PER_LAYER, layer_scores()) == ([], 2)
    ignored = torch.tensor([1, -1, 2])  # LARGE as an ignore region: not SMALL's target, still an object
    found, _ = borrow_targets(BOXES, ignored, ANCHORS, PER_LAYER, layer_scores())
    assert found == []


def test_matching_loss_is_minus_log_the_mass_on_the_targets():
    keys = torch.eye(5)[None]  # (1, d_1 = 5, e = 5): S_hat logits of a row are its query
    queries = torch.zeros(1, 16, 5, requires_grad=True)
    with torch.no_grad():
        queries[0, 0, 1] = math.log(3.0)  # row 0 (SMALL's cell): softmax [1, 3, 1, 1, 1] / 7
    targets = [{"boxes": BOXES, "labels": LABELS}]
    loss = matching_loss(layer_scores(queries, keys), ANCHORS, PER_LAYER, targets)
    assert loss.item() == pytest.approx(math.log(7 / 3), abs=1e-6)
    loss.backward()
    # d/dq of -log softmax_1: S_hat - onehot(target) on row 0; no other row gets gradient
    expected = torch.tensor([1, 3 - 7, 1, 1, 1]) / 7
    assert torch.allclose(queries.grad[0, 0], expected, atol=1e-6)
    assert queries.grad[0, 1:].abs().sum() == 0


def test_matching_loss_without_any_larger_instance_is_zero_with_a_graph():
    queries = torch.randn(1, 16, 5, requires_grad=True)
    loss = matching_loss(layer_scores(queries, torch.randn(1, 5, 5)), ANCHORS, PER_LAYER,
                         [{"boxes": BOXES[1:], "labels": LABELS[1:]}])
    assert loss.item() == 0.0 and loss.requires_grad


def test_keep_top_k_by_hand():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert keep_top_k(scores, 2).tolist() == [[-math.inf, 3.0, 2.0, -math.inf]]
    assert torch.equal(keep_top_k(scores, 0), scores) and torch.equal(keep_top_k(scores, 4), scores)
    assert torch.softmax(keep_top_k(scores, 2), -1)[0].tolist() == pytest.approx([0, math.e / (1 + math.e), 1 / (1 + math.e), 0])


def test_top_k_attention_agrees_with_the_rows_the_app_reads():
    torch.manual_seed(0)
    queries, keys, values = torch.randn(2, 16, 5), torch.randn(2, 5, 5), torch.randn(2, 5, 3)
    # top 1: each row copies the value of its best key
    best = (queries @ keys.transpose(1, 2)).argmax(-1)  # (2, 16)
    assert torch.allclose(attend(queries, keys, values, top_k=1), torch.stack([values[b, best[b]] for b in range(2)]))
    sparse = attend(queries, keys, values, top_k=2, max_scores=5 * 2 * 4)  # blocks of 4 rows
    rows = layer_scores(queries, keys, top_k=2)[0].rows(torch.arange(16), image=1)  # (16, 5)
    assert torch.allclose(sparse[1], rows @ values[1], atol=1e-6)
    assert ((rows > 0).sum(1) == 2).all() and torch.allclose(rows.sum(1), torch.ones(16))


def test_a_detector_with_the_matching_loss_trains_it(tiny_config):
    """loss_match appears among the loss parts and its gradient reaches FMB's theta."""
    from borrowcore import DetectorConfig
    from borrowcore.models.detector import build_detector

    detector = build_detector(DetectorConfig(**{**tiny_config.__dict__, "matching_loss": 0.5})).train()
    target = {"boxes": torch.tensor([[0.0, 0, 12, 12], [40, 40, 100, 100]]), "labels": torch.tensor([1, 1])}
    parts = detector([torch.rand(3, 128, 128)], [target])
    assert set(parts) == {"loss_box", "loss_cls", "loss_match"} and parts["loss_match"] > 0
    parts["loss_match"].backward()
    assert detector.network.neck.matching[0].theta.weight.grad.abs().sum() > 0
    plain = build_detector(DetectorConfig(**{**tiny_config.__dict__})).train()
    assert set(plain([torch.rand(3, 128, 128)], [target])) == {"loss_box", "loss_cls"}


def test_a_detached_matching_loss_trains_theta_and_phi_but_not_the_backbone(tiny_config):
    """matching_loss_detach: the same loss value, its gradient reaches theta and phi and stops at the backbone;
    without it the backbone takes the loss's gradient too."""
    from borrowcore import DetectorConfig
    from borrowcore.models.detector import build_detector

    target = {"boxes": torch.tensor([[0.0, 0, 12, 12], [40, 40, 100, 100]]), "labels": torch.tensor([1, 1])}
    image = torch.rand(3, 128, 128)
    values = {}
    for detach in (False, True):
        torch.manual_seed(0)
        detector = build_detector(DetectorConfig(**{**tiny_config.__dict__, "matching_loss": 0.5,
                                                    "matching_loss_detach": detach})).train()
        loss = detector([image], [target])["loss_match"]
        loss.backward()
        values[detach] = loss.item()
        fmb = detector.network.neck.matching[0]
        assert fmb.theta.weight.grad.abs().sum() > 0 and fmb.phi[0].weight.grad.abs().sum() > 0
        backbone = [p.grad for p in detector.network.backbone.parameters()]
        reached = any(g is not None and g.abs().sum() > 0 for g in backbone)
        assert reached is not detach
    assert values[True] == pytest.approx(values[False], rel=1e-6)


def test_matching_loss_area_ratio_zero_makes_peers_targets(tiny_config):
    """Two faces of one size: no larger instance, so the paper's targets (ratio 2) give no loss; with
    matching_loss_area_ratio 0 each is the other's target, and the config reaches the loss."""
    from borrowcore import DetectorConfig
    from borrowcore.models.detector import build_detector

    target = {"boxes": torch.tensor([[0.0, 0, 40, 40], [60, 60, 100, 100]]), "labels": torch.tensor([1, 1])}
    image = torch.rand(3, 128, 128)
    losses = {}
    for ratio in (2.0, 0.0):
        torch.manual_seed(0)
        detector = build_detector(DetectorConfig(**{**tiny_config.__dict__, "matching_loss": 1.0,
                                                    "matching_loss_area_ratio": ratio})).train()
        losses[ratio] = detector([image], [target])["loss_match"].item()
    assert losses[2.0] == 0.0 and losses[0.0] > 0
    with pytest.raises(ValueError, match="matching_loss_area_ratio"):
        DetectorConfig(**{**tiny_config.__dict__, "matching_loss_area_ratio": -1.0})


def test_training_logs_what_the_neck_learns(tmp_path):
    """A short run of full with the matching loss on the tiny benchmark: loss_match in the step log with the
    gradient norms by part, and each validation the fusion weight norms and the borrow precision by layer."""
    import json

    from test_train import TINY, tiny_experiment

    from borrowcore.engine.train import train

    config = tiny_experiment(max_steps=4, val_images=str(TINY / "images"), val_annotations=str(TINY / "twins.json"),
                             val_borrow=True, repeats=1)
    config.model.matching_loss = 1.0
    train(config, tmp_path, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["event"] == "step"]
    assert all("loss_match" in r and {"fmb_theta_phi", "frb_g", "ffb"} <= set(r["grad_norms"]) for r in steps)
    assert any(r["loss_match"] > 0 for r in steps)
    [epoch] = [r for r in log if r["event"] == "epoch"][:1]
    assert set(epoch["fusion_weight_norms"]["1"]) == {"x", "z", "context"}
    borrow = epoch["val_borrow"]
    assert borrow["instances"] > 0 and 0 <= borrow["borrow_precision"] <= 1
    assert sum(layer["instances"] for layer in borrow["by_layer"].values()) == borrow["instances"]


def test_background_term_by_hand():
    """Layer 1's cells in no box are rows 1, 4, 5, 10, 11, 14, 15; its deeper cells in no box are columns 0, 3
    and 4 (centres (8, 8), (24, 24), (16, 16)). With zero logits a background row puts 3/5 of its mass there."""
    from borrowcore.models.borrow_targets import background_queries

    [layer_1] = layer_scores()[:1]
    rows, on_background = background_queries(layer_1, BOXES, count=64)
    assert rows.tolist() == [1, 4, 5, 10, 11, 14, 15] and on_background.tolist() == [True, False, False, True, True]
    assert background_queries(layer_1, BOXES, count=3)[0].tolist() == [1, 10, 15]  # evenly spaced
    queries = torch.zeros(1, 16, 5)
    queries[0, 0, 1] = math.log(3.0)  # SMALL's row, as above: log(7/3)
    scores = layer_scores(queries, torch.eye(5)[None])[:1]
    targets = [{"boxes": BOXES, "labels": LABELS}]
    plain = matching_loss(scores, ANCHORS, PER_LAYER, targets)
    both = matching_loss(scores, ANCHORS, PER_LAYER, targets, background_weight=0.5)
    assert plain.item() == pytest.approx(math.log(7 / 3), abs=1e-6)
    assert both.item() == pytest.approx(math.log(7 / 3) + 0.5 * -math.log(3 / 5), abs=1e-6)
