"""The peer a user would pick instead: ultralytics YOLO trained from scratch on the same WIDER photos as the
face models (train + extra, 1,401 photos), then scored by borrowcore's own evaluator
(``borrowcore eval --detections``) on val at each prediction size asked for; ``eval_val.json`` is the size
that is best for it on val (AP50 on faces >= 16 px, as the face models are compared), every size's report is
kept as ``eval_val-<imgsz>.json``; ``--shifts x2 x0.5 colour`` scores the off-distribution copies
(data/wider-<name>/, made by scripts/faces-release-eval.sh) at that size, as ``eval_<name>.json``.

ultralytics is an optional install for this comparison only (``make peer``), not a requirement of the
package. Training uses ultralytics' defaults apart from a fixed epoch count (the budget: a time budget
restarts on every resume; on a resume ``--epochs`` replaces the checkpoint's count), CPU, every core
(``--threads``: ultralytics alone sets torch to the CPU count minus one, one thread on a 2-core machine) and
no validation during training. Resumable across sessions: ultralytics resumes from train/weights/last.pt,
and ``--state`` keeps a copy of it after every epoch (its optimizer moments in bf16, 16 MB; commit that
folder once a session; a fresh clone resumes from it) with ``epochs.jsonl``, each epoch's wall and CPU
seconds; once finished, ``final.pt`` (the stripped weights, 5 MB) replaces it. A finished run or result is
reused.

    OMP_NUM_THREADS=2 PYTHONPATH=.peer python scripts/yolo_peer.py --out runs/faces-release/yolo11n \
        --epochs 81 --state state/faces-release/yolo11n
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
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
    parser.add_argument("--out", default="runs/faces-release/yolo11n")
    parser.add_argument("--train", type=Path, default=Path("data/wider/train-extra.json"),
                        help="COCO file of the training photos (scripts/faces-release.sh makes it)")
    parser.add_argument("--val", type=Path, default=Path("data/wider/val.json"))
    parser.add_argument("--model", default="yolo11n.yaml", help="an architecture yaml: from scratch, no weights")
    parser.add_argument("--epochs", type=int, default=30, help="the budget (fit it to the wall clock to match)")
    parser.add_argument("--imgsz", type=int, default=640, help="training size (ultralytics' default)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cos-lr", dest="cos_lr", action="store_true",
                        help="cosine learning-rate annealing to the last epoch (ultralytics' cos_lr; default: linear)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--predict-imgsz", dest="predict_imgsz", type=int, nargs="+", default=[640, 1024, 1280],
                        help="prediction sizes tried on val (the photos are 1024 px wide)")
    parser.add_argument("--shifts", nargs="*", default=[],
                        help="off-distribution copies data/wider-<name>/ (x2, x0.5, colour) scored at the best size")
    parser.add_argument("--state", type=Path, help="keep a copy of last.pt here after every epoch (to commit)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (ultralytics alone would take the CPU count minus one: one of two cores)")
    args = parser.parse_args()
    import torch
    import ultralytics.utils.torch_utils
    from faces_release_table import row  # beside this script
    from ultralytics import YOLO

    ultralytics.utils.torch_utils.NUM_THREADS = args.threads  # what its select_device passes to torch.set_num_threads
    out = Path(args.out).resolve()
    data = yolo_dataset({"train": args.train, "val": args.val}, out / "dataset")
    weights = out / "train" / "weights" / "last.pt"
    committed = args.state / "last.pt" if args.state else None
    final = args.state / "final.pt" if args.state else None  # a finished run's weights (ultralytics strips them)
    if not (out / "train" / "done").exists() and final and final.exists():
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, weights)
        (out / "train" / "done").write_text(json.dumps({"from": str(final)}))
        print(f"finished run: the weights of {final}")
    if not (out / "train" / "done").exists():
        source = weights if weights.exists() else committed if committed and committed.exists() else None
        if source is not None:  # ultralytics resumes into the run folder and to the epoch count its checkpoint names
            checkpoint = torch.load(source, map_location="cpu", weights_only=False)  # ultralytics' file or our copy
            checkpoint["train_args"].update(project=str(out), name="train", save_dir=str(out / "train"),
                                            data=str(data), epochs=args.epochs)
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, weights.with_suffix(".tmp"))
            os.replace(weights.with_suffix(".tmp"), weights)
            print(f"resuming from {source} after epoch {checkpoint['epoch'] + 1} of {args.epochs}")
        start = time.time()
        model = YOLO(str(weights)) if weights.exists() else YOLO(args.model)
        if args.state:
            clock = {"wall": time.time(), "cpu": time.process_time()}

            def keep(trainer) -> None:  # the optimizer's moments in bf16 (fp32 range; cast back on load): 16 MB
                checkpoint = torch.load(trainer.last, map_location="cpu", weights_only=False)  # ultralytics' own file
                for state in checkpoint["optimizer"]["state"].values():
                    for key, value in state.items():
                        if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                            state[key] = value.to(torch.bfloat16)
                args.state.mkdir(parents=True, exist_ok=True)
                torch.save(checkpoint, args.state / "last.pt.tmp")
                os.replace(args.state / "last.pt.tmp", args.state / "last.pt")
                now = {"wall": time.time(), "cpu": time.process_time()}  # the budget spent, epoch by epoch
                with open(args.state / "epochs.jsonl", "a") as log:
                    log.write(json.dumps({"epoch": trainer.epoch + 1, "threads": torch.get_num_threads(),
                                          "wall_s": round(now["wall"] - clock["wall"], 1),
                                          "cpu_s": round(now["cpu"] - clock["cpu"], 1)}) + "\n")
                clock.update(now)
            model.add_callback("on_model_save", keep)
        model.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=0, device="cpu",
                    pretrained=False, plots=False, val=False, seed=args.seed, cos_lr=args.cos_lr, project=str(out),
                    name="train", exist_ok=True, resume=str(weights) if weights.exists() else False, verbose=False)
        (out / "train" / "done").write_text(json.dumps({"seconds_last_part": round(time.time() - start, 1),
                                                        "threads": args.threads}))
        if args.state:  # the finished weights replace the resume state (5 MB, not 16)
            shutil.copyfile(weights, args.state / "final.pt.tmp")
            os.replace(args.state / "final.pt.tmp", args.state / "final.pt")
            (args.state / "last.pt").unlink(missing_ok=True)
    model = YOLO(str(weights))
    best = None
    for imgsz in args.predict_imgsz:
        report = out / f"eval_val-{imgsz}.json"
        if not report.exists():
            seconds = score(model, args.val, WIDER / "images", imgsz, report, split="val")
            timing = out / "predict_seconds.json"
            times = json.loads(timing.read_text()) if timing.exists() else {}
            times[str(imgsz)] = round(seconds, 3)  # whole-photo seconds a photo, this machine
            timing.write_text(json.dumps(times, indent=1) + "\n")
        ap50 = row(report)["AP50_16+"]  # scripts/faces_release_table.py's figure: AP50 on faces >= 16 px
        print(f"predicted at {imgsz}: AP50 on faces >= 16 px {100 * ap50:.1f}")
        if best is None or ap50 > best[0]:
            best = (ap50, imgsz, report)
    shutil.copyfile(best[2], out / "eval_val.json")  # names its own detections file, beside it
    print(f"best on val: imgsz {best[1]} (AP50 on faces >= 16 px {100 * best[0]:.1f}) -> {out / 'eval_val.json'}")
    for name in args.shifts:  # off distribution, at the size chosen on val (the longer side resized to it)
        folder = Path(f"data/wider-{name}")
        if not (folder / "instances.json").exists():
            sys.exit(f"{folder}/instances.json is missing: make it with scripts/faces-release-eval.sh (`shifted`)")
        report = out / f"eval_{name}.json"
        if not report.exists():
            score(model, folder / "instances.json", folder / "images", best[1], report, split=name)
        print(f"{name} at {best[1]}: AP50 on faces >= 16 px {100 * row(report)['AP50_16+']:.1f}")


def score(model, coco_file: Path, images: Path, imgsz: int, report: Path, split: str) -> float:
    """Predict every photo of a COCO file whole at imgsz, write the detections beside the report and score them
    with ``borrowcore eval --detections``. Returns the mean seconds a photo."""
    coco = json.loads(coco_file.read_text())
    results, seconds = [], 0.0
    for image in coco["images"]:
        begin = time.perf_counter()
        [prediction] = model.predict(str(images / image["file_name"]), imgsz=imgsz, conf=0.01, iou=0.45,
                                     max_det=200, device="cpu", verbose=False)
        seconds += time.perf_counter() - begin
        for (x0, y0, x1, y1), conf in zip(prediction.boxes.xyxy.tolist(), prediction.boxes.conf.tolist()):
            results.append({"image_id": image["id"], "category_id": 1,
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(conf, 5)})
    detections = report.with_name(report.name.replace("eval_", "detections_", 1))
    detections.write_text(json.dumps(results))
    print(f"{detections}: {len(results)} detections, {seconds / len(coco['images']):.2f} s a photo")
    subprocess.run([sys.executable, "-m", "borrowcore", "eval", "--detections", str(detections),
                    "--model-name", "yolo11n", "--coco", str(coco_file), "--images", str(images),
                    "--out", str(report), "--split", split, "--name", "wider-faces",
                    "--size-bins", "0,16,32,64,128,200"], check=True)
    return seconds / len(coco["images"])

if __name__ == "__main__":
    main()
