"""The neck pinned to SPEC §4 written out plainly: whatever the neck does to be fast must give these values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import borrowcore.models.neck
from borrowcore import DetectorConfig, build_detector
from borrowcore.models.config import NECKS
from borrowcore.models.neck import attend, cat_as_conv_reads, pool_to_budget

# the full neck's parameters at width 0.125 (c_n = 64, 64, 128, 64; c = 32), as shipped checkpoints hold them
FULL_NECK_STATE = {
    "matching.0.log_tau": (),
    "matching.0.theta.weight": (64, 64, 1, 1),
    "matching.0.theta.bias": (64,),
    "matching.0.phi.0.weight": (64, 64, 1, 1),
    "matching.0.phi.0.bias": (64,),
    "matching.0.phi.1.weight": (64, 128, 1, 1),
    "matching.0.phi.1.bias": (64,),
    "matching.0.phi.2.weight": (64, 64, 1, 1),
    "matching.0.phi.2.bias": (64,),
    "matching.1.log_tau": (),
    "matching.1.theta.weight": (64, 64, 1, 1),
    "matching.1.theta.bias": (64,),
    "matching.1.phi.0.weight": (64, 128, 1, 1),
    "matching.1.phi.0.bias": (64,),
    "matching.1.phi.1.weight": (64, 64, 1, 1),
    "matching.1.phi.1.bias": (64,),
    "matching.2.log_tau": (),
    "matching.2.theta.weight": (128, 128, 1, 1),
    "matching.2.theta.bias": (128,),
    "matching.2.phi.0.weight": (128, 64, 1, 1),
    "matching.2.phi.0.bias": (128,),
    "representing.0.g.0.weight": (32, 64, 1, 1),
    "representing.0.g.0.bias": (32,),
    "representing.0.g.1.weight": (32, 128, 1, 1),
    "representing.0.g.1.bias": (32,),
    "representing.0.g.2.weight": (32, 64, 1, 1),
    "representing.0.g.2.bias": (32,),
    "representing.1.g.0.weight": (32, 128, 1, 1),
    "representing.1.g.0.bias": (32,),
    "representing.1.g.1.weight": (32, 64, 1, 1),
    "representing.1.g.1.bias": (32,),
    "representing.2.g.0.weight": (32, 64, 1, 1),
    "representing.2.g.0.bias": (32,),
    "fusion.0.deconv.weight": (64, 32, 3, 3),
    "fusion.0.deconv.bias": (32,),
    "fusion.0.combine.weight": (64, 128, 1, 1),
    "fusion.0.combine.bias": (64,),
    "fusion.1.deconv.weight": (128, 32, 3, 3),
    "fusion.1.deconv.bias": (32,),
    "fusion.1.combine.weight": (64, 128, 1, 1),
    "fusion.1.combine.bias": (64,),
    "fusion.2.deconv.weight": (64, 32, 3, 3),
    "fusion.2.deconv.bias": (32,),
    "fusion.2.combine.weight": (128, 192, 1, 1),
    "fusion.2.combine.bias": (128,),
}


def reference_neck(neck, features, pool=lambda x_deep: x_deep):
    """SPEC §4 one step at a time from the neck's own modules: -> [Y(1)..Y(N)], [S_hat(1)..S_hat(N-1)].
    ``pool`` reduces each deeper map before it is matched (the key budget)."""
    if neck.neck == "ssd":
        return list(features), []
    cells = lambda t: t.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)  # noqa: E731
    outputs, scores = [features[-1]], []
    for n in range(len(features) - 2, -1, -1):
        x, deeper = features[n], [pool(x_deep) for x_deep in features[n + 1:]]
        parts = [x]
        if neck.borrows:
            fmb, frb = neck.matching[n], neck.representing[n]
            queries = cells(fmb.theta(x))
            keys = torch.cat([cells(phi(x_deep)) for phi, x_deep in zip(fmb.phi, deeper)], dim=1)
            values = torch.cat([cells(g(x_deep)) for g, x_deep in zip(frb.g, deeper)], dim=1)
            if fmb.similarity == "cosine":
                similarity = fmb.log_tau.exp() * F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)
            else:
                similarity = queries @ keys.transpose(1, 2) / math.sqrt(queries.shape[-1])
            s_hat = torch.softmax(similarity, dim=-1)
            scores.insert(0, s_hat)
            parts.append((s_hat @ values).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:]))
        fusion = neck.fusion[n]
        if neck.uses_context:
            parts.append(F.relu(fusion.deconv(outputs[0], output_size=x.shape[-2:])))
        outputs.insert(0, x + fusion.combine(torch.cat(parts, dim=1)))
    return outputs, scores


def randomised_detector(neck: str, similarity: str = "cosine", key_budget: int = 0):
    """Width 0.125 with BatchNorm, every weight random (C_n too, so Z(n) and D_n reach Y(n)), eval mode."""
    torch.manual_seed(0)
    config = DetectorConfig(neck=neck, num_classes=3, input_size=128, width=0.125, batch_norm=True, similarity=similarity,
                            matching="fast" if key_budget else "exact", key_budget=key_budget)
    detector = build_detector(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in detector.network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
        for parameter in detector.network.neck.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.2)
    return detector.eval()


@pytest.mark.parametrize("return_matching", [False, True])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("neck_name", NECKS)
def test_neck_equals_plain_spec_computation(neck_name, similarity, return_matching):
    detector = randomised_detector(neck_name, similarity)
    network = detector.network
    with torch.no_grad():
        features = network.backbone(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)))
        outputs, matching = network.neck(features, return_matching=return_matching)
        expected, expected_scores = reference_neck(network.neck, features)
    assert len(outputs) == len(expected) == 4
    for y, y_expected in zip(outputs, expected):
        assert y.shape == y_expected.shape
        torch.testing.assert_close(y, y_expected, rtol=1e-5, atol=1e-5)
    if return_matching:
        assert len(matching) == len(expected_scores)
        for m, s_hat in zip(matching, expected_scores):
            for image in range(len(s_hat)):
                torch.testing.assert_close(m.dense(image), s_hat[image], rtol=1e-5, atol=1e-6)
    else:
        assert matching == []
    if neck_name != "ssd":  # the pin has teeth: the neck really changes X(n), by more than the tolerance
        assert (outputs[0] - features[0]).abs().max() > 1e-2


@pytest.mark.parametrize("neck_name", ["borrow", "full"])
def test_neck_gradients_equal_the_plain_computation(neck_name):
    """The fast path is the training path too: the same parameter gradients as SPEC §4 written out."""
    detector = randomised_detector(neck_name).train()
    neck = detector.network.neck
    features = [torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(3))
                for c, s in zip([64, 64, 128, 64], [16, 8, 4, 2])]
    grads = []
    for run in (lambda: neck(features)[0], lambda: reference_neck(neck, features)[0]):
        neck.zero_grad()
        sum((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() for y in run()).backward()
        grads.append({name: p.grad.clone() for name, p in neck.named_parameters()})
    assert grads[0].keys() == grads[1].keys() == dict(neck.named_parameters()).keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("neck_name", NECKS)
def test_neck_state_dict_is_unchanged(neck_name):
    """Keys and shapes as shipped checkpoints hold them: the other ablations are subsets of full's."""
    config = DetectorConfig(neck=neck_name, num_classes=3, input_size=128, width=0.125, batch_norm=True)
    state = {k: tuple(v.shape) for k, v in build_detector(config).network.neck.state_dict().items()}
    borrows, context = neck_name in ("borrow", "full"), neck_name in ("context", "full")
    expected = {k: shape for k, shape in FULL_NECK_STATE.items()
                if (borrows or not k.startswith(("matching.", "representing.")))
                and (context or ".deconv." not in k)
                and (neck_name != "ssd")}
    if neck_name in ("borrow", "context"):  # C_n reads X(n) and one c-channel part
        expected.update({f"fusion.{n}.combine.weight": (c, c + 32, 1, 1) for n, c in enumerate([64, 64, 128])})
    assert state == expected


# ---- Borrowing at any image size: the matching scores are never held whole, and the key budget ----

class LargestSoftmax(TorchDispatchMode):
    """Records the largest softmax output (elements) computed under it: the matching scores held at once."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten._softmax, torch.ops.aten.softmax):
            self.largest = max(self.largest, out.numel())
        return out


def test_attention_in_blocks_equals_the_whole_matrix():
    g = torch.Generator().manual_seed(0)
    queries, keys, values = torch.randn(2, 50, 8, generator=g), torch.randn(2, 30, 8, generator=g), torch.randn(2, 30, 5, generator=g)
    whole = torch.softmax(queries @ keys.transpose(1, 2), dim=-1) @ values
    for max_scores in (2 * 30 * 7, 60, 1):  # 7 rows a block, 1 row, and 1 row even when asked for less
        torch.testing.assert_close(attend(queries, keys, values, max_scores), whole, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # inference: SDPA with the values zero-padded to the keys' width, cut back
        torch.testing.assert_close(attend(queries, keys, values), whole, rtol=1e-5, atol=1e-6)


def test_fusion_concatenation_is_channels_last_and_in_the_convs_dtype():
    """FFB's concatenation: the same values as torch.cat, channels-last when X(n) is, even when Z(n) is a
    batch-1 view whose strides leave torch.cat channels-first; under autocast in the dtype its 1x1 conv reads,
    so the conv gives the numbers it gives on the float32 concatenation."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 5, 7, generator=g).to(memory_format=torch.channels_last)
    padded = torch.randn(1, 35, 8, generator=g)  # attend's output at inference: (B, m, e) cut back to c = 3
    borrowed = padded[..., :3].transpose(1, 2).unflatten(2, (5, 7))
    context = torch.randn(1, 4, 5, 7, generator=g).to(memory_format=torch.channels_last)
    assert not torch.cat([x, borrowed, context], dim=1).is_contiguous(memory_format=torch.channels_last)
    fused = cat_as_conv_reads([x, borrowed, context])
    assert fused.is_contiguous(memory_format=torch.channels_last) and fused.stride(0) == 13 * 5 * 7
    assert torch.equal(fused, torch.cat([x, borrowed, context], dim=1))
    conv = nn.Conv2d(13, 6, 1).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = cat_as_conv_reads([x, borrowed.bfloat16(), context.bfloat16()])
        assert fused.dtype == torch.bfloat16
        assert torch.equal(conv(fused), conv(torch.cat([x, borrowed.bfloat16(), context.bfloat16()], dim=1)))
    assert cat_as_conv_reads([x.contiguous(), context.contiguous()]).is_contiguous()  # channels-first stays so


@pytest.mark.parametrize("return_matching", [False, True])
def test_matching_scores_are_never_held_whole(monkeypatch, return_matching):
    """Layer 1 at 128 px matches 256 cells against 84. At inference SDPA's fused kernel computes no softmax
    of its own. In training (gradients on) blocks of at most 2,000 scores compute at most 2,000 at once; by
    default a block holds no more scores than the queries have values (2 x 256 x 64 = 32,768, under S_hat's
    43,008). Either way the neck returns S_hat as its factors and equals SPEC §4 written out."""
    detector = randomised_detector("full")
    with torch.no_grad():
        features = detector.network.backbone(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)))
    expected, expected_scores = reference_neck(detector.network.neck, features)
    with torch.no_grad(), LargestSoftmax() as probe:
        outputs, _ = detector.network.neck(features)
    assert probe.largest == 0
    for y, y_expected in zip(outputs, expected):
        torch.testing.assert_close(y, y_expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(borrowcore.models.neck, "MIN_BLOCK_SCORES", 1000)  # the floor (65,536) would allow S_hat whole
    with LargestSoftmax() as probe:
        detector.network.neck(features)
    assert 0 < probe.largest <= 32768
    monkeypatch.setattr(borrowcore.models.neck, "MAX_SCORES_IN_MEMORY", 2000)
    monkeypatch.setattr(borrowcore.models.neck, "attend", lambda q, k, v, **kw: attend(q, k, v, max_scores=2000, **kw))
    with LargestSoftmax() as probe:
        outputs, matching = detector.network.neck(features, return_matching=return_matching)
    assert 0 < probe.largest <= 2000  # a (2, 256, 84) S_hat would be 43,008
    for y, y_expected in zip(outputs, expected):
        torch.testing.assert_close(y, y_expected, rtol=1e-5, atol=1e-5)
    if return_matching:
        first = matching[0]
        with LargestSoftmax() as probe:
            summary = first.summary(image=1)
        assert probe.largest <= 2000
        s_hat = expected_scores[0][1]  # (256, 84)
        torch.testing.assert_close(first.rows([0, 17, 255], image=1), s_hat[[0, 17, 255]], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(summary["peak"], s_hat.max(dim=1).values, rtol=1e-5, atol=1e-6)
        assert torch.equal(summary["argmax"], s_hat.argmax(dim=1))
        entropy = -(s_hat * s_hat.log()).sum(dim=1)
        torch.testing.assert_close(summary["entropy"], entropy, rtol=1e-4, atol=1e-5)


def test_pool_to_budget_by_hand():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)  # row-major 0..24
    assert pool_to_budget(x, 0)[1] == 1 and pool_to_budget(x, 25)[0] is x
    pooled, r = pool_to_budget(x, 9)  # r = 2: 3 x 3 cells, the last row and column average what exists
    assert r == 2
    expected = torch.tensor([[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2],
                             [(10 + 11 + 15 + 16) / 4, (12 + 13 + 17 + 18) / 4, (14 + 19) / 2],
                             [(20 + 21) / 2, (22 + 23) / 2, 24.0]])
    torch.testing.assert_close(pooled[0, 0], expected)
    pooled, r = pool_to_budget(x, 8)  # 9 > 8: r = 4, 2 x 2 cells
    assert r == 4 and pooled.shape[-2:] == (2, 2) and float(pooled[0, 0, 1, 1]) == 24.0


def test_key_budget_matches_pooled_deeper_maps():
    """With a budget of 16 cells, layer 1 (16 x 16 at 128 px) matches layer 2 pooled 8 x 8 -> 4 x 4 and
    layers 3, 4 whole; the neck equals SPEC §4 on those pooled maps, and the columns know their stride."""
    detector = randomised_detector("full", key_budget=16)
    neck = detector.network.neck
    features = detector.network.backbone(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        outputs, matching = neck(features, return_matching=True)
        expected, expected_scores = reference_neck(neck, features, pool=lambda x_deep: pool_to_budget(x_deep, 16)[0])
        unbudgeted, _ = reference_neck(neck, features)
    for y, y_expected in zip(outputs, expected):
        torch.testing.assert_close(y, y_expected, rtol=1e-5, atol=1e-5)
    assert (outputs[0] - unbudgeted[0]).abs().max() > 1e-3  # pooling changed what layer 1 borrowed
    assert matching[0].source_grids == [(4, 4), (4, 4), (2, 2)] and matching[0].source_strides == [32, 32, 64]
    torch.testing.assert_close(matching[0].dense(1), expected_scores[0][1], rtol=1e-5, atol=1e-6)
    detector.network.neck.key_budget = 256  # every map already fits: the same as no budget
    with torch.no_grad():
        same, _ = detector.network.neck(features)
    torch.testing.assert_close(same[0], unbudgeted[0], rtol=1e-5, atol=1e-5)
