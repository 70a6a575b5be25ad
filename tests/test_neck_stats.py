"""What the neck reads and learns: C_n's slices, contributions and the gradient norms by part, by hand."""

import math

import pytest
import torch
from conftest import make_detector

from borrowcore.evaluation.neck_stats import fusion_contributions, fusion_slices, fusion_weight_norms, gradient_norms


def test_fusion_slices_follow_the_concatenation(tiny_config):
    neck = make_detector(tiny_config).network.neck
    c_1, c = neck.fusion[0].combine.out_channels, neck.representing[0].g[0].out_channels
    assert fusion_slices(neck.fusion[0], c_1) == {"x": slice(0, c_1), "z": slice(c_1, c_1 + c),
                                                  "context": slice(c_1 + c, c_1 + 2 * c)}
    context_only = make_detector(tiny_config, neck="context").network.neck
    assert set(fusion_slices(context_only.fusion[0], c_1)) == {"x", "context"}


def test_fusion_weight_norms_by_hand(tiny_config):
    neck = make_detector(tiny_config).network.neck
    with torch.no_grad():
        neck.fusion[0].combine.weight.fill_(1.0)  # zero-init elsewhere: norms 0
    c_1, c = neck.fusion[0].combine.out_channels, neck.representing[0].g[0].out_channels
    norms = fusion_weight_norms(neck)
    assert norms["1"] == pytest.approx({"x": c_1, "z": math.sqrt(c_1 * c), "context": math.sqrt(c_1 * c)})
    assert norms["2"] == {"x": 0.0, "z": 0.0, "context": 0.0}


def test_fusion_contributions_identity_on_x_reads_the_residual(tiny_config):
    detector = make_detector(tiny_config).eval()
    block = detector.network.neck.fusion[0]
    c_1 = block.combine.out_channels
    with torch.no_grad():
        block.combine.weight[:, :c_1, 0, 0] = torch.eye(c_1)  # W_X = I: its term is X(1) itself
    terms = fusion_contributions(detector, [torch.rand(3, 128, 128), torch.rand(3, 128, 160)])
    assert terms["1"]["x"] == pytest.approx(terms["1"]["residual_x"], rel=1e-5) and terms["1"]["x"] > 0
    assert terms["1"]["z"] == 0 and terms["1"]["context"] == 0  # zero-init slices read nothing
    assert terms["2"]["x"] == 0 and terms["2"]["residual_x"] > 0


def test_gradient_norms_by_part(tiny_config):
    detector = make_detector(tiny_config)
    theta = detector.network.neck.matching[0].theta.weight
    (theta.sum() + 2 * detector.network.head.classification[0].bias.sum()).backward()
    norms = gradient_norms(detector)
    bias = detector.network.head.classification[0].bias
    assert norms == pytest.approx({"fmb_theta_phi": math.sqrt(theta.numel()), "head": 2 * math.sqrt(bias.numel())})
