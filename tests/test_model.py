import math

import pytest
import torch
from torch import nn

from borrowcore import DetectorConfig, build_detector
from borrowcore.models.backbone import VGGBackbone, receptive_fields, scaled_channels
from borrowcore.models.head import SSDHead
from borrowcore.models.neck import BorrowNeck, FeatureMatchingBlock, FeatureRepresentingBlock

from conftest import make_detector


def features_at(size: int, channels=(16, 16, 32, 16), batch: int = 2, seed: int = 0):
    """Random [X(1)..X(4)] with the grids of a 2^k-stride backbone at ``size``."""
    g = torch.Generator().manual_seed(seed)
    grids = [(size + 7) // 8, (size + 15) // 16, (size + 31) // 32]
    grids.append((grids[-1] + 1) // 2)
    return [torch.randn(batch, c, h, h, generator=g) for c, h in zip(channels, grids)]


def test_backbone_grids_and_channels_at_300():
    backbone = VGGBackbone(width=1.0)
    with torch.no_grad():
        xs = backbone(torch.zeros(1, 3, 300, 300))
    assert [tuple(x.shape[1:]) for x in xs] == [(512, 38, 38), (512, 19, 19), (1024, 10, 10), (512, 5, 5)]
    assert backbone.out_channels == [512, 512, 1024, 512]


def test_backbone_grids_at_256_and_width():
    backbone = VGGBackbone(width=0.125, batch_norm=True)
    with torch.no_grad():
        xs = backbone(torch.zeros(1, 3, 256, 256))
    assert [x.shape[-1] for x in xs] == [32, 16, 8, 4]
    assert backbone.out_channels == [64, 64, 128, 64]
    assert scaled_channels(64, 0.1) == 8  # never below 8


def test_receptive_fields_match_table_1():
    assert receptive_fields(VGGBackbone(width=0.125)) == [108, 228, 340, 468]
    # SPEC §2: dilation 3 in fc6 breaks Table 1
    assert receptive_fields(VGGBackbone(width=0.125, fc6_dilation=3)) == [108, 228, 468, 596]


def test_matching_dimensions_at_300():
    """Exact matching (SPEC §4): every deeper cell a key. The fast default pools each deeper map with more than
    64 cells by the smallest power of two that leaves at most 64: 19 x 19 by 4 and 10 x 10 by 2, to 5 x 5."""
    exact = build_detector(DetectorConfig(neck="full", num_classes=2, width=0.125, matching="exact")).eval()
    with torch.no_grad():
        out = exact.network(torch.zeros(1, 3, 300, 300), return_matching=True)
    assert [m.dense().shape for m in out.matching] == [(1444, 486), (361, 125), (100, 25)]
    assert out.cls_logits.shape == (1, 11580, 3) and out.box_regression.shape == (1, 11580, 4)
    first = out.matching[0]
    assert first.source_layers == [2, 3, 4] and first.source_grids == [(19, 19), (10, 10), (5, 5)]
    assert first.query_stride == 8 and first.source_strides == [16, 32, 64]

    fast = build_detector(DetectorConfig(neck="full", num_classes=2, width=0.125)).eval()
    with torch.no_grad():
        out = fast.network(torch.zeros(1, 3, 300, 300), return_matching=True)
    assert [m.dense().shape for m in out.matching] == [(1444, 75), (361, 50), (100, 25)]
    first = out.matching[0]
    assert first.source_grids == [(5, 5), (5, 5), (5, 5)] and first.source_strides == [64, 64, 64]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_matching_rows_sum_to_one(similarity):
    xs = features_at(128)
    fmb = FeatureMatchingBlock(16, [16, 32, 16], similarity)
    scores = fmb(xs[0], xs[1:])
    assert scores.shape == (2, 16 * 16, 8 * 8 + 4 * 4 + 2 * 2)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, 256))
    assert (scores >= 0).all()


def identity_conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels_in, channels_out, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[:, :, 0, 0] = torch.eye(channels_out, channels_in)
    return conv


def test_equal_embedding_gets_the_highest_score():
    """A deeper cell equal to the shallow cell's embedding is the best match."""
    c = 8
    fmb = FeatureMatchingBlock(c, [c, c])
    fmb.theta = identity_conv(c, c)
    fmb.phi = nn.ModuleList([identity_conv(c, c), identity_conv(c, c)])
    g = torch.Generator().manual_seed(1)
    shallow = torch.randn(1, c, 4, 4, generator=g)
    deep1 = torch.randn(1, c, 2, 2, generator=g)
    deep2 = torch.randn(1, c, 1, 1, generator=g)
    target = shallow[0, :, 2, 3]  # shallow cell row 2, column 3 = row 11 of S_hat
    deep1[0, :, 1, 0] = target  # deeper cell 2 of layer n+1 -> column 2
    scores = fmb(shallow, [deep1, deep2])
    assert scores[0, 11].argmax().item() == 2
    # cosine: the perfect match's logit is tau * 1, the largest possible
    assert scores[0, 11, 2] > 0.5


def test_fused_and_materialised_paths_agree():
    xs = features_at(128, seed=3)
    torch.manual_seed(0)
    fmb, frb = FeatureMatchingBlock(16, [16, 32, 16]), FeatureRepresentingBlock([16, 32, 16], 24)
    grid = tuple(xs[0].shape[-2:])
    materialised = frb(fmb(xs[0], xs[1:]), xs[1:], grid)
    fused = frb.fused(*fmb.embed(xs[0], xs[1:]), xs[1:], grid)
    assert materialised.shape == (2, 24, 16, 16)
    torch.testing.assert_close(fused, materialised, rtol=1e-5, atol=1e-5)


def test_neck_fused_and_materialised_agree_after_training_like_weights():
    """With a non-zero C_n the borrowed map matters; both FRB paths still give the same Y(n)."""
    torch.manual_seed(0)
    neck = BorrowNeck([16, 16, 32, 16], (8, 16, 32, 64), "full", 24)
    for block in neck.fusion:
        nn.init.normal_(block.combine.weight, std=0.1)
    xs = features_at(128, seed=5)
    fused, none = neck(xs)
    materialised, matching = neck(xs, return_matching=True)
    assert none == [] and len(matching) == 3
    for a, b in zip(fused, materialised):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def copy_shared_weights(source: nn.Module, target: nn.Module) -> None:
    """Backbone and head weights of ``source`` into ``target`` (the neck's own weights stay)."""
    shared = {k: v for k, v in source.state_dict().items() if not k.startswith("network.neck.")}
    missing, unexpected = target.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith("network.neck.") for k in missing)


@pytest.mark.parametrize("neck", ["context", "borrow", "full"])
def test_every_ablation_equals_ssd_at_initialisation(tiny_config, neck):
    ssd = make_detector(tiny_config, "ssd", seed=0).eval()
    other = make_detector(tiny_config, neck, seed=1).eval()
    copy_shared_weights(ssd, other)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ssd.network(images), other.network(images)
    assert torch.equal(a.cls_logits, b.cls_logits) and torch.equal(a.box_regression, b.box_regression)
    # and the neck really is there: a non-zero C_n changes the outputs
    with torch.no_grad():
        for block in other.network.neck.fusion:
            block.combine.weight.normal_(std=0.1)
        c = other.network(images)
    assert not torch.allclose(a.cls_logits, c.cls_logits)


def neck_gradients(detector) -> dict[str, bool]:
    neck = detector.network.neck
    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    return {
        "fmb": has_grad(neck.matching), "frb": has_grad(neck.representing),
        "deconv": any(has_grad(b.deconv) for b in neck.fusion), "combine": any(has_grad(b.combine) for b in neck.fusion),
    }


def test_gradients_reach_every_block_after_one_step(tiny_config):
    """SPEC §4: at init only C_n gets gradient (dL/dZ = C_n^T dL/dY = 0); after one step all blocks do."""
    detector = make_detector(tiny_config, "full").train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01)
    images = torch.rand(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 20, 50, 70]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 30, 100, 90], [5, 5, 30, 30]]), "labels": torch.tensor([2, 3])}]
    loss = sum(detector(images, targets).values())
    loss.backward()
    assert neck_gradients(detector) == {"fmb": False, "frb": False, "deconv": False, "combine": True}
    optimizer.step()
    optimizer.zero_grad()
    sum(detector(images, targets).values()).backward()
    assert neck_gradients(detector) == {"fmb": True, "frb": True, "deconv": True, "combine": True}


class OneAnchorNetwork(nn.Module):
    """A stand-in core network for a 128 px input: class ``label`` at anchor ``anchor`` with zero offsets (the
    anchor itself), background everywhere else."""

    def __init__(self, anchor: int, label: int, num_classes: int = 3) -> None:
        super().__init__()
        self.anchor, self.label, self.num_classes = anchor, label, num_classes

    def forward(self, images, return_matching=False):
        from borrowcore.models.detector import NetworkOutput

        grids = [(images.shape[-2] // s, images.shape[-1] // s) for s in (8, 16, 32, 64)]
        count = sum(h * w for h, w in grids) * 6  # 6 anchors a cell: ratios 1, 1 (S'_k), 1.5, 1/1.5, 3, 1/3
        logits = torch.zeros(images.shape[0], count, self.num_classes + 1)
        logits[:, :, 0] = 10.0
        logits[:, self.anchor] = 0.0
        logits[:, self.anchor, self.label] = 10.0
        return NetworkOutput(logits, torch.zeros(images.shape[0], count, 4), grids, [])


def test_eval_api_returns_boxes_in_each_images_pixels(tiny_config):
    detector = make_detector(tiny_config).eval()
    images = [torch.rand(3, 200, 300), torch.randint(0, 255, (3, 90, 60), dtype=torch.uint8)]
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2
    for detection in out:
        assert set(detection) == {"boxes", "labels", "scores"}
        assert detection["boxes"].shape[1] == 4 and 0 < len(detection["boxes"]) <= 200
        assert (detection["labels"] >= 1).all() and (detection["labels"] <= 3).all()
        assert (detection["scores"][:-1] >= detection["scores"][1:]).all()  # best first
    # by hand: at 128 px conv4_3 is 16 x 16; row 5, column 9, first anchor (S_1 = 4 x 8 = 32 px, ratio 1) is
    # centred on (9.5 x 8, 5.5 x 8) = (76, 44): [60, 28, 92, 60] in the input, scaled back by W / 128, H / 128
    detector.network = OneAnchorNetwork(anchor=(5 * 16 + 9) * 6, label=2)
    with torch.no_grad():
        out = detector(images)
    expected = [[60 * 300 / 128, 28 * 200 / 128, 92 * 300 / 128, 60 * 200 / 128],  # 200 x 300 (H x W)
                [60 * 60 / 128, 28 * 90 / 128, 92 * 60 / 128, 60 * 90 / 128]]     # 90 x 60
    for detection, box in zip(out, expected):
        assert detection["labels"].tolist() == [2]  # the other anchors score e^0 / (e^10 + 3) < 0.01
        assert detection["boxes"].tolist() == [pytest.approx(box, abs=1e-4)]
        assert detection["scores"].tolist() == [pytest.approx(math.exp(10) / (math.exp(10) + 3))]


def test_return_matching_per_image(tiny_config):
    detector = make_detector(tiny_config).eval()
    with torch.no_grad():
        out = detector([torch.rand(3, 128, 128), torch.rand(3, 64, 64)], return_matching=True)
    matching = out[1]["matching"]
    assert [(m.queries.shape[:2], m.keys.shape[:2]) for m in matching] == [((1, 256), (1, 84)), ((1, 64), (1, 20)), ((1, 16), (1, 4))]
    ssd = make_detector(tiny_config, "ssd").eval()
    with torch.no_grad():
        assert ssd([torch.rand(3, 128, 128)], return_matching=True)[0]["matching"] == []


def randomise_like_a_trained_vgg(vgg: nn.Module, seed: int = 0) -> nn.Module:
    """Nonzero conv biases and nontrivial BatchNorm statistics and affines (torchvision inits them to 0 / 1),
    so that a loader that drops or misplaces any of them gives other features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in vgg.modules():
            if isinstance(module, nn.Conv2d):
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return vgg.eval()


def test_imagenet_vgg16_weights_load(tmp_path):
    import torchvision

    for bn in (False, True):
        vgg = randomise_like_a_trained_vgg((torchvision.models.vgg16_bn if bn else torchvision.models.vgg16)(weights=None))
        path = tmp_path / f"vgg16{'_bn' if bn else ''}.pth"
        torch.save(vgg.state_dict(), path)  # the whole model's state dict, classifier.* included
        backbone = VGGBackbone(width=1.0, batch_norm=bn)
        assert backbone.load_vgg16(path) == [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                                             for i in range(1, n + 1)]
        convs = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
        ours = [m for m in backbone.vgg_layers() if isinstance(m, nn.Conv2d)]
        assert len(convs) == len(ours) == 13
        for theirs, mine in zip(convs, ours):
            assert torch.equal(theirs.weight, mine.weight)
            if not bn:
                assert torch.equal(theirs.bias, mine.bias)
    with pytest.raises(ValueError, match="width 1.0"):
        VGGBackbone(width=0.5).load_vgg16(tmp_path / "vgg16.pth")
    with pytest.raises(ValueError, match="vgg16 but the backbone has batch_norm=True"):
        VGGBackbone(width=1.0, batch_norm=True).load_vgg16(tmp_path / "vgg16.pth")


@pytest.mark.parametrize("bn", [False, True])
def test_vgg16_features_equal_torchvisions_at_conv4_3_and_conv5_3(tmp_path, bn):
    # vgg16_bn: the conv bias (which the BatchNorm backbone's convs lack) is folded into running_mean;
    # dropping it shifts conv4_3 by O(1)
    import torchvision

    vgg = randomise_like_a_trained_vgg((torchvision.models.vgg16_bn if bn else torchvision.models.vgg16)(weights=None))
    path = tmp_path / "vgg.pth"
    torch.save({k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}, path)
    backbone = VGGBackbone(width=1.0, batch_norm=bn)
    backbone.load_vgg16(path)
    backbone.eval()
    conv4_3_end = 33 if bn else 23  # torchvision's features index after conv4_3's ReLU
    conv5_3_end = 43 if bn else 30
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # even grids: ceil = floor pools
    with torch.no_grad():
        theirs_4, ours_4 = vgg.features[:conv4_3_end](x), backbone.to_conv4_3(x)  # (2, 512, 8, 8)
        theirs_5, ours_5 = vgg.features[:conv5_3_end](x), backbone.to_conv5_3(ours_4)  # (2, 512, 4, 4)
    assert ours_4.shape == theirs_4.shape == (2, 512, 8, 8) and theirs_4.abs().max() > 0.1
    for theirs, ours in ((theirs_4, ours_4), (theirs_5, ours_5)):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def ssd_pytorch_vgg(batch_norm: bool = False) -> nn.ModuleList:
    """ssd.pytorch's ``vgg(base['300'], 3)`` (ssd.py), the layout of its vgg16_reducedfc.pth."""
    layers, in_channels = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        elif v == "C":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
    conv7 = nn.Conv2d(1024, 1024, kernel_size=1)
    layers += [pool5, conv6, nn.ReLU(inplace=True), conv7, nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


def test_ssd_pytorch_reducedfc_weights_load(tmp_path):
    base = randomise_like_a_trained_vgg(ssd_pytorch_vgg())
    state = base.state_dict()
    assert {int(k.split(".")[0]) for k in state} == {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33}
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save(state, path)

    # fc6_dilation 3: fc6's taps 3 x 32 = 96 px apart, as the file's dilation 6 at stride 16: fc6 and fc7 load
    backbone = VGGBackbone(width=1.0, fc6_dilation=3).eval()
    assert backbone.load_vgg16(path)[-3:] == ["conv5_3", "fc6", "fc7"]
    fc6, fc7 = [m for m in backbone.to_conv_fc7 if isinstance(m, nn.Conv2d)]
    assert torch.equal(fc6.weight, base[31].weight) and torch.equal(fc6.bias, base[31].bias)
    assert torch.equal(fc7.weight, base[33].weight) and torch.equal(fc7.bias, base[33].bias)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = x
        for module in base[:30]:  # through conv5_3's ReLU
            theirs = module(theirs)
        ours = backbone.to_conv5_3(backbone.to_conv4_3(x))
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))

    # fc6_dilation 1 (SPEC's default): same shapes, other taps: fc6 and fc7 stay fresh
    fresh = VGGBackbone(width=1.0)
    before = [m.weight.clone() for m in fresh.to_conv_fc7 if isinstance(m, nn.Conv2d)]
    assert fresh.load_vgg16(path)[-1] == "conv5_3"
    assert all(torch.equal(a, m.weight) for a, m in zip(before, [m for m in fresh.to_conv_fc7 if isinstance(m, nn.Conv2d)]))
    # inside a whole ssd.pytorch SSD's state dict (vgg.*, extras.*, loc.*, conf.*)
    whole = tmp_path / "ssd300.pth"
    torch.save({**{f"vgg.{k}": v for k, v in state.items()}, "extras.0.weight": torch.zeros(256, 1024, 1, 1)}, whole)
    assert VGGBackbone(width=1.0, fc6_dilation=3).load_vgg16(whole)[-1] == "fc7"

    # other layouts: a clear error naming the file
    with pytest.raises(ValueError, match="vgg16_reducedfc but the backbone has batch_norm=True"):
        VGGBackbone(width=1.0, batch_norm=True).load_vgg16(path)
    torch.save({k: v for k, v in state.items() if not k.startswith("33.")}, tmp_path / "no_fc7.pth")
    with pytest.raises(ValueError, match=r"no_fc7.pth: not a vgg16_reducedfc layout.*found indices \[0, 2, .*31\]"):
        VGGBackbone(width=1.0).load_vgg16(tmp_path / "no_fc7.pth")
    torch.save(randomise_like_a_trained_vgg(ssd_pytorch_vgg(batch_norm=True)).state_dict(), tmp_path / "bn.pth")
    with pytest.raises(ValueError, match="bn.pth: not a vgg16_reducedfc layout"):
        VGGBackbone(width=1.0, batch_norm=True).load_vgg16(tmp_path / "bn.pth")
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="resnet.pth: not a VGG16 state dict.*backbone.conv1.weight"):
        VGGBackbone(width=1.0).load_vgg16(tmp_path / "resnet.pth")


def test_prior_probability_init_sets_every_anchors_foreground_share():
    """K = 3, p = 0.25: the background bias is log(3 * 0.75 / 0.25) = log 9 = 2.1972 (by hand), so on
    zero features every anchor gives background 9 / 12 and each class 1 / 12; p = 0 keeps zero biases."""
    features = [torch.zeros(1, 8, 4, 4), torch.zeros(1, 16, 2, 2)]
    head = SSDHead([8, 16], num_anchors=3, num_classes=4, prior_prob=0.25)
    logits, _ = head(features)
    assert logits.shape == (1, (16 + 4) * 3, 4)
    assert torch.allclose(logits[..., 0], torch.full_like(logits[..., 0], 2.1972), atol=1e-4)
    assert torch.allclose(logits.softmax(-1), torch.tensor([9 / 12, 1 / 12, 1 / 12, 1 / 12]).expand_as(logits))
    plain, _ = SSDHead([8, 16], num_anchors=3, num_classes=4)(features)
    assert torch.equal(plain, torch.zeros_like(plain))


def test_prior_probability_reaches_the_head_from_the_config(tiny_config):
    detector = build_detector(DetectorConfig(**{**tiny_config.__dict__, "prior_prob": 0.01}))
    bias = detector.network.head.classification[0].bias.view(-1, 4)  # (A, K + 1)
    assert torch.allclose(bias[:, 0], torch.tensor(math.log(3 * 99.0)))
    assert torch.equal(bias[:, 1:], torch.zeros_like(bias[:, 1:]))
    for conv in [*detector.network.head.classification, *detector.network.head.regression]:
        assert 0.005 < conv.weight.std() < 0.015  # N(0, 0.01^2), not Xavier's spread
    with pytest.raises(ValueError, match="prior_prob"):
        DetectorConfig(prior_prob=1.0)


def test_whole_image_shrink_maps_a_large_photo_back_to_its_pixels():
    """oversize "shrink": a 300 x 500 photo over max_whole_side 250 is scaled by 0.5 to 150 x 250 (no tiles),
    and its detections are those of the shrunk photo, times 2; the explanation draws in the photo's pixels."""
    import torch.nn.functional as F

    from borrowcore.data.tiling import recipe_tile_size
    from borrowcore.evaluation.explain import explain
    from borrowcore.models.config import DetectorConfig
    from borrowcore.models.detector import build_detector

    config = DetectorConfig(neck="full", num_classes=1, input_size=128, width=0.0625, anchor_scale=2.0,
                            aspect_ratios=[1.2], inference="whole", max_whole_side=250, oversize="shrink",
                            prior_prob=0.25, score_threshold=0.2)
    torch.manual_seed(0)
    detector = build_detector(config).eval()
    photo = torch.rand(3, 300, 500, generator=torch.Generator().manual_seed(1))
    assert detector.whole_size(300, 500) == (150, 250) and detector.whole_size(100, 200) == (100, 200)
    assert detector.input_scales([(300, 500)]) == [(0.5, 0.5)]
    assert recipe_tile_size(detector, 300, 500) is None  # tiles only with oversize "tiles"
    shrunk = F.interpolate(photo[None], size=(150, 250), mode="bilinear", align_corners=False, antialias=True)[0]
    with torch.no_grad():
        big, small = detector([photo])[0], detector([shrunk])[0]
    assert len(big["boxes"]) > 0
    torch.testing.assert_close(big["scores"], small["scores"])
    torch.testing.assert_close(big["boxes"], (small["boxes"] * 2).clamp(max=torch.tensor([500, 300, 500, 300.0])))
    explanation = explain(detector, photo)
    assert explanation.scale() == (2.0, 2.0)
    tiles = build_detector(DetectorConfig(**{**config.__dict__, "oversize": "tiles"}))
    assert recipe_tile_size(tiles, 300, 500) == 128


def test_zoom_out_adds_the_half_scale_pass_large_boxes_in_the_photo_pixels():
    """zoom_out [0.5]: the detections are the native pass's plus the boxes of at least zoom_out_min px that
    the same weights find on the photo scaled by 0.5 (mapped back: times 2), merged by class-wise NMS (34 px:
    about half of them, with these random weights). An
    unreachable zoom_out_min leaves the native pass alone."""
    import dataclasses

    import torch.nn.functional as F
    from torchvision.ops import batched_nms, box_area

    from borrowcore.models.config import DetectorConfig
    from borrowcore.models.detector import build_detector

    config = DetectorConfig(neck="full", num_classes=2, input_size=128, width=0.0625, anchor_scale=2.0,
                            aspect_ratios=[1.2], inference="whole", prior_prob=0.25, score_threshold=0.2,
                            detections_per_image=1000)
    torch.manual_seed(0)
    plain = build_detector(config).eval()
    zoomed = build_detector(dataclasses.replace(config, zoom_out=[0.5], zoom_out_min=34)).eval()
    zoomed.load_state_dict(plain.state_dict())
    never = build_detector(dataclasses.replace(config, zoom_out=[0.5], zoom_out_min=10_000)).eval()
    never.load_state_dict(plain.state_dict())
    photo = torch.rand(3, 256, 320, generator=torch.Generator().manual_seed(2))
    half = F.interpolate(photo[None], size=(128, 160), mode="bilinear", align_corners=False, antialias=True)[0]
    with torch.no_grad():
        native, small, merged = plain([photo])[0], plain([half])[0], zoomed([photo])[0]
        alone = never([photo])[0]
    for key in native:
        torch.testing.assert_close(alone[key], native[key])
    large = box_area(small["boxes"] * 2).sqrt() >= 34
    assert 0 < large.sum() < len(large)  # both kinds of half-pass box: the rule is exercised
    boxes = torch.cat([native["boxes"], small["boxes"][large] * 2])
    scores = torch.cat([native["scores"], small["scores"][large]])
    labels = torch.cat([native["labels"], small["labels"][large]])
    keep = batched_nms(boxes, scores, labels, config.nms_iou)[: config.detections_per_image]
    torch.testing.assert_close(merged["boxes"], boxes[keep])
    torch.testing.assert_close(merged["scores"], scores[keep])
    assert torch.equal(merged["labels"], labels[keep])
    assert (keep >= len(native["boxes"])).any()  # some half-pass box survived the merge
    with pytest.raises(ValueError, match="zoom_out"):
        DetectorConfig(zoom_out=[1.0])


def test_recipe_overrides_load_with_the_weights_and_refuse_other_fields(tmp_path):
    """load_detector(recipe=...) runs a checkpoint with another inference recipe (the weights unchanged);
    a field that shapes the weights, or a malformed --recipe item, is refused by name."""
    from borrowcore.models.checkpoint import load_detector, parse_recipe, save_checkpoint
    from borrowcore.models.config import DetectorConfig
    from borrowcore.models.detector import build_detector

    detector = build_detector(DetectorConfig(num_classes=1, input_size=128, width=0.0625, inference="whole"))
    save_checkpoint(tmp_path / "m.pt", detector)
    recipe = parse_recipe(["oversize=shrink", "zoom_out=[0.5]", "zoom_out_min=300"])
    assert recipe == {"oversize": "shrink", "zoom_out": [0.5], "zoom_out_min": 300}
    loaded = load_detector(tmp_path / "m.pt", recipe=recipe)
    assert loaded.zoom_out == (0.5,) and loaded.zoom_out_min == 300 and loaded.shrink_above == 2048
    assert loaded.config.zoom_out == [0.5]
    for key, value in detector.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="width"):
        load_detector(tmp_path / "m.pt", recipe={"width": 0.5})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_recipe(["zoom_out"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_recipe(["input_size=256"])
