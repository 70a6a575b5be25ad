"""Training: one or several runs' log.jsonl, plotted (loss parts, learning rate, throughput, gradient norms)."""

import pandas as pd
import streamlit as st

from borrowcore.engine.traininglog import STEP_FIELDS
from viewer import assets, figures
from viewer.loaders import training_logs

st.title("Training runs")

bundled = {path.name.removesuffix(".jsonl").removesuffix(".log"): path for path in assets.logs()}
left, right = st.columns([3, 2])
if bundled:
    picked = left.multiselect("Bundled logs", list(bundled), default=list(bundled), key="training_logs")
else:
    picked = []
    left.info(f"No training logs are bundled yet (nothing matches `{assets.assets_root()}/logs/*.jsonl`): "
              "upload a run's `log.jsonl`.")
uploads = right.file_uploader("Upload log.jsonl files", type=["jsonl", "json", "txt", "log"],
                              accept_multiple_files=True, key="training_uploads")
items = [(name, bundled[name]) for name in picked] + [(u.name, u.getvalue()) for u in uploads or []]
logs, problems = training_logs(items)
for problem in problems:
    st.error(f"Cannot use this log: {problem}", icon=":material/error:")
if not logs:
    st.stop()

summary = []
for log in logs:
    start = log.start or {}
    last = log.steps[-1] if log.steps else {}
    summary.append({"run": log.name, "steps logged": len(log.steps), "last step": last.get("step"),
                    "of": start.get("total_steps"), "last loss": last.get("loss"), "epochs": len(log.epochs),
                    "resumes": len(log.resumes), "device": start.get("device"), "global batch": start.get("global_batch"),
                    "unreadable lines": log.skipped_lines})
st.dataframe(pd.DataFrame(summary), hide_index=True)

steps = pd.DataFrame([{"run": log.name, "step": r["step"], **{k: r.get(k) for k in STEP_FIELDS}}
                      for log in logs for r in log.steps])
resumes = pd.DataFrame([{"run": log.name, "step": r.get("step")} for log in logs for r in log.resumes],
                       columns=["run", "step"])
if steps.empty:
    st.info("These logs have no step records yet (a run that just started).")
    st.stop()
log_y = st.toggle("Logarithmic loss axis", value=True, key="training_log_y")
left, right = st.columns(2)
left.plotly_chart(figures.training_figure(steps, "loss", "total loss", log_y, resumes), key="training_loss")
parts = steps.melt(id_vars=["run", "step"], value_vars=["loss_box", "loss_cls"], var_name="part", value_name="value")
parts["run"] = parts["run"] + " · " + parts["part"]
right.plotly_chart(figures.training_figure(parts, "value", "loss parts (box regression, classification)", log_y),
                   key="training_parts")
left, right = st.columns(2)
left.plotly_chart(figures.training_figure(steps, "lr", "learning rate"), key="training_lr")
right.plotly_chart(figures.training_figure(steps, "images_per_s", "throughput (images/s)"), key="training_speed")

if steps["grad_norm"].notna().any():  # logs written before grad_norm was logged have none
    left, right = st.columns(2)
    left.plotly_chart(figures.training_figure(steps.dropna(subset=["grad_norm"]), "grad_norm",
                                              "gradient norm before clipping (window mean)", log_y), key="training_grad")
    right.plotly_chart(figures.training_figure(steps.dropna(subset=["clipped"]), "clipped",
                                               "share of steps clipped"), key="training_clipped")

epochs = pd.DataFrame([{"run": log.name, **r} for log in logs for r in log.epochs])
if not epochs.empty and "val_loss" in epochs:
    st.plotly_chart(figures.training_figure(epochs.dropna(subset=["val_loss"]), "val_loss", "validation loss per epoch",
                                            log_y), key="training_val")
st.caption("Dotted lines: where a run was resumed.")
