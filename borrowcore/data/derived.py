"""Ground-truth files that the bundled reports name but a fresh clone does not hold: each is made from the
data in ``../shared/data`` (or assets/) by one command, run from the repository root. ``make data`` runs
them all; a report whose ground truth is missing says which command makes it (``missing_ground_truth``).
"""

from __future__ import annotations

from pathlib import Path

WIDER = "../shared/data/wider-faces"
KIT = "../shared/data/aerial-cars"
SHIFTS = {"x0.5": "--scale 0.5", "x2": "--scale 2", "colour": "--hue 0.1 --saturation 0.6 --brightness 0.8"}

DERIVED: dict[str, str] = {
    "data/wider/val.json": f"borrowcore convert --from wider --images {WIDER}/images "
                           f"--labels {WIDER}/val_bbx_gt.txt --out data/wider/val.json",
    "data/wider/train.json": f"borrowcore convert --from wider --images {WIDER}/images "
                             f"--labels {WIDER}/train_bbx_gt.txt --out data/wider/train.json",
    **{f"data/wider-{name}/instances.json": f"borrowcore shift --coco data/wider/val.json --images {WIDER}/images "
                                            f"--out data/wider-{name} {args}" for name, args in SHIFTS.items()},
    **{f"data/aerial-{name}/instances.json": f"borrowcore shift --coco {KIT}/val.json --images {KIT}/images "
                                             f"--out data/aerial-{name} {args}" for name, args in SHIFTS.items()},
    **{f"data/synth/val/{split}.json": "borrowcore synth --out data/synth/val --images 300 --seed 1"
       for split in ("annotations", "twins", "orphans", "shuffled")},
}

ROOT = Path(__file__).resolve().parents[2]


def derived_command(path: str | Path) -> str | None:
    """The command that makes ``path`` (as a report names it), or None for a file no command here makes."""
    text = Path(path).as_posix()
    for relative, command in DERIVED.items():
        if text == relative or text.endswith("/" + relative):
            return command
    return None


def resolve(path: str | Path) -> Path:
    """A report's relative path as written (from the repository root, where the commands run), found from any
    working directory: as given when it exists, else under the repository root."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    rooted = ROOT / path
    return rooted if rooted.exists() else path


def missing_ground_truth(path: str | Path) -> str:
    """The message for a report whose ground truth is not there."""
    command = derived_command(path)
    if command is None:
        return f"{path}: annotation file not found"
    return (f"{path}: annotation file not found; it is made from ../shared/data by `{command}` (from the "
            f"repository root; `make data` makes every ground-truth file the bundled reports name)")
