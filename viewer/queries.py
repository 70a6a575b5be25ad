"""The Inspect page's query: which detection or cell is explained, picked by widgets, clicks or table rows,
and the words and tables that describe what it borrowed.

Clicks and table selections persist across reruns, so each new one is applied once, and a new image,
checkpoint or filter (a new "context") starts from the default query without replaying stale picks.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from borrowcore.data.dataset import BadImageError
from borrowcore.data.images import image_digest
from borrowcore.evaluation.explain import BorrowView, Explanation, default_query
from viewer.figures import LIFT, detection_label, layer_name, link_text
from viewer.models import decode_image

DETECTION, CELL = "a detection", "a cell of a shallow layer"
DETECTION_CURVE = 1  # the detections figure: image, then the clickable centres
CELL_CURVE = 4  # the layer view: two images, two heatmaps, then the clickable cell centres


def collect_images(uploads: Sequence[Any], picked: Sequence[str], samples: dict[str, Path]
                   ) -> tuple[dict[str, tuple[str, torch.Tensor, str]], list[str]]:
    """label -> (content hash, uint8 (3, H, W), file name) of this session's uploads and picked samples,
    and the messages of those that cannot be used."""
    sources = [(f"{u.name} (uploaded)", u.name, u.getvalue()) for u in uploads]
    sources += [(name, samples[name].name, samples[name].read_bytes()) for name in picked]
    images, problems = {}, []
    for label, file_name, data in sources:
        digest = image_digest(data)
        try:
            images[label] = (digest, decode_image(digest, file_name, data), file_name)
        except BadImageError as error:
            problems.append(str(error))
    return images, problems


def _selection(state: MutableMapping, key: str, kind: str) -> list:
    return (state.get(key) or {}).get("selection", {}).get(kind, [])


def apply_picks(state: MutableMapping, explanation: Explanation, keep: list[int], context: str) -> int | None:
    """Bring the query widgets' state up to date with new clicks and table rows; returns the detection
    to explain (the default one for a new context), None when there is none."""
    clicked = next((p.get("point_index") for p in _selection(state, "inspect_click", "points")
                    if p.get("curve_number") == DETECTION_CURVE), None)
    row = next(iter(_selection(state, "inspect_table", "rows")), None)
    view_layer = state.get("inspect_view_layer")
    index = next((p.get("point_index") for p in _selection(state, "inspect_cells", "points")
                  if p.get("curve_number") == CELL_CURVE), None)
    cell = None
    if index is not None and view_layer in [m.layer for m in explanation.matching]:
        cell = divmod(int(index), explanation.layer(view_layer).query_grid[1])  # cells are row-major
    picks = {"inspect_seen_click": clicked, "inspect_seen_row": row, "inspect_seen_cell": cell}
    if state.get("inspect_context") != context:
        state["inspect_context"] = context
        state.update(picks)  # stale picks are not replayed on a new image
        state.pop("inspect_detection", None)
    new = {key: value for key, value in picks.items() if value is not None and state.get(key) != value}
    state.update(new)
    for key in ("inspect_seen_click", "inspect_seen_row"):
        if key in new and new[key] < len(keep):
            state["inspect_detection"], state["inspect_mode"] = keep[new[key]], DETECTION
    if "inspect_seen_cell" in new:
        state["inspect_mode"], state["inspect_layer"] = CELL, view_layer
        state["inspect_row"], state["inspect_col"] = cell
    if state.get("inspect_detection") not in keep:
        state["inspect_detection"] = default_query(explanation, keep)
    if not keep:
        state["inspect_mode"] = CELL
    return state["inspect_detection"]


def box_size(explanation: Explanation, index: int) -> str:
    x0, y0, x1, y1 = explanation.detections["boxes"][index].tolist()
    return f"{x1 - x0:.0f} × {y1 - y0:.0f}"


def detection_option(explanation: Explanation, index: int, scores: bool = True) -> str:
    score = f"{float(explanation.detections['scores'][index]):.2f}, " if scores else ""
    return f"#{index} {detection_label(explanation, index)} ({score}{box_size(explanation, index)} px)"


def detections_table(explanation: Explanation, keep: Sequence[int], scores: bool = True) -> pd.DataFrame:
    table = {"#": list(keep), "class": [detection_label(explanation, i) for i in keep]}
    if scores:
        table["score"] = [round(float(explanation.detections["scores"][i]), 3) for i in keep]
    table["size (px)"] = [box_size(explanation, i) for i in keep]
    table["layer"] = [explanation.detection_layers[i] if explanation.detection_layers else None for i in keep]
    return pd.DataFrame(table)


def headline(explanation: Explanation, view: BorrowView) -> str:
    """One sentence: what the query is and which larger instances it borrowed from."""
    if view.detection is not None:
        who = (f"**#{view.detection} {detection_label(explanation, view.detection)}** "
               f"({box_size(explanation, view.detection)} px, its cells on {layer_name(view.layer)})")
    else:
        row, col = divmod(view.rows[0], explanation.layer(view.layer).query_grid[1])
        who = f"**cell ({row}, {col})** of {layer_name(view.layer)}"
    borrowed = [link for link in view.links if link["borrowed"]]
    if borrowed:
        parts = [f"**{link_text(link, explanation)}**" + (" (its own class)" if link["same_class"] else "")
                 for link in borrowed[:3]]
        return f"{who} borrowed from " + "; ".join(parts) + "."
    if view.links:
        return (f"{who} borrowed from no larger instance more than a uniform row would: the most, "
                f"{link_text(view.links[0], explanation)}.")
    return (f"{who}: no larger detection is shown to link to (lower the score threshold to see more); the heat "
            "shows where its matching mass went.")


def spread_note(view: BorrowView) -> str:
    spread = ("almost uniform: this checkpoint's matching is barely focused" if view.entropy > 0.9 else
              "focused on a few cells" if view.entropy < 0.5 else "partly focused")
    return (f"Share: the part of its S_hat row (the mean over its cells) that lands on deeper cells inside that "
            f"instance; 'uniform' is what an unfocused row would put there; it borrowed from an instance when it puts "
            f"at least {LIFT:g}× that there. Its row's entropy is {view.entropy:.2f} of the maximum: {spread}.")


def links_table(explanation: Explanation, view: BorrowView) -> pd.DataFrame:
    return pd.DataFrame([{"#": link["detection"], "class": detection_label(explanation, link["detection"]),
                          "share of mass": link["share"], "uniform": link["chance"], "× uniform": link["lift"],
                          "borrowed": link["borrowed"]} for link in view.links],
                        columns=["#", "class", "share of mass", "uniform", "× uniform", "borrowed"])


def sources_table(view: BorrowView) -> pd.DataFrame:
    return pd.DataFrame([{"layer": s["layer"], "row": s["row"], "col": s["col"], "share": s["share"]}
                         for s in view.sources], columns=["layer", "row", "col", "share"])


# ---- opening an instance from another page (Head to head) ----

REQUEST = "inspect_request"  # set by another page, consumed once by Inspect


def inspect_request(instance: dict, image: Path, checkpoint: str | None, annotations: Path | None) -> dict:
    """What Inspect needs to show a ground-truth instance: its image file, the bundled checkpoint to load
    (by name; None keeps the current one), the COCO file that annotates it, and its box (xywh)."""
    return {"image": str(image), "checkpoint": checkpoint, "annotations": str(annotations) if annotations else None,
            "bbox": [float(v) for v in instance["bbox"]], "category": instance["category"],
            "annotation_id": instance["annotation_id"]}


def open_request(state: MutableMapping, request: dict, samples: dict[str, Path], checkpoints: Sequence[str]) -> str:
    """Point Inspect's widgets at a request: its checkpoint (when bundled), its image (added to the samples
    for this session when it is not one) and its ground truth. Returns the image's label."""
    if request.get("checkpoint") in checkpoints:
        state["inspect_checkpoint"] = request["checkpoint"]
    image = Path(request["image"])
    label = next((name for name, path in samples.items() if path.resolve() == image.resolve()),
                 f"{image.parent.parent.name}/{image.name}")
    state.setdefault("inspect_requested_images", {})[label] = image
    samples.setdefault(label, image)
    state["inspect_samples"] = [label]
    state["inspect_image"] = label
    if request.get("annotations"):
        extra = state.setdefault("inspect_requested_coco", [])
        if request["annotations"] not in extra:
            extra.append(request["annotations"])
    return label


def request_query(state: MutableMapping, explanation: Explanation, keep: Sequence[int], bbox: Sequence[float],
                  min_iou: float = 0.1) -> int | None:
    """Make the instance of ``keep`` that overlaps ``bbox`` (xywh) most the query; None when none overlaps."""
    from borrowcore.evaluation.compare import matching_instance

    found = matching_instance(explanation.detections["boxes"][list(keep)], bbox, min_iou) if keep else None
    if found is None:
        return None
    state["inspect_detection"], state["inspect_mode"] = keep[found], DETECTION
    return keep[found]


# ---- a native-resolution window of a large image ----

WINDOW_FACTOR = 2.5  # a resize shrinking 25 px objects to 10 px or less loses them


def needs_window(height: int, width: int, input_size: int) -> bool:
    """A resize to S x S would shrink this image's objects by more than WINDOW_FACTOR (aerial tiles)."""
    return max(height, width) > WINDOW_FACTOR * input_size


def window_key(label: str, digest: str) -> str:
    """The session-state key of an image's window position ("left" or "top"): one per image, by the hash of
    its bytes, so that a newly uploaded image opens on its own centre, not where the previous one was left."""
    return f"inspect_window_{label}_{digest[:16]}"


def window_start(center: float, length: int, size: int) -> int:
    """The start of an S-long window centred on ``center`` as far as the image allows."""
    return int(min(max(0.0, center - size / 2), max(0, length - size)))


def crop_to_window(image: torch.Tensor, left: int, top: int, size: int) -> torch.Tensor:
    """The S x S window at (left, top) of a (3, H, W) image, padded with the mean colour past its edges."""
    from borrowcore.data.tiling import Window, crop_window

    height, width = image.shape[-2:]
    return crop_window(image, Window(left, top, min(left + size, width), min(top + size, height)), size)


def truth_in_window(truth: dict | None, left: int, top: int, size: int, min_visibility: float = 0.5) -> dict | None:
    """Ground truth moved into a window's pixels: boxes with at least ``min_visibility`` of their area
    inside it, clipped (the training crop's rule); None when none is."""
    from borrowcore.data.presets import crop_boxes

    if truth is None:
        return None
    boxes, keep = crop_boxes(torch.from_numpy(truth["boxes"]), left, top, size, min_visibility)
    if not len(boxes):
        return None
    names = [name for name, kept in zip(truth["names"], keep.tolist()) if kept]
    return {**truth, "boxes": boxes.numpy(), "names": names}
