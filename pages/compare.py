"""Compare: evaluation reports side by side, object size by object size."""

import pandas as pd
import streamlit as st

from borrowcore.evaluation.compare import (borrow_precision_table, breakdown_rows, coco_size_table, how_it_ran,
                                           per_class_table, pr_curves, size_bin_table, subset_table)
from viewer import assets, figures
from viewer.evaluation import session_reports
from viewer.loaders import error_breakdown, report_from_path, report_from_upload

st.title("Compare: what does borrowing buy, by object size?")

# this session's evaluations (Evaluate) first: Compare opens on them
bundled = {**session_reports(st.session_state), **{assets.report_name(path): path for path in assets.reports()}}
left, right = st.columns([3, 2])
if bundled:
    study = next(iter(bundled)).split("/")[0]  # one study at a time by default (ablation, aerial, ...)
    picked = left.multiselect("Reports (bundled, and this session's from Evaluate)", list(bundled),
                              default=[n for n in bundled if n.split("/")[0] == study], key="compare_reports",
                              help="Reports are grouped by study: the folder under reports/, or \"this session\" "
                                   "for those evaluated on the Evaluate page.")
else:
    picked = []
    left.info(f"No evaluation reports are bundled yet (nothing matches `{assets.assets_root()}/reports/**/*.json`): "
              "upload some.")
uploads = right.file_uploader("Upload reports (json from `borrowcore eval`)", type=["json"],
                              accept_multiple_files=True, key="compare_uploads")

reports, problems = [], []
loaded = [(name, *report_from_path(bundled[name])) for name in picked]
loaded += [(upload.name, *report_from_upload(upload.name, upload.getvalue())) for upload in uploads or []]
for name, report, error in loaded:
    if error:
        problems.append(error)
    else:
        reports.append((name, report))
for problem in problems:
    st.error(f"Cannot use this report: {problem}", icon=":material/error:")
if not reports:
    st.stop()

by = st.radio("One bar per", ["ablation", "report"], horizontal=True, key="compare_by",
              format_func={"ablation": "ablation (mean ± std over its seeds)", "report": "report"}.get)
splits = sorted({r["dataset"]["split"] for _, r in reports})
st.caption(f"{len(reports)} reports; splits: {', '.join(splits)}. Error bars: std over the reports in a bar "
           "(seeds); bars are missing where a size range has no ground truth.")
with st.expander("How each report's detector ran (inference recipe and matching)"):
    st.dataframe(pd.DataFrame([{"report": name, "neck": report.get("model", {}).get("ablation", ""),
                                "how it ran": how_it_ran(report)} for name, report in reports]), hide_index=True)

coco_rows = pd.DataFrame(coco_size_table(reports, by, "AP"))
st.plotly_chart(figures.size_bars(coco_rows, "AP by COCO size (small < 32², medium, large ≥ 96² px)", "AP"),
                key="compare_coco")
metric = st.radio("Fine size bins", ["AP", "AP50", "AR100"], horizontal=True, key="compare_metric")
bin_rows = pd.DataFrame(size_bin_table(reports, by, metric))
st.plotly_chart(figures.size_bars(bin_rows, f"{metric} by box side sqrt(area) in px", metric), key="compare_bins")

if {"twins", "orphans"} <= set(splits):
    st.subheader("Twins against orphans")
    st.caption("Twins: each small instance has a larger instance of its class in the image to borrow from; orphans: "
               "it has none. Borrowing should help small twins more than small orphans.")
    small = coco_rows[(coco_rows["size"] == "small") & coco_rows["split"].isin(["twins", "orphans", "shuffled"])]
    pivot = small.pivot_table(index="group", columns="split", values="mean", aggfunc="first")
    if {"twins", "orphans"} <= set(pivot.columns):
        pivot["twins − orphans"] = pivot["twins"] - pivot["orphans"]
    st.plotly_chart(figures.split_bars(small, "AP of small instances (AP_S) by split", "AP_S"), key="compare_twins")
    st.dataframe(pivot.reset_index(), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in pivot.columns})

subsets = pd.DataFrame(subset_table(reports, by, "AP"))
if not subsets.empty:
    st.subheader("Small twins and orphans, instance by instance")
    st.caption("On any data set: a small instance (side < 32 px) is a twin when its image holds an instance of its "
               "class at least twice its side and at least 48 px, else an orphan. AP on each subset, the rest of the "
               "ground truth ignored (a detection on it is neither a hit nor a false positive). Borrowing should gain "
               "on twins, not on orphans.")
    st.plotly_chart(figures.size_bars(subsets, "AP on small twins and orphans", "AP"), key="compare_subsets")
    subsets["mean"] = subsets["mean"].where(subsets["mean"] >= 0)  # -1: no such instance in the split
    wide = subsets.pivot_table(index=["group", "split"], columns="size", values="mean", aggfunc="first", sort=False)
    if {"twins", "orphans"} <= set(wide.columns):
        wide["twins − orphans"] = wide["twins"] - wide["orphans"]
    st.dataframe(wide.reset_index(), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in wide.columns})
lacking = [name for name, report in reports if "subsets" not in report]
if lacking and len(lacking) < len(reports):
    st.info(f"{len(lacking)} of these reports predate AP on small twins and orphans (`borrowcore table --add-subsets` "
            "adds it from their detections): " + ", ".join(lacking))

precision = borrow_precision_table(reports, by)
if precision:
    st.subheader("Borrow precision")
    st.caption("Share of a small instance's matching mass on larger instances of its class, against the share a "
               "uniform row would give (chance).")
    st.dataframe(pd.DataFrame(precision), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in ("mean", "std", "chance")})

st.subheader("Precision-recall curves")
left, right = st.columns(2)
ranges = list(reports[0][1]["pr_curves"]["ranges"])
size = left.selectbox("Size range", ranges, index=ranges.index("small") if "small" in ranges else 0, key="compare_pr_size")
iou = right.radio("IoU", ["iou50", "iou50_95"], horizontal=True, key="compare_pr_iou",
                  format_func={"iou50": "0.5", "iou50_95": "0.5:0.95 (mean)"}.get)
curves = pr_curves(reports, by, size, iou)
if curves and any(c["recall"] for c in curves):
    st.plotly_chart(figures.pr_figure(curves, f"precision vs recall, {size} objects, IoU {iou[3:].replace('_', ':')}"),
                    key="compare_pr")
else:
    st.info(f"No ground truth in the '{size}' range of these reports.")

st.subheader("Why they fail: error breakdown by size")
st.caption("COCO analyze(): precision-recall as each kind of error is forgiven in turn. Each bar stacks to 100%: "
           "C75 is the AP at IoU 0.75; each band above it is the AP gained by forgiving one more error: C50 (IoU 0.5), "
           "Loc (boxes off, IoU 0.1), Sim (confusion with the look-alike class of the same supercategory, the confusion "
           "borrowing should remove), Oth (any other class), BG (false positives on background), FN (never detected).")
paths = {name: bundled[name] for name in picked}
analyses = {name: report.get("extra", {}).get("error_analysis") for name, report in reports}
lacking = [name for name, analysis in analyses.items() if not isinstance(analysis, dict)]
if lacking and st.toggle(f"Compute the breakdown of the {len(lacking)} report(s) that store none (from their detections "
                         "and ground truth; a few seconds each, cached)", value=False, key="compare_breakdown_compute"):
    with st.spinner("Analysing errors (once per report)…"):
        for name, report in reports:
            if name in lacking:
                analyses[name], error = error_breakdown(report, paths.get(name))
                if error:
                    st.warning(f"No error breakdown for **{name}**: {error}", icon=":material/warning:")
elif lacking:
    st.info(f"{len(lacking)} of these reports store no error breakdown (`borrowcore analyze --report R.json` writes "
            "one): switch on the toggle above to compute it here.")
breakdown = pd.DataFrame([row for name, analysis in analyses.items() if isinstance(analysis, dict)
                          for row in breakdown_rows(name, analysis)])
if not breakdown.empty:
    coco_ranges = ["all", "small", "medium", "large"]
    scale = st.radio("Size ranges", ["COCO sizes", "fine bins"], horizontal=True, key="compare_breakdown_ranges")
    shown = breakdown[breakdown["range"].isin(coco_ranges) == (scale == "COCO sizes")]
    st.plotly_chart(figures.breakdown_bars(shown, f"error breakdown per report, {scale} (box side in px)"),
                    key="compare_breakdown")
    left, right = st.columns(2)
    analysed = list(dict.fromkeys(breakdown["report"]))
    one = left.selectbox("Report", analysed, key="compare_breakdown_report")
    sizes = [label for label, entry in analyses[one]["ranges"].items() if "AP" in entry]
    size = right.selectbox("Size range", sizes, index=sizes.index("small") if "small" in sizes else 0,
                           key="compare_breakdown_size")
    st.plotly_chart(figures.breakdown_area(analyses[one], size, f"{one}: PR under each condition, {size} objects"),
                    key="compare_breakdown_area")
    wide = breakdown.pivot_table(index=["report", "range"], columns="condition", values="AP", aggfunc="first",
                                 sort=False)[list(dict.fromkeys(breakdown["condition"]))]
    st.dataframe(wide.reset_index(), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in wide.columns})

st.subheader("AP per class")
classes = pd.DataFrame(per_class_table(reports, by, "AP"))
classes["mean"] = classes["mean"].where(classes["mean"] >= 0)
wide = classes.pivot_table(index="class", columns=["group", "split"], values="mean", aggfunc="first", sort=False)
wide.columns = [f"{group} · {split}" for group, split in wide.columns]
st.dataframe(wide.reset_index(), hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="percent") for c in wide.columns})

table = pd.concat([coco_rows, bin_rows], ignore_index=True)
st.download_button("Size table (CSV)", table.to_csv(index=False), file_name="borrowscope_by_size.csv", mime="text/csv")
for path in assets.ablation_tables():
    with st.expander(f"Bundled ablation table: {assets.display_path(path)}"):
        st.markdown(path.read_text())
