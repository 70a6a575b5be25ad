import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from borrowcore import ExperimentConfig, load_config, load_detector
from borrowcore.engine.steps import TrainingDiverged, lr_factor, train_step
from borrowcore.engine.train import train
from borrowcore.models.checkpoint import read_checkpoint
from borrowcore.models.loss import MultiBoxLoss

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "synth-tiny"


def tiny_experiment(**train_overrides) -> ExperimentConfig:
    """configs/full.yaml at width 0.125, input 128, on the shipped tiny benchmark."""
    config = load_config(ROOT / "configs" / "full.yaml")
    config.model.input_size = 128
    t = config.train
    t.train_images, t.train_annotations = str(TINY / "images"), str(TINY / "annotations.json")
    t.val_images = t.val_annotations = ""
    t.batch_size, t.workers, t.warmup_steps, t.log_every, t.checkpoint_every = 4, 0, 2, 1, 2
    t.augmentation = "ssd"
    for name, value in train_overrides.items():
        setattr(t, name, value)
    return config


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out_dir / "last.pt")["state_dict"]


def test_lr_schedule_shape():
    assert lr_factor(0, 100, 10, "cosine", []) == pytest.approx(0.001)
    assert lr_factor(10, 100, 10, "cosine", []) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine", []) == pytest.approx(0.0)
    assert lr_factor(55, 100, 10, "cosine", []) == pytest.approx(0.5)
    assert lr_factor(70, 100, 0, "multistep", [0.67, 0.89]) == pytest.approx(0.1)
    assert lr_factor(90, 100, 0, "multistep", [0.67, 0.89]) == pytest.approx(0.01)


class _Linear(torch.nn.Module):
    """loss = w . x, so the gradient is x whatever w is."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))

    def forward(self, images, targets):
        return {"loss_a": (self.w * images).sum()}


@pytest.mark.parametrize("clip, expected_w", [(0.0, [-3.0, -4.0]), (1.0, [-0.6, -0.8]), (10.0, [-3.0, -4.0])])
def test_train_step_reports_the_norm_before_clipping(clip, expected_w):
    model = _Linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    parts = train_step(model, optimizer, scaler, torch.tensor([3.0, 4.0]), [], 1, torch.device("cpu"), "off", clip)
    assert parts["grad_norm"] == pytest.approx(5.0)  # |(3, 4)|, clipped or not
    assert model.w.detach().tolist() == pytest.approx(expected_w)  # clipped to norm 1: (3, 4) / 5


def test_train_writes_checkpoints_and_log(tmp_path):
    config = tiny_experiment(max_steps=4)
    config.train.val_images, config.train.val_annotations = str(TINY / "images"), str(TINY / "twins.json")
    result = train(config, tmp_path, show_progress=False)
    assert result["steps"] == 4
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all({"loss", "loss_box", "loss_cls", "lr", "images_per_s", "grad_norm", "clipped"} <= set(r) for r in steps)
    assert all(r["grad_norm"] > 0 and 0 <= r["clipped"] <= 1 for r in steps)
    assert any(r["event"] == "epoch" and "val_loss" in r for r in records)
    detector = load_detector(tmp_path / "best.pt")
    assert detector.class_names == [c["name"] for c in json.loads((TINY / "annotations.json").read_text())["categories"]]
    assert read_checkpoint(tmp_path / "last.pt")["train_state"]["step"] == 4
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, tmp_path, show_progress=False)


def first_images(out: Path, count: int) -> Path:
    """The tiny benchmark cut to its first ``count`` images (epochs of a few steps)."""
    data = json.loads((TINY / "annotations.json").read_text())
    images = sorted(data["images"], key=lambda image: image["id"])[:count]
    ids = {image["id"] for image in images}
    out.write_text(json.dumps({**data, "images": images,
                               "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}))
    return out


def test_best_checkpoint_by_validation_ap(tmp_path, monkeypatch):
    """Three epochs whose validation AP goes 0.2, 0.5, 0.3 (the real AP is computed at the first, then replaced
    by these): best.pt holds the weights of the second epoch, not the last ones, nor the first ones."""
    import borrowcore.engine.train as train_module

    subset = first_images(tmp_path / "two.json", 2)
    config = tiny_experiment(max_steps=3, val_metric="AP", batch_size=2)  # an epoch is one step
    config.train.train_annotations = config.train.val_annotations = str(subset)
    config.train.val_images = str(TINY / "images")
    scripted, weights = [0.2, 0.5, 0.3], []
    real_validation_ap = train_module.validation_ap

    def validation_ap(detector, t, context):
        if not weights:
            assert 0 <= real_validation_ap(detector, t, context) <= 1
        weights.append({k: v.clone() for k, v in detector.state_dict().items()})
        return scripted[len(weights) - 1]

    monkeypatch.setattr(train_module, "validation_ap", validation_ap)
    train(config, tmp_path / "run", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["val_AP"] for r in epochs] == scripted and [r.get("best", False) for r in epochs] == [True, True, False]
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert best["train_state"]["epoch"] == 1 and best["train_state"]["best_val"] == pytest.approx(-0.5)
    for name, value in best["state_dict"].items():
        torch.testing.assert_close(value, weights[1][name], rtol=0, atol=0, msg=name)
    key = "network.head.classification.0.weight"
    assert not torch.equal(weights[1][key], weights[2][key])  # the third epoch did move the weights
    assert read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["best_val"] == pytest.approx(-0.5)


def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # 48 images / batch 4 = 12 steps an epoch; run 14 steps so the resumed part crosses an epoch
    config = tiny_experiment(max_steps=14, checkpoint_every=5)
    train(config, tmp_path / "straight", show_progress=False)

    import borrowcore.engine.train as train_module

    real_step = train_module.train_step
    calls = {"n": 0}

    def killed_at_step_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # the process dies during step 8; last.pt holds step 5
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", show_progress=False)
    interrupted = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert interrupted["train_state"]["step"] == 5
    at_step_5 = interrupted["state_dict"]
    monkeypatch.setattr(train_module, "train_step", real_step)
    torch.manual_seed(1234)  # a different global RNG state must not matter: it is restored
    train(config, tmp_path / "resumed", resume=True, show_progress=False)

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)
    # and the resumed steps did move the weights (equality is not two frozen models)
    key = "network.head.classification.0.weight"
    assert not torch.allclose(at_step_5[key], resumed[key])


def test_nan_loss_stops_with_clear_error(tmp_path, monkeypatch):
    real_forward = MultiBoxLoss.forward
    calls = {"n": 0}

    def nan_at_third_call(self, *args, **kwargs):
        calls["n"] += 1
        parts = real_forward(self, *args, **kwargs)
        if calls["n"] == 3:
            parts["loss_box"] = parts["loss_box"] * float("nan")
        return parts

    monkeypatch.setattr(MultiBoxLoss, "forward", nan_at_third_call)
    config = tiny_experiment(max_steps=6, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"step 3: loss part 'loss_box' is nan"):
        train(config, tmp_path, show_progress=False)
    checkpoint = read_checkpoint(tmp_path / "last.pt")
    assert checkpoint["train_state"]["step"] == 2
    detector = load_detector(tmp_path / "last.pt")
    assert all(torch.isfinite(p).all() for p in detector.parameters())


# `borrowcore train` as torchrun starts it, each rank's trained parameters saved afterwards to compare them
RANK_WEIGHTS_CLI = """
import os, runpy
import torch
import borrowcore.engine.train as train_module

built, real_build = [], train_module.build_detector
train_module.build_detector = lambda *args, **kwargs: built.append(real_build(*args, **kwargs)) or built[-1]
try:
    runpy.run_module("borrowcore", run_name="__main__", alter_sys=True)
finally:
    torch.save({name: p.detach().clone() for name, p in built[0].named_parameters()},
               os.path.join(os.environ["RANK_WEIGHTS"], "rank%s.pt" % os.environ["RANK"]))
"""


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    """Two ranks, each on its own half of every batch: DDP averages their gradients, so after 3 steps both hold
    the same parameters (ranks that never synchronise would each follow their own data and drift apart)."""
    config_path = tmp_path / "tiny.yaml"
    from borrowcore.engine.config import save_config

    config = tiny_experiment(max_steps=3, checkpoint_every=100)
    config.train.log_every = 1
    save_config(config, config_path)
    script = tmp_path / "rank_weights_cli.py"
    script.write_text(RANK_WEIGHTS_CLI)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RANK_WEIGHTS": str(tmp_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(script), "train", "--config", str(config_path), "--out", str(tmp_path / "run"), "--device", "cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["last.pt", "weights.pt"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    start = records[0]
    assert start["world_size"] == 2 and start["global_batch"] == 8
    assert len([r for r in records if r["event"] == "step"]) == 3  # rank 0 alone writes the log
    last = read_checkpoint(out / "last.pt")
    assert last["train_state"]["step"] == 3
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    for name in rank0:
        torch.testing.assert_close(rank1[name], rank0[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(last["state_dict"][name], rank0[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("override, message", [
    ("model.width=wide", "DetectorConfig.width must be a number, got 'wide'"),
    ("train.max_steps=1.5", "TrainConfig.max_steps must be an integer, got 1.5"),
    ("model.batch_norm=1", "DetectorConfig.batch_norm must be true or false, got 1"),
    ("model.aspect_ratios=[2, x]", "DetectorConfig.aspect_ratios must be a list of numbers"),
])
def test_config_values_of_the_wrong_type_name_the_field(override, message):
    from borrowcore.engine.config import apply_overrides

    config = load_config(ROOT / "configs" / "faces-full.yaml")
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        apply_overrides(config, [override])
    assert apply_overrides(config, ["model.width=1"]).model.width == 1.0  # an integer is a number


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_augmentation(path, tmp_path):
    """Each config reads, writes back to the same config, and its augmentation turns a 150 x 200 photo with one
    40 px object into what the trainer batches: a float image (3, S, S) in [0, 1], boxes inside it."""
    from torchvision import tv_tensors

    from borrowcore.data.presets import build_preset
    from borrowcore.engine.config import save_config

    config = load_config(path)
    save_config(config, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == config
    preset = build_preset(config.train.augmentation, config.model.input_size, config.train.scale_range)
    size = config.model.input_size
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes([[80.0, 55, 120, 95]], format="XYXY", canvas_size=(150, 200)),
              "labels": torch.tensor([1])}
    out_image, out = preset(image, target)
    assert out_image.shape == (3, size, size) and out_image.dtype == torch.float32
    assert 0 <= out_image.min() and out_image.max() <= 1 and out_image.max() > 0.5
    boxes = out["boxes"].as_subclass(torch.Tensor)
    assert out["boxes"].canvas_size == (size, size) and len(boxes) == len(out["labels"]) <= 1
    assert (boxes >= 0).all() and (boxes <= size).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    # the scale-jittered presets crop at the config's zoom range, not the preset's default
    from borrowcore.data.presets import RandomScaledCrop

    crops = [t for t in preset.transforms if isinstance(t, RandomScaledCrop)]
    if config.train.augmentation in ("faces", "tiles-jitter"):
        assert [tuple(c.scale_range) for c in crops] == [tuple(config.train.scale_range)]


def test_a_misspelt_config_field_is_named_not_ignored(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  neck: full\n  prior_probability: 0.25\n")
    with pytest.raises(ValueError, match=r"unknown DetectorConfig field\(s\) \['prior_probability'\]"):
        load_config(path)


def test_aerial_jitter_is_the_aerial_recipe_with_scale_jitter():
    import dataclasses

    plain, jitter = load_config(ROOT / "configs" / "aerial-full.yaml"), load_config(ROOT / "configs" / "aerial-jitter.yaml")
    assert (plain.train.augmentation, jitter.train.augmentation) == ("tiles", "tiles-jitter")
    assert jitter.model == plain.model
    assert dataclasses.replace(jitter.train, augmentation="tiles") == plain.train


def test_ema_by_hand():
    from borrowcore.engine.steps import ModelEMA

    model = torch.nn.BatchNorm1d(1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.5, tau=1.0)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)  # d = 0.5 (1 - e^-1) = 0.31606: 0.31606 * 1 + 0.68394 * 3
    d = 0.5 * (1 - math.exp(-1))
    assert ema.state["weight"].item() == pytest.approx(d * 1 + (1 - d) * 3)
    assert ema.state["num_batches_tracked"].item() == 7  # integer buffers are copied, not averaged
    copy = torch.nn.BatchNorm1d(1)
    ema.copy_to(copy)
    assert copy.weight.item() == pytest.approx(d + (1 - d) * 3)
    restored = ModelEMA(torch.nn.BatchNorm1d(1), decay=0.9, tau=5.0)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and restored.current_decay() == pytest.approx(d)


def record_network_dtypes(monkeypatch) -> list[tuple[bool, torch.dtype]]:
    """(train mode, dtype of the class logits) of every forward pass of the networks ``train`` builds from now
    on: bfloat16 logits are what CPU bf16 autocast makes of the head's convolutions (fp32 without it)."""
    import borrowcore.engine.train as train_module

    seen: list[tuple[bool, torch.dtype]] = []
    real_build = train_module.build_detector

    def build_detector(*args, **kwargs):
        detector = real_build(*args, **kwargs)
        detector.network.register_forward_hook(
            lambda module, inputs, output: seen.append((module.training, output.cls_logits.dtype)))
        return detector

    monkeypatch.setattr(train_module, "build_detector", build_detector)
    return seen


def test_cpu_bf16_step_keeps_fp32_weights_and_loss(tmp_path, monkeypatch):
    config = tiny_experiment(max_steps=2, cpu_bf16=True, ema_decay=0.99, ema_tau=1.0)
    forward_passes = record_network_dtypes(monkeypatch)
    train(config, tmp_path, show_progress=False)
    assert forward_passes == [(True, torch.bfloat16)] * 2  # both steps ran the network under bf16 autocast
    state = read_checkpoint(tmp_path / "last.pt")
    assert all(v.dtype == torch.float32 for k, v in state["state_dict"].items() if v.dtype.is_floating_point)
    steps = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in steps if r["event"] == "step")
    # weights.pt is the EMA, without the training state; it differs from the raw weights of last.pt
    shipped = read_checkpoint(tmp_path / "weights.pt")
    assert "train_state" not in shipped
    key = "network.head.classification.0.weight"
    ema = state["train_state"]["ema"]["state_dict"][key]
    torch.testing.assert_close(shipped["state_dict"][key], ema)
    assert not torch.allclose(ema, state["state_dict"][key])
    end = steps[-1]
    assert end["event"] == "end" and end["ema"] and end["cpu_hours"] > 0 and end["wall_hours"] > 0


def test_resume_from_a_copied_state_with_ema_and_bf16(tmp_path, monkeypatch):
    """The release workflow: a run stops, its last.pt / log / config are copied elsewhere (committed, cloned
    on another machine) and resumed there; the EMA, the raw weights and the time spent carry over."""
    import shutil

    config = tiny_experiment(max_steps=9, checkpoint_every=3, cpu_bf16=True, ema_decay=0.9, ema_tau=2.0)
    forward_passes = record_network_dtypes(monkeypatch)
    train(config, tmp_path / "straight", show_progress=False)
    assert forward_passes == [(True, torch.bfloat16)] * 9  # every step under bf16 autocast

    import borrowcore.engine.train as train_module

    real_step = train_module.train_step
    calls = {"n": 0}

    def killed_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # last.pt holds step 3
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "first-machine", show_progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    moved = tmp_path / "second-machine"
    moved.mkdir()
    for name in ("last.pt", "log.jsonl", "config.yaml"):
        shutil.copy(tmp_path / "first-machine" / name, moved / name)
    spent_before = read_checkpoint(moved / "last.pt")["train_state"]["spent"]["cpu_s"]
    forward_passes.clear()
    train(config, moved, resume=True, show_progress=False)
    assert forward_passes == [(True, torch.bfloat16)] * 6  # steps 4..9, resumed under bf16 autocast too

    for name in ("last.pt", "weights.pt"):
        straight = read_checkpoint(tmp_path / "straight" / name)["state_dict"]
        resumed = read_checkpoint(moved / name)["state_dict"]
        for key in straight:
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    final = read_checkpoint(moved / "last.pt")["train_state"]
    assert final["step"] == 9 and final["ema"]["updates"] == 9
    assert final["spent"]["cpu_s"] > spent_before > 0  # the time spent before the stop is kept


def test_log_of_a_resumed_run_keeps_the_redone_steps_once():
    from borrowcore.engine.traininglog import parse_training_log

    lines = [json.dumps(r) for r in (
        {"event": "start"}, {"event": "step", "step": 10, "loss": 5.0}, {"event": "step", "step": 20, "loss": 4.0},
        {"event": "step", "step": 30, "loss": 3.9},  # logged after the last checkpoint (step 20), then killed
        {"event": "resume", "step": 20}, {"event": "step", "step": 30, "loss": 3.8})]
    log = parse_training_log(lines, "run")
    assert [(r["step"], r["loss"]) for r in log.steps] == [(10, 5.0), (20, 4.0), (30, 3.8)]
