"""Readers for YOLO txt and Pascal VOC xml labels, giving the same COCO structure as a COCO json.

``borrowcore convert --from yolo|voc ... --out FILE.json`` writes it; training and evaluation then read
COCO json only. Bad labels raise ``LabelError`` naming the file, the line or object, and the problem.

Conventions: YOLO lines are ``class cx cy w h`` normalised to [0, 1] (ultralytics); VOC boxes are
1-based inclusive pixel indices (the VOC devkit), so COCO x = xmin - 1 and w = xmax - xmin + 1; VOC's
``difficult`` objects become crowd regions (ignored in training and by COCOeval).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 274


class LabelError(ValueError):
    """A label file that cannot be read as the format says; the message names file and problem."""


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image is displayed (EXIF orientation 5-8 swaps them), read from the header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError) as error:
        raise LabelError(f"{path}: cannot read the image header ({error})") from error
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def read_names(path: str | Path) -> list[str]:
    """Class names from a names file (one per line) or an ultralytics data.yaml (``names`` list or dict)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise LabelError(f"{path}: cannot read class names ({error.strerror})") from error
    if path.suffix in (".yaml", ".yml"):
        try:
            names = (yaml.safe_load(text) or {}).get("names")
        except yaml.YAMLError as error:
            raise LabelError(f"{path}: not valid YAML ({error})") from error
        if isinstance(names, dict):
            if sorted(names) != list(range(len(names))):
                raise LabelError(f"{path}: 'names' keys must be 0..{len(names) - 1}")
            names = [names[i] for i in range(len(names))]
        if not isinstance(names, list) or not names:
            raise LabelError(f"{path}: needs a non-empty 'names' list or dict")
        return [str(n) for n in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise LabelError(f"{path}: no class names")
    return names


def _coco(images: list[dict], annotations: list[dict], names: list[str]) -> dict:
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name, "supercategory": name} for i, name in enumerate(names)]}


def read_yolo(images_dir: str | Path, labels_dir: str | Path, names: list[str]) -> dict:
    """COCO dict from ``labels_dir/<stem>.txt`` for every image in ``images_dir`` (no txt: no objects)."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    image_paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_paths:
        raise LabelError(f"{images_dir}: no images")
    images, annotations = [], []
    for image_id, path in enumerate(image_paths, start=1):
        width, height = image_size(path)
        images.append({"id": image_id, "file_name": str(path.relative_to(images_dir)), "width": width, "height": height})
        label_path = labels_dir / path.relative_to(images_dir).with_suffix(".txt")
        if not label_path.exists():
            continue
        for number, line in enumerate(label_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{label_path}:{number}"
            fields = line.split()
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise LabelError(f"{where}: expected 'class cx cy w h' numbers, got {line!r}") from None
            if len(values) != 5:
                raise LabelError(f"{where}: expected 5 values 'class cx cy w h', got {len(values)}")
            cls, cx, cy, w, h = values
            if cls != int(cls) or not 0 <= cls < len(names):
                raise LabelError(f"{where}: class index {fields[0]} out of range 0..{len(names) - 1}")
            if w <= 0 or h <= 0:
                raise LabelError(f"{where}: zero or negative size (w={w}, h={h})")
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            if min(cx, cy, w, h) < 0 or max(cx, cy, w, h) > 1 or x0 < -1e-6 or y0 < -1e-6 or x1 > 1 + 1e-6 or y1 > 1 + 1e-6:
                raise LabelError(f"{where}: coordinates outside [0, 1] ({line.strip()})")
            box = [max(0.0, x0) * width, max(0.0, y0) * height, min(w, 1 - max(0.0, x0)) * width, min(h, 1 - max(0.0, y0)) * height]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [round(v, 3) for v in box], "area": round(box[2] * box[3], 3), "iscrowd": 0})
    return _coco(images, annotations, names)


def _number(element: ET.Element | None, tag: str, where: str) -> float:
    node = element.find(tag) if element is not None else None
    if node is None or node.text is None:
        raise LabelError(f"{where}: missing <{tag}>")
    try:
        return float(node.text)
    except ValueError:
        raise LabelError(f"{where}: <{tag}> is not a number ({node.text!r})") from None


def read_voc(images_dir: str | Path, annotations_dir: str | Path, names: list[str] | None = None) -> dict:
    """COCO dict from Pascal VOC xml files; class names from ``names`` or, when None, as found (sorted)."""
    images_dir, annotations_dir = Path(images_dir), Path(annotations_dir)
    xml_paths = sorted(annotations_dir.glob("*.xml"))
    if not xml_paths:
        raise LabelError(f"{annotations_dir}: no .xml files")
    parsed = []
    for path in xml_paths:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as error:
            raise LabelError(f"{path}: not valid XML ({error})") from error
        parsed.append((path, root))
    if names is None:
        names = sorted({(obj.findtext("name") or "").strip() for _, root in parsed for obj in root.iter("object")} - {""})
    index = {name: i + 1 for i, name in enumerate(names)}
    images, annotations = [], []
    for image_id, (path, root) in enumerate(parsed, start=1):
        file_name = (root.findtext("filename") or "").strip()
        if not file_name:
            raise LabelError(f"{path}: missing <filename>")
        size = root.find("size")
        width, height = int(_number(size, "width", str(path))), int(_number(size, "height", str(path)))
        if width <= 0 or height <= 0:
            raise LabelError(f"{path}: image size {width}x{height} is not positive")
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for number, obj in enumerate(root.iter("object"), start=1):
            where = f"{path}: object {number}"
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise LabelError(f"{where}: unknown class {name!r} (known: {names})")
            box = obj.find("bndbox")
            xmin, ymin = _number(box, "xmin", where), _number(box, "ymin", where)
            xmax, ymax = _number(box, "xmax", where), _number(box, "ymax", where)
            if xmax < xmin or ymax < ymin:
                raise LabelError(f"{where}: zero or negative size ({xmin}, {ymin}, {xmax}, {ymax})")
            if xmin < 1 or ymin < 1 or xmax > width or ymax > height:
                raise LabelError(f"{where}: box ({xmin}, {ymin}, {xmax}, {ymax}) outside the {width}x{height} image")
            w, h = xmax - xmin + 1, ymax - ymin + 1
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": index[name],
                                "bbox": [xmin - 1, ymin - 1, w, h], "area": w * h, "iscrowd": int(difficult)})
    return _coco(images, annotations, names)


# Boxes may overshoot the image by this many pixels in WIDER's official files; they are clipped.
WIDER_TOLERANCE_PX = 1.0


def read_wider(images_dir: str | Path, gt_file: str | Path, name: str = "face") -> dict:
    """COCO dict from a WIDER FACE ground-truth file (``wider_face_*_bbx_gt.txt``).

    Per image: its path under ``images_dir``, the number of faces n, then n lines
    ``x y w h blur expression illumination invalid occlusion pose`` (an image with no face still has one
    line of zeros). Boxes marked ``invalid`` become crowd regions (``iscrowd`` 1): no anchor trains on
    them and COCOeval ignores detections on them. Boxes of zero width or height (a few in the official
    files) are dropped and counted in the returned dict's ``info.dropped_empty``. Raises LabelError
    naming the file and line for a count that does not match its lines, a non-number, a missing image
    or a box outside its image.
    """
    images_dir, gt_file = Path(images_dir), Path(gt_file)
    try:
        lines = gt_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LabelError(f"{gt_file}: cannot read ({error})") from error
    images, annotations, dropped = [], [], 0
    number = 0  # index into lines; line numbers printed 1-based

    def where(index: int) -> str:
        return f"{gt_file}:{index + 1}"

    while number < len(lines):
        file_name = lines[number].strip()
        if not file_name:
            number += 1
            continue
        path_line = number
        if len(file_name.split()) != 1:
            raise LabelError(f"{where(path_line)}: expected an image path, got {file_name!r} "
                             f"(does the previous image's face count match its lines?)")
        path = images_dir / file_name
        if not path.is_file():
            raise LabelError(f"{where(path_line)}: image {path} not found")
        if number + 1 >= len(lines):
            raise LabelError(f"{where(path_line)}: {file_name} has no face count line")
        try:
            count = int(lines[number + 1].strip())
        except ValueError:
            raise LabelError(f"{where(number + 1)}: expected the face count of {file_name}, "
                             f"got {lines[number + 1].strip()!r}") from None
        if count < 0:
            raise LabelError(f"{where(number + 1)}: negative face count {count}")
        width, height = image_size(path)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        box_lines = max(count, 1)  # a count of 0 is followed by one line of zeros
        first = number + 2
        for index in range(first, first + box_lines):
            if index >= len(lines):
                raise LabelError(f"{where(index - 1)}: {file_name} says {count} faces but the file ends after "
                                 f"{index - first} box lines")
            fields = lines[index].split()
            if len(fields) == 1:
                raise LabelError(f"{where(index)}: {file_name} says {count} faces but only {index - first} box "
                                 f"lines follow before {fields[0]!r}")
            if len(fields) != 10:
                raise LabelError(f"{where(index)}: expected 10 values 'x y w h blur expression illumination "
                                 f"invalid occlusion pose', got {len(fields)}")
            try:
                values = [int(v) for v in fields]
            except ValueError:
                raise LabelError(f"{where(index)}: expected integers, got {lines[index].strip()!r}") from None
            if count == 0:
                if any(values):
                    raise LabelError(f"{where(index)}: {file_name} says 0 faces but the line after is not zeros")
                continue
            x, y, w, h, invalid = values[0], values[1], values[2], values[3], values[7]
            if w <= 0 or h <= 0:
                dropped += 1
                continue
            tol = WIDER_TOLERANCE_PX
            if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
                raise LabelError(f"{where(index)}: box ({x}, {y}, {w}, {h}) lies outside the {width}x{height} "
                                 f"image {file_name}")
            x0, y0 = max(x, 0), max(y, 0)
            w, h = min(x + w, width) - x0, min(y + h, height) - y0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": int(invalid == 1)})
        number = first + box_lines
    if not images:
        raise LabelError(f"{gt_file}: no images")
    coco = _coco(images, annotations, [name])
    coco["info"] = {"source": str(gt_file), "format": "wider", "dropped_empty": dropped}
    return coco
