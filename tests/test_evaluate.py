import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from borrowcore import save_checkpoint
from borrowcore.evaluation.coco_eval import coco_metrics, parse_size_bins
from borrowcore.evaluation.evaluate import evaluate_checkpoint
from borrowcore.evaluation.report import ReportError, load_detections, load_report, validate_report

from conftest import make_detector
from test_train import TINY


def make_coco(boxes_by_image: dict[int, list[list[float]]], category_id: int = 1) -> COCO:
    images = [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in boxes_by_image]
    annotations = []
    for image_id, boxes in boxes_by_image.items():
        for box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


GT = {1: [[10, 10, 10, 10], [100, 100, 20, 20]], 2: [[50, 50, 50, 50], [200, 200, 110, 110], [5, 250, 150, 140]]}


def detections_for(gt: dict, score: float = 0.9) -> list[dict]:
    return [{"image_id": i, "category_id": 1, "bbox": box, "score": score} for i, boxes in gt.items() for box in boxes]


def test_perfect_detections_give_ap_one():
    m = coco_metrics(make_coco(GT), detections_for(GT))
    for key in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR100"):
        assert m["metrics"][key] == pytest.approx(1.0), key
    assert m["metrics"]["AR1"] == pytest.approx(2 / 5)  # one detection per image: 2 of 5 boxes


def test_no_detections_give_zero():
    m = coco_metrics(make_coco(GT), [])
    assert m["metrics"]["AP"] == 0 and m["metrics"]["AP_S"] == 0 and m["metrics"]["AR100"] == 0


def test_known_partial_cases():
    coco = make_coco({1: [[10, 10, 40, 40], [100, 100, 40, 40]]})
    # one of two boxes found: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points
    half = coco_metrics(coco, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}])
    assert half["metrics"]["AP"] == pytest.approx(51 / 101)
    # a false positive ranked first, then both boxes: precision 0, 1/2, 2/3 -> interpolated 2/3 everywhere
    fp_first = [{"image_id": 1, "category_id": 1, "bbox": [300, 300, 40, 40], "score": 0.95},
                {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
                {"image_id": 1, "category_id": 1, "bbox": [100, 100, 40, 40], "score": 0.8}]
    assert coco_metrics(coco, fp_first)["metrics"]["AP"] == pytest.approx(2 / 3)
    # the right box with the wrong class counts for nothing
    wrong = [{"image_id": 1, "category_id": 2, "bbox": [10, 10, 40, 40], "score": 0.9}]
    assert coco_metrics(coco, wrong)["metrics"]["AP"] == 0


def test_size_bins_against_hand_counted_areas():
    # sqrt(area): 10, 20 | 50, 110, sqrt(150 * 140) = 144.9
    m = coco_metrics(make_coco(GT), detections_for(GT))
    counts = {row["label"]: row["num_gt"] for row in m["size_bins"]}
    assert counts == {"0-16": 1, "16-32": 1, "32-64": 1, "64-96": 0, "96-128": 1, "128+": 1}
    ap = {row["label"]: row["AP"] for row in m["size_bins"]}
    assert ap["64-96"] == -1 and ap["0-16"] == pytest.approx(1.0)
    # only the 10 px box missed: its bin drops to 0, the others stay at 1
    missed = [d for d in detections_for(GT) if d["bbox"] != [10, 10, 10, 10]]
    rows = {row["label"]: row for row in coco_metrics(make_coco(GT), missed)["size_bins"]}
    assert rows["0-16"]["AP"] == 0 and rows["16-32"]["AP"] == pytest.approx(1.0)
    custom = coco_metrics(make_coco(GT), detections_for(GT), parse_size_bins("0,32,128"))
    assert {r["label"]: r["num_gt"] for r in custom["size_bins"]} == {"0-32": 2, "32-128": 2, "128+": 1}


def test_per_class_and_pr_curves():
    m = coco_metrics(make_coco(GT), detections_for(GT))
    car = next(c for c in m["per_class"] if c["name"] == "car")
    bus = next(c for c in m["per_class"] if c["name"] == "bus")
    assert car["AP"] == pytest.approx(1.0) and car["num_gt"] == 5
    assert bus["AP"] == -1 and bus["num_gt"] == 0
    curves = m["pr_curves"]
    assert len(curves["recall"]) == 101 and curves["ranges"]["all"]["iou50"] == [1.0] * 101


def test_parse_size_bins_rejects_bad_edges():
    assert parse_size_bins("0,16") == ((0, 16), (16, math.inf))
    with pytest.raises(ValueError):
        parse_size_bins("32,16")


@pytest.fixture(scope="module")
def twins_report(tmp_path_factory):
    """An untrained 6-class tiny `full` checkpoint evaluated on the tiny twins: (checkpoint, report, its path)."""
    from borrowcore import DetectorConfig

    root = tmp_path_factory.mktemp("twins_report")
    checkpoint = root / "model.pt"
    save_checkpoint(checkpoint, make_detector(DetectorConfig(neck="full", num_classes=6, input_size=128, width=0.125,
                                                             batch_norm=True)))
    out = root / "reports" / "twins.json"
    report = evaluate_checkpoint(checkpoint, TINY / "twins.json", TINY / "images", out, device="cpu",
                                 split="twins", show_progress=False)
    return checkpoint, report, out


def test_eval_checkpoint_writes_a_valid_report(twins_report):
    """The report's structure and round trip; what its numbers are worth is the painted set's business below."""
    _, report, out = twins_report
    loaded = load_report(out)
    assert loaded == json.loads(json.dumps(report))
    assert loaded["dataset"]["split"] == "twins" and loaded["dataset"]["num_images"] == 16
    assert loaded["model"]["ablation"] == "full" and len(loaded["model"]["checkpoint_sha256"]) == 64
    detections = load_detections(loaded, out)
    assert {d["image_id"] for d in detections} <= {img["id"] for img in json.loads((TINY / "twins.json").read_text())["images"]}
    # the results as the model gave them: not the id, area and polygon pycocotools adds to what it is handed
    assert detections and all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in detections)
    # recomputing from the stored detections gives the stored numbers
    from borrowcore.data.dataset import CocoDetection

    again = coco_metrics(CocoDetection(TINY / "images", TINY / "twins.json").coco, detections)
    assert again["metrics"] == pytest.approx(loaded["metrics"])


def test_malformed_reports_are_rejected(tmp_path):
    with pytest.raises(ReportError, match="not a borrowcore evaluation report"):
        validate_report({"hello": 1}, "x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="bad.json: not valid JSON"):
        load_report(bad)
    report = {"schema": "borrowcore-eval-report", "schema_version": 1}
    with pytest.raises(ReportError, match=r"r.json: malformed report: report.created: missing"):
        validate_report(report, "r.json")
    with pytest.raises(ReportError, match="schema version 7"):
        validate_report({**report, "schema_version": 7}, "r.json")


def borrowing_checkpoint(tmp_path, tiny_config, **changes):
    """A 6-class tiny `full` checkpoint whose C_n is non-zero, so the borrowed features matter."""
    config = tiny_config.__class__(**{**tiny_config.__dict__, "num_classes": 6, **changes})
    detector = make_detector(config)
    with torch.no_grad():
        for block in detector.network.neck.fusion:
            block.combine.weight.normal_(std=0.1)
    save_checkpoint(tmp_path / "model.pt", detector)
    return tmp_path / "model.pt"


def same_detections(these: list[dict], those: list[dict], box_tol: float = 0.02, score_tol: float = 2e-5) -> None:
    """The two lists hold the same detections (image, category, box, score), one for one, in any order."""
    assert len(these) == len(those)
    ordered = [sorted(results, key=lambda r: (r["image_id"], r["category_id"], -r["score"], r["bbox"]))
               for results in (these, those)]
    for a, b in zip(*ordered):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=box_tol)
        assert a["score"] == pytest.approx(b["score"], abs=score_tol)


def test_tiled_eval_matches_whole_image_eval_when_one_tile_covers_the_image(tmp_path, tiny_config):
    """A 256 px tile over a 256 px image is the same computation as resizing the image to 256: the same
    detections, one for one (not only the same AP, which an untrained model keeps near 0 whatever it finds)."""
    checkpoint = borrowing_checkpoint(tmp_path, tiny_config, input_size=256)
    whole = evaluate_checkpoint(checkpoint, TINY / "orphans.json", TINY / "images", tmp_path / "whole.json",
                                device="cpu", show_progress=False)
    tiled = evaluate_checkpoint(checkpoint, TINY / "orphans.json", TINY / "images", tmp_path / "tiled.json",
                                device="cpu", show_progress=False, tile=256, overlap=0.2)
    fast = "; fast matching (at most 64 keys per deeper map)"  # the report says which matching ran
    assert tiled["extra"]["inference"] == "tiles 256 px, overlap 0.2" + fast
    assert whole["extra"]["inference"] == "resize to 256" + fast
    assert whole["model"]["matching"] == fast[2:]
    whole_detections = load_detections(whole, tmp_path / "whole.json")
    assert len(whole_detections) > 16  # many per image: up to detections_per_image, down to score 0.01
    same_detections(load_detections(tiled, tmp_path / "tiled.json"), whole_detections)
    assert tiled["metrics"] == pytest.approx(whole["metrics"], abs=1e-6)


def test_small_instance_top1_accuracy_by_hand():
    from borrowcore.evaluation.coco_eval import small_instance_accuracy

    coco = make_coco({1: [[10, 10, 20, 20], [100, 100, 20, 20], [200, 200, 20, 20], [250, 250, 100, 100]]})
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},    # right, best
               {"image_id": 1, "category_id": 2, "bbox": [11, 11, 20, 20], "score": 0.4},
               {"image_id": 1, "category_id": 2, "bbox": [100, 100, 20, 20], "score": 0.8},  # wrong class wins
               {"image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20], "score": 0.7},
               {"image_id": 1, "category_id": 1, "bbox": [215, 215, 20, 20], "score": 0.9}]  # IoU < 0.5: unmatched
    # the 100 px box is not small and is left out
    assert small_instance_accuracy(coco, results) == {"accuracy": 0.5, "matched": 2, "instances": 3}


@pytest.mark.slow
def test_eval_under_torchrun_merges_shards(tmp_path, tiny_config):
    """Two processes each evaluate half the images; rank 0 merges: the same report as one process."""
    import os
    import subprocess
    import sys

    from test_train import ROOT

    checkpoint = borrowing_checkpoint(tmp_path, tiny_config)
    single = evaluate_checkpoint(checkpoint, TINY / "twins.json", TINY / "images", tmp_path / "single.json",
                                 device="cpu", show_progress=False)
    out = tmp_path / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
               "-m", "borrowcore", "eval", "--checkpoint", str(checkpoint), "--coco", str(TINY / "twins.json"),
               "--images", str(TINY / "images"), "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = load_report(out)
    assert merged["dataset"]["num_images"] == 16
    # both shards are in, once each: the same detections as one process, one for one (scores to the 1e-5 a
    # different batch composition may move them; the AP of an untrained model is itself about 1e-4)
    same_detections(load_detections(merged, out), load_detections(single, tmp_path / "single.json"), score_tol=1e-4)
    assert merged["metrics"] == pytest.approx(single["metrics"], abs=1e-6)


# ---- issue 15: small twins and orphans ----

def crowd_coco(annotations: list[dict]) -> COCO:
    """Two 400 px images, classes car (1) and bus (2); annotations with image_id, category_id, bbox[, iscrowd]."""
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in (1, 2)],
                    "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}],
                    "annotations": [{"id": i + 1, "iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a}
                                    for i, a in enumerate(annotations)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# box sides chosen at the rule's edges: twin iff a same-class, non-crowd box of side >= 2x and >= 48 px
CROWD = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 24, 24]},     # 1 twin: the 48 px car is exactly 2x and 48
    {"image_id": 1, "category_id": 1, "bbox": [100, 100, 48, 48]},   # 2 large (not small: in no subset)
    {"image_id": 1, "category_id": 1, "bbox": [10, 200, 30, 30]},    # 3 orphan: 48 < 2 x 30
    {"image_id": 1, "category_id": 2, "bbox": [200, 10, 20, 20]},    # 4 orphan: the 48 px box is a car, not a bus
    {"image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20]},     # 5 orphan: 47 >= 2 x 20 but < 48
    {"image_id": 2, "category_id": 1, "bbox": [100, 10, 47, 47]},    # 6 medium (in no subset)
    {"image_id": 2, "category_id": 1, "bbox": [200, 200, 120, 120], "iscrowd": 1},  # 7 crowd: makes no twin
]


def hit(ann_id: int, score: float = 0.9, bbox=None) -> dict:
    ann = CROWD[ann_id - 1]
    return {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": bbox or ann["bbox"], "score": score}


def test_twins_and_orphans_by_hand():
    from borrowcore.evaluation.coco_eval import instance_subsets

    coco = crowd_coco(CROWD)
    assert instance_subsets(coco) == {"twins": {1}, "orphans": {3, 4, 5}}
    # a looser rule moves the 47 px car's neighbour in; a stricter one moves the exact-2x twin out
    assert instance_subsets(coco, min_large=47) == {"twins": {1, 5}, "orphans": {3, 4}}
    assert instance_subsets(coco, ratio=2.01) == {"twins": set(), "orphans": {1, 3, 4, 5}}
    with pytest.raises(ValueError):
        instance_subsets(coco, ratio=1.0)


def test_subset_ap_ignores_the_other_ground_truth():
    from borrowcore.evaluation.coco_eval import subset_metrics

    coco = crowd_coco(CROWD)
    perfect = subset_metrics(coco, [hit(i) for i in (1, 3, 4, 5)])
    assert perfect == {"twins": {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0), "instances": 1},
                       "orphans": {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0), "instances": 3}}
    # on the twins, detections of the orphan car, the large car and the medium car rank above the twin's:
    # they hit ignored boxes, neither TP nor FP, so twin AP stays 1 ...
    on_ignored = [hit(3, 0.99), hit(2, 0.98), hit(6, 0.97), hit(1, 0.9)]
    assert subset_metrics(coco, on_ignored)["twins"]["AP"] == pytest.approx(1.0)
    # ... whereas a false positive ranked first gives precision 1/2 at the twin's recall
    on_background = [{"image_id": 1, "category_id": 1, "bbox": [300, 300, 30, 30], "score": 0.99}, hit(1, 0.9)]
    assert subset_metrics(coco, on_background)["twins"]["AP"] == pytest.approx(0.5)
    # a small car inside the ignored 48 px car (IoU 400 / 2304) is a false positive: ignored boxes keep the
    # ordinary IoU (as crowd regions, with IoU = intersection / detection area = 1, it would be forgiven)
    inside = [{"image_id": 1, "category_id": 1, "bbox": [110, 110, 20, 20], "score": 0.99}, hit(1, 0.9)]
    assert subset_metrics(coco, inside)["twins"]["AP"] == pytest.approx(0.5)
    # an existing crowd box stays crowd: a small car inside it is forgiven on the orphans
    in_crowd = [{"image_id": 2, "category_id": 1, "bbox": [210, 210, 20, 20], "score": 0.99}] + [hit(i) for i in (3, 4, 5)]
    assert subset_metrics(coco, in_crowd)["orphans"]["AP"] == pytest.approx(1.0)
    # orphans are averaged over classes: cars 3 and 5 found (AP 1), bus 4 missed (AP 0)
    assert subset_metrics(coco, [hit(3), hit(5)])["orphans"]["AP"] == pytest.approx(0.5)
    # AP50 vs AP: the twin found at IoU 0.625 (24 x 15 inside 24 x 24) counts at thresholds 0.5, 0.55, 0.6
    loose = subset_metrics(coco, [hit(1, bbox=[10, 10, 24, 15])])["twins"]
    assert loose["AP50"] == pytest.approx(1.0) and loose["AP"] == pytest.approx(0.3)
    # no twins at all: -1 (COCO's "no ground truth")
    no_twins = subset_metrics(crowd_coco(CROWD[2:]), [hit(3)])
    assert no_twins["twins"] == {"AP": -1.0, "AP50": -1.0, "instances": 0}


def test_reports_carry_subsets_and_old_reports_still_load(twins_report):
    from borrowcore.evaluation.coco_eval import instance_subsets, subset_metrics
    from borrowcore.evaluation.evaluate import format_metrics

    _, _, out = twins_report
    loaded = load_report(out)
    from borrowcore.data.dataset import CocoDetection

    coco = CocoDetection(TINY / "images", TINY / "twins.json").coco
    # the borrow benchmark's twins split holds twins only, by the generic rule too
    assert {k: len(v) for k, v in instance_subsets(coco).items()} == {"twins": 62, "orphans": 0}
    assert loaded["subsets"]["twins"]["instances"] == 62 and loaded["subsets"]["orphans"]["AP"] == -1
    assert loaded["subsets"] == subset_metrics(coco, load_detections(loaded, out))  # recomputed from its files
    assert "twins" in format_metrics(loaded)
    old = {k: v for k, v in loaded.items() if k != "subsets"}  # a report written before issue 15
    assert validate_report(old) is old and "twins" not in format_metrics(old)
    with pytest.raises(ReportError, match="report.subsets.orphans: missing"):
        validate_report({**loaded, "subsets": {"twins": loaded["subsets"]["twins"]}})


# ---- known answers through the real evaluation path (issue 39) ----
#
# A painted set: each object is a rectangle whose channel 0 holds its index in the image (1..99) and channel 1
# its label; a stand-in detector reads the rectangles back from the pixels. Category ids are not 1..K (COCO's
# are not either) and listed out of order, and the images are not square, so a swapped x / y, an xyxy box
# where COCO wants xywh or a label written as a category id all move the numbers away from the known answer.

CATEGORIES = [{"id": 11, "name": "bus"}, {"id": 3, "name": "car"}, {"id": 7, "name": "van"}]
LABEL_OF = {3: 1, 7: 2, 11: 3}  # by hand: labels 1..K follow the category ids in increasing order
# every box with x >= w and y >= h, so that the box written as xyxy (x, y, x + w, y + h read as xywh) overlaps
# its object by w h / ((x + w)(y + h)) <= 1/4; sides: A 100 (large), D 40, E 55.4 (medium), the rest small
PAINTED = {
    5: ("a.png", 320, 240, [("A", 3, [110, 110, 100, 100]), ("B", 3, [40, 40, 20, 20]),   # B: twin of A
                            ("C", 7, [260, 30, 16, 24]), ("D", 11, [250, 150, 40, 40])]),  # C: orphan van
    9: ("b.png", 200, 300, [("E", 7, [100, 60, 64, 48]), ("F", 7, [30, 200, 12, 12]),     # F: twin of E
                            ("G", 11, [120, 250, 30, 30]), ("H", 3, [20, 20, 8, 8])]),     # G, H: orphans
    12: ("c.png", 240, 240, []),                                                          # nothing to find
}


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    """(images folder, annotations file) of the painted set."""
    from PIL import Image

    root = tmp_path_factory.mktemp("painted")
    (root / "images").mkdir()
    images, annotations = [], []
    for image_id, (file_name, width, height, objects) in PAINTED.items():
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        for index, (_, category_id, (x, y, w, h)) in enumerate(objects, start=1):
            pixels[y:y + h, x:x + w] = (index, LABEL_OF[category_id], 0)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels).save(root / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    (root / "painted.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                   "categories": CATEGORIES}))
    return root / "images", root / "painted.json"


class PaintedDetector(torch.nn.Module):
    """A stand-in with the Detector's eval-mode output: per image, the box (xyxy, that image's pixels) of each
    painted rectangle wholly in view (one touching the border of a tile is cut, and left out), score 0.9.

    shift: move every box right by this fraction of its width (IoU 2/3 with the object).
    relabel: {label: (label given, score)}: answer another class for these, at another score.
    xyxy_as_xywh: answer (x1, y1, x1 + x2, y1 + y2), which evaluate writes as the object's xyxy in COCO's xywh
        slots: what an evaluation that forgets the conversion would write."""

    def __init__(self, shift: float = 0.0, relabel: dict[int, tuple[int, float]] | None = None,
                 xyxy_as_xywh: bool = False) -> None:
        super().__init__()
        self.shift, self.relabel, self.xyxy_as_xywh = shift, relabel or {}, xyxy_as_xywh
        self.class_names = [c["name"] for c in sorted(CATEGORIES, key=lambda c: c["id"])]
        self.input_size = 128  # what the report's inference description names
        self.postprocess = torch.nn.Module()
        self.postprocess.detections_per_image = 100  # what the tiled path keeps
        self.seen: list[tuple[int, ...]] = []

    def forward(self, images):
        detections = []
        for image in images:
            self.seen.append(tuple(image.shape))
            boxes, labels, scores = [], [], []
            height, width = image.shape[-2:]
            for index in image[0].unique().tolist():
                if not 1 <= index < 100:  # background 0; the mean-colour padding of a tile is 124
                    continue
                ys, xs = torch.nonzero(image[0] == index, as_tuple=True)
                x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
                if x1 == 0 or y1 == 0 or x2 == width or y2 == height:
                    continue
                label, score = self.relabel.get(int(image[1, ys[0], xs[0]]), (int(image[1, ys[0], xs[0]]), 0.9))
                dx = self.shift * (x2 - x1)
                box = [x1 + dx, y1, x2 + dx, y2]
                if self.xyxy_as_xywh:
                    box = [x1, y1, x1 + x2, y1 + y2]
                boxes.append(box)
                labels.append(label)
                scores.append(score)
            detections.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                               "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores)})
        return detections


def evaluate_painted(painted, detector, tmp_path, **kwargs) -> tuple[dict, list[dict]]:
    from borrowcore.evaluation.evaluate import evaluate_detector

    images, annotations = painted
    out = tmp_path / "painted_eval.json"
    evaluate_detector(detector, annotations, images, out, show_progress=False, **kwargs)
    report = load_report(out)
    return report, load_detections(report, out)


def ground_truth_results(score: float = 0.9) -> list[dict]:
    return [{"image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in box], "score": score}
            for image_id, (_, _, _, objects) in PAINTED.items() for _, category_id, box in objects]


def key(results: list[dict]) -> list[tuple]:
    return sorted((r["image_id"], r["category_id"], *r["bbox"], r["score"]) for r in results)


def test_a_detector_that_returns_the_ground_truth_scores_one_everywhere(painted, tmp_path):
    report, detections = evaluate_painted(painted, PaintedDetector(), tmp_path)
    # the detections file is the ground truth, in COCO's xywh and the set's own category ids
    assert key(detections) == key(ground_truth_results())
    m = report["metrics"]
    for name in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR10", "AR100", "AR_S", "AR_M", "AR_L"):
        assert m[name] == pytest.approx(1.0), name
    # AR1: one detection per image and class: car 2 of 3 (A or B in image 5, H), van 2 of 3 (C, E or F), bus 2 of 2
    assert m["AR1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    rows = {row["label"]: (row["num_gt"], row["AP"]) for row in report["size_bins"]}
    assert rows == {"0-16": (2, pytest.approx(1.0)), "16-32": (3, pytest.approx(1.0)), "32-64": (2, pytest.approx(1.0)),
                    "64-96": (0, -1.0), "96-128": (1, pytest.approx(1.0)), "128+": (0, -1.0)}
    assert {c["name"]: (c["category_id"], c["num_gt"], c["AP"]) for c in report["per_class"]} == {
        "car": (3, 3, pytest.approx(1.0)), "van": (7, 3, pytest.approx(1.0)), "bus": (11, 2, pytest.approx(1.0))}
    assert report["subsets"] == {"twins": pytest.approx({"AP": 1.0, "AP50": 1.0, "instances": 2}),      # B, F
                                 "orphans": pytest.approx({"AP": 1.0, "AP50": 1.0, "instances": 3})}    # C, G, H
    assert report["extra"]["small_top1"] == {"accuracy": 1.0, "matched": 5, "instances": 5}
    assert report["extra"]["best_f1"] == pytest.approx({"score": 0.9, "f1": 1.0, "precision": 1.0, "recall": 1.0})
    assert report["dataset"]["num_images"] == 3 and report["dataset"]["num_boxes"] == 8
    assert report["model"]["class_names"] == ["car", "van", "bus"]


def test_known_drops_shifted_mislabelled_and_xyxy(painted, tmp_path):
    # every box moved right by a fifth of its width: IoU 0.8 / 1.2 = 2/3, a hit at thresholds 0.50..0.65 (4 of 10)
    shifted, _ = evaluate_painted(painted, PaintedDetector(shift=0.2), tmp_path)
    assert shifted["metrics"]["AP"] == pytest.approx(0.4)
    assert shifted["metrics"]["AP50"] == pytest.approx(1.0) and shifted["metrics"]["AP75"] == 0
    assert shifted["subsets"]["twins"]["AP"] == pytest.approx(0.4)
    assert shifted["subsets"]["orphans"]["AP50"] == pytest.approx(1.0)
    # vans answered as buses, scored below every bus: van AP 0, bus AP still 1 (its false positives rank last)
    mislabelled, _ = evaluate_painted(painted, PaintedDetector(relabel={2: (3, 0.5)}), tmp_path)
    assert {c["name"]: c["AP"] for c in mislabelled["per_class"]} == pytest.approx({"car": 1.0, "van": 0.0, "bus": 1.0})
    assert mislabelled["metrics"]["AP"] == pytest.approx(2 / 3)
    # twins: car B found, van F not (bus has no twin); orphans: car H, bus G found, van C not. The vans read as
    # buses are false positives on the bus orphans, ranked after G; the medium van E is outside the small range.
    assert mislabelled["subsets"]["twins"]["AP"] == pytest.approx(1 / 2)
    assert mislabelled["subsets"]["orphans"]["AP"] == pytest.approx(2 / 3)
    # top-1 class of the five small instances: C and F (vans) wrong
    assert mislabelled["extra"]["small_top1"] == pytest.approx({"accuracy": 3 / 5, "matched": 5, "instances": 5})
    # the boxes written as xyxy where COCO wants xywh: each overlaps its object by at most 1/4
    xyxy, detections = evaluate_painted(painted, PaintedDetector(xyxy_as_xywh=True), tmp_path)
    assert detections[0]["bbox"][2] > detections[0]["bbox"][0]  # x2 in the width slot (every w here is < x)
    assert xyxy["metrics"]["AP"] == 0 and xyxy["metrics"]["AP50"] == 0 and xyxy["subsets"]["twins"]["AP"] == 0


def test_tiled_evaluation_of_the_painted_set_is_exact(painted, tmp_path):
    """256 px tiles at overlap 0.5 (a 320 px side: windows at 0 and 64; a 300 px side: 0 and 44; 200 and 240 px
    sides: one window, padded): every object lies whole in some window, C, D and G only in one away from the
    origin, so the shift back to the image's pixels is in the boxes, and duplicates across windows merge."""
    detector = PaintedDetector()
    report, detections = evaluate_painted(painted, detector, tmp_path, tile=256, overlap=0.5)
    assert set(detector.seen) == {(3, 256, 256)} and len(detector.seen) == 2 + 2 + 1
    assert key(detections) == key(ground_truth_results())
    assert report["metrics"]["AP"] == pytest.approx(1.0) and report["extra"]["inference"] == "tiles 256 px, overlap 0.5"
