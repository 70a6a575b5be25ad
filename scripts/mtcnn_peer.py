"""The pretrained face detector a user might pick instead: MTCNN (facenet-pytorch; its weights, trained on WIDER
FACE's 12,880 train photos, ship in its wheel), scored by borrowcore's own evaluator (``borrowcore eval
--detections``) on the same photos as the face models, so its row and theirs compare.

facenet-pytorch is an optional install for this comparison only (``make peer`` puts it in .peer), not a
requirement of the package. Every detection MTCNN returns is kept with its probability as the score (its
three stage thresholds still apply); ``--min-face`` is its smallest face in pixels (its default 20).

    PYTHONPATH=.peer python scripts/mtcnn_peer.py --out runs/faces-release/mtcnn --min-face 20 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

WIDER = Path("../shared/data/wider-faces")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/faces-release/mtcnn"))
    parser.add_argument("--coco", type=Path, default=Path("data/wider/val.json"),
                        help="COCO file of the photos to score (scripts/faces-release.sh makes it)")
    parser.add_argument("--images", type=Path, default=WIDER / "images")
    parser.add_argument("--split", default="val")
    parser.add_argument("--min-face", dest="min_face", type=int, nargs="+", default=[20],
                        help="MTCNN's smallest face (px); each gets its own report eval_<split>-min<N>.json")
    args = parser.parse_args()
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    torch.manual_seed(0)
    coco = json.loads(args.coco.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for min_face in args.min_face:
        report = args.out / f"eval_{args.split}-min{min_face}.json"
        if report.exists():
            continue
        detector = MTCNN(keep_all=True, min_face_size=min_face, device="cpu")
        results, seconds = [], 0.0
        for image in coco["images"]:
            with Image.open(args.images / image["file_name"]) as photo:
                rgb = photo.convert("RGB")
            begin = time.perf_counter()
            with torch.no_grad():
                boxes, probs = detector.detect(rgb)
            seconds += time.perf_counter() - begin
            if boxes is None:
                continue
            for (x0, y0, x1, y1), score in zip(boxes.tolist(), probs.tolist()):
                results.append({"image_id": image["id"], "category_id": 1,
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "score": round(float(score), 5)})
        detections = args.out / f"detections_{args.split}-min{min_face}.json"
        detections.write_text(json.dumps(results))
        print(f"{detections}: {len(results)} detections, {seconds / len(coco['images']):.2f} s a photo "
              f"({torch.get_num_threads()} threads)")
        subprocess.run([sys.executable, "-m", "borrowcore", "eval", "--detections", str(detections),
                        "--model-name", f"mtcnn-min{min_face}", "--coco", str(args.coco),
                        "--images", str(args.images), "--out", str(report), "--split", args.split,
                        "--name", "wider-faces", "--size-bins", "0,16,32,64,128,200"], check=True)


if __name__ == "__main__":
    main()
