import json

import numpy as np
import pytest
import torch
from PIL import Image

from borrowcore.cli import main
from borrowcore.data.dataset import CocoDetection
from borrowcore.data.formats import LabelError, read_names, read_voc, read_yolo
from borrowcore.data.presets import RandomTileCrop, crop_boxes


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(folder / "a.png")  # 100 wide, 50 high
    Image.fromarray(np.zeros((80, 40, 3), np.uint8)).save(folder / "b.png")
    return folder


def yolo_labels(tmp_path, text_a: str, text_b: str = ""):
    labels = tmp_path / "labels"
    labels.mkdir(exist_ok=True)
    (labels / "a.txt").write_text(text_a)
    if text_b:
        (labels / "b.txt").write_text(text_b)
    return labels


def test_yolo_reader_by_hand(tmp_path, images):
    labels = yolo_labels(tmp_path, "0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.2 0.4\n", "1 0.5 0.5 1.0 1.0\n")
    coco = read_yolo(images, labels, ["car", "bus"])
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [("a.png", 100, 50), ("b.png", 40, 80)]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]]
    # a: centre (50, 25), 20 x 20 -> x 40, y 15; (10, 10), 20 x 20 -> x 0, y 0; b: the whole image
    assert boxes == [(1, 1, [40.0, 15.0, 20.0, 20.0]), (1, 2, [0.0, 0.0, 20.0, 20.0]), (2, 2, [0.0, 0.0, 40.0, 80.0])]


def test_yolo_gives_the_same_targets_as_coco(tmp_path, images):
    labels = yolo_labels(tmp_path, "0 0.5 0.5 0.2 0.4\n")
    path = tmp_path / "yolo.json"
    assert main(["convert", "--from", "yolo", "--images", str(images), "--labels", str(labels), "--names",
                 str(write(tmp_path / "names.txt", "car\nbus\n")), "--out", str(path)]) == 0
    hand = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
                       {"id": 2, "file_name": "b.png", "width": 40, "height": 80}],
            "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 15, 20, 20], "area": 400, "iscrowd": 0}]}
    hand_path = write(tmp_path / "hand.json", json.dumps(hand))
    ours, theirs = CocoDetection(images, path)[0][1], CocoDetection(images, hand_path)[0][1]
    assert torch.equal(ours["boxes"], theirs["boxes"]) and torch.equal(ours["labels"], theirs["labels"])


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("line, problem", [
    ("2 0.5 0.5 0.1 0.1", "class index 2 out of range"),
    ("0 0.5 0.5 0 0.1", "zero or negative size"),
    ("0 0.5 0.5 -0.1 0.1", "zero or negative size"),
    ("0 0.95 0.5 0.2 0.1", r"coordinates outside \[0, 1\]"),
    ("0 1.2 0.5 0.1 0.1", r"coordinates outside \[0, 1\]"),
    ("0 0.5 0.5 0.1", "expected 5 values"),
    ("car 0.5 0.5 0.1 0.1", "expected 'class cx cy w h' numbers"),
])
def test_yolo_bad_labels(tmp_path, images, line, problem):
    labels = yolo_labels(tmp_path, "0 0.5 0.5 0.1 0.1\n" + line + "\n")
    with pytest.raises(LabelError, match=rf"a.txt:2: {problem}"):
        read_yolo(images, labels, ["car", "bus"])


def test_names_from_data_yaml(tmp_path):
    assert read_names(write(tmp_path / "data.yaml", "names:\n  0: car\n  1: bus\n")) == ["car", "bus"]
    assert read_names(write(tmp_path / "d2.yaml", "names: [car, bus]\n")) == ["car", "bus"]
    with pytest.raises(LabelError, match="d3.yaml: needs a non-empty 'names'"):
        read_names(write(tmp_path / "d3.yaml", "nc: 2\n"))


VOC = """<annotation><filename>a.png</filename><size><width>100</width><height>50</height></size>
<object><name>car</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>30</xmax><ymax>25</ymax></bndbox></object>
<object><name>bus</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>50</ymax></bndbox></object>
</annotation>"""


def test_voc_reader_by_hand(tmp_path, images):
    xml = tmp_path / "ann"
    xml.mkdir()
    write(xml / "a.xml", VOC)
    coco = read_voc(images, xml)
    assert [c["name"] for c in coco["categories"]] == ["bus", "car"]
    car, bus = coco["annotations"]
    assert car["bbox"] == [10, 5, 20, 20] and car["category_id"] == 2 and car["iscrowd"] == 0  # 1-based inclusive
    assert bus["bbox"] == [0, 0, 100, 50] and bus["iscrowd"] == 1  # difficult


@pytest.mark.parametrize("edit, problem", [
    (("<xmax>30</xmax>", "<xmax>5</xmax>"), "zero or negative size"),
    (("<xmax>30</xmax>", "<xmax>130</xmax>"), r"box \(11.0, 6.0, 130.0, 25.0\) outside the 100x50 image"),
    (("<name>car</name>", "<name>tram</name>"), "unknown class 'tram'"),
    (("<ymin>6</ymin>", ""), "missing <ymin>"),
    (("<xmin>11</xmin>", "<xmin>eleven</xmin>"), "<xmin> is not a number"),
])
def test_voc_bad_labels(tmp_path, images, edit, problem):
    xml = tmp_path / "ann"
    xml.mkdir()
    write(xml / "a.xml", VOC.replace(*edit))
    with pytest.raises(LabelError, match=f"a.xml: object 1: {problem}"):
        read_voc(images, xml, ["bus", "car"])


def test_crop_box_arithmetic_by_hand():
    boxes = torch.tensor([[10.0, 10, 30, 30],     # inside the window (left 0, top 0, size 100)
                          [90.0, 40, 130, 60],    # cut by the right edge: 10 of 40 px inside -> dropped
                          [80.0, 80, 110, 110],   # on the corner: 20 x 20 of 30 x 30 inside (44%) -> dropped
                          [70.0, 20, 110, 40]])   # 30 of 40 px inside (75%) -> kept, clipped
    kept, keep = crop_boxes(boxes, 0, 0, 100, 0.5)
    assert keep.tolist() == [True, False, False, True]
    assert kept.tolist() == [[10, 10, 30, 30], [70, 20, 100, 40]]
    # a window at (60, 50), 100 px: boxes shift by (-60, -50); the 2nd keeps 40 x 10 of 40 x 20 (50%)
    kept, keep = crop_boxes(boxes, 60, 50, 100, 0.4)
    assert keep.tolist() == [False, True, True, False]
    assert kept.tolist() == [[30, 0, 70, 10], [20, 30, 50, 60]]


def test_random_tile_crop_pads_small_images_and_is_seeded():
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.full((3, 60, 300), 7, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10, 40, 40]]), format="XYXY", canvas_size=(60, 300)),
              "labels": torch.tensor([1])}
    torch.manual_seed(0)
    a = RandomTileCrop(128)(image, target)
    torch.manual_seed(0)
    b = RandomTileCrop(128)(image, target)
    assert a[0].shape == (3, 128, 128) and torch.equal(a[0], b[0])
    assert (a[0][:, 60:] == torch.tensor([124, 116, 104]).view(3, 1, 1)).all()  # padded with the mean colour
