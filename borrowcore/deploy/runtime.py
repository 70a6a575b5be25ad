"""An exported ONNX file run by onnxruntime (``OnnxDetector``, called like a ``Detector``), its parity
with PyTorch (``verify_export``) and its speed against eager (``benchmark_onnx``).

Inputs are prepared as the graph expects (``export.py``): resized to S x S, or for a whole-image model's
graph placed on its fixed canvas (``letterbox_to_canvas``); a graph without NMS gets PostProcess's
selection in PyTorch.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

from borrowcore.deploy.export import exportable, read_metadata
from borrowcore.models.detector import Detector
from borrowcore.models.postprocess import PostProcess


# ---- running an exported file ----

def resize_to_input(images: Sequence[Tensor], size: int) -> Tensor:
    """Images (3, H, W) uint8 or float in [0, 1] -> (B, 3, S, S) float in [0, 1]: Detector.preprocess's
    resize (SPEC §1: plain, antialiased, no letterbox), without the normalisation the graph applies."""
    batch = []
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected images of shape (3, H, W), got {tuple(image.shape)}")
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        if image.shape[-2:] != (size, size):
            image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        batch.append(image)
    return torch.stack(batch)


def letterbox_to_canvas(images: Sequence[Tensor], canvas: tuple[int, int],
                        mean: Sequence[float] = (0.485, 0.456, 0.406)) -> tuple[Tensor, list[tuple[float, float]]]:
    """Images (3, h, w) uint8 or float in [0, 1] -> a whole-image graph's (B, 3, H, W) batch in [0, 1] and each
    image's scales (sx, sy) from its pixels to the canvas. Each photo sits in the top-left corner at native
    resolution (scaled down, antialiased, to fit when larger than the canvas); the rest is ``mean``, which
    the graph's normalisation turns into the zeros ``Detector.preprocess`` pads with."""
    height, width = canvas
    batch = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).repeat(len(images), 1, height, width)
    scales = []
    for i, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected images of shape (3, H, W), got {tuple(image.shape)}")
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        h, w = image.shape[-2:]
        scale = min(1.0, height / h, width / w)
        if scale < 1:
            size = (min(height, round(h * scale)), min(width, round(w * scale)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        batch[i, :, : image.shape[-2], : image.shape[-1]] = image
        scales.append((image.shape[-1] / w, image.shape[-2] / h))
    return batch, scales


def select_detections(scores: Tensor, boxes: Tensor, input_size: int | Sequence[tuple[float, float]],
                      image_sizes: Sequence[tuple[int, int]],
                      score_threshold: float = 0.01, candidates_per_class: int = 400, nms_iou: float = 0.45,
                      detections_per_image: int = 200) -> list[dict[str, Tensor]]:
    """PostProcess's selection (SPEC §5) for a graph exported without NMS: scores (B, A, K), boxes (B, A, 4)
    in the graph's input -> per image {"boxes" (D, 4) in its pixels, "scores" (D,), "labels" (D,) in 1..K}.
    ``input_size``: S of a resize, or each image's scales (sx, sy) to a canvas (``letterbox_to_canvas``)."""
    selection = PostProcess(score_threshold=score_threshold, candidates_per_class=candidates_per_class,
                            nms_iou=nms_iou, detections_per_image=detections_per_image)
    scales = input_size if isinstance(input_size, (int, float)) else list(input_size)
    return selection.select(scores, boxes, scales, list(image_sizes))


def from_input_pixels(detections: list[dict[str, Tensor]], scales: Sequence[tuple[float, float]],
                      image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """Final detections in the graph's input pixels -> each image's pixels (divided by its scales, clipped)."""
    mapped = []
    for detection, (sx, sy), (height, width) in zip(detections, scales, image_sizes):
        boxes = detection["boxes"] / torch.tensor([sx, sy, sx, sy], dtype=detection["boxes"].dtype)
        mapped.append({**detection, "boxes": clip_boxes_to_image(boxes, (height, width))})
    return mapped


class OnnxDetector:
    """An exported file run by onnxruntime, called like a ``Detector`` in eval mode.

    ``detector(images)``: images (3, H, W) uint8 or float in [0, 1], any size -> per image {"boxes" (D, 4)
    xyxy in its pixels, "scores" (D,), "labels" (D,)}. Images are resized to S x S, or for a whole-image
    model's file placed on its canvas (``letterbox_to_canvas``). Files without NMS get PostProcess's
    selection in PyTorch; a file with a fixed batch is fed in chunks of that batch (the last one padded).
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.input_size: int = int(self.metadata["input_size"])
        canvas = self.metadata.get("canvas")
        self.canvas: tuple[int, int] | None = (int(canvas[0]), int(canvas[1])) if canvas else None
        self.mean: list[float] = list(self.metadata["normalization"]["mean"])
        self.with_nms: bool = bool(self.metadata["with_nms"])
        self.postprocess: dict[str, Any] = dict(self.metadata["postprocess"])
        self.nms_iou: float = float(self.postprocess["nms_iou"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:  # idle threads sleep instead of busy-waiting for the next run (other work shares the cores)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                warnings.warn("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu); running on CPU",
                              stacklevel=2)
            else:
                providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        # canvas graphs with NMS take each photo's size on the canvas (older files: images only)
        self.takes_sizes = len(self.session.get_inputs()) > 1

    def prepare(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[float, float]] | int]:
        """Images (3, H, W) -> the graph's batch in [0, 1], and S or each image's scales to the canvas."""
        images = [image.cpu() for image in images]
        if self.canvas is not None:
            return letterbox_to_canvas(images, self.canvas, self.mean)
        return resize_to_input(images, self.input_size), self.input_size

    def run(self, batch: Tensor, image_sizes: Tensor | None = None) -> list[np.ndarray]:
        """The graph's outputs for a (B, 3, S, S) batch (or (B, 3, H, W) on a canvas) in [0, 1], any B.
        ``image_sizes`` (B, 2) (height, width) of each photo on the canvas, for graphs that take it (default:
        the whole canvas)."""
        if self.takes_sizes and image_sizes is None:
            image_sizes = torch.tensor([list(batch.shape[-2:])], dtype=torch.float32).repeat(len(batch), 1)

        def feed(images: Tensor, sizes: Tensor | None) -> dict[str, np.ndarray]:
            inputs = {"images": images.numpy()}
            if self.takes_sizes:
                inputs["image_sizes"] = sizes.float().numpy()
            return inputs

        if self.fixed_batch is None:
            return self.session.run(None, feed(batch, image_sizes))
        parts = []
        for start in range(0, len(batch), self.fixed_batch):
            chunk = batch[start:start + self.fixed_batch]
            sizes = image_sizes[start:start + self.fixed_batch] if image_sizes is not None else None
            count = len(chunk)
            if count < self.fixed_batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.fixed_batch - count, *chunk.shape[1:]))])
                if sizes is not None:
                    sizes = torch.cat([sizes, sizes[-1:].repeat(self.fixed_batch - count, 1)])
            parts.append([output[:count] for output in self.session.run(None, feed(chunk, sizes))])
        return [np.concatenate(column) for column in zip(*parts)]

    @staticmethod
    def canvas_sizes(sizes: Sequence[tuple[int, int]], scales: Sequence[tuple[float, float]]) -> Tensor:
        """(B, 2) float (height, width) of each photo on the canvas, from its size and scales."""
        return torch.tensor([[round(h * sy), round(w * sx)] for (h, w), (sx, sy) in zip(sizes, scales)],
                            dtype=torch.float32)

    def __call__(self, images: Sequence[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        if isinstance(images, Tensor) and images.dim() == 3:
            images = [images]
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, scales = self.prepare(images)
        on_canvas = self.canvas_sizes(sizes, scales) if self.takes_sizes else None
        outputs = dict(zip(self.output_names, self.run(batch, on_canvas)))
        if not self.with_nms:
            return select_detections(torch.from_numpy(outputs["scores"]), torch.from_numpy(outputs["boxes"]), scales,
                                     sizes, **self.postprocess)
        if isinstance(scales, int):  # a resize to S x S
            scales = [(scales / width, scales / height) for height, width in sizes]
        detections = []
        for i in range(len(sizes)):
            n = int(outputs["num_detections"][i])
            detections.append({"boxes": torch.from_numpy(outputs["boxes"][i, :n]),
                               "scores": torch.from_numpy(outputs["scores"][i, :n]),
                               "labels": torch.from_numpy(outputs["labels"][i, :n])})
        return from_input_pixels(detections, scales, sizes)


# ---- parity and timing ----

@torch.inference_mode()
def verify_export(detector: Detector, path: str | Path, images: Sequence[Tensor]) -> dict[str, Any]:
    """onnxruntime against PyTorch eager on ``images`` (3, H, W): max abs differences.

    Without NMS: the graph's scores and boxes (input pixels, before NMS) against the exported module run
    eagerly. With NMS: the final detections against ``detector(images)``, each matched to the nearest
    onnxruntime detection of its label. A whole-image model's PyTorch reference sees the photos as the file
    does, on its canvas (a canvas-sized photo is padded no further), mapped back to their pixels.
    """
    if not len(images):
        raise ValueError(f"{path}: no images to check parity on")
    onnx_detector = OnnxDetector(path)
    size, canvas = onnx_detector.input_size, onnx_detector.canvas
    batch, scales = onnx_detector.prepare(images)
    if not onnx_detector.with_nms:
        scores, boxes = exportable(detector, None if canvas else size, canvas=canvas)(batch)
        onnx_scores, onnx_boxes = (torch.from_numpy(o) for o in onnx_detector.run(batch))
        return {"images": len(images), "with_nms": False,
                "max_abs_scores": float((scores - onnx_scores).abs().max()),
                "max_abs_boxes_px": float((boxes - onnx_boxes).abs().max())}
    if canvas is not None:  # the network on the canvas, boxes clipped to each photo there (as PyTorch clips)
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        on_canvas = [(int(h), int(w)) for h, w in OnnxDetector.canvas_sizes(sizes, scales).tolist()]
        padded, _ = detector.preprocess(list(batch.to(detector.mean.device)))
        output = detector.network(padded)
        anchors = detector.anchors(output.grid_sizes, detector.anchor_image_size, device=padded.device)
        expected = detector.postprocess(output.cls_logits, output.box_regression, anchors, [(1.0, 1.0)] * len(sizes),
                                        on_canvas)
        expected = from_input_pixels(expected, scales, sizes)
    else:
        if size != detector.input_size:  # the same network run at the file's S (SPEC §3: anchors follow S)
            detector = copy.deepcopy(detector)
            detector.input_size = size
        expected = detector(list(images))
    found = onnx_detector(list(images))
    result = {"images": len(images), "with_nms": True, "detections": sum(len(e["scores"]) for e in expected),
              "same_counts": all(len(e["scores"]) == len(f["scores"]) for e, f in zip(expected, found)),
              "max_abs_scores": 0.0, "max_abs_boxes_px": 0.0}
    for e, f in zip(expected, found):
        if len(e["scores"]) == 0 or len(f["scores"]) == 0:
            continue
        # each PyTorch detection against its nearest onnxruntime one of the same label: order-free, so
        # that scores tied to 1e-6 may come out in either order
        # boxes clipped to a photo's edge can coincide, so the score breaks ties (1e-3 in score counts as 1 px)
        distance = (e["boxes"].cpu()[:, None] - f["boxes"][None]).abs().amax(-1) \
            + 1e3 * (e["scores"].cpu()[:, None] - f["scores"][None]).abs()  # (D_e, D_f)
        distance[e["labels"].cpu()[:, None] != f["labels"][None]] = float("inf")
        match = distance.min(1).indices
        nearest = (e["boxes"].cpu() - f["boxes"][match]).abs().amax(-1)
        result["max_abs_boxes_px"] = max(result["max_abs_boxes_px"], float(nearest.max()))
        result["max_abs_scores"] = max(result["max_abs_scores"], float((e["scores"].cpu() - f["scores"][match]).abs().max()))
    return result


@torch.inference_mode()
def benchmark_onnx(detector: Detector, path: str | Path, batch_size: int = 1, repeats: int = 10, warmup: int = 2,
                   threads: int | None = None) -> dict[str, Any]:
    """Median seconds per batch of onnxruntime and of PyTorch eager on the exported computation (network
    and box decoding, at the file's input size), runs interleaved so that load drifts hit both alike.

    Give a file exported without NMS and with a dynamic batch or a fixed batch of ``batch_size``.
    """
    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        onnx_detector = OnnxDetector(path, threads=threads)
        if onnx_detector.with_nms:
            raise ValueError(f"{path}: benchmark a file exported without NMS (eager runs the same computation)")
        canvas = onnx_detector.canvas
        module = exportable(detector, None if canvas else onnx_detector.input_size, canvas=canvas)
        size = onnx_detector.input_size
        height, width = canvas or (size, size)
        batch = torch.rand(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
        eager_times, onnx_times = [], []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            module(batch)
            middle = time.perf_counter()
            onnx_detector.run(batch)
            end = time.perf_counter()
            if i >= warmup:
                eager_times.append(middle - start)
                onnx_times.append(end - middle)
    finally:
        torch.set_num_threads(previous)
    eager, onnx_median = statistics.median(eager_times), statistics.median(onnx_times)
    return {"ablation": onnx_detector.metadata["ablation"], "input_size": size, "canvas": canvas, "batch_size": batch_size,
            "threads": threads, "repeats": repeats, "eager_s": eager, "onnxruntime_s": onnx_median,
            "eager_images_per_s": batch_size / eager, "onnxruntime_images_per_s": batch_size / onnx_median,
            "speedup": eager / onnx_median}
