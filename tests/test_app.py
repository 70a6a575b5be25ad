"""The BorrowScope app under Streamlit's AppTest: every page, real uploads, bad input, shared models.

The fixtures build their own assets folder (tiny checkpoints, real evaluation reports, a training log)
and point the app at it with BORROWSCOPE_ASSETS, so nothing here needs the bundled results.
"""

import base64
import io
import json
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from borrowcore import DetectorConfig, build_detector, save_checkpoint
from borrowcore.data.dataset import CocoDetection
from borrowcore.evaluation.evaluate import evaluate_detector
from borrowcore.evaluation.explain import borrow_precision
from borrowcore.evaluation.report import save_report
from borrowcore.models.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
HOME = str(ROOT / "viewer" / "Home.py")
TINY = ROOT / "assets" / "synth-tiny"
TIMEOUT = 180


def tiny_detector(neck: str, class_names: list[str]):
    torch.manual_seed(0)
    config = DetectorConfig(neck=neck, num_classes=len(class_names), input_size=128, width=0.125, batch_norm=True,
                            score_threshold=0.05, detections_per_image=50)
    return build_detector(config, class_names).eval()


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """checkpoints/tiny-{full,ssd}.pt, reports/ablation/<neck>/seed<k>/eval_<split>.json, logs/, synth-tiny/."""
    root = tmp_path_factory.mktemp("assets")
    (root / "synth-tiny").symlink_to(TINY)
    names = [c["name"] for c in json.loads((TINY / "twins.json").read_text())["categories"]]
    for neck in ("full", "ssd"):
        detector = tiny_detector(neck, names)
        checkpoint = root / "checkpoints" / f"tiny-{neck}.pt"
        save_checkpoint(checkpoint, detector)
        for split in ("twins", "orphans"):
            out = root / "reports" / "ablation" / neck / "seed0" / f"eval_{split}.json"
            report = evaluate_detector(detector, TINY / f"{split}.json", TINY / "images", out, checkpoint=checkpoint,
                                       split=split, show_progress=False)
            report["extra"]["seed"] = 0
            if neck == "full" and split == "twins":
                dataset = CocoDetection(TINY / "images", TINY / "twins.json")
                report["extra"]["borrow_precision"] = borrow_precision(detector, dataset)
                save_report(report, out)
                # a second seed of the same weights: the mean is the same, the std 0
                seed1 = root / "reports" / "ablation" / neck / "seed1"
                seed1.mkdir(parents=True)
                (seed1 / out.name).write_text(json.dumps({**report, "extra": {**report["extra"], "seed": 1}}))
                (seed1 / report["detections"]).write_bytes((out.parent / report["detections"]).read_bytes())
            else:
                save_report(report, out)
    logs = root / "logs"
    logs.mkdir()
    lines = [{"event": "start", "total_steps": 30, "device": "cpu", "global_batch": 4},
             *({"event": "step", "step": s, "epoch": 0, "lr": 0.001 * s, "loss": 5 / s, "loss_box": 1 / s,
                "loss_cls": 4 / s, "images_per_s": 10.0} for s in (10, 20)),
             {"event": "epoch", "epoch": 0, "step": 20, "val_loss": 0.3}, {"event": "resume", "step": 20},
             {"event": "step", "step": 30, "epoch": 1, "lr": 0.01, "loss": 0.1, "loss_box": 0.02, "loss_cls": 0.08,
              "images_per_s": 11.0}]
    (logs / "full-seed0.log.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + '\n{"event": "st')
    return root


@pytest.fixture
def app(assets, monkeypatch):
    """A fresh session of the app on ``assets``; ``app(page)`` runs that page (a path relative to viewer/)."""
    monkeypatch.setenv("BORROWSCOPE_ASSETS", str(assets))

    def start(page: str | None = None, root: Path | None = None) -> AppTest:
        if root is not None:
            monkeypatch.setenv("BORROWSCOPE_ASSETS", str(root))
        at = AppTest.from_file(HOME, default_timeout=TIMEOUT).run()
        if page:
            at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return start


def texts(at: AppTest) -> str:
    """Everything the page says, as one string."""
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption] + [m.value for m in at.subheader]
    parts += [m.value for m in at.info] + [m.value for m in at.warning] + [m.value for m in at.error]
    return "\n".join(parts)


def strict(constant: str):
    pytest.fail(f"{constant} in a chart spec: the browser's JSON.parse refuses it and draws nothing")


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec, parse_constant=strict) for chart in at.get("plotly_chart")]


def values(array) -> list:
    """A plotly data array as a list: plotly >= 6 sends numbers as {"dtype", "bdata" (base64)}."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# ---- Home ----

def test_home_lists_what_is_bundled_and_the_device(app):
    at = app()
    assert at.title[0].value == "BorrowScope"
    table = at.dataframe[0].value
    assert sorted(table["checkpoint"]) == ["tiny-full.pt", "tiny-ssd.pt"] and set(table["neck"]) == {"full", "ssd"}
    reports = at.dataframe[1].value
    assert "ablation/full/seed0/twins" in set(reports["report"]) and len(reports) == 5
    import torch

    device = f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"
    assert f"Inference device: **{device}**" in texts(at)


def test_home_says_plainly_when_nothing_is_bundled(app, tmp_path):
    at = app(root=tmp_path)
    said = texts(at)
    assert "No checkpoints are bundled yet" in said and "No evaluation reports are bundled yet" in said


# ---- Inspect ----

def test_inspect_bundled_sample_shows_detections_heatmap_and_links(app):
    at = app("../pages/inspect_image.py")
    at.sidebar.slider(key="inspect_threshold").set_value(0.05).run()
    assert not at.exception
    said = texts(at)
    assert "Detections:" in said and "borrowed from" in said
    detections, borrow, panels, layers = charts(at)
    assert [t["type"] for t in borrow["data"]] == ["image", "heatmap"]
    assert len(panels["data"]) == 2 * 4  # image + heatmap for layers 2, 3, 4 and the combined map
    assert any(t["type"] == "heatmap" for t in layers["data"])
    # the selected detection is the one the borrow view explains
    detection = at.selectbox(key="inspect_detection").value
    assert f"#{detection} " in at.markdown[0].value or any(f"#{detection} " in m.value for m in at.markdown)
    buttons = [b.label for b in at.download_button]
    assert buttons == ["Detections (COCO json)", "Overlay (PNG)"]


def test_inspect_picking_another_detection_or_a_cell_redraws(app):
    at = app("../pages/inspect_image.py")
    at.sidebar.slider(key="inspect_threshold").set_value(0.05).run()
    options = at.selectbox(key="inspect_detection").options
    assert len(options) > 1
    at.selectbox(key="inspect_detection").select_index(len(options) - 1).run()
    chosen = at.selectbox(key="inspect_detection").value
    assert any(m.value.startswith(f"**#{chosen} ") for m in at.markdown)
    at.radio(key="inspect_mode").set_value("a cell of a shallow layer").run()
    at.number_input(key="inspect_row").set_value(3).run()
    at.number_input(key="inspect_col").set_value(5).run()
    assert not at.exception
    assert any("**cell (3, 5)** of layer 1 (conv4_3)" in m.value for m in at.markdown)
    at.selectbox(key="inspect_layer").set_value(3).run()  # an 8 x 8 grid at input 128 / stride 32... rows clamp
    assert not at.exception and any("of layer 3 (conv_fc7)" in m.value for m in at.markdown)


def test_inspect_says_which_matching_runs_and_exact_is_one_toggle_away(app, assets):
    """A full checkpoint saved with the default (fast) matching runs fast; the toggle reruns it exact, and the
    caption says which one ran each time."""
    at = app("../pages/inspect_image.py")
    assert "fast matching (at most 64 keys per deeper map)" in texts(at)
    assert at.sidebar.toggle(key="inspect_exact").value is False
    at.sidebar.toggle(key="inspect_exact").set_value(True).run()
    assert not at.exception and "exact matching (every deeper cell)" in texts(at)
    # and the detections shown are those of the checkpoint loaded exact, on the sample, at the page's threshold
    from borrowcore.data.dataset import read_image_rgb
    from borrowcore.models.checkpoint import load_detector

    [heading] = [s.value for s in at.subheader if s.value.startswith("Detections:")]
    file_name = heading.rsplit(" in ", 1)[1]
    threshold = at.sidebar.slider(key="inspect_threshold").value
    detector = load_detector(assets / "checkpoints" / "tiny-full.pt", exact=True)
    with torch.no_grad():
        [found] = detector([read_image_rgb(assets / "synth-tiny" / "images" / file_name)])
    expected = [f"#{i} {detector.class_names[int(label) - 1]} ({float(score):.2f}, "
                for i, (label, score) in enumerate(zip(found["labels"], found["scores"])) if score >= threshold]
    assert expected and heading == f"Detections: {len(expected)} at score ≥ {threshold:.2f} in {file_name}"
    options = at.selectbox(key="inspect_detection").options  # "#i class (score, size px)", best first
    assert len(options) == len(expected) and all(o.startswith(e) for o, e in zip(options, expected)), options[:3]


def test_inspect_ssd_checkpoint_says_there_is_no_borrowing(app):
    at = app("../pages/inspect_image.py")
    at.sidebar.selectbox(key="inspect_checkpoint").set_value("tiny-ssd.pt").run()
    assert not at.exception
    assert "there is no borrowing to show" in texts(at) and len(charts(at)) == 1  # the detections only
    assert not at.sidebar.get("toggle") and "no matching (this neck does not borrow)" in texts(at)


def good_and_bad_images() -> dict[str, bytes]:
    photo = Image.fromarray((torch.rand(48, 64, 3) * 255).to(torch.uint8).numpy())
    exif = Image.Exif()
    exif[0x0112] = 6
    deep = Image.fromarray((torch.rand(40, 50) * 65535).to(torch.int32).numpy().astype("uint16"))
    jpeg = encode(photo, "JPEG")
    return {
        "rgba.png": encode(photo.convert("RGBA"), "PNG"),
        "gray.png": encode(photo.convert("L"), "PNG"),
        "deep.png": encode(deep, "PNG"),
        "print.jpg": encode(photo.convert("CMYK"), "JPEG"),
        "rotated.jpg": encode(photo, "JPEG", exif=exif),
        "corrupt.jpg": jpeg[: len(jpeg) // 3],
        "notes.jpg": b"these are my notes, not a photo",
        "bomb.png": encode(Image.new("L", (7000, 7000)), "PNG"),
    }


def test_inspect_uploads_bad_images_get_a_message_good_ones_still_work(app):
    at = app("../pages/inspect_image.py")
    uploader = at.file_uploader(key="inspect_images")
    for name, data in good_and_bad_images().items():
        uploader.upload(name, data, "image/png" if name.endswith("png") else "image/jpeg")
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 3
    assert any("corrupt.jpg: truncated or corrupt JPEG file" in e for e in errors)
    assert any("notes.jpg: not an image (it is text)" in e for e in errors)
    assert any("bomb.png: refused: 7000 x 7000 = 49,000,000 pixels is over the limit" in e for e in errors)
    images = at.radio(key="inspect_image").options
    assert {f"{n} (uploaded)" for n in ("rgba.png", "gray.png", "deep.png", "print.jpg", "rotated.jpg")} <= set(images)
    at.radio(key="inspect_image").set_value("rotated.jpg (uploaded)").run()
    assert not at.exception
    [detections] = charts(at)[:1]
    image = detections["data"][0]
    assert detections["layout"]["xaxis"]["range"] == [0, 48]  # EXIF orientation 6: the 64 x 48 photo stands up
    assert image["type"] == "image"


def test_each_session_sees_only_its_own_uploads(app):
    sessions = [app("../pages/inspect_image.py") for _ in range(8)]
    for k, at in enumerate(sessions):
        picture = Image.new("RGB", (64 + k, 64), (40 * k, 100, 200))
        at.file_uploader(key="inspect_images").upload(f"mine{k}.png", encode(picture, "PNG"), "image/png").run()
    for k, at in enumerate(sessions):
        options = at.radio(key="inspect_image").options
        assert [o for o in options if o.startswith("mine")] == [f"mine{k}.png (uploaded)"]


def test_inspect_uploaded_checkpoints_good_and_bad(app, assets, tmp_path):
    at = app("../pages/inspect_image.py")
    at.sidebar.selectbox(key="inspect_checkpoint").set_value("Upload a checkpoint…").run()
    assert "Upload a borrowcore checkpoint" in texts(at)
    uploader = at.sidebar.file_uploader(key="inspect_checkpoint_upload")
    uploader.upload("mine.pt", (assets / "checkpoints" / "tiny-full.pt").read_bytes()).run()
    assert not at.exception and not at.error and "neck **full**" in texts(at)

    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    wrong = read_checkpoint(assets / "checkpoints" / "tiny-ssd.pt")
    wrong["config"]["neck"] = "full"  # ssd weights claiming to be the full model
    torch.save(wrong, tmp_path / "wrong.pt")
    cases = {"evil.pt": ((tmp_path / "evil.pt").read_bytes(), "evil.pt: refused"),
             "wrong.pt": ((tmp_path / "wrong.pt").read_bytes(), "wrong.pt: weights do not fit the model"),
             "junk.pt": (b"\x00garbage" * 10, "junk.pt: "),
             "pickled.pt": (pickle.dumps({"format": "x"}), "pickled.pt: ")}
    for name, (data, message) in cases.items():
        at.sidebar.file_uploader(key="inspect_checkpoint_upload").set_value((name, data, "application/octet-stream"))
        at.run()
        assert not at.exception, name
        assert any(e.value.startswith(message) for e in at.error), (name, [e.value for e in at.error])
        assert "tmp" not in at.error[0].value.split(":")[0]  # named as uploaded, not by its stored path


# ---- Compare ----

def test_compare_draws_size_bars_twins_orphans_pr_and_classes_from_bundled_reports(app):
    at = app("../pages/compare.py")
    coco, bins, twins, subsets, pr = charts(at)
    groups = {trace["name"] for trace in coco["data"]}
    assert groups == {"full", "ssd"}
    full = next(t for t in coco["data"] if t["name"] == "full" and t["xaxis"] == "x")  # first split panel
    assert list(full["x"]) == ["all", "small", "large"]  # the tiny set has no medium boxes: no bar there
    assert {t["name"] for t in twins["data"]} == {"twins", "orphans"}
    assert "Twins against orphans" in texts(at) and "Borrow precision" in texts(at)
    # instance-level twins / orphans (coco_eval.instance_subsets): the twins split holds only twins, the orphans
    # split only orphans, so each panel has one bar per group
    assert {t["name"] for t in subsets["data"]} == {"full", "ssd"} and "Small twins and orphans" in texts(at)
    assert {x for t in subsets["data"] for x in t["x"]} == {"twins", "orphans"}
    assert sorted(t["name"] for t in pr["data"]) == ["full · orphans", "full · twins", "ssd · orphans", "ssd · twins"]
    classes = at.dataframe[-1].value
    assert len(classes) == 6 and "full · twins" in classes.columns
    assert at.download_button[0].label == "Size table (CSV)"
    ran = at.dataframe[0].value  # how each report's detector ran: the tiny full model matched fast
    assert set(ran["neck"]) == {"full", "ssd"} and all("fast matching" in r for r in ran[ran["neck"] == "full"]["how it ran"])
    at.radio(key="compare_by").set_value("report").run()
    assert {t["name"] for t in charts(at)[0]["data"]} == {"ablation/full/seed0/twins", "ablation/full/seed0/orphans",
                                                          "ablation/full/seed1/twins", "ablation/ssd/seed0/twins",
                                                          "ablation/ssd/seed0/orphans"}


def test_compare_bars_carry_std_over_seeds(app, assets, tmp_path):
    """Two seeds of `full` scoring AP 0.1 and 0.4, AP_S 0.2 and 0.3, AP_L 0.5 and 0.5, one seed of `ssd`: each
    bar is the mean over its seeds, its error bar their sample std (n - 1), zero for a single seed."""
    source = assets / "reports" / "ablation"
    runs = [("full", 0, {"AP": 0.1, "AP_S": 0.2, "AP_L": 0.5}), ("full", 1, {"AP": 0.4, "AP_S": 0.3, "AP_L": 0.5}),
            ("ssd", 0, {"AP": 0.05, "AP_S": 0.0, "AP_L": 0.25})]
    for neck, seed, metrics in runs:
        report = json.loads((source / neck / "seed0" / "eval_twins.json").read_text())
        assert report["metrics"]["AP_M"] == -1  # the tiny twins have no medium box: no bar there
        report["metrics"].update(metrics)
        folder = tmp_path / "reports" / "ablation" / neck / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "eval_twins.json").write_text(json.dumps(report))
        (folder / report["detections"]).write_bytes((source / neck / "seed0" / report["detections"]).read_bytes())
    at = app("../pages/compare.py", root=tmp_path)
    bars = {t["name"]: (list(t["x"]), values(t["y"]), values(t["error_y"]["array"])) for t in charts(at)[0]["data"]}
    assert bars == {
        "full": (["all", "small", "large"], pytest.approx([0.25, 0.25, 0.5]),
                 pytest.approx([0.3 / 2 ** 0.5, 0.1 / 2 ** 0.5, 0.0])),  # |a - b| / sqrt(2): the std of two
        "ssd": (["all", "small", "large"], pytest.approx([0.05, 0.0, 0.25]), pytest.approx([0.0, 0.0, 0.0]))}


def test_compare_malformed_uploads_get_a_message(app):
    at = app("../pages/compare.py")
    at.file_uploader(key="compare_uploads").upload("broken.json", b"{not json").upload(
        "other.json", json.dumps({"schema": "something-else"}).encode()).upload(
        "half.json", json.dumps({"schema": "borrowcore-eval-report", "schema_version": 1}).encode()).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Cannot use this report: broken.json: not valid JSON") for e in errors)
    assert any("other.json: not a borrowcore evaluation report" in e for e in errors)
    assert any("half.json: malformed report: report.created: missing" in e for e in errors)
    assert len(charts(at)) == 5  # the bundled reports still draw


@pytest.mark.skipif(not (ROOT / "assets" / "reports").is_dir(), reason="no bundled reports in assets/reports yet")
def test_compare_draws_from_the_real_bundled_reports(monkeypatch):
    monkeypatch.delenv("BORROWSCOPE_ASSETS", raising=False)
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT).run()
    at.switch_page("../pages/compare.py").run()
    assert not at.exception and not at.error
    picked = at.multiselect(key="compare_reports").value
    assert len(picked) >= 1 and len(charts(at)) >= 2
    assert len({name.split("/")[0] for name in picked}) == 1  # one study (synthetic or aerial), not both mixed


# ---- Data & anchors ----

def test_data_page_shows_eq1_and_anchor_recall(app):
    at = app("../pages/data_anchors.py")
    assert at.selectbox(key="data_file").value.startswith("synth-tiny/")
    assert [m.label for m in at.metric][1].startswith("mAR_anchor at IoU 0.50")
    recall = next(c for c in charts(at) if "anchor recall" in json.dumps(c["layout"].get("title", "")))
    assert recall["data"] and "Overall:" in texts(at)


def test_data_page_upload_good_and_malformed_coco(app):
    at = app("../pages/data_anchors.py")
    at.selectbox(key="data_file").set_value("Upload a COCO json…").run()
    at.file_uploader(key="data_upload").upload("bad.json", b'{"images": [], "annotations": 3}').run()
    assert not at.exception
    assert at.error[0].value.startswith("Cannot use this file: bad.json: not a COCO detection file")
    coco = {"images": [{"id": 1, "width": 300, "height": 300, "file_name": "a.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 22, 22]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 24, 24]}],
            "categories": [{"id": 1, "name": "thing"}]}
    at.file_uploader(key="data_upload").set_value(("mine.json", json.dumps(coco).encode(), "application/json")).run()
    assert not at.exception and not at.error
    assert "of 2 boxes" in texts(at)


# ---- Training ----

def test_training_plots_bundled_logs_and_refuses_broken_uploads(app):
    at = app("../pages/training.py")
    summary = at.dataframe[0].value
    assert summary["steps logged"].tolist() == [3] and summary["resumes"].tolist() == [1]
    assert summary["unreadable lines"].tolist() == [1]  # the half-written last line of a running job
    titles = [json.dumps(c["layout"]["title"]) for c in charts(at)]
    assert any("total loss" in t for t in titles) and any("learning rate" in t for t in titles)
    assert any("throughput" in t for t in titles) and any("validation loss" in t for t in titles)
    at.file_uploader(key="training_uploads").upload("junk.jsonl", b"hello\nworld\n").run()
    assert not at.exception
    assert at.error[0].value == ("Cannot use this log: junk.jsonl: not a training log "
                                 '(no JSON lines with "event": start / step / epoch)')
    assert len(at.dataframe[0].value) == 1


def test_training_plots_gradient_norms_only_for_logs_that_have_them(app):
    at = app("../pages/training.py")
    assert not any("gradient norm" in json.dumps(c["layout"]["title"]) for c in charts(at))  # the bundled log predates them
    records = [{"event": "step", "step": s, "epoch": 0, "lr": 0.01, "loss": 3.0, "loss_box": 1.0, "loss_cls": 2.0,
                "images_per_s": 5.0, "grad_norm": norm, "clipped": clipped}
               for s, norm, clipped in [(10, 12.5, 1.0), (20, 4.0, 0.3)]]
    log = "\n".join(json.dumps(r) for r in records).encode()
    at.file_uploader(key="training_uploads").upload("new.jsonl", log).run()
    assert not at.exception and not at.error
    grad = [c for c in charts(at) if "gradient norm" in json.dumps(c["layout"]["title"])]
    assert len(grad) == 1
    assert [y for trace in grad[0]["data"] for y in values(trace["y"])] == [12.5, 4.0]


# ---- Shared models, one inference at a time ----

def test_model_is_shared_and_inference_runs_one_at_a_time(assets):
    from viewer.models import explain_image, file_key, load_model

    path = assets / "checkpoints" / "tiny-full.pt"
    detector = load_model(path)
    assert load_model(path) is detector  # one detector for every session
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    active, peak, guard = [0], [0], threading.Lock()
    forward = detector.forward

    def counting_forward(*args, **kwargs):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        try:
            return forward(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    detector.forward = counting_forward
    results = {}

    def session(k: int) -> None:
        image = torch.full((3, 64, 64), 30 * k, dtype=torch.uint8)
        results[k] = explain_image(file_key(path), f"digest-{k}-{time.time()}", detector, image)

    try:
        threads = [threading.Thread(target=session, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        del detector.forward
    assert sorted(results) == list(range(8)) and peak[0] == 1
    assert all(torch.equal(v, detector.state_dict()[k]) for k, v in before.items())


def test_a_waiting_person_is_told_each_new_position_once(assets):
    """Each on_wait call redraws the person's page: while the queue stands still, no redraws."""
    from viewer.models import explain_image, file_key, inference_queue, load_model

    path = assets / "checkpoints" / "tiny-full.pt"
    detector, gate = load_model(path), threading.Event()
    blocker = inference_queue().submit(("blocker", time.time()), lambda: gate.wait(5))  # someone else's image
    told = []
    waiting = threading.Thread(target=explain_image, args=(file_key(path), f"digest-wait-{time.time()}", detector,
                                                           torch.zeros((3, 64, 64), dtype=torch.uint8)),
                               kwargs={"on_wait": told.append, "poll_s": 0.002})
    waiting.start()
    time.sleep(0.2)  # about a hundred polls one place behind the blocker
    gate.set()
    waiting.join(10)
    assert blocker.result(5) and not waiting.is_alive()
    assert told[0] == 1 and told[1:] in ([], [0])


def test_inference_queue_runs_in_order_joins_duplicates_caches_and_bounds():
    from viewer.models import InferenceQueue, QueueFull

    work = InferenceQueue(max_pending=3, cache_size=2, threads=1)
    gate, ran = threading.Event(), []

    def job(name, wait=False):
        def run():
            if wait:
                gate.wait(5)
            ran.append(name)
            return name.upper()
        return run

    first = work.submit("a", job("a", wait=True))  # holds the worker until the gate opens
    second, third = work.submit("b", job("b")), work.submit("c", job("c"))
    assert work.submit("b", job("b-again")) is second  # another session's same request joins it
    time.sleep(0.05)
    assert [work.position(f) for f in (first, second, third)] == [0, 1, 2]
    with pytest.raises(QueueFull, match="3 images are waiting"):
        work.submit("d", job("d"))
    gate.set()
    assert [f.result(5) for f in (first, second, third)] == ["A", "B", "C"]
    assert ran == ["a", "b", "c"]  # arrival order, each once
    cached = work.submit("c", job("c-rerun"))
    assert cached.done() and cached.result() == "C" and ran == ["a", "b", "c"]  # from the cache
    assert work.submit("a", job("a2")).result(5) == "A2"  # "a" fell out of the 2-entry cache
    failing = work.submit("bad", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert work.submit("e", job("e")).result(5) == "E"  # the worker survives a failed job
    assert work.pending() == 0


def test_clicks_and_table_rows_pick_the_query_once():
    from test_explain import hand_explanation
    from viewer.queries import CELL, DETECTION, apply_picks

    explanation, keep = hand_explanation(), [0, 1, 2]
    state = {}
    assert apply_picks(state, explanation, keep, "image a") == 0  # the default: the small one with a larger twin
    state["inspect_click"] = {"selection": {"points": [{"curve_number": 1, "point_index": 1}]}}
    assert apply_picks(state, explanation, keep, "image a") == 1 and state["inspect_mode"] == DETECTION
    state["inspect_detection"] = 2  # then picked in the select box: the old click is not replayed
    assert apply_picks(state, explanation, keep, "image a") == 2
    state["inspect_table"] = {"selection": {"rows": [0], "columns": []}}
    assert apply_picks(state, explanation, keep, "image a") == 0
    state["inspect_view_layer"] = 1
    state["inspect_cells"] = {"selection": {"points": [{"curve_number": 4, "point_index": 2 * 16 + 3}]}}
    apply_picks(state, explanation, keep, "image a")
    assert (state["inspect_mode"], state["inspect_layer"], state["inspect_row"], state["inspect_col"]) == (CELL, 1, 2, 3)
    state["inspect_detection"] = 1
    assert apply_picks(state, explanation, keep, "image b") == 0  # a new image: the default again, no stale picks
    assert apply_picks(state, explanation, [], "image c") is None and state["inspect_mode"] == CELL


def test_inspect_large_aerial_image_runs_on_a_native_resolution_window(app, assets, tmp_path):
    """A 1764 x 430 aerial tile and a detector of input 128: a 128 x 128 window at native resolution by default,
    ground truth moved into it (boxes at least half inside), or the whole image resized on request."""
    root = tmp_path / "assets"
    save_checkpoint(root / "checkpoints" / "tiny-aerial.pt", tiny_detector("full", ["car", "bus", "minibus"]))
    (root / "synth-tiny").symlink_to(TINY)
    (root / "aerial").symlink_to(ROOT / "assets" / "aerial")
    at = app("../pages/inspect_image.py", root=root)
    # the sample set annotated with the checkpoint's classes opens first, not the synthetic twins
    assert at.multiselect(key="inspect_samples").value == ["aerial/MOS175.jpg"]
    assert not at.exception and at.sidebar.radio(key="inspect_region").value == "a native-resolution window"
    # centred: (1764 - 128) / 2 = 818 and (430 - 128) / 2 = 151, on the slider's 16 px steps
    assert "The 128 x 128 window at (816, 144) of the 1764 x 430 image" in texts(at)
    from borrowcore.data.images import image_digest
    from viewer.queries import window_key

    digest = image_digest((ROOT / "assets" / "aerial" / "images" / "MOS175.jpg").read_bytes())
    at.sidebar.slider(key=window_key("left", digest)).set_value(640).run()
    at.sidebar.slider(key=window_key("top", digest)).set_value(160).run()
    at.radio(key="inspect_instances").set_value("ground truth (aerial/instances.json)").run()
    assert not at.exception

    coco = json.loads((ROOT / "assets" / "aerial" / "instances.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == "MOS175.jpg")
    inside = 0
    for a in coco["annotations"]:
        if a["image_id"] != image_id:
            continue
        x, y, w, h = a["bbox"]
        visible_w = max(0.0, min(x + w, 640 + 128) - max(x, 640))
        visible_h = max(0.0, min(y + h, 160 + 128) - max(y, 160))
        inside += visible_w * visible_h >= 0.5 * w * h
    assert inside > 0 and f"Ground truth: {inside} instances" in texts(at)

    # another large image opens on its own centre, not at the window left on the first: (1284 - 128) / 2 = 578
    # and (377 - 128) / 2 = 124.5 on 16 px steps
    at.multiselect(key="inspect_samples").set_value(["aerial/MOS175.jpg", "aerial/MunichStreet02-MOS88.jpg"]).run()
    at.radio(key="inspect_image").set_value("aerial/MunichStreet02-MOS88.jpg").run()
    assert not at.exception and "The 128 x 128 window at (576, 128) of the 1284 x 377 image" in texts(at)
    at.radio(key="inspect_image").set_value("aerial/MOS175.jpg").run()

    at.sidebar.radio(key="inspect_region").set_value("the whole image, resized").run()
    assert not at.exception and "window at" not in texts(at)
    at.radio(key="inspect_instances").set_value("ground truth (aerial/instances.json)").run()
    assert "Ground truth: 55 instances" in texts(at)


def test_inspect_opens_on_the_face_model_and_runs_the_whole_photo(app, tmp_path):
    """With an aerial and a face checkpoint bundled, Inspect opens on faces-full.pt and a held-out crowd
    photo (the sample set annotated 'face'), and runs the 1024 px photo whole: no window to choose."""
    root = tmp_path / "assets"
    config = DetectorConfig(neck="full", num_classes=1, input_size=256, width=0.125, batch_norm=True,
                            anchor_scale=2.0, aspect_ratios=[1.1538], inference="whole", score_threshold=0.05,
                            detections_per_image=50)
    torch.manual_seed(0)
    save_checkpoint(root / "checkpoints" / "faces-full.pt", build_detector(config, ["face"]).eval())
    save_checkpoint(root / "checkpoints" / "aerial-full.pt", tiny_detector("full", ["car", "bus", "minibus"]))
    (root / "faces").symlink_to(ROOT / "assets" / "faces")
    (root / "aerial").symlink_to(ROOT / "assets" / "aerial")
    at = app("../pages/inspect_image.py", root=root)
    assert not at.exception
    assert at.sidebar.selectbox(key="inspect_checkpoint").value == "faces-full.pt"
    first = json.loads((ROOT / "assets" / "faces" / "instances.json").read_text())["images"][0]["file_name"]
    assert at.multiselect(key="inspect_samples").value == [f"faces/{first}"]
    assert "whole photo at native resolution" in texts(at) and "For photos of people" in texts(at)
    assert not [r for r in at.sidebar.radio if r.key == "inspect_region"]  # 1024 px < max_whole_side: no window
