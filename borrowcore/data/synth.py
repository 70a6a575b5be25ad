"""The borrow benchmark: procedural images in which only borrowing can name a small instance (SPEC §10).

The paper's hypothesis is that a small instance, whose own pixels say little, can "borrow" the features
of a larger instance of the same class elsewhere in the image. This generator builds images in which
that is the ONLY way to be right, so that the ablation (`ssd` / `context` / `borrow` / `full`) measures
borrowing and nothing else:

- Look-alike pairs. Each silhouette (circle, square, triangle, ...) gives two classes, e.g.
  ``circle-stripes`` and ``circle-dots``, with the same outline and the same mean colour; only a fine
  texture (stripes or dots, period 4 or 6 px, zero mean around the flat colour) tells them apart.
  The silhouette is the pair's COCO supercategory.
- Small instances (24-31 px box side) are drawn FLAT in the pair's mean colour, so their own pixels carry
  no class information: a detector reading them alone is at chance within the pair. Large instances
  (97-112 px) show their texture.
- Twins images: two silhouettes, each with one large instance and 1-3 small ones. The small instances'
  variant equals the variant of the large instance of the SAME silhouette, drawn at random per image and
  per silhouette. The other silhouette's large instance, the background and the distractors are
  independent of it, so no global image cue (context) names a small's variant; only its large twin does.
- Every small centre lies >= 60 px from every large box, beyond half of conv4_3's 108 px receptive field,
  so a shallow layer cannot see the twin directly: a long-range path has to carry it.
- Orphans images: one large silhouette and 1-3 small instances of ANOTHER silhouette, each of random
  variant. No twin exists, so every detector is at chance on these smalls by construction: a model that
  gains here is exploiting something other than borrowing (a leak in the benchmark).
- Shuffled control: a copy of each twins image in which every large instance's texture (and label) is
  swapped to the other variant while the small instances and their labels are left as they were. A model
  that really reads the twin flips its answers and fails there; a model at chance is unaffected.
- Clutter: smooth low-saturation backgrounds with sparse speckle noise and unannotated distractors
  (lines, elongated ellipses, arcs, stars; none of them a class silhouette, none in a class colour),
  which never touch an annotated instance. Images are PNG: JPEG would smear the 4-6 px texture.

Outputs of :func:`generate`: ``images/*.png`` (twins and orphans as ``000000.png``, shuffled copies as
``000000_shuffled.png``) and COCO files over that folder: ``annotations.json`` (twins + orphans, what one
trains on), ``twins.json``, ``orphans.json`` and ``shuffled.json``. Images carry ``"split"``;
annotations carry ``"silhouette"``, ``"variant"`` and ``"scale"``. Boxes are the tight box of every pixel
the silhouette touches; ``area`` is the box area (w * h), so COCOeval's small/large ranges match the
scales (a large triangle's mask area would fall in "medium").

Generation is deterministic: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the
same seed gives byte-identical files, and the first n images' pixels and boxes do not depend on
``num_images`` (a larger set extends a smaller one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# RGB flat colour of each silhouette's pair. Channels stay in [40, 190] so the texture (mean colour
# + TEXTURE_AMPLITUDE * pattern, pattern in [-1, sqrt 3]) never clips, which would shift its mean.
SILHOUETTE_COLOURS: dict[str, tuple[int, int, int]] = {
    "circle": (190, 60, 60),
    "square": (60, 90, 190),
    "triangle": (60, 170, 70),
    "diamond": (190, 160, 50),
    "hexagon": (150, 70, 180),
    "cross": (60, 170, 180),
}
DEFAULT_SILHOUETTES = ("circle", "square", "triangle")
VARIANTS = ("stripes", "dots")
SPLITS = ("twins", "orphans", "shuffled")

SMALL_SIDE = (24, 31)  # px, inclusive: 32 px anchors match them at IoU >= 0.5 (SPEC §10)
LARGE_SIDE = (97, 112)  # px, inclusive
MIN_SMALL_TO_LARGE = 60.0  # px from a small centre to any large box: > 108 / 2, conv4_3's reach
SMALLS_PER_SILHOUETTE = (1, 3)
TEXTURE_PERIODS = (4, 6)  # px; even, so half-period stripes cover exactly half the pixels
TEXTURE_AMPLITUDE = 36.0
SPECKLE_FRACTION = 0.02  # share of pixels hit by noise: dense noise would make PNGs 3x larger
SPECKLE_AMPLITUDE = 6.0
MIN_IMAGE_SIZE = 240  # two disjoint 112 px squares plus room for their twins

_SUPERSAMPLE = 4  # silhouettes are rasterised at 4x and box-averaged: anti-aliased alpha
_GAP = 2  # px kept free between annotated boxes, and between them and distractors
_PNG_COMPRESSION = 6


def _unit_polygon(silhouette: str) -> np.ndarray:
    """Outline of a silhouette inscribed in the unit square, (P, 2) as (x, y), touching all four sides."""
    if silhouette == "circle":
        angles = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
        return 0.5 + 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if silhouette == "square":
        return np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    if silhouette == "triangle":
        return np.array([[0.5, 0], [1, 1], [0, 1]], dtype=np.float64)
    if silhouette == "diamond":
        return np.array([[0.5, 0], [1, 0.5], [0.5, 1], [0, 0.5]], dtype=np.float64)
    if silhouette == "hexagon":
        return np.array([[0.25, 0], [0.75, 0], [1, 0.5], [0.75, 1], [0.25, 1], [0, 0.5]], dtype=np.float64)
    if silhouette == "cross":
        a, b = 1 / 3, 2 / 3  # arms one third wide
        return np.array(
            [[a, 0], [b, 0], [b, a], [1, a], [1, b], [b, b], [b, 1], [a, 1], [a, b], [0, b], [0, a], [a, a]],
            dtype=np.float64,
        )
    raise ValueError(f"unknown silhouette {silhouette!r}; choose from {sorted(SILHOUETTE_COLOURS)}")


def categories(silhouettes: tuple[str, ...] = DEFAULT_SILHOUETTES) -> list[dict]:
    """COCO categories: silhouette i gives ids 2i+1 (stripes) and 2i+2 (dots), supercategory = silhouette."""
    return [
        {"id": 2 * i + v + 1, "name": f"{name}-{variant}", "supercategory": name}
        for i, name in enumerate(silhouettes)
        for v, variant in enumerate(VARIANTS)
    ]


def pair_of(category_id: int) -> int:
    """The look-alike of a category: same silhouette and colour, the other texture (1 <-> 2, 3 <-> 4, ...)."""
    if category_id < 1:
        raise ValueError(f"category ids start at 1, got {category_id}")
    return category_id + 1 if category_id % 2 == 1 else category_id - 1


@dataclass(frozen=True)
class Texture:
    """A periodic zero-mean, unit-variance pattern, anchored in image coordinates."""

    variant: str  # "stripes" or "dots"
    period: int  # px
    phase: tuple[int, int]  # (dx, dy) offset of the pattern
    orientation: int  # stripes only: 0 rows, 1 columns, 2 and 3 the diagonals

    def pattern(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Pattern values at integer pixel grids ys (h, 1), xs (1, w) -> (h, w)."""
        half = self.period // 2
        xs, ys = xs + self.phase[0], ys + self.phase[1]
        if self.variant == "stripes":
            coord = (ys, xs, xs + ys, xs - ys)[self.orientation]
            # half the pixels +1, half -1: mean 0, variance 1
            return np.where(coord % self.period < half, 1.0, -1.0)
        if self.variant == "dots":
            on = (ys % self.period < half) & (xs % self.period < half)
            # dots cover 1/4 of the pixels: sqrt 3 on them, -1/sqrt 3 elsewhere gives mean 0, variance 1,
            # so the two variants differ only in layout, not in mean or contrast
            return np.where(on, np.sqrt(3.0), -1.0 / np.sqrt(3.0))
        raise ValueError(f"unknown variant {self.variant!r}")

    def swapped(self) -> Texture:
        """Same period and phase, the other variant (the shuffled control)."""
        other = VARIANTS[1 - VARIANTS.index(self.variant)]
        return Texture(other, self.period, self.phase, self.orientation)


@dataclass(frozen=True)
class Instance:
    """One annotated silhouette: its anti-aliased coverage, tight box and how it is filled."""

    silhouette: str
    variant: str
    scale: str  # "small" (flat) or "large" (textured)
    box: tuple[int, int, int, int]  # x, y, w, h of every pixel with coverage > 0
    alpha: np.ndarray  # (h, w) coverage in [0, 1] over `box`
    texture: Texture | None  # None: flat in the pair's mean colour

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


def _render_alpha(silhouette: str, x: float, y: float, side: float) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Coverage of a silhouette inscribed in the square [x, x+side] x [y, y+side] -> (tight box, (h, w) alpha)."""
    ox, oy = int(np.floor(x)) - 1, int(np.floor(y)) - 1  # patch origin, 1 px of slack each side
    size = int(np.ceil(side)) + 3
    # vertices in supersampled pixels, where pixel j's centre sits at j (hence the -0.5); 4 fractional bits
    ss = _SUPERSAMPLE
    vertices = (_unit_polygon(silhouette) * side + [x - ox, y - oy]) * ss - 0.5
    mask = np.zeros((size * ss, size * ss), np.uint8)
    cv2.fillPoly(mask, [np.rint(vertices * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    alpha = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    # fillPoly fills boundary subsamples inclusively, leaving one-subsample specks at sharp vertices
    # that would widen the box by a pixel nobody can see: drop coverage under 1/8
    alpha[alpha < 0.125] = 0.0
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (ox + int(c0), oy + int(r0), int(c1 - c0), int(r1 - r0)), alpha[r0:r1, c0:c1]


def _distance_to_box(px: np.ndarray, py: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Euclidean distance from points to a box [x, x+w] x [y, y+h] (0 inside)."""
    x, y, w, h = box
    dx = np.maximum(np.maximum(x - px, px - (x + w)), 0.0)
    dy = np.maximum(np.maximum(y - py, py - (y + h)), 0.0)
    return np.hypot(dx, dy)


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = _GAP) -> bool:
    """True if the boxes are disjoint with at least `gap` px between them."""
    return (
        a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0] or a[1] + a[3] + gap <= b[1] or b[1] + b[3] + gap <= a[1]
    )


def _inside(box: tuple[int, int, int, int], image_size: int) -> bool:
    x, y, w, h = box
    return x >= 0 and y >= 0 and x + w <= image_size and y + h <= image_size


def _place_large(
    rng: np.random.Generator, silhouette: str, variant: str, image_size: int, others: list[Instance]
) -> Instance | None:
    """A textured large instance anywhere in the image, apart from `others`; None if this draw collides."""
    side = rng.uniform(LARGE_SIDE[0] - 0.5, LARGE_SIDE[1] + 0.5)
    x, y = rng.uniform(1.0, image_size - side - 1.0, size=2)
    texture = Texture(
        variant,
        int(rng.choice(TEXTURE_PERIODS)),
        (int(rng.integers(0, 12)), int(rng.integers(0, 12))),
        int(rng.integers(0, 4)),
    )
    box, alpha = _render_alpha(silhouette, x, y, side)
    lo, hi = LARGE_SIDE
    if not (lo <= box[2] <= hi and lo <= box[3] <= hi and _inside(box, image_size)):
        return None
    if not all(_boxes_apart(box, other.box) for other in others):
        return None
    return Instance(silhouette, variant, "large", box, alpha, texture)


def _small_centres(image_size: int, larges: list[Instance]) -> np.ndarray:
    """Flat indices (cy * S + cx) of pixels that may hold a small centre: >= MIN_SMALL_TO_LARGE from every large."""
    coords = np.arange(image_size, dtype=np.float64) + 0.5
    px, py = coords[None, :], coords[:, None]
    allowed = np.ones((image_size, image_size), bool)
    for large in larges:
        # 1 px of slack: the rasterised box may sit half a pixel off the drawn centre
        allowed &= _distance_to_box(px, py, large.box) >= MIN_SMALL_TO_LARGE + 1.0
    margin = SMALL_SIDE[1] // 2 + 2
    allowed[:margin], allowed[-margin:], allowed[:, :margin], allowed[:, -margin:] = False, False, False, False
    return np.flatnonzero(allowed)


def _place_small(
    rng: np.random.Generator,
    silhouette: str,
    variant: str,
    image_size: int,
    centres: np.ndarray,
    larges: list[Instance],
    placed: list[Instance],
    attempts: int = 30,
) -> Instance | None:
    """A flat small instance centred on one of `centres`, apart from `placed`; None if no room."""
    if centres.size == 0:
        return None
    lo, hi = SMALL_SIDE
    for _ in range(attempts):
        cy, cx = np.divmod(int(rng.choice(centres)), image_size)
        side = rng.uniform(lo - 0.5, hi + 0.5)
        box, alpha = _render_alpha(silhouette, cx + 0.5 - side / 2, cy + 0.5 - side / 2, side)
        if not (lo <= box[2] <= hi and lo <= box[3] <= hi and _inside(box, image_size)):
            continue
        centre_x, centre_y = box[0] + box[2] / 2, box[1] + box[3] / 2
        if any(_distance_to_box(centre_x, centre_y, large.box) < MIN_SMALL_TO_LARGE for large in larges):
            continue
        if all(_boxes_apart(box, other.box) for other in placed):
            return Instance(silhouette, variant, "small", box, alpha, None)
    return None


def _layout(
    rng: np.random.Generator, split: str, silhouettes: tuple[str, ...], image_size: int, attempts: int = 200
) -> list[Instance]:
    """Instances of one twins or orphans image (larges first)."""
    for _ in range(attempts):
        first, second = (silhouettes[i] for i in rng.choice(len(silhouettes), size=2, replace=False))
        large_silhouettes = (first, second) if split == "twins" else (first,)
        larges: list[Instance] = []
        for silhouette in large_silhouettes:
            large = None
            for _ in range(50):
                large = _place_large(rng, silhouette, VARIANTS[int(rng.integers(2))], image_size, larges)
                if large is not None:
                    break
            if large is None:
                break
            larges.append(large)
        if len(larges) < len(large_silhouettes):
            continue
        # twins: each silhouette's smalls copy its large's variant; orphans: smalls of the other
        # silhouette, no twin, random variant each
        if split == "twins":
            wanted = [
                (large.silhouette, large.variant)
                for large in larges
                for _ in range(int(rng.integers(SMALLS_PER_SILHOUETTE[0], SMALLS_PER_SILHOUETTE[1] + 1)))
            ]
        else:
            count = int(rng.integers(SMALLS_PER_SILHOUETTE[0], SMALLS_PER_SILHOUETTE[1] + 1))
            wanted = [(second, VARIANTS[int(rng.integers(2))]) for _ in range(count)]
        # round-robin over silhouettes so that, when room runs out, each keeps at least one small
        rank: dict[str, int] = {}
        order: list[tuple[int, str, str]] = []
        for silhouette, variant in wanted:
            rank[silhouette] = rank.get(silhouette, -1) + 1
            order.append((rank[silhouette], silhouette, variant))
        centres = _small_centres(image_size, larges)
        smalls: list[Instance] = []
        for _, silhouette, variant in sorted(order, key=lambda item: item[0]):
            small = _place_small(rng, silhouette, variant, image_size, centres, larges, larges + smalls)
            if small is not None:
                smalls.append(small)
        if {s.silhouette for s in smalls} == {silhouette for silhouette, _ in wanted}:
            return larges + smalls
    raise RuntimeError(f"could not lay out a {split} image of size {image_size} in {attempts} attempts")


def _is_class_like(colour: np.ndarray, min_distance: float = 80.0) -> bool:
    """True if an RGB colour is within `min_distance` of any class colour."""
    palette = np.array(list(SILHOUETTE_COLOURS.values()), dtype=np.float64)
    return bool((np.linalg.norm(palette - colour, axis=1) < min_distance).any())


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Smooth, low-saturation colour field: a coarse random grid upsampled bicubically -> (S, S, 3) uint8."""
    cells = int(rng.integers(2, 6))
    level = rng.uniform(80.0, 190.0)
    grid = level + rng.uniform(-35.0, 35.0, (cells, cells, 1)) + rng.uniform(-14.0, 14.0, (cells, cells, 3))
    field = cv2.resize(grid.astype(np.float32), (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    # steps of 2 grey levels: invisible, and PNG packs the image about a fifth smaller
    return (np.clip(np.rint(field / 2.0) * 2.0, 0, 255)).astype(np.uint8)


def _distractor_coverage(rng: np.random.Generator, size: int) -> np.ndarray:
    """Anti-aliased coverage (S, S) uint8 of one clutter shape: a line, an elongated ellipse, an arc or a star."""
    coverage = np.zeros((size, size), np.uint8)
    kind = int(rng.integers(4))
    centre = rng.uniform(0, size, 2)
    radius = rng.uniform(5.0, 22.0)
    c = (int(np.rint(centre[0])), int(np.rint(centre[1])))
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        offset = radius * 1.5 * np.array([np.cos(angle), np.sin(angle)])
        p, q = np.rint(centre - offset).astype(int), np.rint(centre + offset).astype(int)
        cv2.line(coverage, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 255, int(rng.integers(1, 4)), cv2.LINE_AA)
    elif kind == 1:
        # axis ratio >= 2.5: never mistaken for a circle
        axes = (int(radius), max(2, int(radius / rng.uniform(2.5, 5.0))))
        cv2.ellipse(coverage, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    elif kind == 2:
        start, sweep, r = float(rng.uniform(0, 360)), float(rng.uniform(60, 200)), int(radius)
        cv2.ellipse(coverage, c, (r, r), 0.0, start, start + sweep, 255, int(rng.integers(2, 4)), cv2.LINE_AA)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.4)
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        cv2.fillPoly(coverage, [np.rint(points * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return coverage


def _add_distractors(rng: np.random.Generator, image: np.ndarray, instances: list[Instance]) -> None:
    """Blend 3-8 distractors into `image` (S, S, 3) uint8 in place, none touching an annotated box."""
    size = image.shape[0]
    occupied = np.zeros((size, size), bool)
    for inst in instances:
        x, y, w, h = inst.box
        occupied[max(0, y - _GAP) : y + h + _GAP, max(0, x - _GAP) : x + w + _GAP] = True
    for _ in range(int(rng.integers(3, 9))):
        for _ in range(20):
            colour = np.clip(rng.uniform(15.0, 240.0) + rng.uniform(-20.0, 20.0, 3), 0, 255)
            coverage = _distractor_coverage(rng, size)
            if _is_class_like(colour) or (coverage.astype(bool) & occupied).any():
                continue
            x, y, w, h = cv2.boundingRect(coverage)  # blend only where the shape is
            alpha = coverage[y : y + h, x : x + w, None].astype(np.float32) / 255.0
            region = image[y : y + h, x : x + w]
            region[:] = np.rint(region * (1.0 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
            break


def _speckle(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Sparse grey noise (S, S, 1): +-SPECKLE_AMPLITUDE on SPECKLE_FRACTION of the pixels, 0 elsewhere."""
    hit = rng.random((image_size, image_size, 1)) < SPECKLE_FRACTION
    sign = rng.choice([-1.0, 1.0], size=hit.shape)
    return (hit * sign * SPECKLE_AMPLITUDE).astype(np.float32)


def _compose(base: np.ndarray, speckle: np.ndarray, instances: list[Instance]) -> np.ndarray:
    """Alpha-blend instances over `base` (S, S, 3) uint8 and add `speckle` (S, S, 1) -> (S, S, 3) uint8 RGB."""
    image = base.astype(np.float32)
    for inst in instances:
        x, y, w, h = inst.box
        colour = np.array(SILHOUETTE_COLOURS[inst.silhouette], np.float32)
        if inst.texture is None:
            fill = colour  # flat: the class cannot be read from a small's own pixels
        else:
            ys, xs = np.arange(y, y + h)[:, None], np.arange(x, x + w)[None, :]
            fill = colour + TEXTURE_AMPLITUDE * inst.texture.pattern(ys, xs)[..., None].astype(np.float32)
        alpha = inst.alpha[..., None]
        region = image[y : y + h, x : x + w]
        region[:] = region * (1.0 - alpha) + fill * alpha
    image += speckle
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shuffled(instances: list[Instance]) -> list[Instance]:
    """The control: every large instance gets the other texture and label; smalls are untouched."""
    out = []
    for inst in instances:
        if inst.scale == "large":
            texture = inst.texture.swapped()
            inst = Instance(inst.silhouette, texture.variant, "large", inst.box, inst.alpha, texture)
        out.append(inst)
    return out


def _annotation(inst: Instance, ann_id: int, image_id: int, silhouettes: tuple[str, ...]) -> dict:
    x, y, w, h = inst.box
    category_id = 2 * silhouettes.index(inst.silhouette) + VARIANTS.index(inst.variant) + 1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": 0,
        "silhouette": inst.silhouette,
        "variant": inst.variant,
        "scale": inst.scale,
    }


def generate(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: int = 256,
    silhouettes: tuple[str, ...] = DEFAULT_SILHOUETTES,
    twins_fraction: float = 0.5,
    shuffled: bool = True,
) -> dict:
    """Write the borrow benchmark to `out_dir` (see the module docstring) and return a summary.

    Returns ``{"out_dir", "images": {split: count}, "instances": {"small": n, "large": n},
    "small_per_image", "categories"}``.
    """
    silhouettes = tuple(silhouettes)
    for name in silhouettes:
        _unit_polygon(name)  # raises on an unknown name
    if len(set(silhouettes)) != len(silhouettes) or len(silhouettes) < 2:
        raise ValueError(f"need at least two distinct silhouettes, got {silhouettes}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size {image_size} < {MIN_IMAGE_SIZE}: two large instances and their twins do not fit")
    if not 0.0 <= twins_fraction <= 1.0:
        raise ValueError(f"twins_fraction must lie in [0, 1], got {twins_fraction}")
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")

    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    cats = categories(silhouettes)
    records: dict[str, dict[str, list]] = {split: {"images": [], "annotations": []} for split in SPLITS}
    png = [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION]

    for index in range(num_images):
        # exact twins count, evenly interleaved, independent of num_images for the first images
        split = "twins" if int((index + 1) * twins_fraction) > int(index * twins_fraction) else "orphans"
        rng = np.random.default_rng([seed, index])
        instances = _layout(rng, split, silhouettes, image_size)
        base = _background(rng, image_size)
        _add_distractors(rng, base, instances)
        speckle = _speckle(rng, image_size)

        versions = [(split, f"{index:06d}.png", index + 1, instances)]
        if shuffled and split == "twins":
            versions.append(("shuffled", f"{index:06d}_shuffled.png", num_images + index + 1, _shuffled(instances)))
        for version_split, file_name, image_id, version in versions:
            image = _compose(base, speckle, version)
            cv2.imwrite(str(image_dir / file_name), image[..., ::-1], png)  # RGB -> BGR for OpenCV
            entry = {
                "id": image_id,
                "file_name": file_name,
                "width": image_size,
                "height": image_size,
                "split": version_split,
            }
            if version_split == "shuffled":
                entry["source_id"] = index + 1
            records[version_split]["images"].append(entry)
            for inst in version:
                records[version_split]["annotations"].append(_annotation(inst, 0, image_id, silhouettes))

    # ids: twins and orphans 1..n in image order whether or not the control is written, then the control
    trained = sorted(records["twins"]["annotations"] + records["orphans"]["annotations"], key=lambda a: a["image_id"])
    for ann_id, ann in enumerate(trained + records["shuffled"]["annotations"], start=1):
        ann["id"] = ann_id

    info = {
        "description": "borrowcore borrow benchmark (SPEC §10)",
        "seed": seed,
        "num_images": num_images,
        "image_size": image_size,
        "silhouettes": list(silhouettes),
        "twins_fraction": twins_fraction,
    }

    def write(name: str, splits: tuple[str, ...]) -> None:
        coco = {
            "info": info,
            "images": [img for s in splits for img in records[s]["images"]],
            "annotations": [ann for s in splits for ann in records[s]["annotations"]],
            "categories": cats,
        }
        coco["images"].sort(key=lambda img: img["id"])
        coco["annotations"].sort(key=lambda ann: ann["id"])
        (out_dir / name).write_text(json.dumps(coco))

    write("annotations.json", ("twins", "orphans"))
    for split in SPLITS:
        if split != "shuffled" or shuffled:
            write(f"{split}.json", (split,))

    smalls = sum(ann["scale"] == "small" for ann in trained)
    return {
        "out_dir": str(out_dir),
        "images": {split: len(records[split]["images"]) for split in SPLITS},
        "instances": {"small": smalls, "large": len(trained) - smalls},
        "small_per_image": smalls / max(1, num_images),
        "categories": len(cats),
    }
