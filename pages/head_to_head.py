"""Head to head: report B against report A, per object size, and the instances B fixes and breaks."""

from pathlib import Path

import pandas as pd
import streamlit as st

from borrowcore.evaluation.compare import (default_pair, pair_report_uploads, report_checkpoint, resolve_report_path,
                                           size_ranges)
from viewer import assets, figures, queries
from viewer.evaluation import session_reports
from viewer.loaders import (checkpoint_sha256, comparison, instance_crop_png, report_from_path,
                            store_report_upload)

PER_PAGE = 12
COLUMNS = 4
state = st.session_state

st.title("Head to head: what does B fix, and what does it break?")
st.caption("Two reports on the same ground truth: per size range AP(B) − AP(A) with a paired bootstrap 95% interval "
           "over images, and the ground-truth instances B detects (IoU ≥ 0.5, right class, score above the threshold) "
           "that A misses (fixed), and the reverse (broken).")

# ---- reports: bundled, or uploaded together with their detections ----
paths = {**session_reports(state), **{assets.report_name(path): path for path in assets.reports()}}  # Evaluate's first
with st.expander("Upload reports", expanded=not paths):
    uploads = st.file_uploader("Report json(s) from `borrowcore eval` with the .detections.json.gz written beside each",
                               type=["json", "gz"], accept_multiple_files=True, key="h2h_uploads")
pairs, problems = pair_report_uploads({upload.name: upload.getvalue() for upload in uploads or []})
for problem in problems:
    st.error(f"Cannot use this upload: {problem}", icon=":material/error:")
for name, report, detections in pairs:
    paths[f"{name} (uploaded)"] = store_report_upload(name, report, detections)

reports = []
for name, path in paths.items():
    report, error = report_from_path(path)
    if error:
        st.error(f"Cannot use this report: {error}", icon=":material/error:")
    else:
        reports.append((name, report))
if len(reports) < 2:
    st.info(f"Head to head needs two reports: {len(reports)} found (bundled under `{assets.assets_root()}/reports/` or "
            "uploaded above with their detections).")
    st.stop()
names = [name for name, _ in reports]
first, second = default_pair(reports)
left, right = st.columns(2)
name_a = left.selectbox("A (the reference)", names, index=first, key="h2h_a")
name_b = right.selectbox("B (the challenger)", names, index=second, key="h2h_b")
report_a, report_b = dict(reports)[name_a], dict(reports)[name_b]
columns = st.columns(3)
draws = columns[0].slider("Bootstrap draws", 50, 2000, 200, 50, key="h2h_draws",
                          help="More draws: steadier intervals, slower. `borrowcore compare` uses 1000.")
threshold = columns[1].slider("Score threshold (detected or not)", 0.05, 0.95, 0.5, 0.05, key="h2h_threshold")
seed = int(columns[2].number_input("Seed", 0, 2**31 - 1, 0, key="h2h_seed"))
if name_a == name_b:
    st.info("A and B are the same report: every difference is 0. Pick another B.")

with st.spinner(f"Comparing (one evaluation each, then {draws} paired bootstrap draws; cached)…"):
    result, error = comparison(paths[name_a], paths[name_b], draws, seed, threshold)
if error:
    st.error(f"Cannot compare these two: {error}", icon=":material/error:")
    st.stop()

# ---- per size: the difference and its interval ----
st.subheader("AP by size: B − A")
st.plotly_chart(figures.difference_figure(result["ranges"], f"AP(B) − AP(A), 95% interval of {draws} paired draws"),
                key="h2h_diff")
table = pd.DataFrame([{"range": label, "AP A": row["AP_a"], "AP B": row["AP_b"], "B − A": row["diff"],
                       "CI low": row["ci"][0], "CI high": row["ci"][1],
                       "significant": row["ci"][0] > 0 or row["ci"][1] < 0}
                      for label, row in [*result["ranges"].items(), *result.get("subsets", {}).items()]  # small twins, orphans
                      if row["AP_a"] >= 0])
st.dataframe(table, hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="percent") for c in table.columns[1:-1]})

# ---- the instances B fixes and breaks ----
st.subheader(f"Instances: {len(result['fixed'])} fixed by B, {len(result['broken'])} broken by B")
kind = st.radio("Show", ["fixed", "broken"], horizontal=True, key="h2h_kind",
                format_func={"fixed": f"fixed: B detects, A misses ({len(result['fixed'])})",
                             "broken": f"broken: A detects, B misses ({len(result['broken'])})"}.get)
ranges = {label: (low, high) for label, low, high in size_ranges(report_a)}
left, right = st.columns(2)
size = left.selectbox("Size range", list(ranges), index=list(ranges).index("small"), key="h2h_size")
low, high = ranges[size]
instances = sorted((i for i in result[kind] if low <= i["size"] < high), key=lambda i: (i["size"], i["annotation_id"]))
pages = max(1, -(-len(instances) // PER_PAGE))
if state.get("h2h_page", 1) > pages:
    state["h2h_page"] = 1  # a new kind or range has fewer pages
page = int(right.number_input(f"Page (of {pages})", 1, pages, 1, key="h2h_page")) if pages > 1 else 1
shown = instances[(page - 1) * PER_PAGE: page * PER_PAGE]
st.dataframe(pd.DataFrame(shown, columns=["annotation_id", "image_id", "file_name", "category", "size", "bbox"]),
             hide_index=True)
if not instances:
    st.info(f"No {kind} instances in the '{size}' range.")

images = resolve_report_path(report_b["dataset"]["images"], paths[name_b])
annotations = resolve_report_path(report_b["dataset"]["annotations"], paths[name_b])
checkpoint = report_checkpoint(report_b, assets.checkpoints(), checkpoint_sha256)
if instances and images is None:
    st.warning(f"The images `{report_b['dataset']['images']}` (dataset.images of B) are not on this machine: no crops, "
               "and the instances cannot be opened in Inspect.", icon=":material/warning:")
elif instances:
    st.caption(f"Each crop: the instance (cyan box) with its context, from `{assets.display_path(images)}`. Open one in "
               "Inspect: " + (f"checkpoint **{checkpoint.name}** (B's), " if checkpoint else
                              f"B's checkpoint `{Path(report_b['model']['checkpoint']).name}` is not bundled, so "
                              "the current one, ") + "the query on the instance's box.")
    for start in range(0, len(shown), COLUMNS):
        for column, instance in zip(st.columns(COLUMNS), shown[start:start + COLUMNS]):
            path = images / instance["file_name"]
            crop, problem = instance_crop_png(path, instance["bbox"], figures.QUERY_COLOUR)
            if problem:
                column.warning(problem)
            else:
                column.image(crop, width="stretch")
            column.caption(f"**{instance['category']}**, {instance['size']:.0f} px, {instance['file_name']} "
                           f"(#{instance['annotation_id']})")
            if column.button("Open in Inspect", key=f"h2h_open_{kind}_{instance['annotation_id']}",
                             icon=":material/image_search:", disabled=problem is not None):
                state[queries.REQUEST] = queries.inspect_request(instance, path, checkpoint.name if checkpoint else None,
                                                                 annotations)
                st.switch_page("../pages/inspect_image.py")
