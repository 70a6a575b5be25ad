"""Figures: plotly for the pages, matplotlib for the downloadable overlay PNG.

Everything arrives already computed and placed in image pixels (``borrowcore.evaluation.explain.BorrowView``,
``GridMap``); this module only draws. Image y runs downwards, as in the image.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.subplots import make_subplots

from borrowcore.evaluation.explain import BorrowView, Explanation, GridMap

PALETTE = px.colors.qualitative.Set1 + px.colors.qualitative.Dark2
QUERY_COLOUR = "#00e5ff"  # the small detection or cell being explained
SOURCE_COLOUR = "#ff8c00"  # the larger instances it borrowed from
# transparent where no mass lands, hot where most does: the image stays readable under the map
HEAT = [[0.0, "rgba(255,255,178,0)"], [0.08, "rgba(254,217,118,0.25)"], [0.35, "rgba(253,141,60,0.55)"],
        [0.7, "rgba(240,59,32,0.75)"], [1.0, "rgba(189,0,38,0.9)"]]
LAYER_NAMES = {1: "conv4_3", 2: "conv5_3", 3: "conv_fc7", 4: "conv6_2"}


def layer_name(layer: int) -> str:
    return f"layer {layer} ({LAYER_NAMES.get(layer, '?')})"


def class_colour(label: int) -> str:
    return PALETTE[(label - 1) % len(PALETTE)]


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) tensor -> (H, W, 3) array."""
    return image.permute(1, 2, 0).cpu().numpy()


def image_uri(image: torch.Tensor, max_side: int | None = None) -> tuple[str, float]:
    """A data URI of the image (PNG for small images, JPEG for photos) and its downscale factor."""
    picture = Image.fromarray(to_hwc(image))
    factor = 1.0
    if max_side and max(picture.size) > max_side:
        factor = max(picture.size) / max_side
        picture = picture.resize((round(picture.width / factor), round(picture.height / factor)), Image.BILINEAR)
    buffer = io.BytesIO()
    if picture.width * picture.height > 200_000:
        picture.save(buffer, "JPEG", quality=88)
        mime = "jpeg"
    else:
        picture.save(buffer, "PNG")
        mime = "png"
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}", factor


def _add_image(figure: go.Figure, image: torch.Tensor, row: int | None = None, col: int | None = None,
               max_side: int | None = None) -> None:
    uri, factor = image_uri(image, max_side)
    trace = go.Image(source=uri, dx=factor, dy=factor, hoverinfo="skip")
    if row is None:
        figure.add_trace(trace)
    else:
        figure.add_trace(trace, row=row, col=col)


def _fit_axes(figure: go.Figure, width: int, height: int, row: int | None = None, col: int | None = None) -> None:
    """Image pixels on both axes, y downwards, square pixels."""
    where = {} if row is None else {"row": row, "col": col}
    anchor = "x" if not col or col == 1 else f"x{col}"
    figure.update_xaxes(range=[0, width], visible=False, constrain="domain", **where)
    figure.update_yaxes(range=[height, 0], visible=False, scaleanchor=anchor, constrain="domain", **where)


def _rect(box: Sequence[float], colour: str, width: float, dash: str | None = None, col: int = 1) -> dict:
    """A rectangle shape in image pixels (on subplot ``col``); figures set all their shapes at once,
    since plotly's add_shape re-validates the whole layout on every call."""
    axis = "" if col == 1 else str(col)
    return {"type": "rect", "xref": f"x{axis}", "yref": f"y{axis}", "x0": box[0], "y0": box[1], "x1": box[2],
            "y1": box[3], "line": {"color": colour, "width": width, "dash": dash}}


def _finish(figure: go.Figure, shapes: list[dict], notes: list[dict]) -> None:
    figure.update_layout(shapes=shapes, annotations=[*figure.layout.annotations, *notes])


def _heatmap(grid: GridMap, coloraxis: str | None = None, name: str = "mass", **style) -> go.Heatmap:
    return go.Heatmap(z=grid.values, x0=grid.origin[0], dx=grid.cell_size[0], y0=grid.origin[1],
                      dy=grid.cell_size[1], coloraxis=coloraxis, name=name,
                      hovertemplate="x %{x:.0f}, y %{y:.0f}<br>%{z:.2%}<extra></extra>", **style)


def detection_label(explanation: Explanation, index: int) -> str:
    label = int(explanation.detections["labels"][index])
    return explanation.class_names[label - 1] if 0 < label <= len(explanation.class_names) else str(label)


def detections_figure(image: torch.Tensor, explanation: Explanation, keep: Sequence[int],
                      selected: int | None = None, height: int = 520, scores: bool = True) -> go.Figure:
    """The image with the kept detections (with their scores unless ``scores`` is False, as for ground
    truth); a marker at each centre can be clicked to pick it."""
    h, w = explanation.image_size
    figure = go.Figure()
    _add_image(figure, image)
    boxes = explanation.detections["boxes"]
    values = explanation.detections["scores"]
    xs, ys, texts, shapes, notes = [], [], [], [], []
    labelled = len(keep) <= 40  # more labels would hide the image: hover and the table name them
    for i in keep:
        box = boxes[i].tolist()
        label = int(explanation.detections["labels"][i])
        chosen = i == selected
        shapes.append(_rect(box, QUERY_COLOUR if chosen else class_colour(label), 4 if chosen else 2))
        text = f"#{i} {detection_label(explanation, i)}" + (f" {float(values[i]):.2f}" if scores else "")
        if labelled or chosen:
            notes.append({"x": box[0], "y": box[1], "text": text, "showarrow": False, "xanchor": "left",
                          "yanchor": "bottom", "font": {"size": 11, "color": "white"}, "borderpad": 1,
                          "bgcolor": QUERY_COLOUR if chosen else class_colour(label), "opacity": 0.9})
        xs.append((box[0] + box[2]) / 2)
        ys.append((box[1] + box[3]) / 2)
        texts.append(text)
    figure.add_trace(go.Scatter(x=xs, y=ys, mode="markers", customdata=list(keep), text=texts, name="detections",
                                marker={"symbol": "circle-open", "size": 12, "color": "white", "line": {"width": 2}},
                                hovertemplate="%{text}<br>click to explain<extra></extra>"))
    _finish(figure, shapes, notes)
    _fit_axes(figure, w, h)
    figure.update_layout(height=height, margin={"l": 0, "r": 0, "t": 0, "b": 0}, showlegend=False,
                         clickmode="event+select", dragmode=False)
    return figure


def link_text(link: dict, explanation: Explanation) -> str:
    return (f"{detection_label(explanation, link['detection'])} #{link['detection']}: {link['share']:.0%} of its "
            f"mass, {link['lift']:.1f}× what a uniform row would put there ({link['chance']:.0%})")


LIFT = 1.25  # borrowcore.evaluation.explain.borrow_view's min_lift: heat starts where links count as borrowed


def _heat_range(uniform: float, values: np.ndarray) -> tuple[float, float]:
    """Colour from 1.25x the uniform level up: cells an unfocused row would reach stay clear."""
    return LIFT * uniform, max(float(values.max()), 2 * LIFT * uniform)


def links_to_draw(view: BorrowView, limit: int = 3) -> list[dict]:
    """The instances it borrowed from (largest share first), then, while there is room, up to two that
    got no more than a uniform row would give (drawn grey)."""
    borrowed = [link for link in view.links if link["borrowed"]][:limit]
    rest = [link for link in view.links if not link["borrowed"]][:max(0, min(2, limit - len(borrowed)))]
    return borrowed + rest


def borrow_figure(image: torch.Tensor, explanation: Explanation, view: BorrowView, keep: Sequence[int],
                  height: int = 620) -> go.Figure:
    """The picture for a newcomer: the small query in cyan, heat where its matching mass goes beyond what a
    uniform row would put there, and orange arrows from each larger instance it borrowed from, labelled
    with the share of its mass (grey: instances that got no more than a uniform row would give)."""
    h, w = explanation.image_size
    figure = go.Figure()
    _add_image(figure, image)
    zmin, zmax = _heat_range(view.uniform_combined, view.combined.values)
    figure.add_trace(_heatmap(view.combined, name="mass", colorscale=HEAT, zmin=zmin, zmax=zmax, colorbar={
        "title": {"text": "share of its<br>mass per cell", "side": "top"}, "tickformat": ".1%", "len": 0.8,
        "tickvals": [zmin, (zmin + zmax) / 2, zmax],
        "ticktext": [f"{zmin:.2%} ({LIFT:g}× uniform)", f"{(zmin + zmax) / 2:.2%}", f"{zmax:.2%}"]}))
    shown = links_to_draw(view)
    linked = {link["detection"] for link in shown}
    boxes = explanation.detections["boxes"]
    shapes, notes = [], []
    for i in keep:
        if i != view.detection and i not in linked:
            shapes.append(_rect(boxes[i].tolist(), "rgba(255,255,255,0.8)", 1, "dot"))
    for source in view.sources:
        shapes.append(_rect(source["box"], "#ffff00", 1, "dash"))
    for link in shown:
        box = boxes[link["detection"]].tolist()
        if link["borrowed"]:
            shapes.append(_rect(box, SOURCE_COLOUR, 2 + 6 * link["share"]))
            (x0, y0), (x1, y1) = link["end"], link["start"]
            notes.append({"x": x1, "y": y1, "ax": x0, "ay": y0, "xref": "x", "yref": "y", "axref": "x", "ayref": "y",
                          "showarrow": True, "arrowhead": 2, "arrowsize": 1.2, "arrowwidth": 2 + 4 * link["share"],
                          "arrowcolor": SOURCE_COLOUR, "text": f"{detection_label(explanation, link['detection'])} "
                          f"#{link['detection']}{' (its class)' if link['same_class'] else ''}: "
                          f"<b>borrowed {link['share']:.0%}</b> ({link['lift']:.1f}× uniform)",
                          "font": {"color": "black", "size": 13}, "bgcolor": SOURCE_COLOUR, "opacity": 0.95})
        else:
            shapes.append(_rect(box, "rgba(200,200,200,0.9)", 1.5, "dash"))
            notes.append({"x": (box[0] + box[2]) / 2, "y": (box[1] + box[3]) / 2, "showarrow": False,
                          "text": f"{detection_label(explanation, link['detection'])} #{link['detection']}: "
                                  f"{link['share']:.0%} ≈ uniform ({link['chance']:.0%})",
                          "font": {"color": "black", "size": 11}, "bgcolor": "rgba(220,220,220,0.85)"})
    if view.detection is not None:
        box = boxes[view.detection].tolist()
        shapes.append(_rect(box, QUERY_COLOUR, 4))
        name = f"#{view.detection} {detection_label(explanation, view.detection)}"
        notes.append({"x": box[0], "y": box[3], "text": f"<b>{name}</b>",
                      "showarrow": False, "xanchor": "left", "yanchor": "top", "bgcolor": QUERY_COLOUR,
                      "font": {"color": "black", "size": 12}})
    shapes += [_rect(box.tolist(), QUERY_COLOUR, 1) for box in view.query_boxes]
    _finish(figure, shapes, notes)
    _fit_axes(figure, w, h)
    figure.update_layout(height=height, margin={"l": 0, "r": 0, "t": 0, "b": 0}, showlegend=False, dragmode=False)
    return figure


def layer_panels_figure(image: torch.Tensor, explanation: Explanation, view: BorrowView,
                        height: int = 330) -> go.Figure:
    """One panel per deeper layer (share of mass on each cell, one colour scale) and the combined map."""
    h, w = explanation.image_size
    panels = len(view.maps) + 1
    titles = [f"{layer_name(m.layer)}: {m.values.sum():.0%}" for m in view.maps] + ["all layers, per finest cell"]
    figure = make_subplots(1, panels, subplot_titles=titles, horizontal_spacing=0.03)
    low, top = _heat_range(view.uniform_share, np.concatenate([m.values.ravel() for m in view.maps]))
    combined_low, combined_top = _heat_range(view.uniform_combined, view.combined.values)
    shapes = []
    for col, grid in enumerate([*view.maps, view.combined], start=1):
        _add_image(figure, image, row=1, col=col, max_side=320)
        axis = "coloraxis" if col < panels else "coloraxis2"
        figure.add_trace(_heatmap(grid, coloraxis=axis), row=1, col=col)
        shapes += [_rect(box.tolist(), QUERY_COLOUR, 1.5, col=col) for box in view.query_boxes]
        _fit_axes(figure, w, h, row=1, col=col)
    _finish(figure, shapes, [])
    figure.update_layout(
        height=height, margin={"l": 0, "r": 0, "t": 30, "b": 0},
        coloraxis={"colorscale": HEAT, "cmin": low, "cmax": top, "colorbar": {
            "title": {"text": "share per cell<br>(from uniform)"}, "tickformat": ".1%", "x": -0.02, "xanchor": "right",
            "len": 0.9}},
        coloraxis2={"colorscale": HEAT, "cmin": combined_low, "cmax": combined_top,
                    "colorbar": {"title": {"text": "combined"}, "tickformat": ".1%", "len": 0.9}})
    return figure


def layer_view_figure(image: torch.Tensor, explanation: Explanation, maps: dict[str, GridMap],
                      picked: tuple[int, int] | None = None, height: int = 380) -> go.Figure:
    """Where each cell's mass goes (the deeper layer of its arg-max) and how spread it is (entropy);
    markers on the cell centres of the left panel can be clicked to explain that cell."""
    h, w = explanation.image_size
    figure = make_subplots(1, 2, horizontal_spacing=0.06, subplot_titles=[
        "deeper layer holding each cell's largest share", "entropy of each cell's row (0: one cell, 1: uniform)"])
    source, entropy = maps["source_layer"], maps["entropy"]
    layers = sorted({int(v) for v in np.unique(source.values)})
    _add_image(figure, image, row=1, col=1, max_side=400)
    _add_image(figure, image, row=1, col=2, max_side=400)
    discrete = []
    colours = ["rgba(31,119,180,0.55)", "rgba(44,160,44,0.55)", "rgba(214,39,40,0.55)", "rgba(148,103,189,0.55)"]
    all_layers = sorted(set(layers) | {2, 3, 4})
    for k, layer in enumerate(all_layers):
        lo, hi = k / len(all_layers), (k + 1) / len(all_layers)
        discrete += [[lo, colours[k % 4]], [hi, colours[k % 4]]]
    figure.add_trace(go.Heatmap(z=source.values, x0=source.origin[0], dx=source.cell_size[0], y0=source.origin[1],
                                dy=source.cell_size[1], colorscale=discrete, zmin=all_layers[0] - 0.5,
                                zmax=all_layers[-1] + 0.5, hovertemplate="arg-max on layer %{z}<extra></extra>",
                                colorbar={"title": {"text": "layer"}, "tickvals": all_layers, "x": 0.46, "len": 0.9}),
                     row=1, col=1)
    figure.add_trace(go.Heatmap(z=entropy.values, x0=entropy.origin[0], dx=entropy.cell_size[0], y0=entropy.origin[1],
                                dy=entropy.cell_size[1], colorscale="Viridis", zmin=0, zmax=1, opacity=0.6,
                                hovertemplate="entropy %{z:.2f}<extra></extra>", colorbar={"len": 0.9}), row=1, col=2)
    gh, gw = source.values.shape
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    # WebGL: as SVG paths, a photo's 12,288 markers cost eight browsers 35 CPU-s against 24 (docs/benchmarks.md)
    figure.add_trace(go.Scattergl(  # trace 4: its point index is the cell's row-major index
        x=(source.origin[0] + cols * source.cell_size[0]).ravel(), y=(source.origin[1] + rows * source.cell_size[1]).ravel(),
        customdata=np.stack([rows.ravel(), cols.ravel()], axis=1), mode="markers", name="cells",  # an array: no deepcopy
        marker={"size": 5, "color": "rgba(255,255,255,0.25)"},
        hovertemplate="cell (%{customdata[0]}, %{customdata[1]})<br>click to explain<extra></extra>"), row=1, col=1)
    if picked is not None:
        x, y = source.centre(*picked)
        half_w, half_h = source.cell_size[0] / 2, source.cell_size[1] / 2
        _finish(figure, [_rect((x - half_w, y - half_h, x + half_w, y + half_h), QUERY_COLOUR, 3, col=col)
                         for col in (1, 2)], [])
    for col in (1, 2):
        _fit_axes(figure, w, h, row=1, col=col)
    figure.update_layout(height=height, margin={"l": 0, "r": 0, "t": 30, "b": 0}, showlegend=False,
                         clickmode="event+select", dragmode=False)
    return figure


def overlay_png(image: torch.Tensor, explanation: Explanation, view: BorrowView, keep: Sequence[int]) -> bytes:
    """The borrow picture as a PNG (matplotlib, without pyplot's global state: safe across sessions)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    h, w = explanation.image_size
    figure = Figure(figsize=(8, 8 * h / w), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 0.88, 1))
    axes.imshow(to_hwc(image), extent=(0, w, h, 0))
    colours = [(1, 1, 0.7, 0), (1, 0.85, 0.46, 0.25), (0.99, 0.55, 0.24, 0.55), (0.94, 0.23, 0.13, 0.75),
               (0.74, 0, 0.15, 0.9)]
    heat = LinearSegmentedColormap.from_list("heat", colours)
    c = view.combined
    gh, gw = c.values.shape
    left, top = c.origin[0] - c.cell_size[0] / 2, c.origin[1] - c.cell_size[1] / 2
    zmin, zmax = _heat_range(view.uniform_combined, c.values)
    shown = axes.imshow(c.values, cmap=heat, vmin=zmin, vmax=zmax, interpolation="nearest",
                        extent=(left, left + gw * c.cell_size[0], top + gh * c.cell_size[1], top))
    boxes = explanation.detections["boxes"]
    drawn = links_to_draw(view)
    linked = {link["detection"] for link in drawn}
    for i in keep:
        if i != view.detection and i not in linked:
            x0, y0, x1, y1 = boxes[i].tolist()
            axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=0.8, ls=":"))
    for link in drawn:
        name = f"{detection_label(explanation, link['detection'])} #{link['detection']}"
        x0, y0, x1, y1 = boxes[link["detection"]].tolist()
        if not link["borrowed"]:
            axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lightgrey", lw=1.2, ls="--"))
            axes.text((x0 + x1) / 2, (y0 + y1) / 2, f"{name}: {link['share']:.0%} ≈ uniform ({link['chance']:.0%})",
                      fontsize=8,
                      ha="center", bbox={"fc": "lightgrey", "ec": "none", "alpha": 0.85})
            continue
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=SOURCE_COLOUR, lw=1.5 + 4 * link["share"]))
        axes.annotate(f"{name}: borrowed {link['share']:.0%} ({link['lift']:.1f}× uniform)",
                      xy=link["start"], xytext=link["end"],
                      color="black", fontsize=9, ha="center", bbox={"fc": SOURCE_COLOUR, "ec": "none", "alpha": 0.9},
                      arrowprops={"arrowstyle": "-|>", "color": SOURCE_COLOUR, "lw": 1.5 + 3 * link["share"]})
    if view.detection is not None:
        x0, y0, x1, y1 = boxes[view.detection].tolist()
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=QUERY_COLOUR, lw=2.5))
        axes.text(x0, y1, f"#{view.detection} {detection_label(explanation, view.detection)}", fontsize=9,
                  va="top", bbox={"fc": QUERY_COLOUR, "ec": "none", "pad": 1})
    for x0, y0, x1, y1 in view.query_boxes.tolist():
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=QUERY_COLOUR, lw=0.6))
    axes.set_xlim(0, w)
    axes.set_ylim(h, 0)
    axes.axis("off")
    bar = figure.add_axes((0.9, 0.25, 0.025, 0.5))
    figure.colorbar(shown, cax=bar, format=lambda v, _: f"{v:.1%}").set_label("share of its mass per cell")
    query = (f"#{view.detection} {detection_label(explanation, view.detection)}" if view.detection is not None
             else f"cell {view.rows[0]}")
    figure.text(0.0, -0.02, f"cyan: {query} on {layer_name(view.layer)}; heat: cells with at least {LIFT:g}x a uniform "
                "row's share of its matching mass;\norange arrows: larger instances it borrowed from (share of its mass); "
                "grey: no more than uniform", fontsize=8, va="top")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.1)
    return buffer.getvalue()


# ---- Compare, Data & anchors, Training ----

def _measured(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows with a value (-1: no ground truth in that range) and std 0 where missing: a chart spec must be
    strict JSON, and the browser's JSON.parse refuses NaN."""
    data = rows[rows[value] >= 0].copy()
    if "std" in data:
        data["std"] = data["std"].fillna(0.0)
    return data


def size_bars(rows: pd.DataFrame, title: str, y_title: str) -> go.Figure:
    """Grouped bars of mean (std as error bars) by size, one colour per group, one panel per split."""
    figure = px.bar(_measured(rows, "mean"), x="size", y="mean", color="group", barmode="group", facet_col="split",
                    error_y="std", hover_data={"reports": True}, title=title, color_discrete_sequence=PALETTE,
                    category_orders={"size": list(dict.fromkeys(rows["size"])), "group": list(dict.fromkeys(rows["group"])),
                                     "split": sorted(set(rows["split"]))})
    figure.for_each_annotation(lambda note: note.update(text=note.text.removeprefix("split=")))
    figure.update_yaxes(title=y_title, tickformat=".0%", rangemode="tozero")
    figure.update_xaxes(title=None, type="category")
    figure.update_layout(height=380, margin={"t": 60, "b": 10}, legend_title_text="")
    return figure


def split_bars(rows: pd.DataFrame, title: str, y_title: str) -> go.Figure:
    """Bars of mean (std as error bars) per group, one colour per split."""
    figure = px.bar(_measured(rows, "mean"), x="group", y="mean", color="split", barmode="group", error_y="std",
                    title=title, hover_data={"reports": True}, color_discrete_sequence=PALETTE,
                    category_orders={"split": sorted(set(rows["split"]), key=lambda s: (s != "twins", s))})
    figure.update_yaxes(title=y_title, tickformat=".0%", rangemode="tozero")
    figure.update_xaxes(title=None, type="category")
    figure.update_layout(height=340, margin={"t": 50, "b": 10}, legend_title_text="")
    return figure


def pr_figure(curves: list[dict], title: str) -> go.Figure:
    figure = go.Figure()
    for k, curve in enumerate(curves):
        figure.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines",
                                    name=f"{curve['group']} · {curve['split']}",
                                    line={"color": PALETTE[k % len(PALETTE)]}))
    figure.update_layout(title=title, height=380, xaxis_title="recall", yaxis_title="precision",
                         xaxis_range=[0, 1], yaxis_range=[0, 1.02], margin={"t": 50, "b": 10})
    return figure


def histogram(values: np.ndarray, title: str, x_title: str, edges: Sequence[float] | None = None) -> go.Figure:
    figure = px.histogram(x=values, nbins=40, title=title)
    if edges:
        for edge in edges:
            figure.add_vline(x=edge, line_dash="dot", line_color="grey")
    figure.update_layout(height=320, xaxis_title=x_title, yaxis_title="boxes", margin={"t": 50, "b": 10})
    return figure


def recall_bars(rows: pd.DataFrame) -> go.Figure:
    figure = px.bar(_measured(rows, "recall"), x="bin", y="recall", color="anchors", barmode="group", text="boxes",
                    category_orders={"bin": list(dict.fromkeys(rows["bin"]))},
                    title="anchor recall: share of boxes whose best anchor has IoU ≥ 0.5", color_discrete_sequence=PALETTE)
    figure.update_traces(texttemplate="%{text} boxes", textposition="outside")
    figure.update_yaxes(tickformat=".0%", range=[0, 1.15])
    figure.update_xaxes(title="box side at the network input (px)", type="category")
    figure.update_layout(height=360, margin={"t": 50, "b": 10})
    return figure


def training_figure(series: pd.DataFrame, y: str, title: str, log_y: bool = False,
                    resumes: pd.DataFrame | None = None) -> go.Figure:
    """One line per run against the step; dotted lines where runs were resumed."""
    figure = px.line(series.dropna(subset=[y]), x="step", y=y, color="run", title=title, log_y=log_y,
                     color_discrete_sequence=PALETTE)
    if resumes is not None:
        for step in resumes["step"]:
            figure.add_vline(x=step, line_dash="dot", line_color="grey")
    figure.update_layout(height=320, margin={"t": 50, "b": 10}, legend_title_text="")
    return figure


# ---- error breakdown and head to head ----

# COCO analyze()'s colours, C75 (best) to FN: each band is what relaxing that condition adds
CONDITION_COLOURS = {"C75": "#ffffff", "C50": "#1f77b4", "Loc": "#2ca02c", "Sim": "#ff7f0e", "Oth": "#d62728",
                     "BG": "#9467bd", "FN": "#8c564b"}
CONDITION_NAMES = {"C75": "C75: right at IoU .75", "C50": "C50: at IoU .5", "Loc": "Loc: localisation (IoU .1)",
                   "Sim": "Sim: look-alike class", "Oth": "Oth: other class", "BG": "BG: background",
                   "FN": "FN: never detected"}


def breakdown_bars(rows: pd.DataFrame, title: str) -> go.Figure:
    """Stacked bars per report of each condition's band (rows of ``borrowcore.evaluation.compare.breakdown_rows``),
    one panel per size range: every bar stacks to 1, its C75..BG tops are the APs under each condition."""
    conditions = list(dict.fromkeys(rows["condition"]))
    figure = px.bar(rows, x="report", y="band", color="condition", facet_col="range", barmode="stack",
                    title=title, hover_data={"AP": ":.3f", "band": ":.3f"},
                    category_orders={"condition": conditions, "range": list(dict.fromkeys(rows["range"])),
                                     "report": list(dict.fromkeys(rows["report"]))},
                    color_discrete_map={c: CONDITION_COLOURS.get(c, "#7f7f7f") for c in conditions})
    figure.for_each_annotation(lambda note: note.update(text=note.text.removeprefix("range=")))
    figure.for_each_trace(lambda trace: trace.update(name=CONDITION_NAMES.get(trace.name, trace.name),
                                                     marker_line={"color": "#444", "width": 0.5}))
    figure.update_yaxes(tickformat=".0%", range=[0, 1])
    figure.update_yaxes(title="share of precision-recall area", col=1)
    figure.update_xaxes(title=None, type="category", tickangle=-30)
    figure.update_layout(height=440, margin={"t": 60, "b": 10}, legend_title_text="", bargap=0.15)
    return figure


def breakdown_area(analysis: dict, size: str, title: str) -> go.Figure:
    """COCO analyze()'s plot: the mean PR curve under each condition of one size range, filled between."""
    figure = go.Figure()
    recall = analysis["recall"]
    entry = analysis["ranges"][size]
    for k, condition in enumerate(analysis["conditions"]):
        ap = entry["AP"][condition]
        figure.add_trace(go.Scatter(x=recall, y=entry["curves"][condition], mode="lines",
                                    fill="tozeroy" if k == 0 else "tonexty", name=f"[{ap:.3f}] {condition}",
                                    line={"color": "#444", "width": 0.5},
                                    fillcolor=CONDITION_COLOURS.get(condition, "#7f7f7f")))
    figure.update_layout(title=title, height=380, xaxis_title="recall", yaxis_title="precision",
                         xaxis_range=[0, 1], yaxis_range=[0, 1.0], margin={"t": 50, "b": 10},
                         plot_bgcolor="#ffffff")
    return figure


def difference_figure(ranges: dict[str, dict], title: str) -> go.Figure:
    """AP_B - AP_A per size range with its bootstrap interval (asymmetric error bars); ranges without ground
    truth are left out."""
    measured = {label: row for label, row in ranges.items() if row["AP_a"] >= 0}
    labels = list(measured)
    diffs = [measured[label]["diff"] for label in labels]
    figure = go.Figure(go.Scatter(
        x=labels, y=diffs, mode="markers", marker={"size": 11, "color": [PALETTE[2] if d >= 0 else PALETTE[0] for d in diffs]},
        error_y={"type": "data", "symmetric": False,
                 "array": [measured[label]["ci"][1] - measured[label]["diff"] for label in labels],
                 "arrayminus": [measured[label]["diff"] - measured[label]["ci"][0] for label in labels]},
        customdata=[[measured[label]["AP_a"], measured[label]["AP_b"], *measured[label]["ci"]] for label in labels],
        hovertemplate="%{x}: B − A %{y:+.1%}<br>A %{customdata[0]:.1%}, B %{customdata[1]:.1%}"
                      "<br>95% CI [%{customdata[2]:+.1%}, %{customdata[3]:+.1%}]<extra></extra>",
        name="B − A"))
    figure.add_hline(y=0, line_color="grey", line_dash="dot")
    figure.update_xaxes(title="size range (box side in px)", type="category")
    figure.update_yaxes(title="AP(B) − AP(A)", tickformat="+.0%", zeroline=False)
    figure.update_layout(title=title, height=360, margin={"t": 50, "b": 10}, showlegend=False)
    return figure


def instance_crop(image: np.ndarray, bbox: Sequence[float], colour: str = QUERY_COLOUR, context: float = 1.0,
                  min_side: int = 64, display_side: int = 160) -> Image.Image:
    """An instance with its context (``borrowcore.evaluation.compare.crop_with_context``), its box drawn, upscaled with
    nearest pixels to ``display_side`` so small instances stay legible. image (H, W, 3) uint8; bbox xywh."""
    from PIL import ImageDraw

    from borrowcore.evaluation.compare import crop_with_context

    crop, (x, y, w, h) = crop_with_context(image, bbox, context, min_side)
    picture = Image.fromarray(np.ascontiguousarray(crop))
    scale = max(1.0, display_side / max(picture.size))
    if scale > 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    ImageDraw.Draw(picture).rectangle([x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1],
                                      outline=colour, width=2)
    return picture


def window_overview(image: torch.Tensor, left: int, top: int, size: int, max_width: int = 900) -> np.ndarray:
    """The whole image (uint8 HWC, at most ``max_width`` wide) with the S x S window outlined in cyan."""
    import cv2

    pixels = np.ascontiguousarray(to_hwc(image))
    scale = min(1.0, max_width / pixels.shape[1])
    if scale < 1:
        pixels = cv2.resize(pixels, (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale)),
                            interpolation=cv2.INTER_AREA)
    corner = (round(left * scale), round(top * scale))
    far = (round((left + size) * scale) - 1, round((top + size) * scale) - 1)
    cv2.rectangle(pixels, corner, far, (0, 229, 255), max(2, round(3 * scale)))
    return pixels
