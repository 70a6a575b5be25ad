"""Evaluate in the browser: an uploaded COCO set checked and unpacked safely, evaluation in slices through the
app's queue (the same numbers as `borrowcore eval`, Inspect served between slices), and the Evaluate page whose
reports join Compare and Head to head."""

import io
import json
import stat
import threading
import time
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from borrowcore import load_detector, save_checkpoint
from borrowcore.evaluation.evaluate import evaluate_detector
from borrowcore.evaluation.evaluate_upload import (SlicedEvaluation, UploadError, UploadLimits, check_zip_entries,
                                                   extract_zip, open_coco_upload, seconds_left, unpacked_coco_set)
from test_app import HOME, TIMEOUT, TINY, charts, texts, tiny_detector
from viewer.models import InferenceQueue

ROOT = Path(__file__).resolve().parents[1]
TWINS = TINY / "twins.json"
SYNTH = ROOT / "assets" / "checkpoints" / "synth-full.pt"  # resize 256: predict runs it in batches
FACES = ROOT / "assets" / "faces"
FACES_MODEL = ROOT / "assets" / "checkpoints" / "faces-full.pt"  # whole photos: predict runs them one at a time


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def images_zip(coco: Path, images: Path, prefix: str = "", leave_out: int = 0) -> bytes:
    """A zip of the images a COCO file names (under ``prefix``), the last ``leave_out`` of them left out."""
    names = [image["file_name"] for image in json.loads(coco.read_text())["images"]]
    return zip_of({prefix + name: (images / name).read_bytes() for name in names[:len(names) - leave_out]})


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """Temporary folders go to tmp/ and the working directory is cwd/ (both start empty), so a test can see
    that nothing was left behind or written elsewhere."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def left_behind(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- the uploaded set: each bad upload a clear error naming the problem, nothing written outside ----

def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("000000.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


BAD_ZIPS = {
    "dotdot": (lambda sandbox: zip_of({"images/000000.png": b"x", "../evil.txt": b"pwned"}),
               "evil.zip: entry '../evil.txt' has a '..' component; it would be written outside"),
    "nested dotdot": (lambda sandbox: zip_of({"images/../../evil.txt": b"pwned"}),
                      "evil.zip: entry 'images/../../evil.txt' has a '..' component"),
    "absolute": (lambda sandbox: zip_of({str(sandbox / "abs-evil.txt"): b"pwned"}),
                 "has an absolute path"),
    "drive": (lambda sandbox: zip_of({"C:\\evil.txt": b"pwned"}), "entry 'C:\\evil.txt' has an absolute path"),
    "symlink": (lambda sandbox: symlink_zip(), "evil.zip: entry '000000.png' is a symbolic link"),
    "bomb": (lambda sandbox: zip_of({"000000.png": bytes(20 << 20)}, zipfile.ZIP_DEFLATED),
             "evil.zip: entry '000000.png' expands"),
    "not a zip": (lambda sandbox: b"PK\x03\x04 but not really", "evil.zip: not a zip file"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_unsafe_zips_are_refused_naming_the_entry_and_nothing_is_written(sandbox, case):
    make, message = BAD_ZIPS[case]
    with pytest.raises(UploadError) as caught:
        with unpacked_coco_set(TWINS.read_bytes(), "twins.json", make(sandbox), "evil.zip"):
            pytest.fail("an unsafe zip was accepted")
    assert message in str(caught.value), str(caught.value)
    assert "borrowscope-eval" not in str(caught.value)  # named as uploaded, not by the temporary folder
    if case == "bomb":
        assert "zip bomb" in str(caught.value) and "20.0 MiB" in str(caught.value)
    assert left_behind(sandbox / "tmp") == [] and left_behind(sandbox / "cwd") == []  # the temp folder is removed
    assert not list(sandbox.parent.glob("evil.txt")) and not (sandbox / "abs-evil.txt").exists()


def test_extraction_keeps_every_file_inside_its_folder_even_unchecked(sandbox):
    """The second line of defence: extract_zip alone (without check_zip_entries) refuses a '..' entry."""
    target = sandbox / "tmp" / "inside"
    target.mkdir()
    with zipfile.ZipFile(io.BytesIO(zip_of({"ok.txt": b"fine", "../evil.txt": b"pwned"}))) as archive:
        with pytest.raises(UploadError, match=r"entry '\.\./evil\.txt' would be written outside its folder"):
            extract_zip(archive, target, "evil.zip")
    assert not (sandbox / "tmp" / "evil.txt").exists()


@pytest.mark.parametrize("limits, message", [
    (UploadLimits(max_entries=10), "images.zip: 16 entries, more than the 10 allowed"),
    (UploadLimits(max_bytes=100_000), "images.zip: unpacks to more than 98 KiB (at entry '"),
    (UploadLimits(max_images=10), "twins.json: 16 images, more than the 10 evaluated here"),
])
def test_too_many_entries_bytes_or_images_are_refused(sandbox, limits, message):
    with pytest.raises(UploadError) as caught:
        with unpacked_coco_set(TWINS.read_bytes(), "twins.json", images_zip(TWINS, TINY / "images"), "images.zip",
                               limits):
            pass
    assert message in str(caught.value)
    assert left_behind(sandbox / "tmp") == []


def test_a_zip_too_large_is_refused_from_its_directory_and_again_while_unpacking(sandbox):
    """check_zip_entries refuses it from the sizes the zip records, before anything is unpacked; extract_zip
    counts the bytes it writes and stops at the limit too."""
    limits = UploadLimits(max_bytes=100_000)
    with zipfile.ZipFile(io.BytesIO(images_zip(TWINS, TINY / "images"))) as archive:
        with pytest.raises(UploadError, match=r"^images\.zip: unpacks to more than 98 KiB \(at entry '"):
            check_zip_entries(archive, "images.zip", limits)
        with pytest.raises(UploadError, match=r"^images\.zip: unpacks to more than 98 KiB \(at entry '"):
            extract_zip(archive, sandbox / "tmp", "images.zip", limits)
    assert sum(p.stat().st_size for p in (sandbox / "tmp").iterdir()) <= 100_000


def test_images_the_json_names_but_the_zip_lacks_are_listed(sandbox):
    names = [image["file_name"] for image in json.loads(TWINS.read_text())["images"]]
    with pytest.raises(UploadError) as caught:
        with unpacked_coco_set(TWINS.read_bytes(), "twins.json", images_zip(TWINS, TINY / "images", "pics/", 2),
                               "images.zip"):
            pass
    assert str(caught.value) == f"images.zip: lacks 2 of the 16 images that twins.json names: {names[-2]}, {names[-1]}"
    assert left_behind(sandbox / "tmp") == []


@pytest.mark.parametrize("data, message", [
    (b"{not json", "mine.json: not valid JSON"),
    (b"\xff\xfe\x00binary", "mine.json: not a JSON text file"),
    (json.dumps({"images": [], "annotations": 3}).encode(), "mine.json: not a COCO detection file"),
    (json.dumps({"images": [], "annotations": [], "categories": []}).encode(), "mine.json: names no images"),
    (json.dumps({"images": [{"id": 1, "file_name": "../../etc/passwd", "width": 4, "height": 4}], "annotations": [],
                 "categories": []}).encode(), "mine.json: image file_name '../../etc/passwd' has a '..' component"),
])
def test_malformed_json_is_refused_before_the_zip_is_opened(sandbox, data, message):
    with pytest.raises(UploadError) as caught:
        with unpacked_coco_set(data, "mine.json", b"not even a zip", "images.zip"):
            pass
    assert str(caught.value).startswith(message), str(caught.value)
    assert "borrowscope-eval" not in str(caught.value) and left_behind(sandbox / "tmp") == []


def test_bad_annotations_get_the_datasets_own_message_naming_the_upload(sandbox):
    coco = json.loads(TWINS.read_text())
    coco["annotations"][0]["bbox"] = [1, 2, "three", 4]
    with pytest.raises(UploadError) as caught:
        with unpacked_coco_set(json.dumps(coco).encode(), "mine.json", images_zip(TWINS, TINY / "images"), "i.zip"):
            pass
    assert str(caught.value).startswith(f"mine.json: annotation {coco['annotations'][0]['id']} (image ")
    assert "is not 4 finite numbers" in str(caught.value) and left_behind(sandbox / "tmp") == []


@pytest.mark.parametrize("prefix", ["", "twins/"])
def test_a_good_upload_is_unpacked_from_the_top_or_its_one_folder_and_removed_after(sandbox, prefix):
    with unpacked_coco_set(TWINS.read_bytes(), "twins.json", images_zip(TWINS, TINY / "images", prefix),
                           "images.zip") as dataset:
        assert len(dataset) == 16 and dataset.image_dir.is_relative_to(sandbox / "tmp")
        image, target = dataset[3]
        assert image.shape[0] == 3 and len(target["boxes"]) > 0
    assert left_behind(sandbox / "tmp") == [] and left_behind(sandbox / "cwd") == []


def test_open_coco_upload_writes_only_into_the_folder_it_is_given(sandbox):
    folder = sandbox / "tmp" / "mine"
    folder.mkdir()
    open_coco_upload(TWINS.read_bytes(), "../../twins.json", images_zip(TWINS, TINY / "images"), "i.zip", folder)
    assert all(p.resolve().is_relative_to(folder) for p in folder.rglob("*"))
    assert (folder / "annotations" / "twins.json").is_file() and len(list((folder / "images").iterdir())) == 16


# ---- evaluation in slices: the same report as evaluate_detector, and Inspect served between slices ----

def test_seconds_left_and_progress_text_from_the_rate_so_far():
    from viewer.evaluation import Progress

    assert seconds_left(0, 16, 0.0) is None
    assert seconds_left(4, 16, 2.0) == 6.0  # 4 images in 2 s: 12 more take 6 s
    assert seconds_left(16, 16, 3.0) == 0.0
    assert Progress(4, 16, "mine.pt", 200.0, 0).text() == "4 / 16 images (mine.pt), about 3 min 20 s left"
    assert Progress(4, 16, "mine.pt", None, 2).text().endswith("estimating the time left…; waiting for the detector: "
                                                               "2 requests ahead")
    assert Progress(4, 16, "mine.pt", None, 0).fraction == 0.25


SAME = ("metrics", "size_bins", "per_class", "pr_curves", "subsets")


def reference(checkpoint: Path, annotations: Path, images: Path) -> dict:
    return evaluate_detector(load_detector(checkpoint), annotations, images, checkpoint=checkpoint, show_progress=False)


@pytest.mark.parametrize("checkpoint, annotations, slice_size", [(SYNTH, TWINS, 8), (FACES_MODEL, FACES / "instances.json", 1)])
def test_sliced_evaluation_gives_the_numbers_of_evaluate_detector(checkpoint, annotations, slice_size):
    """Known answer: `borrowcore eval`'s own evaluate_detector on the same set. Batched detectors run a batch per
    slice, whole-photo ones an image per slice; either way the report's numbers are the same."""
    from borrowcore.data.dataset import CocoDetection

    expected = reference(checkpoint, annotations, annotations.parent / "images")
    detector = load_detector(checkpoint)
    dataset = CocoDetection(annotations.parent / "images", annotations)
    evaluation = SlicedEvaluation.plan(detector, dataset)
    assert evaluation.size == slice_size
    slices = 0
    while (bounds := evaluation.next_slice()) is not None:
        evaluation.add(bounds[1], *evaluation.run_slice(detector, dataset, *bounds), wall=0.1)
        slices += 1
    assert slices == -(-len(dataset) // slice_size) > 1
    report = evaluation.report(detector, dataset, checkpoint)
    for key in SAME:
        assert report[key] == expected[key], key
    assert report["model"] == expected["model"] and report["dataset"]["split"] == expected["dataset"]["split"]


class RecordingQueue(InferenceQueue):
    """The app's InferenceQueue, recording the keys of the jobs its worker starts, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list = []

    def submit(self, key, job, cache=True):
        def recorded():
            self.started.append(key)
            return job()

        return super().submit(key, recorded, cache)


def uploaded_run(checkpoint: Path, annotations: Path, images: Path, name: str = "mine.pt"):
    from viewer.evaluation import Run, UploadedSet

    source = UploadedSet(annotations.read_bytes(), annotations.name, images_zip(annotations, images), "images.zip")
    return Run(f"{annotations.name} (uploaded)", source, [(name, checkpoint)])


def test_the_apps_path_on_an_upload_matches_evaluate_detector_and_carries_on_after_an_interruption(sandbox):
    """Through the app's queue and an uploaded set; stopped after the first slice (a rerun) and carried on: the
    same numbers as evaluate_detector, progress up to every image, and the unpacked folder gone each time."""
    from viewer.evaluation import advance

    class Rerun(BaseException):  # what Streamlit raises in a script run that is asked to rerun
        pass

    expected = reference(SYNTH, TWINS, TINY / "images")
    run = uploaded_run(SYNTH, TWINS, TINY / "images")
    work = RecordingQueue()
    seen = []

    def interrupt(progress) -> None:
        seen.append(progress)
        if progress.done == 8:  # the first slice is done
            raise Rerun

    with pytest.raises(Rerun):
        advance(run, work, load_detector, interrupt, poll_s=0.01)
    assert run.jobs["mine.pt"].done == 8 and not run.reports
    assert left_behind(sandbox / "tmp") == []  # removed on the interruption too
    advance(run, work, load_detector, seen.append, poll_s=0.01)
    assert left_behind(sandbox / "tmp") == [] and left_behind(sandbox / "cwd") == []
    [(name, item)] = run.reports.items()
    assert name == "mine on twins.json (uploaded)"
    report = item["report"]
    for key in SAME:
        assert report[key] == expected[key], key
    assert report["model"]["checkpoint"] == "mine.pt" and report["dataset"]["annotations"] == "twins.json"
    assert report["dataset"]["images"] == "images.zip" and item["annotations"] == TWINS.read_bytes()
    done = [p.done for p in seen if p.checkpoint == "mine.pt"]
    assert done == sorted(done) and done[-1] == 16 and seen[-1].total == 16
    assert [key[-2:] for key in work.started] == [(0, 8), (8, 16)]  # the first slice is not run twice
    assert not any(key[0] == "evaluate" for key in work._cache)  # slices stay out of everyone's result cache


def test_an_image_that_does_not_decode_is_named_by_the_zip_not_the_temporary_folder(sandbox):
    from viewer.evaluation import Run, UploadedSet, advance

    names = [image["file_name"] for image in json.loads(TWINS.read_text())["images"]]
    entries = {name: (TINY / "images" / name).read_bytes() for name in names}
    entries[names[3]] = entries[names[3]][:100]  # truncated
    run = Run("twins.json (uploaded)", UploadedSet(TWINS.read_bytes(), "twins.json", zip_of(entries), "images.zip"),
              [("mine.pt", SYNTH)])
    with pytest.raises(ValueError) as caught:
        advance(run, InferenceQueue(), load_detector, poll_s=0.01)
    assert str(caught.value).startswith(f"images.zip: {names[3]}: "), str(caught.value)
    assert "borrowscope-eval" not in str(caught.value) and left_behind(sandbox / "tmp") == []


def test_inspect_requests_run_between_slices_not_after_the_whole_set():
    """An Inspect request made while a slice runs starts before the evaluation's next slice: the evaluation
    submits a slice only once the one before it is done."""
    from viewer.evaluation import BundledSet, Run, advance

    run = Run("faces/instances", BundledSet(FACES / "instances.json", FACES / "images"), [("faces-full.pt", FACES_MODEL)])
    work = RecordingQueue()
    evaluating = threading.Thread(target=advance, args=(run, work, load_detector), kwargs={"poll_s": 0.01})
    evaluating.start()
    deadline = time.time() + 120
    while not work.started and time.time() < deadline:
        time.sleep(0.005)
    started_before = len(work.started)
    inspect = work.submit("inspect", lambda: "explained")
    assert inspect.result(timeout=120) == "explained"
    evaluating.join(timeout=300)
    order = [key if key == "inspect" else "slice" for key in work.started]
    assert order.count("slice") == 5 and run.reports  # one photo a slice
    assert order.index("inspect") <= started_before + 1 < len(order) - 1, order  # not after the whole set


# ---- the page ----

def test_wider_val_is_offered_when_its_json_is_made_and_else_named_with_the_command(tmp_path, monkeypatch):
    from borrowcore.data.derived import WIDER
    from viewer import evaluation

    monkeypatch.setenv("BORROWSCOPE_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setattr(evaluation, "DATA_ROOT", tmp_path / "repo")
    assert evaluation.bundled_sets() == ({}, [])  # no WIDER photos: nothing to say
    (tmp_path / "repo" / WIDER / "images").mkdir(parents=True)
    sets, [note] = evaluation.bundled_sets()
    assert sets == {} and note.startswith("WIDER val is not offered: data/wider/val.json: annotation file not found")
    assert "`borrowcore convert --from wider --images ../shared/data/wider-faces/images" in note
    (tmp_path / "repo" / "data" / "wider").mkdir(parents=True)
    (tmp_path / "repo" / "data" / "wider" / "val.json").write_text("{}")
    sets, notes = evaluation.bundled_sets()
    assert notes == [] and sets["WIDER val"].images == tmp_path / "repo" / WIDER / "images"


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The app over synth-tiny and tiny-{full,ssd}.pt, its temporary folders in tmp/."""
    root = tmp_path / "assets"
    (root / "checkpoints").mkdir(parents=True)
    (root / "synth-tiny").symlink_to(TINY)
    names = [c["name"] for c in json.loads(TWINS.read_text())["categories"]]
    for neck in ("full", "ssd"):
        save_checkpoint(root / "checkpoints" / f"tiny-{neck}.pt", tiny_detector(neck, names))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("BORROWSCOPE_ASSETS", str(root))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT).run()
    at.switch_page("../pages/evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_evaluate_page_bundled_set_reports_join_compare_and_head_to_head(app):
    at = app
    at.selectbox(key="evaluate_set").set_value("synth-tiny/twins").run()
    picked = at.multiselect(key="evaluate_checkpoints:synth-tiny/twins")
    assert picked.value == ["tiny-full.pt", "tiny-ssd.pt"]  # the checkpoints of the set's classes
    at.button(key="evaluate_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["report"]) == ["tiny-full on synth-tiny/twins", "tiny-ssd on synth-tiny/twins"]
    expected = evaluate_detector(load_detector(app_checkpoint("tiny-full.pt")), TWINS, TINY / "images",
                                 show_progress=False)
    assert table["AP"][0] == pytest.approx(expected["metrics"]["AP"])
    [bars] = charts(at)
    assert {trace["name"] for trace in bars["data"]} == {"tiny-full on synth-tiny/twins", "tiny-ssd on synth-tiny/twins"}
    downloads = [b.label for b in at.download_button]
    assert downloads == ["Report (json)", "Detections (json.gz)"] * 2

    at.switch_page("../pages/compare.py").run()
    assert not at.exception
    assert at.multiselect(key="compare_reports").value == ["this session/tiny-full on synth-tiny/twins",
                                                           "this session/tiny-ssd on synth-tiny/twins"]
    assert {t["name"] for t in charts(at)[0]["data"]} == {"full", "ssd"}

    at.switch_page("../pages/head_to_head.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="h2h_a").value == "this session/tiny-ssd on synth-tiny/twins"  # ssd against full
    assert at.selectbox(key="h2h_b").value == "this session/tiny-full on synth-tiny/twins"
    assert "AP by size: B − A" in texts(at) and not at.error


def app_checkpoint(name: str) -> Path:
    """A checkpoint of the ``app`` fixture's assets folder."""
    import os

    return Path(os.environ["BORROWSCOPE_ASSETS"]) / "checkpoints" / name


def test_evaluate_page_uploaded_checkpoint_and_set_and_bad_uploads(app, tmp_path):
    at = app
    at.selectbox(key="evaluate_set").set_value("Upload a COCO set…").run()
    at.file_uploader(key="evaluate_checkpoint_uploads").upload(
        "mine.pt", app_checkpoint("tiny-full.pt").read_bytes(), "application/octet-stream").upload(
        "other.pt", app_checkpoint("tiny-ssd.pt").read_bytes(), "application/octet-stream").run()
    at.file_uploader(key="evaluate_json").upload("twins.json", TWINS.read_bytes(), "application/json").run()
    upload = at.file_uploader(key="evaluate_zip")
    upload.upload("evil.zip", zip_of({"../evil.txt": b"pwned"}), "application/zip").run()
    at.button(key="evaluate_start").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Cannot evaluate: evil.zip: entry '../evil.txt' has a '..' component; it "
                                           "would be written outside the folder it is unpacked into"]
    at.file_uploader(key="evaluate_zip").set_value(
        ("short.zip", images_zip(TWINS, TINY / "images", leave_out=1), "application/zip")).run()
    at.button(key="evaluate_start").click().run()
    assert at.error[0].value.startswith("Cannot evaluate: short.zip: lacks 1 of the 16 images that twins.json names")
    at.file_uploader(key="evaluate_zip").set_value(
        ("images.zip", images_zip(TWINS, TINY / "images"), "application/zip")).run()
    at.button(key="evaluate_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["report"]) == ["mine on twins.json (uploaded)", "other on twins.json (uploaded)"]
    assert table["AP_M"].isna().all()  # no medium box in the tiny twins: no number, not -100%
    assert len(charts(at)) == 1
    assert left_behind(tmp_path / "tmp") == []  # every unpacked folder removed
    report = at.session_state["evaluate_reports"]["mine on twins.json (uploaded)"]["report"]
    assert report["dataset"]["annotations"] == "twins.json" and report["model"]["checkpoint"] == "mine.pt"

    at.switch_page("../pages/compare.py").run()
    assert at.multiselect(key="compare_reports").value == ["this session/mine on twins.json (uploaded)",
                                                           "this session/other on twins.json (uploaded)"]
    assert not at.exception and charts(at)

    # the uploaded set's ground truth is kept with the reports, its images are not: compared, without crops
    at.switch_page("../pages/head_to_head.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="h2h_a").value == "this session/other on twins.json (uploaded)"  # ssd against full
    assert "AP by size: B − A" in texts(at) and "fixed by B" in texts(at)
    at.selectbox(key="h2h_size").set_value("all").run()
    assert at.dataframe[1].value.shape[0] > 0  # the instances B fixes, from the stored ground truth
    assert "The images `images.zip` (dataset.images of B) are not on this machine: no crops" in texts(at)
