"""Data & anchors: a COCO file's box sizes and shapes, Eq. (1)'s aspect ratios, and anchor recall by size."""

import numpy as np
import pandas as pd
import streamlit as st

from borrowcore.evaluation.stats import SIDE_BINS
from viewer import assets, figures
from viewer.loaders import coco_analysis

UPLOAD = "Upload a COCO json…"

st.title("Data & anchors: can the anchors reach the small boxes?")

bundled = {assets.display_path(path): path for path in assets.coco_files()}
left, right = st.columns([2, 3])
choice = left.selectbox("COCO annotation file", [*bundled, UPLOAD], key="data_file")
if not bundled:
    left.caption("No COCO files are bundled yet: upload one.")
if choice == UPLOAD:
    upload = left.file_uploader("COCO detection json", type=["json"], key="data_upload")
    if upload is None:
        st.info("Upload a COCO detection json (images, annotations, categories).")
        st.stop()
    name, data = upload.name, upload.getvalue()
else:
    name, data = choice, bundled[choice].read_bytes()

with right:
    columns = st.columns(3)
    input_size = columns[0].select_slider("Network input S", [128, 160, 256, 300, 512], value=300, key="data_input")
    iou = columns[1].slider("IoU for Eq. (1)", 0.3, 0.66, 0.5, 0.01, key="data_iou")
    percentile = columns[2].slider("Box AR percentile", 90.0, 100.0, 99.0, 0.5, key="data_percentile")
    ratios_text = st.text_input("Configured aspect ratios r > 1 (each adds r and 1/r)", "1.5, 3.0", key="data_ratios")
try:
    ratios = tuple(float(v) for v in ratios_text.replace(",", " ").split())
    if any(r <= 1 for r in ratios):
        raise ValueError
except ValueError:
    st.error(f"Aspect ratios must be numbers above 1 (each r adds r and 1/r), got {ratios_text!r}.")
    st.stop()

with st.spinner(f"Reading {name}…"):
    analysis, error = coco_analysis(name, data, input_size, aspect_ratios=ratios, iou=iou, percentile=percentile)
if error:
    st.error(f"Cannot use this file: {error}", icon=":material/error:")
    st.stop()

stats, boxes, design = analysis["stats"], analysis["boxes"], analysis["design"]
st.caption(f"{stats['images']} images ({stats['images_without_boxes']} without boxes), {stats['boxes']} boxes, "
           f"{stats['crowd_boxes']} crowd boxes (left out).")
if not len(boxes):
    st.warning("This file has no boxes to analyse.")
    st.stop()

sides = np.sqrt(boxes[:, 2].clip(0) * boxes[:, 3].clip(0))
valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
ratio = np.maximum(boxes[valid, 2] / boxes[valid, 3], boxes[valid, 3] / boxes[valid, 2])
left, right = st.columns(2)
left.plotly_chart(figures.histogram(sides, "box sizes", "sqrt(area) in the image (px)", SIDE_BINS[1:]), key="data_sizes")
right.plotly_chart(figures.histogram(ratio, "box aspect ratios", "max(w/h, h/w)"), key="data_ratios_hist")
sizes = pd.DataFrame([{"size": k, "boxes": v} for k, v in stats["by_coco_size"].items()])
left.dataframe(sizes, hide_index=True)
right.dataframe(pd.DataFrame([{"class": k, "boxes": v} for k, v in stats["per_class"].items() if v]),
                hide_index=True, height=180)

st.subheader("Eq. (1): the aspect-ratio set")
st.latex(r"\mathrm{mAR}_{anchor} = \mathrm{mAR}_{obj}\cdot\max\left\{\left(\frac{2}{1 + 1/\mathrm{IoU}}\right)^2,"
         r"\ \frac{\mathrm{IoU}}{2 - 2\,\mathrm{IoU}},\ \mathrm{IoU}\right\}")
columns = st.columns(2)
columns[0].metric(f"mAR_obj ({percentile:g}th percentile box AR)", f"{design['max_object_ratio']:.2f}")
columns[1].metric(f"mAR_anchor at IoU {iou:.2f}", f"{design['max_anchor_ratio']:.2f}")
st.markdown("Aspect-ratio set: **{" + ", ".join(f"{r:.3g}" for r in design["aspect_ratios"]) + "}**")
st.code(f"aspect_ratios: {[round(r, 4) for r in design['config_aspect_ratios']]}  # for configs/*.yaml", language="yaml")

st.subheader(f"Anchor recall by size at input {input_size}")
st.caption("The share of boxes whose best anchor has IoU ≥ 0.5, after resizing each image to the network input "
           "as the detector does. With 32 px anchors on the first layer, boxes under ~23 px cannot reach 0.5.")
rows = [{"anchors": f"configured {list(ratios)}", "bin": b["label"], "boxes": b["boxes"], "recall": b["recall"]}
        for b in analysis["recall"]["bins"]]
if analysis["designed_recall"]:
    rows += [{"anchors": f"Eq. (1) {[round(r, 2) for r in design['config_aspect_ratios']]}", "bin": b["label"],
              "boxes": b["boxes"], "recall": b["recall"]} for b in analysis["designed_recall"]["bins"]]
table = pd.DataFrame(rows)
st.plotly_chart(figures.recall_bars(table), key="data_recall")
recall = analysis["recall"]
st.write(f"Overall: **{recall['recall']:.1%}** of {recall['boxes']} boxes with the configured ratios"
         + (f", **{analysis['designed_recall']['recall']:.1%}** with Eq. (1)'s." if analysis["designed_recall"] else "."))
wide = table[table["recall"] >= 0].pivot_table(index="bin", columns="anchors", values="recall", sort=False)
st.dataframe(wide.reset_index(), hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="percent") for c in wide.columns})
