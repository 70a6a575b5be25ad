"""Inspect: detections on your images, and which larger instances a small detection borrowed from."""

import json
from pathlib import Path

import streamlit as st
import torch

from borrowcore import CheckpointError
from borrowcore.data.images import MAX_PIXELS, image_digest
from borrowcore.evaluation.explain import borrow_view, detections_to_coco, layer_maps, with_instances
from viewer import assets, figures, queries
from viewer.loaders import ground_truth
from viewer.models import (QueueFull, checkpoint_info, device_label, explain_image, file_key, load_model,
                           store_upload, without_upload_path)

UPLOAD = "Upload a checkpoint…"
WINDOW, WHOLE = "a native-resolution window", "the whole image, resized"
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff", "gif"]
PERCENT = st.column_config.NumberColumn(format="percent")
state = st.session_state

st.title("Inspect: where did a small detection borrow from?")
request = state.pop(queries.REQUEST, None)  # an instance opened from Head to head: applied once
samples = {f"{folder}/{path.name}": path for folder, paths in assets.sample_images().items() for path in paths}
samples.update(state.get("inspect_requested_images", {}))
if request:
    queries.open_request(state, request, samples, [path.name for path in assets.checkpoints()])

# ---- checkpoint: bundled, or uploaded (stored under its hash, loaded with weights-only loading) ----
with st.sidebar:
    st.header("Checkpoint")
    bundled = {path.name: path for path in assets.checkpoints()}
    if not bundled:
        st.caption("No checkpoints are bundled yet: upload one.")
    choice = st.selectbox("Checkpoint", [*bundled, UPLOAD], key="inspect_checkpoint",
                          index=assets.default_checkpoint(list(bundled.values())))
    if choice == UPLOAD:
        upload = st.file_uploader("Checkpoint file (.pt)", type=["pt", "pth"], key="inspect_checkpoint_upload")
        if upload is None:
            st.info("Upload a borrowcore checkpoint (`.pt`) in the sidebar.")
            st.stop()
        checkpoint_path, checkpoint_name = store_upload(upload.getvalue(), upload.name), upload.name
    else:
        checkpoint_path, checkpoint_name = bundled[choice], choice
    try:
        info = checkpoint_info(checkpoint_path)
        exact = None
        if info["neck"] in ("borrow", "full"):
            exact = st.toggle("Exact matching", value=info["matching"] == "exact", key="inspect_exact",
                              help="Off: fast matching, each deeper map pooled to a few dozen keys (time linear in "
                                   "the image). On: every deeper cell, the paper's full softmax (time grows with the "
                                   "square of the image).")
        with st.spinner(f"Loading {checkpoint_name} onto the {device_label()}…"):
            detector = load_model(checkpoint_path, exact)
    except CheckpointError as error:
        st.error(without_upload_path(str(error), checkpoint_path, checkpoint_name))
        st.stop()
    seen = ("whole photo at native resolution" if info["inference"] == "whole" else
            f"{info['input_size']} px tiles" if info["inference"] == "tiles" else f"input {info['input_size']}")
    st.caption(f"neck **{info['neck']}**, {info['classes']} classes, {seen}, width {info['width']}, "
               f"{detector.config.describe_matching()}; running on {device_label()}")
    if use := assets.checkpoint_use(checkpoint_path):
        st.caption(f"For {use}.")
    if choice != UPLOAD and (note := assets.checkpoint_note(checkpoint_path)):  # bundled: measured as noted
        st.warning(note, icon=":material/info:")

# ---- images: this session's uploads and bundled samples ----
twin = assets.default_sample(checkpoint_info(checkpoint_path)["class_names"])
default = next((name for name, path in samples.items() if path == twin), None)
left, right = st.columns([3, 2])
uploads = left.file_uploader("Upload images", type=IMAGE_TYPES, accept_multiple_files=True, key="inspect_images",
                             help="JPEG, PNG, BMP, WebP, TIFF or GIF; EXIF rotation is honoured; at most "
                                  f"{MAX_PIXELS / 1e6:.0f} megapixels.")
picked = right.multiselect("…or bundled samples", list(samples), default=[default] if default and not request else None,
                           key="inspect_samples", placeholder="choose samples" if samples else "none bundled yet")
images, problems = queries.collect_images(uploads or [], picked, samples)
for problem in problems:
    st.error(f"Cannot use this image: {problem}", icon=":material/error:")
if not images:
    st.info("Upload an image or pick a bundled sample to see its detections." if samples else
            "Upload an image to see its detections (no sample images are bundled yet).")
    st.stop()
name = st.radio("Image", list(images), horizontal=True, key="inspect_image") if len(images) > 1 else next(iter(images))
digest, image, file_name = images[name]

# ---- large images: a native-resolution S x S window (small objects keep their size), or a resize ----
(full_height, full_width) = tuple(image.shape[-2:])
if detector.whole_image:  # the photo itself, up to this side; a window of it beyond (SPEC §1)
    size = detector.config.max_whole_side
    too_large = max(full_height, full_width) > size and detector.config.oversize == "tiles"  # "shrink": it fits
else:
    size = detector.input_size
    too_large = queries.needs_window(full_height, full_width, size)
window = None
if too_large:
    with st.sidebar:
        st.header("Region")
        whole = st.radio("Run the detector on", [WINDOW, WHOLE], key="inspect_region",
                         help=f"This image is {full_width} x {full_height} px and the detector sees {size} x {size}. "
                              "A window keeps native resolution, as tiled inference does; a resize shrinks small "
                              "objects (and borrowing then sees the whole image).") == WHOLE
        if not whole:
            if request:  # centre the window on the requested instance
                x, y, w, h = request["bbox"]
                state[queries.window_key("left", digest)] = queries.window_start(x + w / 2, full_width, size)
                state[queries.window_key("top", digest)] = queries.window_start(y + h / 2, full_height, size)
            window, step = [0, 0], max(1, size // 8)
            for axis, (label, length) in enumerate((("left", full_width), ("top", full_height))):
                key = queries.window_key(label, digest)  # per image: a new one opens on its own centre
                centre = step * round(max(0, length - size) / 2 / step)
                state[key] = min(state.get(key, centre), max(0, length - size))
                if length > size:
                    window[axis] = st.slider(f"Window {label} (px)", 0, length - size, step=step, key=key)
    if window:
        left, top = window
        st.image(figures.window_overview(image, left, top, size))
        st.caption(f"The {size} x {size} window at ({left}, {top}) of the {full_width} x {full_height} image; "
                   "move it in the sidebar. Borrowing sees only this window's instances.")
        image = queries.crop_to_window(image, left, top, size)
        digest = f"{digest}@{left},{top},{size}"

# ---- detections, or the bundled ground truth in their place ----
class_names = list(detector.class_names)
with st.sidebar:
    st.header("Detections")
    threshold = st.slider("Score threshold", 0.05, 1.0, float(detector.config.display_threshold), 0.05,
                          key="inspect_threshold", help="Starts at the checkpoint's own: for released models the score "
                                                        "with the best F1 on their validation set.")
    chosen = st.multiselect("Classes", class_names, default=class_names,
                            key=f"inspect_classes_{image_digest(' '.join(class_names).encode())[:8]}")
waiting = st.empty()


def show_wait(position: int) -> None:
    waiting.info("Running the detector on this image…" if position == 0 else
                 f"Waiting for the detector: {position} image{'s' if position > 1 else ''} ahead of yours "
                 f"(one at a time, shared by everyone using BorrowScope)", icon=":material/hourglass_top:")


try:
    explanation = explain_image(file_key(checkpoint_path), digest, detector, image, on_wait=show_wait)
except QueueFull as error:
    waiting.empty()
    st.warning(str(error), icon=":material/hourglass_top:")
    st.stop()
waiting.empty()
truth = (ground_truth(file_name, (full_height, full_width), state.get("inspect_requested_coco", []))
         if explanation.borrows else None)
if window and truth is not None:
    truth = queries.truth_in_window(truth, window[0], window[1], size)
if request and truth is not None:  # the requested instance is a ground-truth box: explain exactly it
    state["inspect_instances"] = f"ground truth ({truth['source']})"
use_truth = truth is not None and st.radio(
    "Instances to explain and link", ["detections", f"ground truth ({truth['source']})"], horizontal=True,
    key="inspect_instances", help="A bundled COCO file annotates this image: its instances can stand in for the "
    "detections (the matching scores are the model's either way).") != "detections"
if use_truth:
    truth_classes = list(dict.fromkeys(truth["names"]))
    explanation = with_instances(explanation, torch.from_numpy(truth["boxes"]),
                                 torch.tensor([truth_classes.index(n) + 1 for n in truth["names"]]), truth_classes)
    keep = list(range(len(truth["boxes"])))
else:
    detections = explanation.detections
    keep = [i for i in range(len(detections["boxes"])) if float(detections["scores"][i]) >= threshold
            and class_names[int(detections["labels"][i]) - 1] in chosen]
context = f"{file_key(checkpoint_path)}|{digest}|{threshold}|{','.join(chosen)}|{use_truth}"
detection = queries.apply_picks(state, explanation, keep, context)
if request:
    x, y, w, h = request["bbox"]
    if window:  # into the window's pixels
        x, y = x - window[0], y - window[1]
    found = queries.request_query(state, explanation, keep, [x, y, w, h])
    detection = detection if found is None else found
    st.info(f"Opened from Head to head: the {request['category']} instance (annotation {request['annotation_id']}) "
            + ("is the query below." if found is not None else
               "matches no instance shown here (lower the score threshold, or pick a borrowing checkpoint)."),
            icon=":material/compare_arrows:")

st.subheader(f"Ground truth: {len(keep)} instances from {truth['source']}" if use_truth else
             f"Detections: {len(keep)} at score ≥ {threshold:.2f} in {file_name}")
if not keep:
    st.warning(f"No detections at score ≥ {threshold:.2f}: lower the score threshold in the sidebar.")
left, right = st.columns([3, 2])
with left:
    st.plotly_chart(figures.detections_figure(image, explanation, keep, detection, scores=not use_truth),
                    key="inspect_click", on_select="rerun", selection_mode="points", config={"displayModeBar": False})
    st.caption("Click a circle at a detection's centre to explain it.")
with right:
    st.dataframe(queries.detections_table(explanation, keep, scores=not use_truth), hide_index=True,
                 key="inspect_table", on_select="rerun", selection_mode="single-row",
                 height=min(420, 38 + 35 * max(1, len(keep))))
    st.download_button("Detections (COCO json)", json.dumps(detections_to_coco(explanation, file_name, keep), indent=1),
                       file_name=f"{Path(file_name).stem}_detections.json", mime="application/json", disabled=use_truth)

# ---- borrowing ----
st.subheader("Borrowing")
if not explanation.borrows:
    st.info(f"This checkpoint's neck is **{info['neck']}**: its shallow layers do not borrow features from deeper "
            "ones (it has no Feature Matching Block), so there is no borrowing to show. Pick a `borrow` or `full` "
            "checkpoint to see it.", icon=":material/info:")
    st.stop()
borrowing = [m.layer for m in explanation.matching]
mode = st.radio("Explain", [queries.DETECTION, queries.CELL], horizontal=True, key="inspect_mode", disabled=not keep)
cell = layer = None
if mode == queries.DETECTION:
    detection = st.selectbox("Detection", keep, key="inspect_detection",
                             format_func=lambda i: queries.detection_option(explanation, i, scores=not use_truth))
else:
    detection = None
    columns = st.columns(3)
    if state.get("inspect_layer") not in borrowing:
        state["inspect_layer"] = borrowing[0]
    layer = columns[0].selectbox("Layer", borrowing, format_func=figures.layer_name, key="inspect_layer")
    grid_h, grid_w = explanation.layer(layer).query_grid
    for key, size in (("inspect_row", grid_h), ("inspect_col", grid_w)):
        if not 0 <= state.get(key, -1) < size:
            state[key] = size // 2
    cell = (int(columns[1].number_input("Row", 0, grid_h - 1, key="inspect_row")),
            int(columns[2].number_input("Column", 0, grid_w - 1, key="inspect_col")))
top_k = st.sidebar.slider("Top source cells", 1, 20, 3, key="inspect_top_k")
view = borrow_view(explanation, detection=detection, cell=cell, layer=layer, among=keep, k=top_k)

if view.anchor_layer is not None and view.anchor_layer not in borrowing:
    st.warning(f"#{detection}'s best anchor is on {figures.layer_name(view.anchor_layer)}, the deepest layer, which "
               f"borrows from nothing; showing its cells on {figures.layer_name(view.layer)}, the deepest that borrows.")
st.markdown(queries.headline(explanation, view))
st.caption(queries.spread_note(view))
st.plotly_chart(figures.borrow_figure(image, explanation, view, keep), key="inspect_borrow",
                config={"displayModeBar": False})
st.caption(f"Cyan: the query. Heat: where its matching mass goes (all deeper layers), on cells that get at least "
           f"{figures.LIFT:g}× what a uniform row gives. Orange arrows: the larger instances it borrowed from, with the "
           "share of its mass; grey: larger instances that got no more than a uniform row gives. Yellow dashes: its "
           "top source cells.")

st.markdown("**Its matching scores on each deeper layer**")
st.plotly_chart(figures.layer_panels_figure(image, explanation, view), key="inspect_panels",
                config={"displayModeBar": False})
left, right = st.columns(2)
left.markdown("**Larger instances: the share of its mass on each**")
left.dataframe(queries.links_table(explanation, view), hide_index=True, column_config={
    "share of mass": PERCENT, "uniform": PERCENT, "× uniform": st.column_config.NumberColumn(format="%.2f")})
right.markdown(f"**Top {len(view.sources)} source cells**")
right.dataframe(queries.sources_table(view), hide_index=True, column_config={"share": PERCENT})

st.markdown(f"**Layer view: every cell of {figures.layer_name(view.layer)}**")
state["inspect_view_layer"] = view.layer  # the layer a click on this view picks a cell of
st.plotly_chart(figures.layer_view_figure(image, explanation, layer_maps(explanation, view.layer), cell),
                key="inspect_cells", on_select="rerun", selection_mode="points", config={"displayModeBar": False})
st.caption("Click a cell (left) to explain it.")
st.download_button("Overlay (PNG)", lambda: figures.overlay_png(image, explanation, view, keep),  # drawn on click
                   file_name=f"{Path(file_name).stem}_borrowing.png", mime="image/png")
