import pickle

import pytest
import torch
from torch import nn

from borrowcore import CheckpointError, DetectorConfig, load_detector, save_checkpoint
from borrowcore.evaluation.evaluate import model_entry
from borrowcore.models.checkpoint import fold_batch_norm, load_state, read_checkpoint

from conftest import make_detector


class Payload:
    """A pickled object: weights-only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def test_round_trip_gives_identical_outputs(tmp_path, tiny_config):
    detector = make_detector(tiny_config).eval()
    with torch.no_grad():  # make C_n non-zero so the neck's weights matter
        for block in detector.network.neck.fusion:
            block.combine.weight.normal_(std=0.1)
    path = tmp_path / "model.pt"
    save_checkpoint(path, detector, train_state={"step": 7, "rng": torch.get_rng_state()})
    loaded = load_detector(path, fold_bn=False)  # the modules as trained: bit for bit
    assert not loaded.training and loaded.class_names == detector.class_names
    assert loaded.config == detector.config
    images = torch.rand(2, 3, 128, 128)
    assert loaded.network.backbone.to_conv4_3[0].weight.is_contiguous(memory_format=torch.channels_last)  # CPU
    detector.to(memory_format=torch.channels_last)  # the same kernels on both sides
    with torch.no_grad():
        a, b = detector.network(images), loaded.network(images)
    assert torch.equal(a.cls_logits, b.cls_logits) and torch.equal(a.box_regression, b.box_regression)
    checkpoint = read_checkpoint(path)
    assert checkpoint["train_state"]["step"] == 7
    assert set(checkpoint["versions"]) >= {"torch", "torchvision", "borrowcore"}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_wrong_architecture_names_what_differs(tmp_path, tiny_config):
    path = tmp_path / "full.pt"
    save_checkpoint(path, make_detector(tiny_config, "full"))
    other = make_detector(DetectorConfig(**{**tiny_config.__dict__, "neck": "ssd", "width": 0.25}))
    with pytest.raises(CheckpointError) as error:
        load_state(other, read_checkpoint(path), path)
    message = str(error.value)
    assert "full.pt" in message and "neck: checkpoint 'full', model 'ssd'" in message
    assert "width: checkpoint 0.125, model 0.25" in message


def test_tampered_weights_are_named(tmp_path, tiny_config):
    detector = make_detector(tiny_config)
    path = tmp_path / "tampered.pt"
    save_checkpoint(path, detector)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"].pop("network.head.regression.0.bias")
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"tampered.pt: weights do not fit.*network.head.regression.0.bias"):
        load_detector(path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt: not a PyTorch checkpoint"):
        load_detector(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="plain.pt: not a borrowcore checkpoint"):
        load_detector(plain)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_detector(tmp_path / "missing.pt")


def test_pickle_payload_is_refused(tmp_path, capsys):
    for name, save in (("zip.pt", lambda obj, p: torch.save(obj, p)),
                       ("raw.pkl", lambda obj, p: p.write_bytes(pickle.dumps(obj)))):
        path = tmp_path / name
        save({"format": "borrowcore-checkpoint", "payload": Payload()}, path)
        with pytest.raises(CheckpointError, match=f"{name}: refused"):
            load_detector(path)
    assert "this would run on load" not in capsys.readouterr().out


def test_bad_config_in_checkpoint(tmp_path, tiny_config):
    path = tmp_path / "bad.pt"
    save_checkpoint(path, make_detector(tiny_config))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["neck"] = "magic"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="bad.pt: invalid model config.*magic"):
        load_detector(path)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, tiny_config, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_detector(tiny_config), train_state={"step": 1})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_detector(tiny_config), train_state={"step": 2})
    monkeypatch.undo()
    assert read_checkpoint(path)["train_state"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_at_another_input_size_keeps_the_weights(tmp_path, tiny_config):
    """Tiles of T px at native resolution need the detector at S = T: same weights, anchors rebuilt."""
    detector = make_detector(tiny_config).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, detector)
    larger = load_detector(path, input_size=256, fold_bn=False)  # the state_dict as trained
    assert larger.input_size == 256 and larger.config.input_size == 256
    assert larger.config.width == tiny_config.width
    for name, value in detector.state_dict().items():
        assert torch.equal(value, larger.state_dict()[name]), name
    with torch.no_grad():
        small, large = detector.network(torch.rand(1, 3, 128, 128)), larger.network(torch.rand(1, 3, 256, 256))
    assert [(2 * h, 2 * w) for h, w in small.grid_sizes] == large.grid_sizes  # every grid doubles both sides
    assert large.cls_logits.shape[1] == larger.anchors(large.grid_sizes, 256).shape[0] == 4 * small.cls_logits.shape[1]
    assert load_detector(path).input_size == 128  # the checkpoint itself is unchanged


def test_matching_is_stored_and_can_be_set_at_load(tmp_path, tiny_config):
    """A checkpoint keeps its matching (fast with its key budget, or exact); --exact or --key-budget replace it
    at load; a checkpoint from before the field existed runs fast with the default budget."""
    from borrowcore.models.config import DEFAULT_KEY_BUDGET

    path = tmp_path / "budget.pt"
    save_checkpoint(path, make_detector(DetectorConfig(**{**tiny_config.__dict__, "key_budget": 16})))
    assert load_detector(path).network.neck.key_budget == 16 and load_detector(path).config.matching == "fast"
    exact = load_detector(path, exact=True)
    assert exact.network.neck.key_budget == 0 and exact.config.matching == "exact" and exact.config.key_budget == 0
    assert load_detector(path, key_budget=32).network.neck.key_budget == 32
    assert load_detector(path, exact=False).network.neck.key_budget == 16  # fast, the checkpoint's own budget
    image = torch.rand(1, 3, 128, 128)  # layer 1 matches an 8 x 8 map (64 cells): 16 keys pool it to 4 x 4
    with torch.no_grad():  # C_n non-zero in both so the matching reaches the output
        for model in (budgeted := load_detector(path), exact):
            for block in model.network.neck.fusion:
                block.combine.weight.fill_(0.05)
        assert not torch.allclose(budgeted.network(image).cls_logits, exact.network(image).cls_logits)

    old = read_checkpoint(path)
    old["config"] = {k: v for k, v in old["config"].items() if k != "matching"} | {"key_budget": 0}
    torch.save(old, tmp_path / "old.pt")
    loaded = load_detector(tmp_path / "old.pt")
    assert loaded.config.matching == "fast" and loaded.network.neck.key_budget == DEFAULT_KEY_BUDGET
    assert "64 keys per deeper map" in loaded.config.describe_matching()
    assert load_detector(tmp_path / "old.pt", exact=True).config.describe_matching() == "exact matching (every deeper cell)"
    with pytest.raises(ValueError, match="every cell: exact"):
        load_detector(path, key_budget=0)
    with pytest.raises(ValueError, match="takes no key budget"):
        load_detector(path, key_budget=8, exact=True)
    with pytest.raises(ValueError, match="key_budget must be >= 0"):
        DetectorConfig(key_budget=-1)
    with pytest.raises(ValueError, match="applies to matching: fast"):
        DetectorConfig(matching="exact", key_budget=8)
    with pytest.raises(ValueError, match="matching must be one of"):
        DetectorConfig(matching="approximate")
    assert DetectorConfig(neck="ssd").describe_matching().startswith("no matching")


def test_fast_default_is_exact_where_every_deeper_map_fits_the_budget(tiny_config):
    """Fast matching pools only deeper maps with more than K cells: at 128 px (layer 1 matches 8 x 8 = 64
    cells and smaller) the default K = 64 computes what exact matching computes, bit for bit; at 256 px
    (16 x 16 = 256 cells) it does not."""
    torch.manual_seed(0)
    fast = make_detector(DetectorConfig(**{**tiny_config.__dict__, "matching": "fast"})).eval()
    exact = make_detector(DetectorConfig(**{**tiny_config.__dict__, "matching": "exact"})).eval()
    exact.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for model in (fast, exact):
            for block in model.network.neck.fusion:
                block.combine.weight.fill_(0.05)
        small, large = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 256, 256)
        assert torch.equal(fast.network(small).cls_logits, exact.network(small).cls_logits)
        assert not torch.allclose(fast.network(large).cls_logits, exact.network(large).cls_logits)


def test_nms_iou_can_be_set_at_load_and_on_release(tmp_path, tiny_config):
    """--nms-iou replaces the checkpoint's NMS IoU at load (what eval measures) and nothing else; out of
    (0, 1] it is refused."""
    path = tmp_path / "nms.pt"
    detector = make_detector(tiny_config)
    save_checkpoint(path, detector)
    loaded = load_detector(path, nms_iou=0.3, fold_bn=False)  # the state_dict as trained
    assert loaded.config.nms_iou == 0.3 and loaded.postprocess.nms_iou == 0.3
    assert load_detector(path).postprocess.nms_iou == tiny_config.nms_iou == 0.45  # the file is unchanged
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), detector.state_dict().values()))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="NMS IoU must be in"):
            load_detector(path, nms_iou=bad)


class Dtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the dtypes of every convolution's output run under it."""

    def __init__(self):
        super().__init__()
        self.conv = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.conv2d, torch.ops.aten.convolution):
            self.conv.add(out.dtype)
        return out


def test_cpu_inference_precision(tmp_path, tiny_config, monkeypatch):
    """bf16 runs the network's convolutions in bf16 and returns fp32 detections close to fp32's; "auto" takes
    bf16 only where the CPU computes it natively; fp32 runs no bf16 at all."""
    from borrowcore.models.checkpoint import resolve_precision

    path = tmp_path / "model.pt"
    save_checkpoint(path, make_detector(tiny_config, "full"))
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))
    detections, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        detector = load_detector(path, precision=precision)
        assert detector.precision == precision
        with torch.inference_mode(), Dtypes() as probe:
            [detections[precision]] = detector([image], return_matching=True)
        dtypes[precision] = probe.conv
        assert detections[precision]["scores"].dtype == torch.float32
        assert all(m.queries.dtype == torch.float32 for m in detections[precision]["matching"])
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    top = detections["fp32"]["scores"][:20]
    torch.testing.assert_close(detections["bf16"]["scores"][:20], top, atol=0.02, rtol=0.05)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert resolve_precision("auto") == expected and resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")


def test_fold_batch_norm_by_hand():
    """A 1x1 conv x -> 2x, then BatchNorm with mean 1, var 3, eps 1, gamma 4, beta 5: 4 (2x - 1) / 2 + 5 = 4x + 3,
    one conv of weight 4 and bias 3; the ReLU after it stays."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    norm = nn.BatchNorm2d(1, eps=1.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        norm.running_mean.fill_(1.0), norm.running_var.fill_(3.0), norm.weight.fill_(4.0), norm.bias.fill_(5.0)
    block = nn.Sequential(nn.Sequential(conv, norm, nn.ReLU())).eval()  # nested, as in the backbone
    assert fold_batch_norm(block) == 1
    folded = block[0]
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[2], nn.ReLU)
    assert folded[0].weight.item() == 4.0 and folded[0].bias.item() == 3.0
    x = torch.tensor([-2.0, 0.0, 1.5]).view(3, 1, 1, 1)
    assert torch.equal(block(x).flatten(), torch.tensor([0.0, 3.0, 9.0]))
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batch_norm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))  # training mode


def test_load_detector_folds_batch_norm_by_default(tmp_path, tiny_config):
    """Every BatchNorm of the detector folded, the same outputs as the modules as trained up to rounding (with
    statistics far from a fresh BatchNorm's, so a wrong fold cannot pass), and reports say which ran."""
    detector = make_detector(tiny_config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in detector.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g))
                module.running_var.copy_(torch.rand(module.num_features, generator=g) * 2 + 0.25)
                module.weight.copy_(torch.rand(module.num_features, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=g) * 0.1)
        for block in detector.network.neck.fusion:
            block.combine.weight.normal_(std=0.1, generator=g)
    path = tmp_path / "model.pt"
    save_checkpoint(path, detector)
    folded, kept = load_detector(path, precision="fp32"), load_detector(path, precision="fp32", fold_bn=False)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in kept.modules())
    assert norms == 17 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert model_entry(folded)["batch_norm_folded"] and not model_entry(kept)["batch_norm_folded"]
    images = torch.rand(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        a, b = kept.network(images), folded.network(images)
    assert a.cls_logits.std() > 0.1  # the statistics move the outputs: a fold that ignored them would differ
    torch.testing.assert_close(b.cls_logits, a.cls_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.box_regression, a.box_regression, rtol=1e-4, atol=1e-4)
