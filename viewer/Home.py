"""BorrowScope home: what the detector is (the app issue grows this into the multipage app)."""

import pandas as pd
import streamlit as st
import torch

from borrowcore import DetectorConfig
from borrowcore.summary import describe_detector

st.set_page_config(page_title="BorrowScope", layout="wide")
st.title("BorrowScope")
st.write(
    "An SSD (VGG16) whose shallow layers *borrow* features from deeper, semantically richer layers: "
    "a Feature Matching Block scores every shallow cell against every deeper cell, a Feature "
    "Representing Block builds the borrowed map, and a Feature Fusion Block adds it (with "
    "deconvolution context) back to the shallow map."
)
st.caption(f"Device: {'CUDA (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else 'CPU'}")

left, middle, right = st.columns(3)
neck = left.selectbox("Ablation (neck)", ["full", "borrow", "context", "ssd"])
width = middle.select_slider("Width", [0.125, 0.25, 0.5, 1.0], value=1.0)
input_size = right.select_slider("Input size", [128, 160, 256, 300, 512], value=300)


@st.cache_data
def summary(neck: str, width: float, input_size: int) -> dict:
    return describe_detector(DetectorConfig(neck=neck, width=width, input_size=input_size))


info = summary(neck, width, input_size)
st.subheader("Detection layers (paper Table 1)")
st.dataframe(pd.DataFrame(info["layers"]), hide_index=True)
params = info["parameters"]
st.write(f"**{info['num_anchors']:,} anchors** ({info['anchors_per_cell']} per cell); "
         f"parameters: backbone {params['backbone']:,}, neck {params['neck']:,}, head {params['head']:,}.")
