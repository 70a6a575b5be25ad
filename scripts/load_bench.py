"""Several people at once: N browsers upload N different held-out photos to Inspect at the same moment.

Starts `streamlit run viewer/Home.py` on the bundled assets, drives Debian's chromium through Playwright
(one browser context per person: separate sessions), and prints JSON: N people's times alone (one after
another, each on a photo of their own), each person's time from the upload to their detections when N others
upload N other photos together, the last one against the N alone times summed (N times one person's), errors,
cross-talk (a page showing another person's photo) and the server's peak memory (VmHWM). A benchmark, not a
test: run it with nothing else on the cores.

    python scripts/load_bench.py --people 8            # photos: the WIDER val photos, in file order
    python scripts/load_bench.py --people 8 --profile reports/bench-load/profile   # py-spy on the server
    python scripts/load_bench.py --people 8 --browsers-nice 19   # the browsers yield the cores to the server

A page is done when its own photo's detections are drawn: the heading naming the photo is there, nothing runs or
waits, and then the page's main thread is idle (plotly has drawn); the page notes both moments itself (``WATCH``),
so the harness does not read the pages' text while they draw. ``together_heading_s``: the heading alone.
The alone times are summed over N photos, not one photo times N: one upload's time varies by a factor of two
from run to run. ``together_cpu`` splits the CPU seconds of the N uploads between the server and the browsers,
which share the machine's cores here (a person's own browser would not); ``alone_cpu`` the same for the N alone.
It ends with PASS or FAIL against the targets: the last of N within 1.3x the N alone times, server peak at most
2 GB, no error, no cross-talk. ``--profile`` samples the server with py-spy while the N upload
(``pip install py-spy``): the folded stacks, and the share of samples in each of the project's functions
(inclusive), by thread (the inference worker against the sessions' script threads).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDER = ROOT.parent / "shared" / "data" / "wider-faces"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
DETECTIONS = re.compile(r"Detections: (\d+) at score")


def val_photos(count: int) -> list[Path]:
    lines = (WIDER / "val_bbx_gt.txt").read_text().splitlines()
    names = [line.strip() for line in lines if line.strip().endswith(".jpg")]
    return [WIDER / "images" / name for name in names[:count]]


def start_server(log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "viewer/Home.py", "--server.port", str(port), "--server.headless",
         "true", "--server.fileWatcherType", "none"], cwd=ROOT, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"streamlit did not start: {log_path.read_text()[-2000:]}")


def measured(upload, server_pid: int) -> tuple[list[dict], dict]:
    """``upload()``'s sessions, and the wall seconds it took with the CPU seconds the server and the browsers
    spent in them."""
    server_before, browsers_before, wall = cpu_seconds([server_pid]), cpu_seconds(browser_pids()), time.time()
    sessions = upload()
    return sessions, {"wall_s": round(time.time() - wall, 1),
                      "server_cpu_s": round(cpu_seconds([server_pid]) - server_before, 1),
                      "browsers_cpu_s": round(cpu_seconds(browser_pids()) - browsers_before, 1)}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` (and their reaped children) have used so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def browser_pids() -> list[int]:
    """The chromium processes running now."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "chrom" in (entry / "comm").read_text():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def lower_browsers(niceness: int) -> None:
    """Give every chromium process the niceness (0: leave them): here the browsers share the server's cores,
    where in a lab each person's browser runs on their own machine."""
    if niceness:
        for pid in browser_pids():
            try:
                os.setpriority(os.PRIO_PROCESS, pid, niceness)
            except OSError:
                pass  # gone already


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_pages(browser, url: str, count: int) -> list:
    pages = []
    for _ in range(count):
        page = browser.new_context(viewport={"width": 1400, "height": 2400}).new_page()
        page.set_default_timeout(600_000)
        page.goto(f"{url}/inspect_image")
        page.get_by_text("Upload images").first.wait_for()
        pages.append(page)
    for page in pages:  # the opening sample's render done, so that only the uploads are timed
        page.get_by_text(DETECTIONS).first.wait_for()
        page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")
    time.sleep(2)  # plotly draws the figures after the heading is there: let the pages finish before timing
    return pages


# Watches the page for its own photo's detections, in the page itself: ``borrowscopeShown`` is the moment (ms since
# the epoch) the heading naming the photo is there with nothing running or waiting (the DOM's changes are watched);
# ``borrowscopeDone`` the first moment after it that the page's main thread has a whole idle period (50 ms) to
# spare, i.e. plotly has drawn the figures. The harness reads the two variables, not the pages' text: reading a
# busy page's text waits for that page, which made the eight look done together (docs/benchmarks.md).
WATCH = """name => {
  window.borrowscopeShown = window.borrowscopeDone = null;
  const idle = () => requestIdleCallback(deadline => {
    if (deadline.timeRemaining() >= 45) window.borrowscopeDone = Date.now(); else idle();
  });
  const shown = () => {
    if (window.borrowscopeShown !== null) return;
    if (document.querySelector("[data-testid='stStatusWidget']")) return;
    const text = document.body.textContent;
    if (text.includes("Waiting for the detector") || text.includes("Running the detector")) return;
    for (const heading of document.querySelectorAll("h3")) {
      const words = heading.textContent.trim();
      if (words.startsWith("Detections: ") && words.endsWith(" in " + name)) {
        window.borrowscopeShown = Date.now();
        observer.disconnect();
        idle();
        return;
      }
    }
  };
  const observer = new MutationObserver(shown);
  observer.observe(document.body, {childList: true, subtree: true, characterData: true});
  shown();
}"""


def upload_all(pages: list, photos: list[Path]) -> list[dict]:
    """Every page uploads its photo (Inspect shows a new upload at once: uploads come first), then each waits
    until its own photo's detections are drawn (``WATCH``)."""
    starts = []
    for page, photo in zip(pages, photos):
        page.evaluate(WATCH, photo.name)
        starts.append(time.time())
        page.get_by_test_id("stFileUploader").filter(has_text="Upload images").locator(
            "input[type='file']").set_input_files([photo])
    done: dict[int, tuple[float, float]] = {}
    while len(done) < len(pages):
        for i, page in enumerate(pages):
            if i not in done and (stamps := page.evaluate("[window.borrowscopeShown, window.borrowscopeDone]"))[1]:
                done[i] = (stamps[0] / 1000, stamps[1] / 1000)
        time.sleep(0.25)
    results = []
    for i, (page, photo) in enumerate(zip(pages, photos)):
        text = page.inner_text("body")
        others = [p.name for p in photos if p != photo and f"{p.name} (uploaded)" in text]
        results.append({"photo": photo.name, "seconds": round(done[i][1] - starts[i], 2),
                        "heading_seconds": round(done[i][0] - starts[i], 2),
                        "detections": int(DETECTIONS.search(text).group(1)),
                        "error": "Traceback" in text or "stException" in page.content(), "cross_talk": others})
    return results


TARGETS = {"last_over_people_times_alone": 1.3, "server_peak_mb": 2048, "errors": 0, "cross_talk": 0}


def start_profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy sampling every thread of ``pid`` into folded stacks (one "frames count" line per stack)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--threads", "--idle",
                             "--rate", "50", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_summary(folded: Path, top: int = 25) -> list[dict]:
    """The project's functions (viewer/, pages/, borrowcore/) by their inclusive share of the busy samples of
    each kind of thread: "inference" (the queue's worker) or "sessions" (Streamlit's script threads)."""
    busy: dict[str, int] = {}
    counts: dict[tuple[str, str], int] = {}
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not count.isdigit():
            continue
        idle = any(f.startswith(("wait (threading", "select (selectors", "_worker (concurrent", "sleep ("))
                   for f in frames[-2:]) or frames[-1].startswith(("wait (", "sleep ("))
        if idle:
            continue
        kind = "inference" if "borrowscope-inference" in frames[0] or any("_run (viewer/models.py" in f for f in frames) \
            else "sessions"
        busy[kind] = busy.get(kind, 0) + int(count)
        seen = set()
        for frame in frames:
            if any(part in frame for part in ("viewer/", "pages/", "borrowcore/")) and frame not in seen:
                seen.add(frame)
                counts[(kind, frame)] = counts.get((kind, frame), 0) + int(count)
    rows = [{"thread": kind, "function": frame, "share": round(n / busy[kind], 3), "samples": n}
            for (kind, frame), n in counts.items()]
    rows.sort(key=lambda r: -r["samples"])
    return [{"thread": kind, "busy_samples": n} for kind, n in busy.items()] + rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="folder for the py-spy profile of the N uploading together")
    parser.add_argument("--json", type=Path, help="write the result here too")
    parser.add_argument("--browsers-nice", dest="browsers_nice", type=int, default=0,
                        help="run the browsers at this niceness (1-19), as if on other machines than the server")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no chromium on PATH: apt-get install chromium")
    people = args.people
    photos = val_photos(2 * people + 1)  # one to warm the server, N for the alone times, N for the N together
    alone_photos, together_photos = photos[1:people + 1], photos[people + 1:]
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
                # a first person warms the server (model load, the page's default sample); then N people alone,
                # one after another, each on their own photo
                [cold] = upload_all(open_pages(browser, url, 1), photos[:1])
                alone, alone_cpu = [], {"wall_s": 0.0, "server_cpu_s": 0.0, "browsers_cpu_s": 0.0}
                for photo in alone_photos:
                    page = open_pages(browser, url, 1)
                    lower_browsers(args.browsers_nice)
                    [one], cpu = measured(lambda: upload_all(page, [photo]), server.pid)
                    alone.append(one)
                    alone_cpu = {key: round(alone_cpu[key] + cpu[key], 1) for key in alone_cpu}
                    page[0].context.close()
                pages = open_pages(browser, url, people)
                lower_browsers(args.browsers_nice)
                profiler = None
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profiler = start_profile(server.pid, args.profile / "server.folded")
                together, cpu = measured(lambda: upload_all(pages, together_photos), server.pid)
                if profiler is not None:
                    profiler.send_signal(2)  # SIGINT: py-spy writes its output and exits
                    profiler.wait(timeout=60)
                browser.close()
            peak = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    last = max(r["seconds"] for r in together)
    alone_seconds = [r["seconds"] for r in alone]
    result = {
        "people": people, "cores": len(os.sched_getaffinity(0)), "browsers_nice": args.browsers_nice,
        "cold_first_s": cold["seconds"],
        "alone_s": sorted(alone_seconds), "alone_sum_s": round(sum(alone_seconds), 2),
        "together_s": sorted(r["seconds"] for r in together), "last_s": last,
        "alone_heading_sum_s": round(sum(r["heading_seconds"] for r in alone), 2),
        "together_heading_s": sorted(r["heading_seconds"] for r in together),
        "last_over_people_times_alone": round(last / sum(alone_seconds), 2),
        "errors": sum(r["error"] for r in [*alone, *together]),
        "cross_talk": sum(bool(r["cross_talk"]) for r in together),
        "server_peak_mb": round(peak), "alone_cpu": alone_cpu, "together_cpu": cpu, "sessions": together,
    }
    result["pass"] = all(result[key] <= limit for key, limit in TARGETS.items())
    if args.profile:
        result["profile"] = profile_summary(args.profile / "server.folded")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    failed = [f"{key} {result[key]} > {limit}" for key, limit in TARGETS.items() if result[key] > limit]
    print("PASS" if result["pass"] else f"FAIL: {', '.join(failed)}")


if __name__ == "__main__":
    main()
