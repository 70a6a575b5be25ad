"""Evaluate: checkpoints on a bundled or uploaded COCO set, a few images at a time through the shared queue."""

import json

import pandas as pd
import streamlit as st

from borrowcore import CheckpointError
from borrowcore.evaluation.compare import coco_size_table
from borrowcore.evaluation.evaluate_upload import UploadLimits
from viewer import assets, figures
from viewer.evaluation import (ERROR, REPORTS, RUN, Run, UploadedSet, advance, bundled_sets, file_stem,
                               set_class_names)
from viewer.models import checkpoint_info, inference_queue, load_model, store_upload, without_upload_path

UPLOAD = "Upload a COCO set…"
METRICS = ("AP", "AP50", "AP_S", "AP_M", "AP_L")
LIMITS = UploadLimits()
state = st.session_state

st.title("Evaluate: AP by object size of your checkpoints")
st.caption("Checkpoints on a COCO set, scored by `borrowcore`'s own evaluation (pycocotools), as `borrowcore eval` "
           "does. The images run through the queue that Inspect uses, a few at a time, so people inspecting images "
           "meanwhile wait for one slice, not for the whole set. The reports join Compare and Head to head for this "
           "session, and can be downloaded.")

# ---- the set: bundled, or an uploaded COCO json with a zip of its images ----
sets, notes = bundled_sets()
left, right = st.columns(2)
choice = left.selectbox("Data set", [*sets, UPLOAD], key="evaluate_set")
for note in notes:
    left.caption(note)
source = class_names = None
if choice == UPLOAD:
    annotations = left.file_uploader("COCO json (detection annotations)", type=["json"], key="evaluate_json")
    archive = left.file_uploader("Zip of its images (the json's file_names, from the zip's top or its one folder)",
                                 type=["zip"], key="evaluate_zip")
    left.caption(f"At most {LIMITS.max_images} images, {LIMITS.max_entries} zip entries and "
                 f"{LIMITS.max_bytes >> 30} GiB unpacked; unpacked into a temporary folder that is removed after use.")
    if annotations is not None and archive is not None:
        source = UploadedSet(annotations.getvalue(), annotations.name, archive.getvalue(), archive.name)
else:
    source = sets[choice]
    class_names = set_class_names(source.annotations)
    left.caption(f"`{assets.display_path(source.annotations)}`: classes {', '.join(class_names[:8])}"
                 f"{' …' if len(class_names) > 8 else ''}")

# ---- the checkpoints: bundled (those of the set's classes by default), or uploaded ----
bundled = {path.name: path for path in assets.checkpoints()}
fitting = []
for name, path in bundled.items():
    try:
        if class_names and checkpoint_info(path)["class_names"] == class_names:
            fitting.append(name)
    except CheckpointError:
        continue
picked = right.multiselect("Bundled checkpoints", list(bundled), default=fitting, key=f"evaluate_checkpoints:{choice}",
                           placeholder="choose checkpoints" if bundled else "none bundled: upload one")
uploads = right.file_uploader("…and/or upload checkpoints (.pt)", type=["pt", "pth"], accept_multiple_files=True,
                              key="evaluate_checkpoint_uploads")
checkpoints = []
for name, path in [(name, bundled[name]) for name in picked] + [
        (upload.name, store_upload(upload.getvalue(), upload.name)) for upload in uploads or []]:
    try:
        info = checkpoint_info(path)
    except CheckpointError as error:
        right.error(f"Cannot use this checkpoint: {without_upload_path(str(error), path, name)}", icon=":material/error:")
        continue
    if class_names and info["class_names"] != class_names:
        right.warning(f"{name} detects {', '.join(info['class_names'][:8])}, not this set's classes: left out.",
                      icon=":material/warning:")
        continue
    checkpoints.append((name, path))

run = state.get(RUN)
ready = source is not None and checkpoints
if run is None and st.button("Evaluate", type="primary", icon=":material/play_arrow:", disabled=not ready,
                             key="evaluate_start"):
    state[RUN] = run = Run(choice if choice != UPLOAD else f"{source.annotations_name} (uploaded)", source, checkpoints)
    state.pop(ERROR, None)
if run is None and not ready:
    st.info("Pick a data set and at least one checkpoint of its classes." if choice != UPLOAD or source else
            "Upload a COCO json and a zip of the images it names, and pick or upload a checkpoint.")

# ---- the run: carried on by every script run until it ends (leaving the page pauses it) ----
if run is not None:
    if st.button("Stop", icon=":material/stop:", key="evaluate_stop"):
        state.pop(RUN, None)
        st.rerun()
    st.caption(f"Evaluating {', '.join(name for name, _ in run.checkpoints)} on **{run.set_name}**. Leaving this "
               "page pauses the evaluation; coming back carries it on.")
    first = run.progress(run.checkpoints[0][0])
    bar = st.progress(first.fraction, text=first.text() if first.total else "Opening the set…")
    try:
        advance(run, inference_queue(), load_model, lambda progress: bar.progress(progress.fraction, text=progress.text()))
    except (CheckpointError, ValueError) as error:  # UploadError, BadImageError, a class mismatch
        message = str(error)
        for name, path in run.checkpoints:
            message = without_upload_path(message, path, name)
        state[ERROR] = message
    else:
        state.setdefault(REPORTS, {}).update(run.reports)
    state.pop(RUN, None)
    bar.empty()
    st.rerun()
if state.get(ERROR):
    st.error(f"Cannot evaluate: {state[ERROR]}", icon=":material/error:")

# ---- this session's reports ----
reports = state.get(REPORTS, {})
if not reports:
    st.stop()
st.subheader(f"This session's reports ({len(reports)})")
table = pd.DataFrame([{"report": name, "set": f"{item['report']['dataset']['name']} · {item['report']['dataset']['split']}",
                       **{key: item["report"]["metrics"][key] for key in METRICS},
                       "images": item["report"]["timing"]["images"], "images/s": item["report"]["timing"]["images_per_s"]}
                      for name, item in reports.items()])
table[list(METRICS)] = table[list(METRICS)].where(table[list(METRICS)] >= 0)  # -1: no ground truth of that size
st.dataframe(table, hide_index=True, column_config={key: st.column_config.NumberColumn(format="percent") for key in METRICS})
rows = pd.DataFrame(coco_size_table([(name, item["report"]) for name, item in reports.items()], "report", "AP"))
st.plotly_chart(figures.size_bars(rows, "AP by COCO size (small < 32², medium, large ≥ 96² px)", "AP"),
                key="evaluate_sizes")
left, right = st.columns(2)
left.page_link("../pages/compare.py", label="Compare them with the bundled reports", icon=":material/bar_chart:")
right.page_link("../pages/head_to_head.py", label="Head to head", icon=":material/compare_arrows:")
st.markdown("**Downloads** (the report json and its detections, as `borrowcore eval` writes them: upload both to "
            "Head to head elsewhere)")
for name, item in reports.items():
    columns = st.columns([3, 1, 1])
    columns[0].markdown(name)
    columns[1].download_button("Report (json)", json.dumps(item["report"], indent=1), key=f"evaluate_report:{name}",
                               file_name=f"eval_{file_stem(name)}.json", mime="application/json")
    columns[2].download_button("Detections (json.gz)", item["detections"], key=f"evaluate_detections:{name}",
                               file_name=item["report"]["detections"], mime="application/gzip")
