"""ONNX export (borrowcore.deploy.export): onnxruntime against PyTorch eager, metadata, the NMS graph, predict --onnx.

Detectors are tiny (width 0.125, input 128) with C_n perturbed, so that FMB / FRB and D_n change the
outputs: with zero-initialised C_n every ablation would compute ssd's outputs and the test would not see
an attention that exports wrongly.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import batched_nms

from borrowcore import CheckpointError, DetectorConfig, save_checkpoint
from borrowcore.cli import main
from borrowcore.data.dataset import read_image_rgb
from borrowcore.deploy.export import export_checkpoint, export_onnx, exportable, read_metadata
from borrowcore.deploy.runtime import (OnnxDetector, letterbox_to_canvas, resize_to_input, select_detections,
                                       verify_export)
from borrowcore.models.detector import IMAGENET_MEAN, IMAGENET_STD

from conftest import make_detector

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# boxes before NMS within 1e-3 px (the bar); softmax scores within 1e-5
BOX_TOLERANCE_PX, SCORE_TOLERANCE = 1e-3, 1e-5


def perturbed_detector(neck: str, seed: int = 0):
    config = DetectorConfig(neck=neck, num_classes=3, input_size=128, width=0.125, batch_norm=True)
    detector = make_detector(config, seed=seed).eval()
    with torch.no_grad():
        for block in detector.network.neck.fusion:
            block.combine.weight.normal_(std=0.1)
    detector.class_names = ["car", "person", "sign"]
    return detector


def sample_images() -> list[torch.Tensor]:
    """Bundled samples of both kinds: synthetic 256 x 256 PNGs and COCO photos of other sizes."""
    paths = sorted((ASSETS / "synth-tiny" / "images").glob("*.png"))[:3] + sorted((ASSETS / "photos" / "images").glob("*.jpg"))[:3]
    return [read_image_rgb(p) for p in paths]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """ssd and full, each as a checkpoint and a dynamo export with a dynamic batch; full also with NMS."""
    root = tmp_path_factory.mktemp("export")
    files = {}
    for neck in ("ssd", "full"):
        detector = perturbed_detector(neck)
        checkpoint = root / f"{neck}.pt"
        save_checkpoint(checkpoint, detector)
        path = root / f"{neck}.onnx"
        if neck == "ssd":  # through the command, as a user runs it
            assert main(["export", "--checkpoint", str(checkpoint), "--out", str(path), "--dynamic-batch"]) == 0
        else:
            export_checkpoint(checkpoint, path, dynamic_batch=True)
        files[neck] = {"detector": detector, "checkpoint": checkpoint, "onnx": path}
    files["full"]["nms"] = root / "full_nms.onnx"
    export_checkpoint(files["full"]["checkpoint"], files["full"]["nms"], with_nms=True, dynamic_batch=True)
    return files


def eager_scores_and_boxes(detector, images):
    """The Detector's own path up to post-processing: preprocess, network, softmax, decode."""
    batch, _ = detector.preprocess(images)
    with torch.no_grad():
        output = detector.network(batch)
    anchors = detector.anchors(output.grid_sizes, detector.input_size)
    scores = torch.softmax(output.cls_logits, dim=-1)[..., 1:]
    return scores, detector.postprocess.box_coder.decode(output.box_regression, anchors)


@pytest.mark.parametrize("neck", ["ssd", "full"])
def test_onnxruntime_matches_pytorch_before_nms(exported, neck, capsys):
    detector, path = exported[neck]["detector"], exported[neck]["onnx"]
    images = sample_images()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_scores, onnx_boxes = session.run(["scores", "boxes"], {"images": resize_to_input(images, 128).numpy()})
    scores, boxes = eager_scores_and_boxes(detector, images)
    score_error = float(np.abs(onnx_scores - scores.numpy()).max())
    box_error = float(np.abs(onnx_boxes - boxes.numpy()).max())
    with capsys.disabled():
        print(f"\n{neck}: onnxruntime vs PyTorch on {len(images)} samples: max |d score| {score_error:.2e}, "
              f"max |d box| {box_error:.2e} px")
    assert onnx_scores.shape == (len(images), 2040, 3) and onnx_boxes.shape == (len(images), 2040, 4)
    assert box_error < BOX_TOLERANCE_PX and score_error < SCORE_TOLERANCE
    assert scores.max() > 0.3  # not a degenerate comparison of near-uniform scores
    # verify_export measures the same thing
    report = verify_export(detector, path, images)
    assert report["max_abs_boxes_px"] < BOX_TOLERANCE_PX and report["max_abs_scores"] < SCORE_TOLERANCE


def test_exported_semantics_are_the_detectors(exported):
    # the graph's inputs (resize without normalisation) and outputs (scores + boxes, selected as
    # PostProcess does) give exactly what Detector.forward gives
    detector = exported["full"]["detector"]
    images = sample_images()[2:5]
    normalised, sizes = detector.preprocess(images)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose((resize_to_input(images, 128) - mean) / std, normalised, atol=1e-6)
    with torch.no_grad():
        scores, boxes = exportable(detector)(resize_to_input(images, 128))
        expected = detector(images)
    for found, wanted in zip(select_detections(scores, boxes, 128, sizes), expected):
        assert torch.equal(found["labels"], wanted["labels"])
        # the graph normalises the input itself (1e-6 from preprocess's), so boxes of up to 640 px agree to
        # float32 rounding (2.4e-4 px seen), not bit for bit
        assert torch.allclose(found["boxes"], wanted["boxes"], atol=1e-3)
        assert torch.allclose(found["scores"], wanted["scores"], atol=1e-6)


def test_metadata_round_trip(exported):
    path = exported["full"]["onnx"]
    metadata = read_metadata(path)
    detector = exported["full"]["detector"]
    assert metadata["format"] == "borrowcore-onnx" and metadata["format_version"] == 1
    assert metadata["class_names"] == ["car", "person", "sign"]
    assert metadata["input_size"] == 128 and metadata["num_anchors"] == 2040
    assert metadata["normalization"]["mean"] == pytest.approx(IMAGENET_MEAN)
    assert metadata["normalization"]["std"] == pytest.approx(IMAGENET_STD)
    assert metadata["ablation"] == "full" and metadata["config"]["width"] == 0.125
    assert metadata["with_nms"] is False and metadata["dynamic_batch"] is True
    assert metadata["postprocess"] == {"score_threshold": 0.01, "candidates_per_class": 400, "nms_iou": 0.45,
                                       "detections_per_image": 200}
    assert metadata["exporter"] == "dynamo" and metadata["exporter_note"] == ""
    assert {"torch", "torchvision", "onnx", "onnxscript", "borrowcore", "python"} <= set(metadata["versions"])
    assert metadata["checkpoint"] == str(exported["full"]["checkpoint"]) and len(metadata["checkpoint_sha256"]) == 64
    # the same strings, as onnxruntime shows them to any consumer
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shown = session.get_modelmeta().custom_metadata_map
    assert json.loads(shown["class_names"]) == detector.class_names and json.loads(shown["input_size"]) == 128
    assert read_metadata(exported["full"]["nms"])["with_nms"] is True


def test_metadata_of_other_files_refused(tmp_path):
    plain = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), plain)
    with pytest.raises(ValueError, match="plain.onnx: not a borrowcore ONNX export"):
        read_metadata(plain)
    (tmp_path / "junk.onnx").write_bytes(b"\x00not protobuf at all\xff" * 3)
    with pytest.raises(ValueError, match="junk.onnx"):
        read_metadata(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        read_metadata(tmp_path / "missing.onnx")


def test_nms_graph_gives_final_detections_from_onnxruntime_alone(exported):
    detector, path = exported["full"]["detector"], exported["full"]["nms"]
    images = sample_images()
    graph = onnx.load(str(path))
    assert "NonMaxSuppression" in {node.op_type for node in graph.graph.node}
    # onnxruntime and numpy only: resize, run, scale to each image's pixels
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels, counts = session.run(None, {"images": resize_to_input(images, 128).numpy()})
    assert boxes.shape == (len(images), 200, 4) and counts.shape == (len(images),)
    with torch.no_grad():
        expected = detector(images)
    for i, (image, wanted) in enumerate(zip(images, expected)):
        n = int(counts[i])
        height, width = image.shape[-2:]
        found_boxes = boxes[i, :n] * np.array([width / 128, height / 128] * 2, dtype=np.float32)
        assert n == len(wanted["scores"]) > 0
        assert (scores[i, n:] == 0).all() and (labels[i, n:] == 0).all()
        assert np.all(np.diff(scores[i, :n]) <= 0)  # best first
        # the same detections, each PyTorch one matched to the nearest of its label (order-free: scores
        # tied within float error may come out either way)
        distance = np.abs(wanted["boxes"].numpy()[:, None] - found_boxes[None]).max(-1)  # (n, n)
        distance[wanted["labels"].numpy()[:, None] != labels[i, :n][None]] = np.inf
        match = distance.argmin(1)
        assert len(set(match.tolist())) == n  # one to one
        assert distance.min(1).max() < BOX_TOLERANCE_PX
        assert np.abs(scores[i, match] - wanted["scores"].numpy()).max() < SCORE_TOLERANCE
    report = verify_export(detector, path, images)
    assert report["same_counts"] and report["max_abs_boxes_px"] < BOX_TOLERANCE_PX


def test_torchscript_exporter_and_fixed_batch(tmp_path):
    # the fallback exporter gives the same graph: NMS included, a fixed batch of 2 fed in chunks
    detector = perturbed_detector("full", seed=1)
    path = tmp_path / "ts.onnx"
    metadata = export_onnx(detector, path, with_nms=True, batch_size=2, exporter="torchscript")
    assert metadata["exporter"] == "torchscript" and metadata["opset"] == 17 and metadata["batch_size"] == 2
    images = sample_images()[:3]  # 3 images: one full chunk, one padded
    onnx_detector = OnnxDetector(path)
    assert onnx_detector.fixed_batch == 2
    found = onnx_detector(images)
    with torch.no_grad():
        expected = detector(images)
    assert [len(f["scores"]) for f in found] == [len(e["scores"]) for e in expected]
    report = verify_export(detector, path, images)
    assert report["max_abs_boxes_px"] < BOX_TOLERANCE_PX and report["max_abs_scores"] < SCORE_TOLERANCE


def test_nms_graph_with_no_detection(tmp_path):
    detector = perturbed_detector("ssd")
    detector.postprocess.score_threshold = 0.9999  # nothing passes
    path = tmp_path / "none.onnx"
    export_onnx(detector, path, with_nms=True, dynamic_batch=True, exporter="torchscript")
    found = OnnxDetector(path)(sample_images()[:2])
    assert [len(f["scores"]) for f in found] == [0, 0]


def test_auto_falls_back_to_torchscript(tmp_path, monkeypatch):
    import borrowcore.deploy.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("torch.export could not trace this\nsecond line")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    path = tmp_path / "fallback.onnx"
    with pytest.warns(UserWarning, match="dynamo exporter failed"):
        metadata = export_onnx(perturbed_detector("ssd"), path)
    assert metadata["exporter"] == "torchscript"
    assert read_metadata(path)["exporter_note"].startswith("dynamo exporter failed (RuntimeError: torch.export could not")
    with pytest.raises(RuntimeError, match="could not trace"):
        export_onnx(perturbed_detector("ssd"), path, exporter="dynamo")


def test_unknown_ablation_refused(tmp_path):
    detector = perturbed_detector("full")
    path = tmp_path / "future.pt"
    save_checkpoint(path, detector)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["neck"] = "transformer"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="future.pt: invalid model config.*neck must be one of.*'transformer'"):
        export_checkpoint(path, tmp_path / "future.onnx")
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "future.onnx")]) == 2
    detector.config.neck = "transformer"  # a model built by code this exporter does not know
    with pytest.raises(ValueError, match="cannot export ablation 'transformer'"):
        exportable(detector)
    assert not (tmp_path / "future.onnx").exists()


@pytest.mark.parametrize("kind", ["onnx", "nms"])
def test_predict_with_onnx_matches_checkpoint(exported, kind, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((ASSETS / "photos" / "images").glob("*.jpg"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    runs = {}
    for backend, model in (("checkpoint", exported["full"]["checkpoint"]), ("onnx", exported["full"][kind])):
        out = tmp_path / backend
        fp32 = ["--precision", "fp32"] if backend == "checkpoint" else []  # the exported graph is fp32
        code = main(["predict", f"--{backend}", str(model), "--source", str(folder), "--out", str(out),
                     "--conf", "0.3", "--device", "cpu", "--batch", "2", *fp32])
        assert code == 0
        runs[backend] = json.loads((out / "detections.json").read_text())
    assert "3 images (1 skipped)" in capsys.readouterr().out
    a, b = runs["checkpoint"], runs["onnx"]
    assert a["images"] == b["images"]
    assert b["info"]["model"]["backend"] == "onnxruntime" and b["skipped"][0]["path"].endswith("broken.jpg")
    assert len(a["annotations"]) == len(b["annotations"]) > 0
    key = lambda d: (d["image_id"], d["category_id"], round(d["bbox"][0]), round(d["bbox"][1]))  # noqa: E731
    for x, y in zip(sorted(a["annotations"], key=key), sorted(b["annotations"], key=key)):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        assert np.allclose(x["bbox"], y["bbox"], atol=0.011) and abs(x["score"] - y["score"]) < 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("neck", ["context", "borrow"])
def test_other_ablations_export_with_parity(neck, tmp_path):
    detector = perturbed_detector(neck)
    path = tmp_path / f"{neck}.onnx"
    assert export_onnx(detector, path)["exporter"] == "dynamo"
    report = verify_export(detector, path, sample_images()[:2])
    assert report["max_abs_boxes_px"] < BOX_TOLERANCE_PX and report["max_abs_scores"] < SCORE_TOLERANCE


def test_nms_in_graph_equals_batched_nms_per_class():
    # the custom op's eager implementation keeps what torchvision's class-wise NMS keeps
    from borrowcore.deploy.export import multiclass_nms

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 50, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, 50, 2, generator=generator) * 30], dim=-1)  # (2, 50, 4)
    scores = torch.rand(2, 3, 50, generator=generator)  # (B, K, A)
    selected = multiclass_nms(boxes, scores, 1000, 0.45, 0.2)
    for b in range(2):
        mask = scores[b] > 0.2  # (K, A)
        label, anchor = mask.nonzero(as_tuple=True)
        keep = batched_nms(boxes[b, anchor], scores[b, label, anchor], label, 0.45)
        expected = {(int(label[k]), int(anchor[k])) for k in keep}
        assert {(int(c), int(a)) for bb, c, a in selected.tolist() if bb == b} == expected


# ---- whole-image models: a fixed canvas, photos at native resolution ----

def whole_image_detector(neck: str):
    config = DetectorConfig(neck=neck, num_classes=1, input_size=128, width=0.125, batch_norm=True,
                            anchor_scale=2.0, aspect_ratios=[1.1538], inference="whole")
    detector = make_detector(config, seed=0).eval()
    with torch.no_grad():
        for block in detector.network.neck.fusion:
            block.combine.weight.normal_(std=0.1)
        for conv in detector.network.head.classification:  # some faces above the score threshold
            conv.bias.view(-1, 2)[:, 1] += 2.0
    detector.class_names = ["face"]
    return detector


def test_letterbox_to_canvas_by_hand():
    white = torch.full((3, 100, 50), 255, dtype=torch.uint8)  # h 100, w 50: 0.64 fits it in 64 x 128
    black = torch.zeros(3, 64, 40)  # fits: native resolution
    mean = (0.5, 0.25, 0.125)
    batch, scales = letterbox_to_canvas([white, black], (64, 128), mean)
    assert batch.shape == (2, 3, 64, 128)
    assert scales == [(32 / 50, 64 / 100), (1.0, 1.0)]
    assert torch.allclose(batch[0, :, :, :32], torch.ones(3, 64, 32))
    assert torch.equal(batch[1, :, :, :40], torch.zeros(3, 64, 40))
    padding = torch.tensor(mean).view(3, 1, 1)
    assert torch.equal(batch[0, :, :, 32:], padding.expand(3, 64, 96))
    assert torch.equal(batch[1, :, :, 40:], padding.expand(3, 64, 88))


def test_canvas_sizes_are_checked():
    with pytest.raises(ValueError, match="whole-image models"):
        exportable(perturbed_detector("ssd"), canvas=(256, 256))
    whole = whole_image_detector("ssd")
    with pytest.raises(ValueError, match="multiples of 64"):
        exportable(whole, canvas=(200, 256))
    with pytest.raises(ValueError, match="native resolution"):
        exportable(whole, input_size=256)


@pytest.mark.parametrize("with_nms", [False, True])
def test_whole_image_export_sees_photos_at_native_resolution(with_nms, tmp_path):
    """A 150 x 200 photo pads to the 192 x 256 canvas as PyTorch pads it (multiples of 64), so onnxruntime's
    detections are the checkpoint's; a 300 x 256 photo is scaled down by 0.64 to fit."""
    detector = whole_image_detector("full")
    path = tmp_path / "whole.onnx"
    metadata = export_onnx(detector, path, canvas=(192, 256), with_nms=with_nms, dynamic_batch=True)
    assert metadata["canvas"] == [192, 256] and metadata["input_size"] == 128
    assert ort.InferenceSession(str(path)).get_inputs()[0].shape[1:] == [3, 192, 256]
    height, width = (192, 256) if with_nms else (150, 200)
    photos = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(2)]
    expected, found = detector(photos), OnnxDetector(path)(photos)
    for e, f in zip(expected, found):
        assert len(e["scores"]) > 10 and len(e["scores"]) == len(f["scores"])
        assert torch.allclose(e["scores"], f["scores"], atol=SCORE_TOLERANCE)
        assert torch.allclose(e["boxes"], f["boxes"], atol=BOX_TOLERANCE_PX)
        assert f["boxes"][:, 2].max() <= width and f["boxes"][:, 3].max() <= height  # in the photo's pixels
    large = torch.randint(0, 256, (3, 300, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    parity = verify_export(detector, path, [large])
    assert parity["max_abs_scores"] < SCORE_TOLERANCE and parity["max_abs_boxes_px"] < 2 * BOX_TOLERANCE_PX
    assert OnnxDetector(path)([large])[0]["boxes"][:, 3].max() > 192  # mapped back beyond the canvas


def test_canvas_nms_clips_boxes_to_the_photo_not_the_canvas(tmp_path):
    """A 100 x 150 photo on a 192 x 256 canvas: with NMS in the graph, boxes are clipped to the photo before
    NMS, as PyTorch clips them (they used to reach the canvas's 256 x 192), and match PyTorch's detections
    on the same canvas; a photo of two sizes in one batch is clipped to each its own."""
    detector = whole_image_detector("full")
    path = tmp_path / "whole.onnx"
    export_onnx(detector, path, canvas=(192, 256), with_nms=True, dynamic_batch=True)
    assert [i.name for i in ort.InferenceSession(str(path)).get_inputs()] == ["images", "image_sizes"]
    photos = [torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)),
              torch.randint(0, 256, (3, 192, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))]
    onnx_detector = OnnxDetector(path)
    found = onnx_detector(photos)
    batch, scales = onnx_detector.prepare(photos)
    raw = dict(zip(onnx_detector.output_names, onnx_detector.run(batch, onnx_detector.canvas_sizes(
        [(100, 150), (192, 256)], scales))))
    n = int(raw["num_detections"][0])
    assert n > 10
    assert raw["boxes"][0, :n, 2].max() <= 150 and raw["boxes"][0, :n, 3].max() <= 100  # the photo, in the graph
    assert raw["boxes"][1, :, 2].max() > 150  # the canvas-sized photo keeps boxes beyond the small one's edge
    for f, (h, w) in zip(found, [(100, 150), (192, 256)]):
        assert f["boxes"][:, 2].max() <= w and f["boxes"][:, 3].max() <= h
    parity = verify_export(detector, path, photos)
    assert parity["same_counts"]
    assert parity["max_abs_scores"] < SCORE_TOLERANCE and parity["max_abs_boxes_px"] < 2 * BOX_TOLERANCE_PX


def test_dynamic_batch_where_cpu_attention_runs_in_blocks(tmp_path):
    """At S = 192 eager CPU attention runs in blocks of query rows whose size follows the batch; the graph
    holds one product instead, so a file traced at batch 2 runs at any batch (both exporters)."""
    detector = perturbed_detector("full")
    for exporter in ("dynamo", "torchscript"):
        path = tmp_path / f"{exporter}.onnx"
        assert export_onnx(detector, path, input_size=192, dynamic_batch=True, exporter=exporter)["exporter"] == exporter
        for batch in (1, 3):
            images = torch.rand(batch, 3, 192, 192, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                scores, boxes = exportable(detector, 192)(images)
            onnx_scores, onnx_boxes = (torch.from_numpy(o) for o in OnnxDetector(path).run(images))
            assert torch.allclose(scores, onnx_scores, atol=SCORE_TOLERANCE)
            assert torch.allclose(boxes, onnx_boxes, atol=BOX_TOLERANCE_PX)
