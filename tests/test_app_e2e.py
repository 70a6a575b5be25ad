"""End to end in a real headless Chromium: the app served by `streamlit run`, driven through Playwright.

Uploads a bundled sample and a COCO photograph, waits for detections and the borrowing heatmap, saves
screenshots (copied to /tmp/borrowscope-shots/ for people to look at), then uploads a corrupt file and
an oversized one and reads the messages. Skips only where no `chromium` is installed (never in CI).
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path("/tmp/borrowscope-shots")
SAMPLE = ROOT / "assets" / "synth-tiny" / "images" / "000001.png"  # a twins image: small shapes beside large ones
PHOTO = ROOT / "assets" / "photos" / "images" / "000000000110.jpg"  # COCO: small and large people
AERIAL = ROOT / "assets" / "aerial" / "images" / "MOS175.jpg"  # 1764 x 430, 54 cars and a bus
FACES = ROOT / "assets" / "faces" / "instances.json"  # five held-out WIDER val photos: faces small and large
PORTRAIT = ROOT / "assets" / "faces" / "images" / "13_Interview_Interview_On_Location_13_542.jpg"  # one 292 x 432 px face
GROUP = ROOT / "assets" / "faces" / "images" / "31_Waiter_Waitress_Waiter_Waitress_31_304.jpg"  # three faces, 216-256 px wide
PEOPLE = ROOT / "assets" / "photos" / "images" / "000000000257.jpg"  # a COCO photo of people, not from WIDER
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 180_000  # generous: CI machines have two cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_for(root: Path) -> None:
    """checkpoints/ with a bundled `full` checkpoint when one exists (its pictures mean something), else a
    tiny untrained one with the synthetic classes."""
    target = root / "checkpoints"
    target.mkdir(parents=True)
    for assets in (os.environ.get("BORROWSCOPE_ASSETS"), ROOT / "assets"):
        found = sorted(Path(assets).glob("checkpoints/*full*.pt"), key=lambda p: (not p.name.startswith("synth"), p.name)
                       ) if assets else []  # the synthetic one: the sample is a twins image
        if found:
            (target / found[0].name).symlink_to(found[0].resolve())
            return
    from borrowcore import DetectorConfig, build_detector, save_checkpoint

    names = [c["name"] for c in json.loads((ROOT / "assets" / "synth-tiny" / "twins.json").read_text())["categories"]]
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(neck="full", num_classes=len(names), input_size=256, width=0.125,
                                             batch_norm=True), names)
    save_checkpoint(target / "tiny-full.pt", detector)


@pytest.fixture
def server(tmp_path):
    """`streamlit run viewer/Home.py` on a free port over a temporary assets folder; yields the URL."""
    if not (SAMPLE.is_file() and PHOTO.is_file()):
        pytest.fail("the bundled sample and photo are part of the repository and must exist")
    root = tmp_path / "assets"
    checkpoint_for(root)
    for folder in ("synth-tiny", "photos"):
        (root / folder).symlink_to(ROOT / "assets" / folder)
    yield from serve(root, tmp_path)


@pytest.fixture
def aerial_server(tmp_path):
    """The app over the bundled aerial checkpoint and aerial samples only."""
    checkpoint = ROOT / "assets" / "checkpoints" / "aerial-full.pt"
    if not (checkpoint.is_file() and AERIAL.is_file()):
        pytest.fail("the bundled aerial checkpoint and samples are part of the repository and must exist")
    root = tmp_path / "assets"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    (root / "aerial").symlink_to(AERIAL.parents[1])
    yield from serve(root, tmp_path)


@pytest.fixture
def faces_server(tmp_path):
    """The app over every bundled real-imagery checkpoint (faces and aerial) and the face and photo samples."""
    checkpoints = [ROOT / "assets" / "checkpoints" / name for name in ("aerial-full.pt", "faces-full.pt", "faces-ssd.pt")]
    if not (all(c.is_file() for c in checkpoints) and FACES.is_file() and PEOPLE.is_file()):
        pytest.fail("the bundled face checkpoints and samples are part of the repository and must exist")
    root = tmp_path / "assets"
    (root / "checkpoints").mkdir(parents=True)
    for checkpoint in checkpoints:
        (root / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    for folder in ("faces", "photos"):
        (root / folder).symlink_to(ROOT / "assets" / folder)
    yield from serve(root, tmp_path)


def serve(root: Path, tmp_path: Path):
    port = free_port()
    env = {**os.environ, "BORROWSCOPE_ASSETS": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = open(tmp_path / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "viewer/Home.py", "--server.port", str(port),
         "--server.headless", "true", "--server.fileWatcherType", "none", "--server.maxUploadSize", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def settle(page) -> None:
    """Wait until the script run that the last action started has finished drawing."""
    page.wait_for_timeout(800)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=WAIT_MS)
    page.wait_for_timeout(1500)  # plotly draws after the run


def pick(page, option: str, shows: str, tries: int = 3) -> None:
    """Click the radio option ``option`` until the page shows text matching ``shows`` (a regex), then settle:
    on a loaded machine a click made while the previous rerun is still starting can be dropped."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(tries):
        page.get_by_test_id("stRadio").get_by_text(option).first.click()
        settle(page)
        try:
            page.get_by_text(re.compile(shows)).first.wait_for(timeout=15_000)
            settle(page)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"picking {option!r} never showed {shows!r}: {page.inner_text('body')[:2000]}")


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    from playwright.sync_api import Error as PlaywrightError

    for attempt in range(3):  # a rerun can replace the chart while it is being shot: settle and retry
        figure = page.locator("[data-testid='stPlotlyChart']").nth(1)
        if not figure.count():
            break
        try:
            figure.screenshot(path=tmp_path / f"{name}-borrowing.png", timeout=30_000)
            break
        except PlaywrightError:
            settle(page)
    SHOTS.mkdir(exist_ok=True)
    for shot in tmp_path.glob(f"{name}*.png"):
        shutil.copy(shot, SHOTS / shot.name)
    return path


@contextlib.contextmanager
def inspect_page(url: str):
    """Headless Chromium on the app's Inspect page, once it has drawn; closed afterwards."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run / make test): it must be on PATH")
        pytest.skip("no `chromium` on PATH (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 4200})
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{url}/inspect_image")
            page.get_by_text("Upload images").first.wait_for()
            settle(page)
            yield page
        finally:
            browser.close()


@pytest.mark.slow
def test_inspect_in_headless_chromium(server, tmp_path):
    with inspect_page(server) as page:
        images = page.get_by_test_id("stFileUploader").filter(has_text="Upload images").locator("input[type='file']")
        images.set_input_files([SAMPLE, PHOTO])
        page.get_by_text(f"{PHOTO.name} (uploaded)").first.wait_for()
        settle(page)

        # the bundled sample: detections, a heatmap and the links of a small detection
        pick(page, f"{SAMPLE.name} (uploaded)", rf"at score ≥ [\d.]+ in {re.escape(SAMPLE.name)}")
        if "No detections at score" in page.inner_text("body"):  # an untrained stand-in checkpoint
            page.get_by_role("slider").first.press("Home")  # the lowest score threshold
            settle(page)
        page.locator(".js-plotly-plot .heatmaplayer").first.wait_for()
        text = page.inner_text("body")
        assert "Detections:" in text and "Borrowing" in text
        assert re.search(r"#\d+ [\w-]+ \(\d+ × \d+ px, its cells on layer \d \(conv[\w_]+\)\) borrowed from", text)
        assert page.locator(".js-plotly-plot .heatmaplayer").count() >= 1
        shoot(page, tmp_path, "sample")
        with page.expect_download() as download:
            page.get_by_role("button", name="Overlay (PNG)").click()
        download.value.save_as(tmp_path / "sample-overlay.png")
        assert (tmp_path / "sample-overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copy(tmp_path / "sample-overlay.png", SHOTS / "sample-overlay.png")

        # the photograph, linked through its COCO ground truth (the synthetic model detects no people)
        pick(page, f"{PHOTO.name} (uploaded)", rf"at score ≥ [\d.]+ in {re.escape(PHOTO.name)}")
        pick(page, "ground truth (photos/instances.json)", r"Ground truth: \d+ instances")
        page.locator(".js-plotly-plot .heatmaplayer").first.wait_for()
        text = page.inner_text("body")
        assert "Ground truth:" in text and "person" in text
        assert re.search(r"#\d+ [\w ]+ \(\d+ × \d+ px, its cells on layer \d \(conv[\w_]+\)\) borrowed from", text)
        shoot(page, tmp_path, "photo")

        # bad input: a message on the page, the other images kept
        data = PHOTO.read_bytes()
        images.set_input_files([{"name": "corrupt.jpg", "mimeType": "image/jpeg", "buffer": data[: len(data) // 3]},
                                {"name": "big.png", "mimeType": "image/png", "buffer": bytes(1_200_000)}])
        page.get_by_text("corrupt.jpg: truncated or corrupt JPEG file").first.wait_for()
        settle(page)
        text = page.inner_text("body")
        assert "Cannot use this image: corrupt.jpg: truncated or corrupt JPEG file" in text
        assert "File must be 1.0MB or smaller" in text  # refused in the browser: server.maxUploadSize
        assert f"{PHOTO.name} (uploaded)" in text and f"{SAMPLE.name} (uploaded)" in text
        assert "Traceback" not in text
        shoot(page, tmp_path, "errors")


@pytest.mark.slow
def test_inspect_aerial_tile_on_a_native_resolution_window(aerial_server, tmp_path):
    """The app opens on the real aerial checkpoint and a held-out aerial tile: small cars detected in a
    256 px window at native resolution, and the cars a small one borrowed from."""
    with inspect_page(aerial_server) as page:
        page.locator(".js-plotly-plot .heatmaplayer").first.wait_for()
        text = page.inner_text("body")
        assert "The 256 x 256 window at (768, 96) of the 1764 x 430 image" in text  # centred, 32 px steps
        found = re.search(r"Detections: (\d+) at score", text)
        assert found and int(found.group(1)) >= 3, text[:2000]  # a trained model finds cars in the window
        assert re.search(r"#\d+ (car|bus|minibus) \(\d+ × \d+ px, its cells on layer \d \(conv[\w_]+\)\)", text)
        assert "Traceback" not in text
        shoot(page, tmp_path, "aerial")


@pytest.mark.slow
def test_inspect_opens_on_faces_in_a_crowd(faces_server, tmp_path):
    """With the aerial model bundled too, the app opens on the face model and a held-out crowd photo: the
    faces it found, and for a small face the larger faces it borrowed from; then a photo of people it never
    saw (COCO) runs whole with no other choice to make."""
    first = json.loads(FACES.read_text())["images"][0]
    with inspect_page(faces_server) as page:
        page.locator(".js-plotly-plot .heatmaplayer").first.wait_for()
        page.get_by_text("Larger instances: the share of its mass on each").wait_for()  # the page drawn to its end
        settle(page)
        text = page.inner_text("body")
        assert "whole photo at native resolution" in text and "For photos of people" in text, text[:3000]
        assert "Run the detector on" not in text  # a 1024 px photo needs no window: it runs whole
        found = re.search(r"Detections: (\d+) at score", text)
        assert found and int(found.group(1)) >= 3, text[:2000]  # a trained model finds faces in the crowd
        # the default query is a small face with larger faces in the photo, and it borrowed from them
        query = re.search(r"#\d+ face \((\d+) × (\d+) px, its cells on layer (\d) \(conv[\w_]+\)\)", text)
        assert query and int(query.group(1)) < 32, text[:3000]
        assert "Larger instances: the share of its mass on each" in text
        assert "Traceback" not in text
        shoot(page, tmp_path, "faces")
        assert first["file_name"] in text

        images = page.get_by_test_id("stFileUploader").filter(has_text="Upload images").locator("input[type='file']")
        images.set_input_files([PEOPLE])
        page.get_by_text(f"{PEOPLE.name} (uploaded)").first.wait_for()
        settle(page)
        pick(page, f"{PEOPLE.name} (uploaded)", rf"at score ≥ [\d.]+ in {re.escape(PEOPLE.name)}")
        text = page.inner_text("body")
        assert re.search(r"Detections: \d+ at score", text) and "Traceback" not in text
        shoot(page, tmp_path, "faces-upload")


@pytest.mark.slow
def test_inspect_finds_every_large_face_of_a_portrait_and_a_group_photo(faces_server, tmp_path):
    """What a user's own photo often is: one large face, or a few. Uploaded to Inspect, each shows the
    detections the bundled face model gives it at its default threshold, and among them every face over
    200 px (IoU >= 0.5 with the official box), and no box that is a piece of one of those faces."""
    from torchvision.ops import box_area, box_iou

    from borrowcore import load_detector
    from borrowcore.data.images import read_image_rgb

    coco = json.loads(FACES.read_text())
    with inspect_page(faces_server) as page:
        page.get_by_test_id("stFileUploader").filter(has_text="Upload images").locator(
            "input[type='file']").set_input_files([PORTRAIT, GROUP])
        page.get_by_text(f"{GROUP.name} (uploaded)").first.wait_for()
        settle(page)
        texts = {}
        for photo, shot in ((PORTRAIT, "faces-portrait"), (GROUP, "faces-group")):
            pick(page, f"{photo.name} (uploaded)", rf"at score ≥ [\d.]+ in {re.escape(photo.name)}")
            texts[photo] = page.inner_text("body")
            assert "Traceback" not in texts[photo]
            shoot(page, tmp_path, shot)
    detector = load_detector(ROOT / "assets" / "checkpoints" / "faces-full.pt")
    threshold = detector.config.display_threshold
    for photo, text in texts.items():
        with torch.no_grad():
            [found] = detector([read_image_rgb(photo)])
        boxes = found["boxes"][found["scores"] >= threshold]
        shown = re.search(rf"Detections: (\d+) at score ≥ ([\d.]+) in {re.escape(photo.name)}", text)
        assert shown and int(shown.group(1)) == len(boxes), (photo.name, shown and shown.group(0), len(boxes))
        [image] = [i for i in coco["images"] if i["file_name"] == photo.name]
        large = torch.tensor([[x, y, x + w, y + h] for a in coco["annotations"] if a["image_id"] == image["id"]
                              for x, y, w, h in [a["bbox"]] if (w * h) ** 0.5 > 200], dtype=torch.float32)
        assert len(large) >= 1
        iou = box_iou(large, boxes) if len(boxes) else torch.zeros(len(large), 1)
        assert (iou.max(dim=1).values >= 0.5).all(), (photo.name, iou.max(dim=1).values.tolist(), threshold)
        # and no fragments of them: every other box lies mostly outside the large faces
        others = boxes[iou.max(dim=0).values < 0.5] if len(boxes) else boxes
        corner = torch.maximum(others[:, None, :2], large[None, :, :2])
        far = torch.minimum(others[:, None, 2:], large[None, :, 2:])
        inside = (far - corner).clamp(min=0).prod(dim=2) / box_area(others)[:, None]  # share of each box in a face
        assert (inside < 0.5).all(), (photo.name, others.tolist(), inside.tolist())


@pytest.mark.slow
def test_three_sessions_at_once_each_see_their_own_photo(faces_server, tmp_path):
    """Three browsers (separate sessions) upload three different held-out photos to Inspect at the same
    moment: no error, and each shows its own photo with the detections the checkpoint gives that photo
    (counted here without the app), not another session's."""
    from borrowcore import load_detector
    from borrowcore.data.images import read_image_rgb

    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run / make test): it must be on PATH")
        pytest.skip("no `chromium` on PATH (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    photos = [ROOT / "assets" / "faces" / "images" / image["file_name"] for image in json.loads(FACES.read_text())["images"][:3]]
    assert len(photos) == 3
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in photos:
                page = browser.new_context(viewport={"width": 1400, "height": 3000}).new_page()
                page.set_default_timeout(WAIT_MS)
                page.goto(f"{faces_server}/inspect_image")
                page.get_by_text("Upload images").first.wait_for()
                pages.append(page)
            for page in pages:
                settle(page)
            for page, photo in zip(pages, photos):  # all three uploads before any result is awaited
                page.get_by_test_id("stFileUploader").filter(has_text="Upload images").locator(
                    "input[type='file']").set_input_files([photo])
            for page, photo in zip(pages, photos):
                page.get_by_text(f"{photo.name} (uploaded)").first.wait_for()
                page.get_by_test_id("stRadio").get_by_text(f"{photo.name} (uploaded)").click()
            texts = []
            for page, photo in zip(pages, photos):
                settle(page)
                # its own photo's heading: the opening sample's detections stay on the page until the rerun
                page.get_by_text(re.compile(rf"Detections: \d+ at score ≥ [\d.]+ in {re.escape(photo.name)}")).first.wait_for()
                texts.append(page.inner_text("body"))
        finally:
            browser.close()
    detector = load_detector(ROOT / "assets" / "checkpoints" / "faces-full.pt")
    threshold = detector.config.display_threshold
    for text, photo in zip(texts, photos):
        assert "Traceback" not in text and "Error" not in text.split("Detections:")[0][-200:]
        with torch.no_grad():
            [found] = detector([read_image_rgb(photo)])
        expected = int((found["scores"] >= threshold).sum())
        shown = re.search(r"Detections: (\d+) at score ≥ ([\d.]+)", text)
        assert shown and float(shown.group(2)) == pytest.approx(threshold, abs=0.005)
        assert int(shown.group(1)) == expected, (photo.name, shown.group(0), expected)
        others = [p.name for p in photos if p != photo]
        assert f"{photo.name} (uploaded)" in text and not any(f"{o} (uploaded)" in text for o in others)


@pytest.mark.slow
def test_evaluate_an_uploaded_checkpoint_on_an_uploaded_coco_set(server, tmp_path):
    """Evaluate: upload a checkpoint, a small COCO json and a zip of its images (a zip with a `..` entry first:
    its message), evaluate, see the AP-by-size chart; the report is then listed on Compare in that session."""
    import io
    import zipfile

    twins = json.loads((SAMPLE.parents[1] / "twins.json").read_text())
    six = twins["images"][:6]
    subset = {**twins, "images": six,
              "annotations": [a for a in twins["annotations"] if a["image_id"] in {i["id"] for i in six}]}
    (tmp_path / "twins-six.json").write_text(json.dumps(subset))
    with zipfile.ZipFile(tmp_path / "six.zip", "w") as archive:
        for image in six:
            archive.write(SAMPLE.parent / image["file_name"], f"six/{image['file_name']}")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../evil.txt", b"pwned")
    from borrowcore import DetectorConfig, build_detector, save_checkpoint

    names = [c["name"] for c in twins["categories"]]
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", build_detector(DetectorConfig(
        neck="full", num_classes=len(names), input_size=128, width=0.05, batch_norm=True), names))
    assert (tmp_path / "tiny.pt").stat().st_size < 1_000_000  # the server takes uploads up to 1 MB

    def uploader(label: str):
        return page.get_by_test_id("stFileUploader").filter(has_text=label).locator("input[type='file']")

    def evaluate() -> None:
        page.get_by_test_id("stButton").filter(has_text="Evaluate").locator("button").click()
        settle(page)

    with inspect_page(server) as page:
        page.goto(f"{server}/evaluate")
        page.get_by_text("Data set").first.wait_for()
        settle(page)
        page.get_by_test_id("stSelectbox").filter(has_text="Data set").click()
        page.get_by_role("option", name="Upload a COCO set…").click()
        page.get_by_text("Zip of its images").first.wait_for()
        settle(page)
        uploader("upload checkpoints").set_input_files([tmp_path / "tiny.pt"])
        settle(page)
        uploader("COCO json").set_input_files([tmp_path / "twins-six.json"])
        settle(page)
        uploader("Zip of its images").set_input_files([{"name": "evil.zip", "mimeType": "application/zip",
                                                        "buffer": evil.getvalue()}])
        settle(page)
        evaluate()
        page.get_by_text("Cannot evaluate: evil.zip: entry '../evil.txt' has a '..' component").first.wait_for()
        uploader("Zip of its images").set_input_files([tmp_path / "six.zip"])
        settle(page)
        evaluate()
        page.get_by_text("This session's reports (1)").first.wait_for()
        page.locator(".js-plotly-plot").first.wait_for()
        settle(page)
        text = page.inner_text("body")
        assert "tiny on twins-six.json (uploaded)" in text and "Traceback" not in text
        assert "Cannot evaluate" not in text  # the earlier message is gone with the good upload
        assert page.locator(".js-plotly-plot .barlayer").count() >= 1  # the AP-by-size bars
        shoot(page, tmp_path, "evaluate")
        with page.expect_download() as download:
            page.get_by_role("button", name="Report (json)").click()
        download.value.save_as(tmp_path / "report.json")
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["dataset"]["num_images"] == 6 and report["model"]["checkpoint"] == "tiny.pt"

        page.get_by_text("Compare them with the bundled reports").click()
        page.get_by_text("Compare: what does borrowing buy").first.wait_for()
        page.locator(".js-plotly-plot").first.wait_for()
        settle(page)
        text = page.inner_text("body")
        assert "this session/tiny on twins-six.json (uploaded)" in text and "Traceback" not in text
        shoot(page, tmp_path, "evaluate-compare")
