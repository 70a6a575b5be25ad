"""The borrow benchmark's promises (SPEC §10), checked from the written JSON and the decoded PNGs."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from borrowcore.data import synth

ASSET = Path(__file__).resolve().parents[1] / "assets" / "synth-tiny"

# Outlines inscribed in the unit square, written out again here so the check does not trust synth's own.
OUTLINES = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "hexagon": [(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)],
    "cross": [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1)],
}
OUTLINES["cross"] = [(u / 3, v / 3) for u, v in OUTLINES["cross"]]


def interior(silhouette: str, bbox: list[int], size: int, erode: int = 3) -> np.ndarray:
    """Boolean (S, S) mask of a silhouette filling `bbox`, `erode` px in from its edge (no anti-aliasing)."""
    x, y, w, h = bbox
    if silhouette == "circle":
        centres = np.arange(size) + 0.5  # pixel i spans [i, i + 1]
        dx, dy = centres[None, :] - (x + w / 2), centres[:, None] - (y + h / 2)
        return np.hypot(dx, dy) <= min(w, h) / 2 - erode
    mask = np.zeros((size, size), np.uint8)
    points = np.array([(x + u * w - 0.5, y + v * h - 0.5) for u, v in OUTLINES[silhouette]])  # cv2: centre at i
    cv2.fillPoly(mask, [np.rint(points * 16).astype(np.int32)], 1, shift=4)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1, 2 * erode + 1))
    # zero border: by default erode treats outside the image as inside, so edges at the border survive
    return cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def distance_to_box(point: tuple[float, float], bbox: list[int]) -> float:
    x, y, w, h = bbox
    dx = max(x - point[0], 0.0, point[0] - (x + w))
    dy = max(y - point[1], 0.0, point[1] - (y + h))
    return float(np.hypot(dx, dy))


def disjoint(a: list[int], b: list[int]) -> bool:
    return a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]


def load(root: Path, name: str) -> tuple[dict, dict[int, list[dict]]]:
    coco = json.loads((root / name).read_text())
    by_image = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return coco, by_image


def read_rgb(root: Path, file_name: str) -> np.ndarray:
    return cv2.imread(str(root / "images" / file_name), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float64)


def check_split(root: Path, name: str, split: str) -> None:
    """Geometry, pixels and labels of every instance of one split file."""
    coco, by_image = load(root, name)
    names = {cat["id"]: cat["name"] for cat in coco["categories"]}
    assert coco["images"], name
    for img in coco["images"]:
        assert img["split"] == split
        size = img["width"]
        image = read_rgb(root, img["file_name"])
        assert image.shape == (img["height"], size, 3)
        anns = by_image[img["id"]]
        larges = [a for a in anns if a["scale"] == "large"]
        smalls = [a for a in anns if a["scale"] == "small"]
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= size and y + h <= size
            assert ann["area"] == w * h and ann["iscrowd"] == 0
            assert names[ann["category_id"]] == f"{ann['silhouette']}-{ann['variant']}"
            lo, hi = synth.SMALL_SIDE if ann["scale"] == "small" else synth.LARGE_SIDE
            assert lo <= w <= hi and lo <= h <= hi, ann

            colour = np.array(synth.SILHOUETTE_COLOURS[ann["silhouette"]], np.float64)
            pixels = image[interior(ann["silhouette"], ann["bbox"], size)]  # (n, 3)
            assert len(pixels) > 50
            deviation = (pixels - colour).mean(axis=1)  # the texture moves all channels together
            if ann["scale"] == "small":
                # flat in the pair's mean colour: only the sparse speckle departs from it
                assert np.abs(pixels - colour).max() <= synth.SPECKLE_AMPLITUDE + 1
                assert (np.abs(pixels - colour).max(axis=1) <= 1).mean() > 0.9
            else:
                assert np.abs(pixels.mean(axis=0) - colour).max() < 4.0  # texture keeps the mean colour
                assert deviation.std() > 25.0
                # stripes light half the pixels, dots a quarter: the drawn texture matches the label
                bright = (deviation > 0).mean()
                assert abs(bright - (0.5 if ann["variant"] == "stripes" else 0.25)) < 0.1, (img, ann, bright)

        for a, b in combinations(anns, 2):
            assert disjoint(a["bbox"], b["bbox"]), (a, b)
        for small in smalls:
            x, y, w, h = small["bbox"]
            centre = (x + w / 2, y + h / 2)
            assert all(distance_to_box(centre, large["bbox"]) >= 60.0 for large in larges)

        large_of = {a["silhouette"]: a for a in larges}
        assert 1 <= len(smalls)
        if split in ("twins", "shuffled"):
            assert len(larges) == 2 and len(large_of) == 2
            for silhouette in large_of:
                assert 1 <= sum(s["silhouette"] == silhouette for s in smalls) <= 3
            for small in smalls:
                twin = large_of[small["silhouette"]]
                expected = twin["category_id"] if split == "twins" else synth.pair_of(twin["category_id"])
                assert small["category_id"] == expected
                # same mean colour: the small's flat colour is what the twin's texture averages to
                flat = image[interior(small["silhouette"], small["bbox"], size)].mean(axis=0)
                textured = image[interior(twin["silhouette"], twin["bbox"], size)].mean(axis=0)
                assert np.abs(flat - textured).max() < 4.0
        else:
            assert len(larges) == 1 and len(smalls) <= 3
            assert len({s["silhouette"] for s in smalls}) == 1
            assert smalls[0]["silhouette"] not in large_of


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bench")
    return root, synth.generate(root, 24, seed=3)


@pytest.mark.parametrize("split", synth.SPLITS)
def test_invariants(bench, split):
    root, _ = bench
    check_split(root, f"{split}.json", split)


def test_six_silhouettes_and_larger_images(tmp_path):
    summary = synth.generate(tmp_path, 8, seed=1, image_size=320, silhouettes=tuple(synth.SILHOUETTE_COLOURS))
    assert summary["categories"] == 12
    for split in synth.SPLITS:
        check_split(tmp_path, f"{split}.json", split)


def test_shuffled_swaps_only_the_large_textures(bench):
    root, _ = bench
    twins, twin_anns = load(root, "twins.json")
    shuffled, shuffled_anns = load(root, "shuffled.json")
    source = {img["id"]: img for img in twins["images"]}
    assert len(shuffled["images"]) == len(twins["images"])
    for img in shuffled["images"]:
        original = source[img["source_id"]]
        assert img["file_name"] == original["file_name"].replace(".png", "_shuffled.png")
        before, after = twin_anns[original["id"]], shuffled_anns[img["id"]]
        assert [a["bbox"] for a in before] == [a["bbox"] for a in after]
        outside_larges = np.ones((img["height"], img["width"]), bool)
        for old, new in zip(before, after):
            if old["scale"] == "large":
                assert new["category_id"] == synth.pair_of(old["category_id"]) != old["category_id"]
                x, y, w, h = old["bbox"]
                outside_larges[y : y + h, x : x + w] = False
            else:
                assert new["category_id"] == old["category_id"]
        difference = read_rgb(root, img["file_name"]) != read_rgb(root, original["file_name"])
        assert not difference[outside_larges].any()
        assert difference.any()


def test_no_global_cue_names_the_variant(bench):
    # each silhouette's variant is drawn on its own: both larges of a twins image agree only by chance
    root, _ = bench
    _, by_image = load(root, "twins.json")
    agree = [len({a["variant"] for a in anns if a["scale"] == "large"}) == 1 for anns in by_image.values()]
    assert any(agree) and not all(agree)


def test_files_and_summary(bench):
    root, summary = bench
    assert summary["images"] == {"twins": 12, "orphans": 12, "shuffled": 12}
    train, _ = load(root, "annotations.json")
    assert {img["split"] for img in train["images"]} == {"twins", "orphans"}
    assert len(train["images"]) == 24
    scales = [a["scale"] for a in train["annotations"]]
    assert summary["instances"] == {"small": scales.count("small"), "large": scales.count("large")}
    assert scales.count("large") == 12 * 2 + 12
    assert len(list((root / "images").glob("*.png"))) == 36
    for name in ("annotations.json", "twins.json", "orphans.json", "shuffled.json"):
        coco = COCO(str(root / name))
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5, 6]
        assert len(coco.getAnnIds()) == len({a["id"] for a in coco.dataset["annotations"]})
        assert all((root / "images" / img["file_name"]).exists() for img in coco.dataset["images"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, second, other = (synth.generate(tmp_path / d, 6, seed=s) for d, s in (("a", 7), ("b", 7), ("c", 8)))
    assert first == {**second, "out_dir": first["out_dir"]}
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert a["annotations.json"] != c["annotations.json"]
    assert all(a[name] != c[name] for name in a if name.endswith(".png"))


def test_first_images_do_not_depend_on_the_count(tmp_path):
    synth.generate(tmp_path / "few", 3, seed=2)
    synth.generate(tmp_path / "many", 6, seed=2)
    for name in ("000000.png", "000001.png", "000001_shuffled.png", "000002.png"):
        assert (tmp_path / "few" / "images" / name).read_bytes() == (tmp_path / "many" / "images" / name).read_bytes()


def test_twins_fraction_and_no_control(tmp_path):
    summary = synth.generate(tmp_path, 8, seed=0, twins_fraction=0.25, shuffled=False)
    assert summary["images"] == {"twins": 2, "orphans": 6, "shuffled": 0}
    assert not (tmp_path / "shuffled.json").exists() and not list(tmp_path.glob("images/*_shuffled.png"))
    train, _ = load(tmp_path, "annotations.json")
    assert [a["id"] for a in train["annotations"]] == list(range(1, len(train["annotations"]) + 1))


def test_distractors_never_touch_instances():
    rng = np.random.default_rng(0)
    instances = synth._layout(rng, "twins", synth.DEFAULT_SILHOUETTES, 256)
    image = np.full((256, 256, 3), 128, np.uint8)
    synth._add_distractors(rng, image, instances)
    assert (image != 128).any()
    for inst in instances:
        x, y, w, h = inst.box
        assert (image[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] == 128).all()


def test_pairs_and_categories():
    cats = synth.categories(("circle", "cross"))
    assert [(c["id"], c["name"], c["supercategory"]) for c in cats] == [
        (1, "circle-stripes", "circle"),
        (2, "circle-dots", "circle"),
        (3, "cross-stripes", "cross"),
        (4, "cross-dots", "cross"),
    ]
    assert [synth.pair_of(i) for i in (1, 2, 3, 4, 5, 6)] == [2, 1, 4, 3, 6, 5]


@pytest.mark.parametrize(
    "kwargs",
    [{"silhouettes": ("circle", "star")}, {"silhouettes": ("circle",)}, {"image_size": 160}, {"twins_fraction": 1.5}],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        synth.generate(tmp_path, 2, **kwargs)


def test_shipped_tiny_set(tmp_path):
    total = sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024
    du = subprocess.run(["du", "-sk", str(ASSET)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) < 2048
    for split in synth.SPLITS:
        coco = COCO(str(ASSET / f"{split}.json"))
        assert coco.dataset["images"] and coco.dataset["annotations"]
        check_split(ASSET, f"{split}.json", split)
    # the shipped set is what the code makes today (pixels, not PNG bytes: zlib builds may differ)
    synth.generate(tmp_path, 32, seed=0)
    for name in ("annotations.json", "twins.json", "orphans.json", "shuffled.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((ASSET / name).read_text())
    for png in sorted((ASSET / "images").glob("*.png")):
        assert np.array_equal(cv2.imread(str(png)), cv2.imread(str(tmp_path / "images" / png.name)))
