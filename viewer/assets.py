"""What the app finds bundled: checkpoints, reports, logs, sample images and COCO files, by glob.

The assets root is ``$BORROWSCOPE_ASSETS`` when set (development, tests), else the repository's assets/.
Every function returns what exists now; none of these folders has to.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def assets_root() -> Path:
    return Path(os.environ.get("BORROWSCOPE_ASSETS") or REPO / "assets")


def display_path(path: Path) -> str:
    """``path`` relative to the assets root (or the repository) for labels."""
    for base in (assets_root(), REPO):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


def checkpoints() -> list[Path]:
    return sorted((assets_root() / "checkpoints").glob("*.pt"))


# What each bundled model is for, by its name's prefix: the app opens on the first that is bundled, the
# one for everyday photos (faces in crowds) first.
BUNDLED_USES = {
    "faces": "photos of people: faces small and large in one photo (the whole photo at native resolution)",
    "aerial": "top-down aerial images: cars of 16-56 px (native-resolution windows of large tiles)",
    "synth": "the borrow benchmark's synthetic shapes (twins and orphans), not real photos",
}
DEFAULT_CHECKPOINTS = ("faces-full.pt", "faces-ssd.pt", "aerial-full.pt")


# Where a bundled family holds and where it does not, shown wherever one is chosen. Facts from
# docs/results/aerial-cars.md, docs/results/shift-robustness.md (the rescaled copies) and the issue's
# measurement on other cameras' imagery.
BUNDLED_NOTES = {
    "aerial": "Holds for top-down aerial imagery like the KIT aerial car set it was trained on, at that set's "
              "native resolution: cars of 16-56 px (median side 25 px), run on native-resolution windows. "
              "It does not hold at other scales or for other cameras: the KIT tiles themselves rescaled 2x or "
              "0.5x give a car AP of 0.0-0.2 (docs/results/shift-robustness.md), and on oblique drone stills "
              "and video frames it was reported to find almost nothing (not measured here).",
}


def _family(path: Path, table: dict[str, str]) -> str:
    """``table``'s entry for the bundled family a checkpoint's name starts with (``aerial-full.pt``: aerial)."""
    return next((text for prefix, text in table.items() if path.name.startswith(prefix + "-")), "")


def checkpoint_use(path: Path) -> str:
    """What a bundled checkpoint is for, from its name (empty for unknown names)."""
    return _family(path, BUNDLED_USES)


def checkpoint_note(path: Path) -> str:
    """Where a bundled checkpoint holds and where it does not, from its name (empty when nothing is noted)."""
    return _family(path, BUNDLED_NOTES)


def default_checkpoint(paths: list[Path]) -> int:
    """Index in ``paths`` of the checkpoint the app opens on: the face model when bundled, else the first."""
    names = [p.name for p in paths]
    return next((names.index(n) for n in DEFAULT_CHECKPOINTS if n in names), 0)


def reports() -> list[Path]:
    """Evaluation reports under reports/ (their detections are .json.gz and are not listed)."""
    return sorted(p for p in (assets_root() / "reports").rglob("*.json") if p.is_file())


def report_name(path: Path) -> str:
    """A short label: reports/ablation/full/seed0/eval_twins.json -> ablation/full/seed0/twins."""
    root = assets_root() / "reports"
    relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    stem = relative.stem.removeprefix("eval_")
    return str(relative.parent / stem) if str(relative.parent) != "." else stem


def ablation_tables() -> list[Path]:
    return sorted((assets_root() / "reports").rglob("ablation.md"))


def logs() -> list[Path]:
    """Training logs: logs/*.jsonl."""
    return sorted((assets_root() / "logs").glob("*.jsonl"))


def sample_images() -> dict[str, list[Path]]:
    """Sample sets (a folder with images/ under the root) -> their images."""
    samples = {}
    for folder in sorted(p for p in assets_root().glob("*/images") if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            samples[folder.parent.name] = images
    return samples


def coco_files() -> list[Path]:
    """COCO annotation files beside sample sets: <set>/*.json."""
    return sorted(p for p in assets_root().glob("*/*.json") if p.parent.name not in ("reports", "checkpoints"))


def default_sample(class_names: list[str] | None = None) -> Path | None:
    """The first image of a sample set annotated with exactly ``class_names`` (the checkpoint's), a
    borrow-benchmark twins split first (a small instance beside a larger twin); without a match, the first
    twins image; None when there is none."""
    import json

    files = sorted(assets_root().glob("*/*.json"), key=lambda p: (p.name != "twins.json", str(p)))
    fallback = None
    for path in files:
        try:
            coco = json.loads(path.read_text())
            names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
            first = next((path.parent / "images" / image["file_name"] for image in coco["images"]
                          if (path.parent / "images" / image["file_name"]).is_file()), None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if first is None:
            continue
        if class_names is not None and names == list(class_names):
            return first
        if fallback is None and path.name == "twins.json":
            fallback = first
    return fallback
