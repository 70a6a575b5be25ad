import json
from pathlib import Path

import pytest

from borrowcore.cli import main
from borrowcore.engine.ablation import format_table
from borrowcore.evaluation.compare import mean_std

from test_train import ROOT, TINY


def test_mean_std_by_hand():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213))
    assert mean_std([0.4]) == (0.4, 0.0)
    assert mean_std([-1.0, 0.2]) == (0.2, 0.0)  # -1: no ground truth, left out
    row = {"neck": "full", "split": "twins", "seeds": 2, **{k: 0.5 for k in ("AP", "AP50", "AP_S", "AP_M", "AP_L")},
           **{f"{k}_std": 0.02 for k in ("AP", "AP50", "AP_S", "AP_M", "AP_L")},
           "borrow_precision": 0.6, "borrow_precision_std": 0.0, "borrow_chance": 0.1}
    row["AP_M"] = -1.0
    line = format_table([row]).splitlines()[-1]
    assert line == "| full | twins | 2 | 50.0 ± 2.0 | 50.0 ± 2.0 | 50.0 ± 2.0 | n/a | 50.0 ± 2.0 |  | 60.0 ± 0.0 (10.0) |"


@pytest.mark.slow
def test_ablate_end_to_end_and_resumable(tmp_path, capsys):
    data = tmp_path / "data"
    for part in ("train", "val"):
        (data / part).mkdir(parents=True)
        (data / part / "images").symlink_to(TINY / "images")
        for name in ("annotations.json", "twins.json", "orphans.json", "shuffled.json"):
            (data / part / name).symlink_to(TINY / name)
    out = tmp_path / "ablation"
    args = ["ablate", "--data", str(data), "--out", str(out), "--seeds", "0", "1", "--necks", "ssd", "full",
            "--width", "0.125", "--input", "128", "--steps", "2", "--configs", str(ROOT / "configs"), "--device", "cpu",
            "--set", "train.batch_size=4", "train.workers=0", "train.warmup_steps=1", "train.checkpoint_every=100"]
    assert main(args) == 0
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ssd |") + table.startswith("| ssd") == 3 and "| full | twins | 2 |" in table
    rows = list((out / "ablation.csv").read_text().splitlines())
    assert len(rows) == 1 + 2 * 3
    report = json.loads((out / "full" / "seed1" / "eval_twins.json").read_text())
    precision = report["extra"]["borrow_precision"]
    # every small twin (62 in the tiny set's twins.json) has its large twin, 10x its area or more: none skipped
    assert (precision["instances"], precision["skipped"]) == (62, 0)
    assert 0 <= precision["borrow_precision"] <= 1 and 0 < precision["chance"] < 1
    # the table's borrow precision is the mean ± std of the seeds' reports
    import numpy as np

    seeds = [json.loads((out / "full" / f"seed{k}" / "eval_twins.json").read_text())["extra"]["borrow_precision"]
             for k in (0, 1)]
    values = [100 * p["borrow_precision"] for p in seeds]
    row = next(line for line in table.splitlines() if line.startswith("| full | twins |"))
    assert f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}" in row
    assert report["extra"]["seed"] == 1 and report["dataset"]["split"] == "twins"
    assert "borrow_precision" not in json.loads((out / "ssd" / "seed0" / "eval_twins.json").read_text())["extra"]
    # a second run finds everything done: no new training steps, same table
    log = (out / "full" / "seed0" / "log.jsonl").read_text()
    assert main(args) == 0
    assert (out / "full" / "seed0" / "log.jsonl").read_text().count('"event": "step"') == log.count('"event": "step"')
    assert (out / "ablation.md").read_text() == table
    # release: weights without training state, reports re-pointed at them, logs and tables
    from borrowcore import load_detector
    from borrowcore.evaluation.report import load_report, sha256_file
    from borrowcore.models.checkpoint import read_checkpoint

    assets = tmp_path / "assets"
    assert main(["release", "--runs", str(out), "--assets", str(assets), "--necks", "ssd", "full"]) == 0
    shipped = assets / "checkpoints" / "synth-full.pt"
    assert "train_state" not in read_checkpoint(shipped) and (assets / "checkpoints" / "synth-full-s1.pt").exists()
    report = load_report(assets / "reports" / "ablation" / "full" / "seed0" / "eval_twins.json")
    assert report["model"]["checkpoint_sha256"] == sha256_file(shipped)
    assert (assets / "reports" / "ablation" / "full" / "seed0" / report["detections"]).exists()
    assert (assets / "logs" / "synth-ssd-seed1.log.jsonl").exists() and (assets / "reports" / "ablation" / "ablation.md").exists()
    import torch
    before, after = load_detector(out / "full" / "seed0" / "last.pt"), load_detector(shipped)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    # the shipped checkpoint runs with the matching it was trained with (configs/full.yaml: exact), or the one asked for
    assert read_checkpoint(shipped)["config"]["matching"] == "exact"
    fast = tmp_path / "fast-assets"
    assert main(["release", "--runs", str(out), "--assets", str(fast), "--necks", "full", "--matching", "fast",
                 "--nms-iou", "0.4"]) == 0
    assert load_detector(fast / "checkpoints" / "synth-full.pt").config.describe_matching() == \
        "fast matching (at most 64 keys per deeper map)"
    assert load_detector(fast / "checkpoints" / "synth-full.pt").postprocess.nms_iou == 0.4
    assert load_detector(shipped).postprocess.nms_iou == 0.45  # as trained without --nms-iou
    # release of the best seed's weights only, for some necks; every report and log still shipped
    real = tmp_path / "real-assets"
    assert main(["release", "--runs", str(out), "--assets", str(real), "--name", "real", "--necks", "ssd", "full",
                 "--reports-folder", "real", "--best-by", "twins", "--weights-necks", "full"]) == 0
    aps = {seed: load_report(out / "full" / f"seed{seed}" / "eval_twins.json")["metrics"]["AP"] for seed in (0, 1)}
    best = max((ap, seed) for seed, ap in aps.items())[1]
    assert sorted(p.name for p in (real / "checkpoints").iterdir()) == ["real-full.pt"]
    best_model = load_detector(out / "full" / f"seed{best}" / "last.pt")
    assert all(torch.equal(a, b) for a, b in zip(best_model.state_dict().values(),
                                                 load_detector(real / "checkpoints" / "real-full.pt").state_dict().values()))
    other = load_report(real / "reports" / "real" / "full" / f"seed{1 - best}" / "eval_twins.json")
    assert other["model"]["checkpoint"] == "" and other["extra"]["evaluated_checkpoint"].endswith("weights.pt")
    assert load_report(real / "reports" / "real" / "ssd" / "seed0" / "eval_orphans.json")["model"]["checkpoint"] == ""
    # the table of existing reports, without training
    capsys.readouterr()
    assert main(["table", "--runs", str(out), "--splits", "twins", "--necks", "ssd", "full", "--fine-bins",
                 "--no-borrow-columns"]) == 0
    printed = capsys.readouterr().out
    assert "| full | twins | 2 |" in printed and "borrow precision" not in printed and "AP 16-32 |" in printed
    assert main(["table", "--runs", str(out), "--splits", "nonexistent"]) == 1


def test_table_shows_twins_and_orphans_when_reports_have_them(tmp_path, capsys):
    """`borrowcore table` on old reports (no subsets): no such columns; with --add-subsets: mean ± std by hand."""
    from borrowcore.engine.ablation import add_subsets
    from borrowcore.evaluation.report import load_report

    from test_analysis import crowd_pair, write_report

    _, _, coco, missing_twins = crowd_pair(tmp_path)  # B's detections miss the twins of images 3 and 4
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in coco.dataset["annotations"]]
    runs = tmp_path / "runs"
    for neck, seed, results in (("ssd", 0, perfect), ("full", 0, perfect), ("full", 1, missing_twins)):
        (runs / neck / f"seed{seed}").mkdir(parents=True)
        write_report(runs / neck / f"seed{seed}", "eval_twins", tmp_path / "gt.json", results, coco)
    command = ["table", "--runs", str(runs), "--splits", "twins", "--necks", "ssd", "full"]
    assert main(command) == 0
    assert "AP_twins" not in capsys.readouterr().out and "AP_twins" not in (runs / "ablation.csv").read_text()
    assert main(command + ["--add-subsets"]) == 0
    out = capsys.readouterr().out
    assert out.count("twins and orphans added") == 3
    header, _, ssd, full = out.strip().splitlines()[-4:]
    assert "| AP_L | AP_twins | AP_orphans |" in header
    # twins: seed 0 AP 1, seed 1 AP 51/101 (2 of 4 found): mean 75.2, std |1 - 51/101| / sqrt(2) = 35.0
    assert "| 100.0 ± 0.0 | 100.0 ± 0.0 |" in ssd and "| 75.2 ± 35.0 | 100.0 ± 0.0 |" in full
    assert "AP50_twins_std" in (runs / "ablation.csv").read_text()
    assert load_report(runs / "full" / "seed1" / "eval_twins.json")["subsets"]["twins"]["instances"] == 4
    assert add_subsets(runs / "full" / "seed1" / "eval_twins.json") is False  # already there: left alone


def test_overrides_are_parsed_next_to_the_config():
    from borrowcore.engine.config import apply_overrides, load_config

    config = load_config(ROOT / "configs" / "full.yaml")
    changed = apply_overrides(config, ["train.max_steps=50", "model.width=0.25", "train.milestones=[0.5, 0.9]"])
    assert (changed.train.max_steps, changed.model.width, changed.train.milestones) == (50, 0.25, [0.5, 0.9])
    assert config.train.max_steps != 50  # a copy: the loaded config is left as it was
    with pytest.raises(ValueError, match="'train.nope=1'.*known field"):
        apply_overrides(config, ["train.nope=1"])
    with pytest.raises(ValueError, match="width"):
        apply_overrides(config, ["model.width=-1"])  # re-validated like a file


def test_added_subsets_leave_out_the_images_eval_could_not_read(tmp_path):
    """A report from `eval --skip-bad` that lost image 4: its twins and orphans are counted on images 1-3."""
    from borrowcore.engine.ablation import add_subsets
    from borrowcore.evaluation.report import load_report, save_report
    from borrowcore.utils.atomic import write_json_atomic

    from test_analysis import crowd_pair

    a_path, _, coco, _ = crowd_pair(tmp_path)  # one twin and one orphan per image, all four found
    found = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in coco.dataset["annotations"] if a["image_id"] != 4]  # eval never saw image 4
    write_json_atomic(found, tmp_path / "a.detections.json.gz")
    report = load_report(a_path)
    report["dataset"].update({"skip_bad": True, "unreadable_images": [{"id": 4, "reason": "not an image"}]})
    save_report(report, a_path)
    assert add_subsets(Path(a_path))
    subsets = load_report(a_path)["subsets"]
    assert subsets["twins"]["instances"] == 3 and subsets["orphans"]["instances"] == 3
    assert subsets["twins"]["AP"] == pytest.approx(1.0)
