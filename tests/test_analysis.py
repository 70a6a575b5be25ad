import contextlib
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from borrowcore.evaluation.analysis import compare_reports, detected_instances, error_analysis, report_ground_truth
from borrowcore.evaluation.coco_eval import coco_metrics
from borrowcore.evaluation.report import SCHEMA, SCHEMA_VERSION, save_report
from borrowcore.utils.atomic import write_json_atomic

CATEGORIES = [{"id": 1, "name": "circle-dots", "supercategory": "circle"},
              {"id": 2, "name": "circle-stripes", "supercategory": "circle"},
              {"id": 3, "name": "square-dots", "supercategory": "square"}]


def coco_from(annotations: list[dict], images: int = 1) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in range(1, images + 1)],
                    "categories": CATEGORIES,
                    "annotations": [{"id": i + 1, "iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], "image_id": 1, **a}
                                    for i, a in enumerate(annotations)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def det(bbox, score, category_id=1, image_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_each_error_kind_once_by_hand():
    """Class 1 has 4 boxes. Ranked detections: a background FP, a confusion with another supercategory's
    box (Oth), a confusion with the look-alike class (Sim), then a perfect hit, a hit at IoU 0.6 and a
    hit at IoU 0.2 (Loc); the 4th box is never found (FN)."""
    gt = coco_from([
        {"category_id": 1, "bbox": [10, 10, 40, 40]},     # found perfectly
        {"category_id": 1, "bbox": [100, 100, 40, 40]},   # found at IoU 0.6
        {"category_id": 1, "bbox": [200, 200, 40, 40]},   # found at IoU 0.2
        {"category_id": 1, "bbox": [300, 300, 40, 40]},   # missed
        {"category_id": 2, "bbox": [10, 300, 40, 40]},    # look-alike class
        {"category_id": 3, "bbox": [300, 10, 40, 40]},    # other supercategory
    ])
    detections = [det([150, 20, 30, 30], 0.97),            # background
                  det([300, 10, 40, 40], 0.96),            # on the class-3 box
                  det([10, 300, 40, 40], 0.95),            # on the class-2 box
                  det([10, 10, 40, 40], 0.9), det([100, 100, 40, 24], 0.8), det([200, 200, 40, 8], 0.7)]
    analysis = error_analysis(gt, detections)
    ours = analysis["ranges"]["all"]["per_class"]["circle-dots"]
    # precision at the hits: C75 1/4; C50 1/4, 2/5; Loc 1/4, 2/5, 3/6; without Sim 1/3, 2/4, 3/5;
    # without Oth 1/2, 2/3, 3/4; interpolated (max to the right) over 101 recall points up to recall r
    assert ours["C75"] == pytest.approx(26 / 101 * 1 / 4)
    assert ours["C50"] == pytest.approx(51 / 101 * 2 / 5)
    assert ours["Loc"] == pytest.approx(76 / 101 * 3 / 6)
    assert ours["Sim"] == pytest.approx(76 / 101 * 3 / 5)
    assert ours["Oth"] == pytest.approx(76 / 101 * 3 / 4)
    assert ours["BG"] == pytest.approx(76 / 101)
    assert ours["FN"] == 1.0
    # C75 agrees with the evaluator's own per-class AP75 path
    assert analysis["ranges"]["all"]["num_classes"] == 3
    curves = analysis["ranges"]["all"]["curves"]
    assert len(curves["C50"]) == 101 and curves["FN"] == [1.0] * 101


def test_detected_instances():
    gt = coco_from([{"category_id": 1, "bbox": [10, 10, 40, 40]}, {"category_id": 2, "bbox": [100, 100, 40, 40]}])
    hits = detected_instances(gt, [det([12, 12, 40, 40], 0.9), det([100, 100, 40, 40], 0.9, category_id=1),
                                   det([100, 100, 40, 40], 0.3, category_id=2)], score_threshold=0.5)
    assert hits == {1}  # the second box: right place, wrong class; right class, score too low


def write_report(tmp_path, name: str, gt_path, results: list[dict], coco: COCO) -> str:
    metrics = coco_metrics(coco, results)
    report = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": "2026-01-01T00:00:00",
              "model": {"config": {}, "class_names": [c["name"] for c in CATEGORIES], "checkpoint": name,
                        "checkpoint_sha256": "", "ablation": name},
              "dataset": {"name": "hand", "split": "all", "annotations": str(gt_path), "annotations_sha256": "same",
                          "images": "", "num_images": 4, "num_boxes": len(coco.dataset["annotations"])},
              "detections": f"{name}.detections.json.gz", **metrics,
              "timing": {"images": 4, "seconds": 1.0, "images_per_s": 4.0, "device": "cpu"}, "extra": {}}
    write_json_atomic(results, tmp_path / f"{name}.detections.json.gz")
    save_report(report, tmp_path / f"{name}.json")
    return str(tmp_path / f"{name}.json")


def hand_pair(tmp_path):
    annotations = [{"id": i + 1, "image_id": i // 2 + 1, "category_id": 1, "bbox": [20 + 150 * (i % 2), 20, 40, 40],
                    "area": 1600, "iscrowd": 0} for i in range(8)]
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in range(1, 5)],
            "categories": CATEGORIES, "annotations": annotations}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    boxes = {a["id"]: a for a in annotations}
    # A finds boxes 1-6; B finds 1-4 and 7-8: B fixes 7 and 8, breaks 5 and 6
    a = [det(boxes[i]["bbox"], 0.9, image_id=boxes[i]["image_id"]) for i in range(1, 7)]
    b = [det(boxes[i]["bbox"], 0.9, image_id=boxes[i]["image_id"]) for i in (1, 2, 3, 4, 7, 8)]
    return write_report(tmp_path, "a", gt_path, a, coco), write_report(tmp_path, "b", gt_path, b, coco)


def test_compare_fixed_and_broken(tmp_path):
    path_a, path_b = hand_pair(tmp_path)
    comparison = compare_reports(path_a, path_b, bootstrap=50, seed=0)
    assert [r["annotation_id"] for r in comparison["fixed"]] == [7, 8]
    assert [r["annotation_id"] for r in comparison["broken"]] == [5, 6]
    assert comparison["ranges"]["all"]["AP_a"] == pytest.approx(comparison["ranges"]["all"]["AP_b"])


def test_bootstrap_is_deterministic_and_paired(tmp_path):
    path_a, path_b = hand_pair(tmp_path)
    one, two = compare_reports(path_a, path_b, bootstrap=50, seed=3), compare_reports(path_a, path_b, bootstrap=50, seed=3)
    assert one["ranges"] == two["ranges"]
    low, high = one["ranges"]["all"]["ci"]
    assert low < 0 < high  # A and B each miss 2 of 8 boxes: the interval straddles 0
    assert compare_reports(path_a, path_b, bootstrap=50, seed=4)["ranges"]["all"]["ci"] != [low, high]
    # paired: A and B see the same images in every draw, so swapping them negates every draw's difference
    swapped = compare_reports(path_b, path_a, bootstrap=50, seed=3)["ranges"]["all"]
    assert swapped["diff"] == pytest.approx(-one["ranges"]["all"]["diff"])
    assert swapped["ci"] == pytest.approx([-high, -low])


def test_bootstrap_drops_draws_without_ground_truth_in_a_range(tmp_path):
    """Ten images with a 40 px box each; image 1 also has the only 10 px box, which B finds and A misses. A
    draw without image 1 has no ground truth in 0-16: dropped (and counted), not a difference of 0."""
    import numpy as np

    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [200, 200, 40, 40], "area": 1600, "iscrowd": 0}
                   for i in range(1, 11)]
    annotations.append({"id": 11, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0})
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in range(1, 11)],
            "categories": CATEGORIES, "annotations": annotations}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    found = [det(a["bbox"], 0.9, image_id=a["image_id"]) for a in annotations]
    path_a = write_report(tmp_path, "a", gt_path, found[:10], coco)
    path_b = write_report(tmp_path, "b", gt_path, found, coco)
    tiny = compare_reports(path_a, path_b, bootstrap=200, seed=5)["ranges"]["0-16"]
    assert (tiny["AP_a"], tiny["AP_b"]) == (0.0, pytest.approx(1.0))
    assert tiny["ci"] == [pytest.approx(1.0), pytest.approx(1.0)]  # every draw that holds the box: B - A = 1
    rng = np.random.default_rng(5)  # the draws compare_reports makes: image 1 (position 0) missing from some
    expected = sum(0 not in rng.integers(0, 10, 10) for _ in range(200))
    assert tiny["dropped"] == expected > 0


def test_resampled_ap_equals_cocoeval_on_those_images(tmp_path):
    from borrowcore.evaluation.analysis import _ap_on_sample, _bootstrap_evaluator, _prepare_bootstrap, _ranges
    from borrowcore.evaluation.coco_eval import DEFAULT_SIZE_BINS
    from borrowcore.evaluation.report import load_detections, load_report
    import numpy as np

    path_a, _ = hand_pair(tmp_path)
    report = load_report(path_a)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(report["dataset"]["annotations"])
    results = load_detections(report, path_a)
    evaluator = _bootstrap_evaluator(coco, results, _ranges(DEFAULT_SIZE_BINS))
    ids = _prepare_bootstrap(evaluator)
    subset = np.array([0, 2])
    direct = coco_metrics(coco, results, image_ids=[ids[0], ids[2]])["metrics"]["AP"]
    assert _ap_on_sample(evaluator, ids, subset)[0] == pytest.approx(direct)
    # image 3 (boxes 5, 6 found) counted twice, image 4 (nothing found) once: recall 4/6 at precision 1
    assert _ap_on_sample(evaluator, ids, np.array([2, 2, 3]))[0] == pytest.approx(67 / 101)


def crowd_pair(tmp_path):
    """Four images, each with a 64 px circle-dots, a 16 px circle-dots (a twin) and a 16 px square-dots (an
    orphan: no larger square in its image). A finds every small one; B finds every orphan, but the twins of
    images 1 and 2 only."""
    annotations = []
    for image_id in range(1, 5):
        for category_id, bbox in ((1, [200, 200, 64, 64]), (1, [20, 20, 16, 16]), (3, [100, 20, 16, 16])):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in range(1, 5)],
            "categories": CATEGORIES, "annotations": annotations}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    found = [det(a["bbox"], 0.9, a["category_id"], a["image_id"]) for a in annotations]
    a = found
    b = [d for d in found if not (d["bbox"][2] == 16 and d["category_id"] == 1 and d["image_id"] > 2)]
    return write_report(tmp_path, "a", gt_path, a, coco), write_report(tmp_path, "b", gt_path, b, coco), coco, b


def test_compare_twins_and_orphans_with_the_same_resamples(tmp_path):
    from borrowcore.evaluation.analysis import format_comparison
    from borrowcore.evaluation.coco_eval import subset_metrics

    path_a, path_b, coco, results_b = crowd_pair(tmp_path)
    comparison = compare_reports(path_a, path_b, bootstrap=50, seed=0)
    twins, orphans = comparison["subsets"]["twins"], comparison["subsets"]["orphans"]
    # B recalls 2 of 4 twins at precision 1: 51 of COCO's 101 recall points
    assert twins["AP_a"] == pytest.approx(1.0) and twins["AP_b"] == pytest.approx(51 / 101)
    assert twins["AP_b"] == pytest.approx(subset_metrics(coco, results_b)["twins"]["AP"])
    assert twins["diff"] == pytest.approx(-50 / 101) and twins["instances"] == 4
    assert twins["ci"][0] < 0 and twins["ci"][1] <= 0  # B is never better on any resample of images
    assert orphans == {"AP_a": pytest.approx(1.0), "AP_b": pytest.approx(1.0), "diff": pytest.approx(0.0),
                       "ci": [0.0, 0.0], "dropped": 0, "instances": 4}
    lines = format_comparison(comparison).splitlines()
    assert any(line.startswith("twins") and "-49.5" in line for line in lines)
    assert any(line.startswith("orphans") and "+0.0" in line for line in lines)
    assert set(comparison["ranges"]) >= {"all", "small", "0-16"}  # size ranges unchanged beside them


def test_compare_old_reports_without_small_instances(tmp_path):
    from borrowcore.evaluation.analysis import format_comparison

    path_a, path_b = hand_pair(tmp_path)  # 40 px boxes only: no twins, no orphans
    comparison = compare_reports(path_a, path_b, bootstrap=10, seed=0)
    assert comparison["subsets"]["twins"] == {"AP_a": -1.0, "AP_b": -1.0, "diff": 0.0, "ci": [0.0, 0.0], "dropped": 0,
                                              "instances": 0}
    assert any(line.split() == ["twins", "n/a", "n/a"] for line in format_comparison(comparison).splitlines())
    del comparison["subsets"]  # a comparison json written before issue 15
    assert "twins" not in format_comparison(comparison)


def test_every_bundled_report_names_ground_truth_that_ships_or_a_command_that_makes_it():
    """A fresh clone has ../shared/data and assets/, not data/: every bundled eval report's ground truth is in
    one of those or is made by a known command (borrowcore.data.derived), and analysing one says which."""
    import glob

    from borrowcore.data.dataset import BadAnnotationError
    from borrowcore.data.derived import derived_command

    root = Path(__file__).resolve().parents[1]
    reports = [json.loads(Path(p).read_text()) for p in glob.glob(str(root / "assets/reports/**/eval_*.json"), recursive=True)]
    reports = [r for r in reports if isinstance(r, dict) and "dataset" in r]
    assert len(reports) > 20
    for report in reports:
        path = report["dataset"]["annotations"]
        ships = path.startswith(("../shared/data/", "assets/"))
        assert ships or derived_command(path), path
    missing = {"dataset": {"annotations": "data/wider-x2/instances.json"}}
    with pytest.raises(BadAnnotationError, match=r"borrowcore shift --coco data/wider/val.json .* --scale 2`"):
        report_ground_truth(missing, "/nonexistent/data/wider-x2/instances.json")
    with pytest.raises(BadAnnotationError, match="annotation file not found$"):
        report_ground_truth(missing, "/nonexistent/elsewhere.json")


def test_seeds_pooled_compare_is_the_mean_over_seeds_with_one_resample(tmp_path):
    """With more pairs (other seeds) AP A and AP B are the seed means and each draw resamples the images once
    for all pairs: the same pair twice gives the one-pair numbers; a pair and its swap cancel in every draw."""
    path_a, path_b = hand_pair(tmp_path)
    one = compare_reports(path_a, path_b, bootstrap=50, seed=3)
    twice = compare_reports(path_a, path_b, bootstrap=50, seed=3, more_pairs=[(path_a, path_b)])
    assert twice["ranges"] == one["ranges"] and twice["subsets"] == one["subsets"]
    assert twice["pairs"] == [[path_a, path_b]] * 2
    cancelled = compare_reports(path_a, path_b, bootstrap=50, seed=3, more_pairs=[(path_b, path_a)])["ranges"]["all"]
    assert cancelled["AP_a"] == pytest.approx((one["ranges"]["all"]["AP_a"] + one["ranges"]["all"]["AP_b"]) / 2)
    assert cancelled["diff"] == pytest.approx(0.0) and cancelled["ci"] == [pytest.approx(0.0), pytest.approx(0.0)]


def test_seeds_pooled_compare_refuses_reports_on_other_size_bins(tmp_path):
    from borrowcore.evaluation.report import ReportError, load_report

    path_a, path_b = hand_pair(tmp_path)
    other = load_report(path_b)
    other["size_bins"] = other["size_bins"][:-1]
    save_report(other, tmp_path / "other.json")
    (tmp_path / "other.detections.json.gz").write_bytes((tmp_path / "b.detections.json.gz").read_bytes())
    other["detections"] = "other.detections.json.gz"
    save_report(other, tmp_path / "other.json")
    with pytest.raises(ReportError, match="other.json have different size bins"):
        compare_reports(path_a, path_b, bootstrap=5, more_pairs=[(path_a, str(tmp_path / "other.json"))])
