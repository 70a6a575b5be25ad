"""Home: what BorrowScope is, what is bundled, the device, and the way to the other pages."""

import pandas as pd
import streamlit as st

from borrowcore import DetectorConfig
from borrowcore.models.summary import describe_detector
from viewer import assets
from viewer.loaders import report_from_path
from viewer.models import checkpoints_table, device_label

st.title("BorrowScope")
st.write(
    "Small objects carry little evidence of what they are. BorrowScope's detector is an SSD (VGG16) whose "
    "shallow, high-resolution layers **borrow** features from deeper, semantically richer layers: a "
    "*Feature Matching Block* scores every shallow cell against every deeper cell (S_hat), a *Feature "
    "Representing Block* builds the borrowed map from those scores, and a *Feature Fusion Block* adds it "
    "back to the shallow map. This app shows **where** each small detection borrowed from, and measures "
    "what borrowing buys, object size by object size."
)
st.info(f"Inference device: **{device_label()}**", icon=":material/memory:")

st.subheader("Pages")
columns = st.columns(4)
links = [
    ("../pages/inspect_image.py", "Inspect", ":material/image_search:",
     "Upload an image: detections, and which larger instances each small one borrowed from."),
    ("../pages/compare.py", "Compare", ":material/bar_chart:",
     "Evaluation reports side by side: AP by object size, twins vs orphans, PR curves."),
    ("../pages/data_anchors.py", "Data & anchors", ":material/straighten:",
     "A COCO file's box sizes and shapes, Eq. (1)'s anchor ratios, anchor recall by size."),
    ("../pages/training.py", "Training", ":material/show_chart:", "Training logs: loss parts, learning rate, throughput."),
]
for column, (page, title, icon, text) in zip(columns, links):
    with column:
        st.page_link(page, label=title, icon=icon)
        st.caption(text)

root = assets.assets_root()
st.subheader("Bundled checkpoints")
st.write("Which model for which image: **faces-\\*** for everyday photos of people (Inspect opens on "
         "`faces-full.pt`; an uploaded photo runs whole, at native resolution up to the model's own limit "
         "(1,280 px for faces-\\*) and scaled down beyond, with no other setting), "
         "**aerial-\\*** for top-down aerial imagery, **synth-\\*** for the synthetic borrow benchmark only.")
checkpoints = assets.checkpoints()
if not checkpoints:
    st.write(f"No checkpoints are bundled yet (nothing matches `{root}/checkpoints/*.pt`). "
             "Upload a `.pt` on the Inspect page.")
else:
    st.dataframe(checkpoints_table(checkpoints), hide_index=True)
    for family, note in assets.BUNDLED_NOTES.items():  # where each bundled family holds, and where not
        if any(assets.checkpoint_note(path) == note for path in checkpoints):
            st.caption(f"**{family}-\\***: {note}")

st.subheader("Bundled evaluation reports")
reports = assets.reports()
if not reports:
    st.write(f"No evaluation reports are bundled yet (nothing matches `{root}/reports/**/*.json`). "
             "Upload reports on the Compare page.")
else:
    rows, problems = [], []
    for path in reports:
        report, error = report_from_path(path)
        if error:
            problems.append(error)
            continue
        m = report["metrics"]
        rows.append({"report": assets.report_name(path), "ablation": report["model"]["ablation"],
                     "split": report["dataset"]["split"], "images": report["dataset"]["num_images"],
                     "AP": m["AP"], "AP_S": m["AP_S"], "AP_L": m["AP_L"]})
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True,
                     column_config={k: st.column_config.NumberColumn(format="percent") for k in ("AP", "AP_S", "AP_L")})
    for problem in problems:
        st.warning(problem)

samples = assets.sample_images()
logs = assets.logs()
st.caption(f"Samples: {', '.join(f'{k} ({len(v)} images)' for k, v in samples.items()) or 'none'}; "
           f"training logs: {len(logs)}; assets folder: `{root}`.")

with st.expander("The detector's layers (paper Table 1)"):
    left, middle, right = st.columns(3)
    neck = left.selectbox("Ablation (neck)", ["full", "borrow", "context", "ssd"])
    width = middle.select_slider("Width", [0.125, 0.25, 0.5, 1.0], value=1.0)
    input_size = right.select_slider("Input size", [128, 160, 256, 300, 512], value=300)

    @st.cache_data
    def summary(neck: str, width: float, input_size: int) -> dict:
        return describe_detector(DetectorConfig(neck=neck, width=width, input_size=input_size))

    info = summary(neck, width, input_size)
    st.dataframe(pd.DataFrame(info["layers"]), hide_index=True)
    params = info["parameters"]
    st.write(f"**{info['num_anchors']:,} anchors** ({info['anchors_per_cell']} per cell); parameters: backbone "
             f"{params['backbone']:,}, neck {params['neck']:,}, head {params['head']:,}.")
