"""ONNX export (backbone, neck with FMB/FRB attention, head, box decoding; NMS optional).

The exported graph takes ``images`` (B, 3, S, S) float32 RGB in [0, 1], already resized to S x S with no
letterbox (SPEC §1); the ImageNet normalisation is inside the graph. A whole-image model (``inference:
whole``) sees photos at native resolution, so its graph takes a fixed canvas instead, (B, 3, H, W) with H
and W multiples of 64 (default 1024 x 1024, ``canvas=``): each photo in the top-left corner at native
resolution, the rest the mean colour, as ``Detector.preprocess`` pads; a photo larger than the canvas is
scaled down to fit (PyTorch tiles photos over ``max_whole_side`` instead); ``runtime.letterbox_to_canvas``
prepares such a batch. With NMS in such a graph, a second input ``image_sizes`` (B, 2) float32 gives each
photo's (height, width) on the canvas, and boxes are clipped to the photo before NMS, as PyTorch clips them
(``runtime.OnnxDetector`` fills it in). Outputs, in input pixels:

- default: ``scores`` (B, A, K) softmax probabilities of classes 1..K, ``boxes`` (B, A, 4) xyxy decoded
  against the anchors of S (not clipped): the post-processing's inputs.
- ``with_nms``: SPEC §5's post-processing in the graph, ending in ONNX NonMaxSuppression, so that
  onnxruntime alone gives final detections: ``boxes`` (B, D, 4) xyxy clipped to [0, S], ``scores``
  (B, D), ``labels`` (B, D) int64 in 1..K, ``num_detections`` (B,); D = detections_per_image, rows past
  num_detections are zero. Scale x by W / S and y by H / S for an H x W image (IoU, hence NMS, does not
  change under that scaling).

The file's metadata (``read_metadata``) holds the class names, input size, normalisation, ablation,
post-processing settings, the exporter used and the library versions. ``runtime.OnnxDetector`` runs a file
like a ``Detector``.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.onnx import symbolic_helper
from torchvision.ops import nms

from borrowcore.models.boxes import BoxCoder
from borrowcore.models.config import NECKS
from borrowcore.models.detector import BorrowSSD, Detector

FORMAT = "borrowcore-onnx"
FORMAT_VERSION = 1
EXPORTERS = ("auto", "dynamo", "torchscript")
TORCHSCRIPT_OPSET = 17
INPUT_DESCRIPTION = "images: float32 (B, 3, S, S), RGB in [0, 1], resized to S x S with no letterbox"
INPUT_NAMES = ("images", "image_sizes")
CANVAS_DESCRIPTION = ("images: float32 (B, 3, H, W) canvas, RGB in [0, 1], each photo at native resolution in the "
                      "top-left corner (scaled down to fit if larger), the rest the normalisation mean")
DEFAULT_CANVAS = (1024, 1024)  # whole-image models: WIDER's photos are 1024 px wide
PAD_MULTIPLE = 64  # the coarsest stride (SPEC §1)


# ---- SPEC §5's NMS as one op: eager in PyTorch, ONNX NonMaxSuppression in the graph ----

@torch.library.custom_op("borrowcore::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                   score_threshold: float) -> Tensor:
    """ONNX NonMaxSuppression's semantics: boxes (B, A, 4) xyxy, scores (B, K, A) -> selected (N, 3)
    int64 rows (batch, class, anchor), per (batch, class) the scores > ``score_threshold`` that NMS keeps,
    best first, at most ``max_per_class``."""
    selected = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            candidates = (scores[b, c] > score_threshold).nonzero().squeeze(1)
            keep = candidates[nms(boxes[b, candidates], scores[b, c, candidates], iou_threshold)[:max_per_class]]
            selected.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
    return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.int64)


@multiclass_nms.register_fake
def _multiclass_nms_fake(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                         score_threshold: float) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()  # N depends on the data
    return boxes.new_empty((count, 3), dtype=torch.int64)


def _nms_onnxscript(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
    """The dynamo exporter's translation of ``borrowcore::multiclass_nms``."""
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(boxes, scores, op.Constant(value_ints=[max_per_class]),
                                op.Constant(value_floats=[iou_threshold]), op.Constant(value_floats=[score_threshold]))


@symbolic_helper.parse_args("v", "v", "i", "f", "f")
def _nms_torchscript_symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
    """The TorchScript exporter's translation of ``borrowcore::multiclass_nms``."""
    constant = lambda value, dtype: g.op("Constant", value_t=torch.tensor([value], dtype=dtype))  # noqa: E731
    return g.op("NonMaxSuppression", boxes, scores, constant(max_per_class, torch.int64),
                constant(iou_threshold, torch.float32), constant(score_threshold, torch.float32))


# ---- the exported modules ----

class ExportableDetector(nn.Module):
    """RGB images (B, 3, S, S) in [0, 1] -> scores (B, A, K), boxes (B, A, 4) xyxy in input pixels.

    Normalisation, the network and box decoding against the fixed anchors of S: what PostProcess
    receives, with the softmax applied and the background column dropped.
    """

    def __init__(self, network: BorrowSSD, anchors: Tensor, box_coder: BoxCoder, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.network = network
        self.box_coder = box_coder
        self.register_buffer("anchors", anchors.detach().clone())  # (A, 4)
        self.register_buffer("mean", mean.detach().reshape(1, 3, 1, 1).clone())
        self.register_buffer("std", std.detach().reshape(1, 3, 1, 1).clone())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output = self.network((images - self.mean) / self.std)  # fused attention path: no S_hat kept
        scores = torch.softmax(output.cls_logits, dim=-1)[..., 1:]  # (B, A, K): background dropped
        boxes = self.box_coder.decode(output.box_regression, self.anchors)  # (B, A, 4)
        return scores, boxes


class ExportableDetectorWithNMS(nn.Module):
    """``ExportableDetector`` followed by SPEC §5's post-processing, ending in NonMaxSuppression.

    Per class the ``candidates_per_class`` best anchors with scores > ``score_threshold``, class-wise NMS
    at ``nms_iou``, then the ``detections_per_image`` best of each image: PostProcess's steps, in input
    pixels. Returns boxes (B, D, 4), scores (B, D), labels (B, D), num_detections (B,), best first.
    """

    def __init__(self, detector: ExportableDetector, input_shape: tuple[int, int], score_threshold: float = 0.01,
                 candidates_per_class: int = 400, nms_iou: float = 0.45, detections_per_image: int = 200,
                 per_image_sizes: bool = False) -> None:
        super().__init__()
        self.detector = detector
        self.per_image_sizes = per_image_sizes  # a canvas graph: forward(images, image_sizes)
        height, width = input_shape
        self.register_buffer("box_limits", torch.tensor([width, height, width, height], dtype=torch.float32))
        self.score_threshold = score_threshold
        self.candidates_per_class = candidates_per_class
        self.nms_iou = nms_iou
        self.detections_per_image = detections_per_image

    def forward(self, images: Tensor, image_sizes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``image_sizes`` (B, 2) float (height, width) of each photo on a canvas; None: the whole input."""
        scores, boxes = self.detector(images)  # (B, A, K), (B, A, 4)
        # PostProcess clips to the image; clipping commutes with the rescale. On a canvas, to each photo
        limits = self.box_limits if image_sizes is None else image_sizes.flip(1).repeat(1, 2)[:, None, :]
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        k = min(self.candidates_per_class, scores.shape[1])
        kth_best = scores.topk(k, dim=1).values[:, k - 1:k]  # (B, 1, K)
        scores = torch.where(scores >= kth_best, scores, torch.zeros_like(scores))  # top-k per class
        # at most D per class can reach an image's best D
        selected = torch.ops.borrowcore.multiclass_nms(boxes, scores.transpose(1, 2), self.detections_per_image,
                                                       self.nms_iou, self.score_threshold)  # (N, 3)
        batch, label, anchor = selected[:, 0], selected[:, 1], selected[:, 2]
        kept_scores = scores[batch, anchor, label]  # (N,)
        order = kept_scores.argsort(descending=True)
        batch, label, anchor, kept_scores = batch[order], label[order], anchor[order], kept_scores[order]
        # rank of each detection within its image, best first: a running count per image
        images_range = torch.arange(images.shape[0], device=images.device)
        in_image = (batch[:, None] == images_range[None, :]).long()  # (N, B)
        rank = in_image.cumsum(0).gather(1, batch[:, None]).squeeze(1) - 1  # (N,)
        # ranks past D all land in a spare slot D, cut off below
        slot = rank.clamp(max=self.detections_per_image)
        d = self.detections_per_image + 1
        out_boxes = boxes.new_zeros((images.shape[0], d, 4)).index_put((batch, slot), boxes[batch, anchor])
        out_scores = scores.new_zeros((images.shape[0], d)).index_put((batch, slot), kept_scores)
        out_labels = torch.zeros_like(out_scores, dtype=torch.int64).index_put((batch, slot), label + 1)
        num_detections = in_image.sum(0).clamp(max=self.detections_per_image)  # (B,)
        return out_boxes[:, :-1], out_scores[:, :-1], out_labels[:, :-1], num_detections


def graph_input_shape(detector: Detector, input_size: int | None = None,
                      canvas: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of the exported graph's images: S x S for a model that resizes, the canvas for a
    whole-image model (default ``DEFAULT_CANVAS``); a clear error for a size that does not fit the model."""
    if not detector.whole_image:
        if canvas is not None:
            raise ValueError("a canvas is for whole-image models (inference: whole); this model resizes every "
                             "image to S x S: give input_size")
        size = int(input_size or detector.input_size)
        if size < 128:
            raise ValueError(f"input size must be >= 128 (SPEC §1), got {size}")
        return size, size
    if input_size is not None:
        raise ValueError("a whole-image model (inference: whole) takes photos at native resolution, not resized to "
                         "S x S: give canvas=(H, W) (--canvas H W), the largest photo it will take")
    height, width = (int(side) for side in (canvas or DEFAULT_CANVAS))
    if min(height, width) < 128 or height % PAD_MULTIPLE or width % PAD_MULTIPLE:
        raise ValueError(f"canvas sides must be multiples of {PAD_MULTIPLE} and >= 128, got {height} x {width}")
    return height, width


def exportable(detector: Detector, input_size: int | None = None, with_nms: bool = False,
               canvas: tuple[int, int] | None = None) -> nn.Module:
    """The module that ``export_onnx`` exports, in eval mode on the CPU (its eager outputs are the reference)."""
    neck = detector.config.neck if hasattr(detector, "config") else detector.network.neck.neck
    if neck not in NECKS:
        raise ValueError(f"cannot export ablation {neck!r}: the exporter knows {', '.join(NECKS)}")
    height, width = graph_input_shape(detector, input_size, canvas)
    detector = copy.deepcopy(detector).cpu().eval()  # export traces on the CPU; the caller's model stays put
    with torch.no_grad():
        grid_sizes = detector.network(torch.zeros(1, 3, height, width)).grid_sizes
    # (A, 4): fixed by the graph's input size. A whole-image model keeps its own S'_N (SPEC §3), so its
    # anchors on the canvas are those it has on any photo of that padded size.
    anchors = detector.anchors(grid_sizes, detector.anchor_image_size if detector.whole_image else height)
    module = ExportableDetector(detector.network, anchors, detector.postprocess.box_coder, detector.mean, detector.std)
    if with_nms:
        post = detector.postprocess
        module = ExportableDetectorWithNMS(module, (height, width), post.score_threshold, post.candidates_per_class,
                                           post.nms_iou, post.detections_per_image,
                                           per_image_sizes=detector.whole_image)
    return module.eval()


# ---- export and metadata ----

def _export_dynamo(module: nn.Module, example: tuple[Tensor, ...], output_names: list[str], dynamic_batch: bool):
    input_names = list(INPUT_NAMES[:len(example)])
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = {name: {0: batch} for name in input_names} if dynamic_batch else None
    ir_logger = logging.getLogger("onnx_ir")  # notes on empty attribute lists in its own translations
    level = ir_logger.level
    ir_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic_shapes, verbose=False,
                custom_translation_table={torch.ops.borrowcore.multiclass_nms.default: _nms_onnxscript},
            )
    finally:
        ir_logger.setLevel(level)
    return program.model_proto


def _export_torchscript(module: nn.Module, example: tuple[Tensor, ...], output_names: list[str], dynamic_batch: bool):
    import onnx

    torch.onnx.register_custom_op_symbolic("borrowcore::multiclass_nms", _nms_torchscript_symbolic, TORCHSCRIPT_OPSET)
    input_names = list(INPUT_NAMES[:len(example)])
    dynamic_axes = {name: {0: "batch"} for name in input_names} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")  # its deprecation notice and tracer warnings on shape arithmetic
        torch.onnx.export(module, example, buffer, dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(detector: Detector, path: str | Path, *, input_size: int | None = None, with_nms: bool = False,
                dynamic_batch: bool = False, batch_size: int = 1, exporter: str = "auto",
                checkpoint: str | Path = "", canvas: tuple[int, int] | None = None) -> dict[str, Any]:
    """Export ``detector`` to ``path`` (one self-contained .onnx file, written atomically); returns its metadata.

    Args:
        input_size: S of the graph (default the detector's); the anchors are those of S.
        canvas: (H, W) of a whole-image model's graph, multiples of 64 (default ``DEFAULT_CANVAS``).
        with_nms: end the graph in NonMaxSuppression (final detections) instead of scores and boxes.
        dynamic_batch: a symbolic batch dimension; otherwise the batch is fixed at ``batch_size``.
        exporter: "dynamo" (torch.export-based), "torchscript" (the legacy tracer), or "auto": dynamo,
            falling back to torchscript when it fails (the metadata records which ran, and why).
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    module = exportable(detector, input_size, with_nms, canvas)
    height, width = graph_input_shape(detector, input_size, canvas)
    output_names = ["boxes", "scores", "labels", "num_detections"] if with_nms else ["scores", "boxes"]
    # torch.export specialises a dimension whose example is 1, so a dynamic batch is traced at 2
    images = torch.rand(2 if dynamic_batch else batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    example: tuple[Tensor, ...] = (images,)
    if getattr(module, "per_image_sizes", False):  # each photo's (height, width) on the canvas
        example = (images, torch.tensor([[height, width]], dtype=torch.float32).repeat(len(images), 1))
    note = ""
    if exporter == "torchscript":
        proto, used = _export_torchscript(module, example, output_names, dynamic_batch), "torchscript"
    else:
        try:
            proto, used = _export_dynamo(module, example, output_names, dynamic_batch), "dynamo"
        except Exception as error:  # noqa: BLE001 - torch.export fails in many ways; auto falls back
            if exporter == "dynamo":
                raise
            note = f"dynamo exporter failed ({type(error).__name__}: {str(error).splitlines()[0][:300]}); used torchscript"
            warnings.warn(note, stacklevel=2)
            proto, used = _export_torchscript(module, example, output_names, dynamic_batch), "torchscript"

    num_anchors = len(module.detector.anchors if with_nms else module.anchors)
    metadata = export_metadata(detector, (height, width), num_anchors, with_nms, dynamic_batch, batch_size, used, note,
                               proto, checkpoint)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())  # weights inside: well under protobuf's 2 GB at width 1
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return metadata


def export_metadata(detector: Detector, input_shape: tuple[int, int], num_anchors: int, with_nms: bool,
                    dynamic_batch: bool, batch_size: int, exporter: str, exporter_note: str, proto: Any,
                    checkpoint: str | Path = "") -> dict[str, Any]:
    """What the file says about itself: each value is stored JSON-encoded under its key. ``canvas`` is [H, W]
    for a whole-image model's graph and null for one that takes S x S resizes (``input_size`` S)."""
    import onnx
    import onnxscript

    from borrowcore.evaluation.report import sha256_file
    from borrowcore.models.checkpoint import library_versions

    post = detector.postprocess
    config = dataclasses.asdict(detector.config) if hasattr(detector, "config") else {}
    canvas = list(input_shape) if detector.whole_image else None
    clipped = "clipped to each photo's image_sizes" if canvas else "clipped to the input"
    outputs = ({"boxes": f"(B, D, 4) xyxy in input pixels, {clipped}", "scores": "(B, D)",
                "labels": "(B, D) int64 in 1..K", "num_detections": "(B,) valid rows, best first"}
               if with_nms else {"scores": "(B, A, K) softmax of classes 1..K",
                                 "boxes": "(B, A, 4) xyxy in input pixels, not clipped"})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "class_names": list(detector.class_names),
        "input_size": detector.input_size if canvas else input_shape[0],
        "canvas": canvas,
        "input": (CANVAS_DESCRIPTION + ("; image_sizes: float32 (B, 2), each photo's (height, width) on the canvas"
                                        if with_nms else "")) if canvas else INPUT_DESCRIPTION,
        "normalization": {"mean": detector.mean.flatten().tolist(), "std": detector.std.flatten().tolist(),
                          "in_graph": True},
        "ablation": config.get("neck", detector.network.neck.neck),
        "config": config,
        "with_nms": with_nms,
        "postprocess": {"score_threshold": post.score_threshold, "candidates_per_class": post.candidates_per_class,
                        "nms_iou": post.nms_iou, "detections_per_image": post.detections_per_image},
        "outputs": outputs,
        "num_anchors": num_anchors,
        "dynamic_batch": dynamic_batch, "batch_size": None if dynamic_batch else batch_size,
        "exporter": exporter, "exporter_note": exporter_note,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "versions": {**library_versions(), "onnx": onnx.__version__, "onnxscript": onnxscript.__version__},
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else "",
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata ``export_onnx`` wrote, decoded; a clear error for other files."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf's decode errors have no common base
        raise ValueError(f"{path}: not an ONNX file ({type(error).__name__}: {error})") from error
    return _decode_metadata({p.key: p.value for p in proto.metadata_props}, path)


def _decode_metadata(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    try:
        metadata = {key: json.loads(value) for key, value in props.items()}
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a borrowcore ONNX export (metadata is not JSON: {error})") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a borrowcore ONNX export (no metadata format '{FORMAT}'; "
                         f"found keys {sorted(metadata)[:8]})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: borrowcore ONNX format version {metadata.get('format_version')}, "
                         f"this borrowcore reads version {FORMAT_VERSION}")
    return metadata


def export_checkpoint(checkpoint: str | Path, out: str | Path, **kwargs) -> dict[str, Any]:
    """``borrowcore export`` as a function: load a checkpoint (its ablation checked) and export it."""
    from borrowcore.models.checkpoint import load_detector

    return export_onnx(load_detector(checkpoint, "cpu"), out, checkpoint=checkpoint, **kwargs)
