"""The peer a user would pick instead: ultralytics YOLO trained from scratch on the same 401 WIDER photos,
then scored by borrowcore's own evaluator (``borrowcore eval --detections``), a row in the faces table.

ultralytics is an optional install for this comparison only (``pip install ultralytics``), not a
requirement of the package. Resumable: a finished training run or results file is reused.

    python scripts/yolo_peer.py --out runs/faces/yolo11n/seed0 --hours 0.75 --imgsz 640
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

WIDER = Path("../shared/data/wider-faces")


def yolo_dataset(coco_files: dict[str, Path], folder: Path) -> Path:
    """images/<split>/ (symlinks) and labels/<split>/*.txt from the COCO files; WIDER's invalid faces (crowd)
    are left out, as YOLO has no ignore regions. Returns the data.yaml."""
    for split, coco_file in coco_files.items():
        coco = json.loads(coco_file.read_text())
        boxes: dict[int, list[str]] = {}
        for ann in coco["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
        for image in coco["images"]:
            name = image["file_name"].replace("/", "__")
            link = folder / "images" / split / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((WIDER / "images" / image["file_name"]).resolve())
            width, height = image["width"], image["height"]
            lines = [f"0 {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}"
                     for x, y, w, h in boxes.get(image["id"], [])]
            label = folder / "labels" / split / Path(name).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines) + ("\n" if lines else ""))
    data = folder / "data.yaml"
    data.write_text(f"path: {folder.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: face\n")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/faces/yolo11n/seed0")
    parser.add_argument("--model", default="yolo11n.yaml", help="an architecture yaml: from scratch, no weights")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hours", type=float, default=0.0,
                        help="a wall-clock budget: ultralytics fits its schedule to it (overrides --epochs)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--close-mosaic", type=int, default=3,
                        help="epochs without mosaic at the end (ultralytics' default 10 would switch mosaic off "
                             "for the whole of a 10-epoch run)")
    parser.add_argument("--predict-imgsz", type=int, default=1024, help="val photos are 1024 px wide: native")
    args = parser.parse_args()
    from ultralytics import YOLO

    out = Path(args.out).resolve()
    data = yolo_dataset({"train": Path("data/wider/train.json"), "val": Path("data/wider/val.json")}, out / "dataset")
    weights = out / "train" / "weights" / "last.pt"
    start = time.time()
    if not (out / "train" / "done").exists():
        model = YOLO(str(weights)) if weights.exists() else YOLO(args.model)
        model.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=0, device="cpu",
                    pretrained=False, amp=False, plots=False, close_mosaic=args.close_mosaic,
                    **({"time": args.hours} if args.hours else {}), val=False, seed=args.seed, deterministic=True,
                    project=str(out), name="train", exist_ok=True, resume=weights.exists(), verbose=False)
        (out / "train" / "done").write_text(json.dumps({"seconds": round(time.time() - start, 1),
                                                        "threads": os.environ.get("OMP_NUM_THREADS", "")}))
    val = json.loads(Path("data/wider/val.json").read_text())
    model = YOLO(str(weights))
    results, seconds = [], 0.0
    for image in val["images"]:
        begin = time.perf_counter()
        [prediction] = model.predict(str(WIDER / "images" / image["file_name"]), imgsz=args.predict_imgsz, conf=0.01,
                                     iou=0.45, max_det=200, device="cpu", verbose=False)
        seconds += time.perf_counter() - begin
        for (x0, y0, x1, y1), score in zip(prediction.boxes.xyxy.tolist(), prediction.boxes.conf.tolist()):
            results.append({"image_id": image["id"], "category_id": 1,
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(score, 5)})
    (out / "detections_val.json").write_text(json.dumps(results))
    print(f"{out / 'detections_val.json'}: {len(results)} detections, {len(val['images']) / seconds:.2f} images/s")
    print(f"next: borrowcore eval --detections {out / 'detections_val.json'} --model-name yolo11n "
          f"--coco data/wider/val.json --images {WIDER / 'images'} --out {out / 'eval_val.json'} --size-bins 0,16,32,64")


if __name__ == "__main__":
    main()
