"""The bundled sample photos (assets/faces) scaled up as a phone would take them, run whole with a face
checkpoint's own recipe at several ``max_whole_side`` values: per photo, scale and side, the boxes shown at
the checkpoint's default threshold, the faces of 32 px and more (in the original) found (IoU >= 0.5), and
the boxes on no such face (on the crowd photos some of those are smaller faces; on the portrait and the
group photo they are false).

    python scripts/studies/closeup_boxes.py assets/checkpoints/faces-full.pt --scales 2 3 --sides 2048 1536 1280
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from borrowcore.data.images import read_image_rgb
from borrowcore.models.checkpoint import load_detector

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--scales", type=float, nargs="+", default=[2, 3])
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 1536, 1280])
    args = parser.parse_args()
    coco = json.loads((ROOT / "assets/faces/instances.json").read_text())
    detectors = {side: load_detector(args.checkpoint, recipe={"max_whole_side": side}) for side in args.sides}
    for image in coco["images"]:
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")]
        faces = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes if w * h >= 32 ** 2]).reshape(-1, 4)
        photo = read_image_rgb(ROOT / "assets/faces/images" / image["file_name"])
        for scale in args.scales:
            scaled = F.interpolate(photo[None].float(), scale_factor=scale, mode="bilinear", antialias=True)[0]
            scaled = scaled.round().clamp(0, 255).to(torch.uint8)
            for side, detector in detectors.items():
                with torch.inference_mode():
                    [found] = detector([scaled])
                boxes = found["boxes"][found["scores"] >= detector.config.display_threshold]
                iou = box_iou(boxes, faces * scale)
                found_faces = int((iou.max(0).values >= 0.5).sum()) if len(boxes) and len(faces) else 0
                on_face = int((iou.max(1).values >= 0.5).sum()) if len(boxes) and len(faces) else 0
                print(f"{image['file_name']}  x{scale:g}  side {side}: {len(boxes)} boxes, "
                      f"{found_faces} of {len(faces)} faces >= 32 px found, {len(boxes) - on_face} on no such face")


if __name__ == "__main__":
    main()
