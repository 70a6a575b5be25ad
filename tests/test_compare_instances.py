"""borrowcore.evaluation.compare's head-to-head helpers: crops with context, matching boxes, breakdown rows, a report's
files and checkpoint, uploads paired with their detections."""

import json

import numpy as np
import pytest

from borrowcore.evaluation.compare import (breakdown_rows, crop_with_context, default_pair, matching_instance,
                                           pair_report_uploads, report_checkpoint, resolve_report_path, size_ranges)


def test_crop_with_context_by_hand():
    image = np.arange(200 * 300).reshape(200, 300)
    crop, box = crop_with_context(image, [100, 50, 20, 10], context=1.0, min_side=0)
    # centre (110, 55); half sides 1.5 * (20, 10) = (30, 15): x 80..140, y 40..70
    assert crop.shape == (30, 60) and crop[0, 0] == image[40, 80] and box == [20, 10, 20, 10]
    # a tiny box gets at least min_side, and a box at the corner is clipped to the image
    crop, box = crop_with_context(image, [0, 0, 4, 4], context=1.0, min_side=64)
    assert crop.shape == (34, 34) and box == [0, 0, 4, 4]


def test_matching_instance_picks_the_most_overlapping_box():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [22, 22, 42, 42]])
    assert matching_instance(boxes, [20, 20, 20, 20]) == 1
    assert matching_instance(boxes, [100, 100, 5, 5]) is None
    assert matching_instance(np.zeros((0, 4)), [0, 0, 1, 1]) is None


def test_breakdown_rows_stack_to_one():
    analysis = {"conditions": ["C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"],
                "ranges": {"all": {"num_classes": 1, "AP": {"C75": 0.2, "C50": 0.5, "Loc": 0.6, "Sim": 0.7, "Oth": 0.75,
                                                            "BG": 0.9, "FN": 1.0}},
                           "large": {"num_classes": 0}}}
    rows = breakdown_rows("r", analysis)
    assert [r["range"] for r in rows] == ["all"] * 7  # a range without ground truth has no rows
    assert [round(r["band"], 6) for r in rows] == [0.2, 0.3, 0.1, 0.1, 0.05, 0.15, 0.1]
    assert sum(r["band"] for r in rows) == pytest.approx(1.0) and rows[3]["AP"] == 0.7


def test_resolve_report_path(tmp_path):
    (tmp_path / "root" / "data").mkdir(parents=True)
    (tmp_path / "root" / "data" / "gt.json").write_text("{}")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "beside.json").write_text("{}")
    report = tmp_path / "reports" / "r.json"
    assert resolve_report_path(str(tmp_path / "root" / "data" / "gt.json")) == tmp_path / "root" / "data" / "gt.json"
    assert resolve_report_path("data/gt.json", report, roots=[tmp_path / "root"]) == tmp_path / "root" / "data" / "gt.json"
    assert resolve_report_path("beside.json", report) == tmp_path / "reports" / "beside.json"
    assert resolve_report_path("nowhere/gt.json", report) is None and resolve_report_path("", report) is None
    assert resolve_report_path(str(tmp_path / "missing.json")) is None


def report(checkpoint="runs/full/seed0/last.pt", sha="", neck="full", gt="same", detections="r.detections.json.gz"):
    return {"model": {"checkpoint": checkpoint, "checkpoint_sha256": sha, "ablation": neck, "config": {}},
            "dataset": {"annotations_sha256": gt}, "detections": detections,
            "size_bins": [{"label": "0-16", "min": 0, "max": 16}, {"label": "16+", "min": 16, "max": 1e5}]}


def test_report_checkpoint_by_hash_then_by_name(tmp_path):
    shipped, other = tmp_path / "synth-full.pt", tmp_path / "last.pt"
    digests = {shipped: "abc", other: "def"}
    assert report_checkpoint(report(sha="abc"), [other, shipped], digests.get) == shipped  # release renames it
    assert report_checkpoint(report(sha="zzz"), [shipped, other], digests.get) == other  # same name
    assert report_checkpoint(report(checkpoint="x.pt", sha="zzz"), [shipped, other], digests.get) is None


def test_default_pair_puts_the_baseline_first_on_the_same_ground_truth():
    reports = [("f-orphans", report(gt="o")), ("full", report(neck="full")), ("borrow", report(neck="borrow")),
               ("ssd", report(neck="ssd"))]
    assert default_pair(reports) == (3, 1)
    assert default_pair([("a", report(gt="1")), ("b", report(gt="2"))]) == (0, 1)
    assert default_pair([("a", report(neck="x")), ("b", report(neck="x"))]) == (0, 1)


def test_size_ranges_are_coco_then_the_report_bins():
    assert [label for label, _, _ in size_ranges(report())] == ["all", "small", "medium", "large", "0-16", "16+"]


def test_uploaded_reports_need_their_detections(tmp_path):
    from test_analysis import hand_pair

    path_a, path_b = hand_pair(tmp_path)
    files = {"a.json": open(path_a, "rb").read(), "b.json": open(path_b, "rb").read(),
             "a.detections.json.gz": (tmp_path / "a.detections.json.gz").read_bytes(), "junk.json": b"{"}
    pairs, problems = pair_report_uploads(files)
    assert [(name, data == files["a.detections.json.gz"]) for name, _, data in pairs] == [("a.json", True)]
    assert any(p.startswith("b.json: its detections `b.detections.json.gz` were not uploaded") for p in problems)
    assert any(p.startswith("junk.json: not valid JSON") for p in problems) and len(problems) == 2
    assert json.loads(files["a.json"])["detections"] == "a.detections.json.gz"
