"""borrowcore's helpers behind the app's Compare, Data & anchors and Training pages."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from borrowcore.engine.traininglog import parse_training_log, step_series
from borrowcore.evaluation.compare import coco_size_table, how_it_ran, parse_report, per_class_table, pr_curves, size_bin_table
from borrowcore.evaluation.report import ReportError
from borrowcore.evaluation.stats import dataset_anchor_recall
from borrowcore.models.anchors import AnchorGenerator, anchor_recall, feature_grid_sizes
from borrowcore.models.backbone import STRIDES

ROOT = Path(__file__).resolve().parents[1]


def test_grids_come_from_the_backbone():
    assert feature_grid_sizes(300) == [(38, 38), (19, 19), (10, 10), (5, 5)]  # Table 1
    assert feature_grid_sizes(256) == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_anchor_recall_by_hand():
    anchors = AnchorGenerator(STRIDES, 4.0, (1.5, 3.0))(feature_grid_sizes(256), 256)
    # squares centred on a stride-8 cell centre (20, 20): the 32 px anchor there gives IoU = side^2 / 32^2
    boxes = np.array([[20 - 11, 20 - 11, 22, 22],  # 484 / 1024 = 0.47: no anchor reaches 0.5
                      [20 - 12, 20 - 12, 24, 24],  # 576 / 1024 = 0.56
                      [2 * (20 - 12), 2 * (20 - 12), 48, 48]])  # the same box in an image twice the size
    sizes = np.array([[256, 256], [256, 256], [512, 512]])
    result = anchor_recall(boxes, sizes, anchors, 256)
    assert result["best_iou"] == pytest.approx([484 / 1024, 576 / 1024, 576 / 1024], abs=1e-6)
    assert result["recalled"] == 2 and result["recall"] == pytest.approx(2 / 3)
    bins = {b["label"]: b for b in result["bins"]}
    assert (bins["16-32"]["boxes"], bins["16-32"]["recalled"]) == (3, 2) and bins["0-16"]["recall"] == -1.0


def test_dataset_anchor_recall_reads_coco_and_names_bad_files(tmp_path):
    coco = {"images": [{"id": 1, "width": 256, "height": 256, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 24, 24]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5]},
                            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1}],
            "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(coco))
    result = dataset_anchor_recall(path, 256)
    assert (result["boxes"], result["recalled"], result["skipped"]) == (1, 1, 2)
    coco["annotations"][0]["image_id"] = 7
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"a.json: annotation 1 refers to unknown image 7"):
        dataset_anchor_recall(path, 256)


def report(ap: float, seed: int, split: str = "twins", neck: str = "full") -> dict:
    """A minimal schema-valid report with every AP set to ``ap``."""
    metrics = {k: ap for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")}
    metrics["AP_M"] = -1.0  # no medium ground truth
    return {"schema": "borrowcore-eval-report", "schema_version": 1, "created": "now",
            "model": {"config": {"neck": neck}, "class_names": ["a"], "checkpoint": "c.pt", "checkpoint_sha256": "",
                      "ablation": neck},
            "dataset": {"name": "d", "split": split, "annotations": "a.json", "annotations_sha256": "", "images": "i",
                        "num_images": 1, "num_boxes": 1},
            "detections": "d.json.gz", "metrics": metrics,
            "size_bins": [{"label": "0-16", "min": 0, "max": 16, "num_gt": 3, "AP": ap, "AP50": ap, "AR100": ap}],
            "per_class": [{"name": "a", "category_id": 1, "AP": ap, "AP50": ap, "AP_S": ap, "num_gt": 3}],
            "pr_curves": {"recall": [0.0, 0.5, 1.0], "iou": [0.5],
                          "ranges": {"small": {"iou50": [ap, ap, -1.0], "iou50_95": [ap, ap, -1.0]}}},
            "timing": {"images": 1, "seconds": 1.0, "images_per_s": 1.0, "device": "cpu"}, "extra": {"seed": seed}}


def test_compare_means_and_stds_over_seeds_by_hand():
    reports = [("a", report(0.4, 0)), ("b", report(0.6, 1)), ("c", report(0.2, 0, neck="ssd"))]
    rows = {(r["group"], r["size"]): r for r in coco_size_table(reports)}
    assert rows["full", "all"]["mean"] == pytest.approx(0.5) and rows["full", "all"]["std"] == pytest.approx(0.1414214)
    assert rows["full", "all"]["reports"] == 2 and rows["ssd", "small"]["mean"] == pytest.approx(0.2)
    assert rows["full", "medium"]["mean"] == -1.0  # no ground truth: no bar
    [bin_row] = [r for r in size_bin_table(reports, metric="AP50") if r["group"] == "full"]
    assert bin_row["mean"] == pytest.approx(0.5) and bin_row["num_gt"] == 3
    assert {r["group"] for r in coco_size_table(reports, by="report")} == {"a", "b", "c"}
    [curve] = [c for c in pr_curves(reports, size="small") if c["group"] == "full"]
    assert curve["recall"] == [0.0, 0.5] and curve["precision"] == pytest.approx([0.5, 0.5])  # -1 point dropped
    assert per_class_table(reports)[0]["mean"] == pytest.approx(0.5)


def test_twins_and_orphans_means_over_seeds_and_old_reports_by_hand():
    from borrowcore.evaluation.compare import subset_table

    def with_subsets(r: dict, twins: float, orphans: float) -> dict:
        return {**r, "subsets": {"twins": {"AP": twins, "AP50": twins, "instances": 4},
                                 "orphans": {"AP": orphans, "AP50": orphans, "instances": 2}}}

    reports = [("a", with_subsets(report(0.4, 0), 0.5, -1.0)), ("b", with_subsets(report(0.6, 1), 0.7, -1.0)),
               ("c", report(0.2, 2)),  # a report written before issue 15: left out of the means
               ("d", report(0.2, 0, neck="ssd"))]
    rows = {(r["group"], r["size"]): r for r in subset_table(reports)}
    assert set(rows) == {("full", "twins"), ("full", "orphans")}  # ssd's only report has none: no rows
    assert rows["full", "twins"]["mean"] == pytest.approx(0.6) and rows["full", "twins"]["std"] == pytest.approx(0.1414214)
    assert rows["full", "twins"]["reports"] == 2 and rows["full", "twins"]["instances"] == 4
    assert rows["full", "orphans"]["mean"] == -1.0  # no orphans in this split: no bar
    with pytest.raises(ValueError):
        subset_table(reports, metric="AR100")


def test_parse_report_names_the_upload():
    assert parse_report(json.dumps(report(0.1, 0)).encode(), "r.json")["metrics"]["AP"] == 0.1
    with pytest.raises(ReportError, match=r"^r.json: not valid JSON"):
        parse_report(b"{", "r.json")
    broken = report(0.1, 0)
    del broken["metrics"]["AP"]
    with pytest.raises(ReportError, match=r"^r.json: malformed report: report.metrics.AP: missing"):
        parse_report(json.dumps(broken).encode(), "r.json")


def test_training_log_tolerates_a_half_written_last_line():
    lines = ['{"event": "start", "total_steps": 20}', '{"event": "step", "step": 10, "loss": 2.0, "lr": 0.1}',
             '{"event": "resume", "step": 10}', '{"event": "step", "step": 20, "loss": 1.0}', '{"event": "ep']
    log = parse_training_log(lines, "run")
    assert log.start["total_steps"] == 20 and len(log.steps) == 2 and len(log.resumes) == 1
    assert log.skipped_lines == 1
    assert step_series(log, "loss") == ([10, 20], [2.0, 1.0]) and step_series(log, "lr") == ([10], [0.1])
    with pytest.raises(ValueError, match=r"^x.jsonl: not a training log"):
        parse_training_log(["not json", '{"event": "other"}'], "x.jsonl")


def test_overlay_png_is_a_picture_of_the_image():
    """A 256 px image, green in its top-left quadrant, blue in its top-right one, black below: the PNG shows
    the two quadrants as squares of one side, side by side, upright, and the explained detection's cyan box
    (#0 at [48, 32, 64, 48]) where that box is on the image, at the same scale."""
    import io

    from PIL import Image

    from borrowcore.evaluation.explain import borrow_view
    from test_explain import hand_explanation
    from viewer.figures import QUERY_COLOUR, overlay_png

    explanation = hand_explanation(image_size=(256, 256))
    view = borrow_view(explanation, detection=0)
    image = torch.zeros(3, 256, 256, dtype=torch.uint8)
    image[1, :128, :128] = 200
    image[2, :128, 128:] = 200
    png = overlay_png(image, explanation, view, [0, 1, 2])
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and 600 < picture.width < 1100 and 600 < picture.height < 1100
    rgb = np.asarray(picture.convert("RGB")).astype(int)

    def extent(colour, least: int = 1000) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 of the pixels of exactly this colour (a few levels of rounding allowed)."""
        ys, xs = np.nonzero((np.abs(rgb - np.array(colour)) <= 3).all(-1))
        assert len(xs) > least, colour
        return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1

    gx0, gy0, gx1, gy1 = extent((0, 200, 0))
    bx0, by0, bx1, by1 = extent((0, 0, 200))
    side = gx1 - gx0
    assert side > 300 and abs((gy1 - gy0) - side) <= 2  # a square: not stretched
    assert abs((bx1 - bx0) - side) <= 2 and abs((by1 - by0) - side) <= 2
    assert abs(bx0 - gx1) <= 1 and abs(by0 - gy0) <= 1  # blue to the right of green, on the same rows
    scale = side / 128  # PNG pixels per image pixel
    cyan = tuple(int(QUERY_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    cx0, cy0, cx1, _ = extent(cyan, 300)  # the box, its label below it
    assert abs(cx0 - (gx0 + 48 * scale)) <= 4 and abs(cx1 - (gx0 + 64 * scale)) <= 4
    assert abs(cy0 - (gy0 + 32 * scale)) <= 4


def test_how_it_ran_names_the_matching_of_old_and_new_reports():
    """New reports say which matching ran; a borrow/full report from before the fast default matched every
    cell (or names its key budget); ssd reports are left as written."""
    def report(neck: str, inference: str) -> dict:
        return {"model": {"ablation": neck}, "extra": {"inference": inference}}

    new = "resize to 300; fast matching (at most 64 keys per deeper map)"
    assert how_it_ran(report("full", new)) == new
    assert how_it_ran(report("full", "resize to 300")) == "resize to 300; exact matching (every deeper cell)"
    budget = "resize to 300; key budget 256 cells per deeper map"
    assert how_it_ran(report("borrow", budget)) == budget
    assert how_it_ran(report("ssd", "resize to 300")) == "resize to 300"
    assert how_it_ran({}) == "not recorded"


def test_the_same_photo_under_two_names_has_one_digest(tmp_path):
    """The cache key of an upload or sample is the hash of its bytes alone: renaming a photo finds its results."""
    import io
    from types import SimpleNamespace

    from PIL import Image

    from borrowcore.data.images import image_digest
    from viewer.queries import collect_images

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    (tmp_path / "sample.png").write_bytes(data)
    uploads = [SimpleNamespace(name=name, getvalue=lambda: data) for name in ("a.png", "b.png")]
    images, problems = collect_images(uploads, ["sample"], {"sample": tmp_path / "sample.png"})
    assert not problems and len(images) == 3
    assert {digest for digest, _, _ in images.values()} == {image_digest(data)}
