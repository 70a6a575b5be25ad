"""Issue 8 in the app: the error breakdown on Compare, and Head to head (differences by size, the fixed and
broken instances, opening one in Inspect), on a hand-made pair of reports over the tiny synthetic set."""

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from streamlit.testing.v1 import AppTest

from borrowcore import save_checkpoint
from borrowcore.evaluation.analysis import error_analysis, load_coco
from borrowcore.evaluation.coco_eval import coco_metrics
from borrowcore.evaluation.report import SCHEMA, SCHEMA_VERSION, save_report, sha256_file
from borrowcore.utils.atomic import write_json_atomic
from test_app import HOME, TIMEOUT, TINY, charts, texts, tiny_detector

GT = TINY / "twins.json"


def hand_detections(coco: COCO, keep) -> list[dict]:
    """A detection exactly on each ground-truth box whose position (in id order) passes ``keep``."""
    annotations = sorted(coco.dataset["annotations"], key=lambda a: a["id"])
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for k, a in enumerate(annotations) if keep(k)]


def hand_report(folder: Path, neck: str, checkpoint: str, sha: str, results: list[dict], coco: COCO,
                annotations: str = str(GT), extra: dict | None = None) -> Path:
    metrics = coco_metrics(coco, results)
    report = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": "2026-01-01T00:00:00",
              "model": {"config": {"neck": neck}, "class_names": [c["name"] for c in coco.dataset["categories"]],
                        "checkpoint": checkpoint, "checkpoint_sha256": sha, "ablation": neck},
              "dataset": {"name": "synth-tiny", "split": "twins", "annotations": annotations,
                          "annotations_sha256": sha256_file(GT) if annotations == str(GT) else "elsewhere",
                          "images": str(TINY / "images"), "num_images": len(coco.imgs),
                          "num_boxes": len(coco.anns)},
              "detections": "eval_twins.detections.json.gz", **metrics,
              "timing": {"images": 16, "seconds": 1.0, "images_per_s": 16.0, "device": "cpu"}, "extra": extra or {}}
    folder.mkdir(parents=True)
    write_json_atomic(results, folder / "eval_twins.detections.json.gz")
    save_report(report, folder / "eval_twins.json")
    return folder / "eval_twins.json"


@pytest.fixture(scope="module")
def pair_assets(tmp_path_factory) -> Path:
    """checkpoints/tiny-full.pt; reports/hand/{ssd,full,lost}/eval_twins.json: A (ssd, breakdown stored) finds
    the boxes k % 3 != 0, B (full, tiny-full.pt) those k % 3 != 1; `lost` names ground truth that is nowhere."""
    root = tmp_path_factory.mktemp("h2h")
    (root / "synth-tiny").symlink_to(TINY)
    coco = load_coco(GT)
    checkpoint = root / "checkpoints" / "tiny-full.pt"
    save_checkpoint(checkpoint, tiny_detector("full", [c["name"] for c in coco.dataset["categories"]]))
    results_a = hand_detections(coco, lambda k: k % 3 != 0)
    hand_report(root / "reports" / "hand" / "ssd", "ssd", "runs/ssd/seed0/last.pt", "", results_a, coco,
                extra={"error_analysis": error_analysis(coco, results_a)})
    hand_report(root / "reports" / "hand" / "full", "full", str(checkpoint), sha256_file(checkpoint),
                hand_detections(coco, lambda k: k % 3 != 1), coco)
    hand_report(root / "reports" / "hand" / "lost", "borrow", "x.pt", "", results_a, coco,
                annotations="/nowhere/twins.json")
    return root


def expected(kind: str) -> list[dict]:
    """The fixed (k % 3 == 0: B finds, A misses) or broken (k % 3 == 1), smallest first as the gallery lists them."""
    annotations = sorted(json.loads(GT.read_text())["annotations"], key=lambda a: a["id"])
    chosen = [a for k, a in enumerate(annotations) if k % 3 == (0 if kind == "fixed" else 1)]
    return sorted(chosen, key=lambda a: (a["area"] ** 0.5, a["id"]))


@pytest.fixture
def app(pair_assets, monkeypatch):
    monkeypatch.setenv("BORROWSCOPE_ASSETS", str(pair_assets))

    def start(page: str) -> AppTest:
        at = AppTest.from_file(HOME, default_timeout=TIMEOUT).run()
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return start


# ---- Compare: the error breakdown ----

def test_compare_breakdown_from_the_stored_analysis_then_computed_on_demand(app):
    at = app("../pages/compare.py")
    said = texts(at)
    assert "Why they fail: error breakdown by size" in said and "2 of these reports store no error breakdown" in said
    breakdown = next(c for c in charts(at) if "error breakdown" in json.dumps(c["layout"]["title"]))
    assert {t["name"] for t in breakdown["data"]} >= {"Sim: look-alike class", "FN: never detected"}
    assert {t["x"][0] for t in breakdown["data"]} == {"hand/ssd/twins"}  # only A stores one
    table = at.dataframe[-2].value
    assert set(table["report"]) == {"hand/ssd/twins"} and table["FN"].eq(1.0).all()
    area = next(c for c in charts(at) if "PR under each condition" in json.dumps(c["layout"]["title"]))
    assert [t["name"].split()[-1] for t in area["data"]] == ["C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"]

    at.toggle(key="compare_breakdown_compute").set_value(True).run()
    assert not at.exception
    table = at.dataframe[-2].value
    assert set(table["report"]) == {"hand/ssd/twins", "hand/full/twins"}  # B computed from its detections
    b_all = table[(table["report"] == "hand/full/twins") & (table["range"] == "all")].iloc[0]
    assert b_all["C50"] == pytest.approx(b_all["Oth"])  # exact boxes, right classes: no Loc/Sim/Oth errors
    warnings = [w.value for w in at.warning]
    assert any("hand/lost/twins" in w and "`/nowhere/twins.json` (dataset.annotations) is not on this machine" in w
               for w in warnings)
    at.radio(key="compare_breakdown_ranges").set_value("fine bins").run()
    bars = next(c for c in charts(at) if "fine bins" in json.dumps(c["layout"]["title"]))
    assert not at.exception and bars["data"]


# ---- Head to head ----

def test_head_to_head_differences_and_gallery_of_fixed_and_broken(app):
    at = app("../pages/head_to_head.py")
    assert at.selectbox(key="h2h_a").value == "hand/ssd/twins" and at.selectbox(key="h2h_b").value == "hand/full/twins"
    assert at.slider(key="h2h_draws").value == 200
    fixed, broken = expected("fixed"), expected("broken")
    assert any(f"{len(fixed)} fixed by B, {len(broken)} broken by B" in s.value for s in at.subheader)
    diff = next(c for c in charts(at) if "paired draws" in json.dumps(c["layout"]["title"]))
    [points] = diff["data"]
    assert points["x"][0] == "all" and "arrayminus" in points["error_y"]
    table = at.dataframe[0].value
    assert (table["CI low"] <= table["B − A"]).all() and (table["B − A"] <= table["CI high"]).all()
    assert "twins" in table["range"].tolist()  # small twins (coco_eval.instance_subsets) below the size ranges

    at.selectbox(key="h2h_size").set_value("all").run()
    listed = at.dataframe[1].value
    assert listed["annotation_id"].tolist() == [a["id"] for a in fixed[:12]]
    assert len(at.image) == min(12, len(fixed))
    assert [b.label for b in at.button if b.key.startswith("h2h_open_")] == ["Open in Inspect"] * min(12, len(fixed))
    at.radio(key="h2h_kind").set_value("broken").run()
    assert at.dataframe[1].value["annotation_id"].tolist() == [a["id"] for a in broken[:12]]
    at.selectbox(key="h2h_size").set_value("small").run()
    small = [a["id"] for a in broken if a["area"] ** 0.5 < 32]
    assert at.dataframe[1].value["annotation_id"].tolist() == small[:12]


def test_head_to_head_refuses_reports_on_other_ground_truth(app):
    at = app("../pages/head_to_head.py")
    at.selectbox(key="h2h_b").set_value("hand/lost/twins").run()
    assert not at.exception
    assert any(e.value.startswith("Cannot compare these two:") and "different ground truth" in e.value for e in at.error)


def test_head_to_head_uploads_need_their_detections(app, pair_assets):
    at = app("../pages/head_to_head.py")
    folder = pair_assets / "reports" / "hand" / "full"
    at.file_uploader(key="h2h_uploads").upload("mine.json", (folder / "eval_twins.json").read_bytes()).run()
    assert not at.exception
    assert any("mine.json: its detections `eval_twins.detections.json.gz` were not uploaded" in e.value for e in at.error)
    at.file_uploader(key="h2h_uploads").upload("mine.json", (folder / "eval_twins.json").read_bytes()).upload(
        "eval_twins.detections.json.gz", (folder / "eval_twins.detections.json.gz").read_bytes()).run()
    assert not at.exception and not at.error
    assert "mine.json (uploaded)" in at.selectbox(key="h2h_b").options
    at.selectbox(key="h2h_b").set_value("mine.json (uploaded)").run()
    assert not at.exception and not at.error  # the same detections as hand/full: the same comparison
    assert any(f"{len(expected('fixed'))} fixed by B" in s.value for s in at.subheader)


def test_open_in_inspect_selects_image_checkpoint_and_the_instance(app):
    at = app("../pages/head_to_head.py")
    at.selectbox(key="h2h_size").set_value("small").run()
    instance = next(a for a in expected("fixed") if a["area"] ** 0.5 < 32)
    at.button(key=f"h2h_open_fixed_{instance['id']}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    data = json.loads(GT.read_text())
    image = next(i for i in data["images"] if i["id"] == instance["image_id"])
    assert at.session_state["inspect_checkpoint"] == "tiny-full.pt"  # B's checkpoint, found by its sha256
    assert at.multiselect(key="inspect_samples").value == [f"synth-tiny/{image['file_name']}"]
    assert at.radio(key="inspect_instances").value.startswith("ground truth (")
    siblings = [a["id"] for a in data["annotations"] if a["image_id"] == instance["image_id"] and not a.get("iscrowd")]
    assert at.selectbox(key="inspect_detection").value == siblings.index(instance["id"])
    assert "queries.REQUEST" not in at.session_state and "inspect_request" not in at.session_state  # consumed once
    assert any("Opened from Head to head" in i.value and "is the query below" in i.value for i in at.info)
    borrow = next(c for c in charts(at) if any(t["type"] == "heatmap" for t in c["data"]))
    assert borrow and f"#{siblings.index(instance['id'])} " in texts(at)


def test_open_request_and_request_query_set_what_inspect_reads(tmp_path):
    from test_explain import hand_explanation
    from viewer.queries import DETECTION, inspect_request, open_request, request_query

    image = tmp_path / "set" / "images" / "a.png"
    request = inspect_request({"bbox": [0, 0, 10, 10], "category": "c", "annotation_id": 3}, image, "b.pt", GT)
    state, samples = {}, {}
    label = open_request(state, request, samples, ["a.pt", "b.pt"])
    assert label == "set/a.png" and samples[label] == image and state["inspect_samples"] == [label]
    assert state["inspect_checkpoint"] == "b.pt" and state["inspect_requested_coco"] == [str(GT)]
    open_request(state := {}, {**request, "checkpoint": "gone.pt"}, {"bundled/a.png": image}, ["a.pt"])
    assert "inspect_checkpoint" not in state and state["inspect_samples"] == ["bundled/a.png"]
    explanation = hand_explanation()
    boxes = explanation.detections["boxes"]
    x0, y0, x1, y1 = boxes[2].tolist()
    assert request_query(state, explanation, [0, 1, 2], [x0, y0, x1 - x0, y1 - y0]) == 2
    assert state["inspect_detection"] == 2 and state["inspect_mode"] == DETECTION
    # 0 and 1 do not overlap detection 2's box: no query, and the one chosen before stays
    assert request_query(state, explanation, [0, 1], [x0, y0, x1 - x0, y1 - y0]) is None
    assert state["inspect_detection"] == 2
    x0, y0, x1, y1 = boxes[1].tolist()  # a box shifted a little off detection 1 still finds it among [0, 1]
    assert request_query(state, explanation, [0, 1], [x0 + 3, y0 - 2, x1 - x0, y1 - y0]) == 1
    assert state["inspect_detection"] == 1
