"""The neck pinned to SPEC §4 written out plainly: whatever the neck does to be fast must give these values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from borrowcore import DetectorConfig, build_detector
from borrowcore.config import NECKS

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


def reference_neck(neck, features):
    """SPEC §4 one step at a time from the neck's own modules: -> [Y(1)..Y(N)], [S_hat(1)..S_hat(N-1)]."""
    if neck.neck == "ssd":
        return list(features), []
    cells = lambda t: t.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)  # noqa: E731
    outputs, scores = [features[-1]], []
    for n in range(len(features) - 2, -1, -1):
        x, deeper = features[n], features[n + 1:]
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


def randomised_detector(neck: str, similarity: str = "cosine"):
    """Width 0.125 with BatchNorm, every weight random (C_n too, so Z(n) and D_n reach Y(n)), eval mode."""
    torch.manual_seed(0)
    config = DetectorConfig(neck=neck, num_classes=3, input_size=128, width=0.125, batch_norm=True, similarity=similarity)
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
