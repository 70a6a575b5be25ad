"""The detector's typed, saved configuration: its architecture and inference recipe.

Configs are plain dataclasses (nanoGPT's ``GPTConfig`` style) that round-trip through YAML or JSON
and through checkpoints as plain dicts, so ``torch.load(weights_only=True)`` can read them back. The
training recipe around it is ``borrowcore.engine.config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

NECKS = ("ssd", "context", "borrow", "full")
INFERENCE_MODES = ("resize", "whole", "tiles")
SIMILARITIES = ("cosine", "dot")
MATCHING_MODES = ("fast", "exact")
# Keys per deeper map under matching "fast" when key_budget is 0: chosen by measurement (docs/benchmarks.md,
# "Fast by default"): `full` within 0.98-1.22x of `ssd`'s time from 300 to 2048 px on 2 CPU cores, for 0.3 AP
# on the face model and 0.4 AP_S on the synthetic twins
DEFAULT_KEY_BUDGET = 64


@dataclass
class DetectorConfig:
    """Architecture of the feature-borrowing SSD (SPEC §1-§5)."""

    neck: str = "full"  # ssd | context | borrow | full (SPEC §4, "Ablations")
    num_classes: int = 80  # foreground classes K; the head predicts K + 1 (0 = background)
    input_size: int = 300  # S: images are resized (or tiled) to S x S
    width: float = 1.0  # multiplies every backbone and neck channel count
    batch_norm: bool = False  # BatchNorm after every backbone conv (for training from scratch)
    fc6_dilation: int = 1  # 1 keeps Table 1's receptive fields; 3 takes converted fc6 weights
    similarity: str = "cosine"  # FMB matching: cosine x learnable inverse temperature, or dot
    borrow_channels: int = 256  # c, the FRB / deconvolution channels at width 1
    # FMB keys (SPEC §4, extended below in docs/benchmarks.md). "fast": a deeper map with more than key_budget
    # cells is average-pooled (by powers of two) to at most that many before matching, so borrowing costs time
    # linear in the image (neck.pool_to_budget); smaller maps are matched whole. "exact": every cell of every
    # deeper map, the paper's full softmax, whose cost grows with the square of the image.
    matching: str = "fast"
    key_budget: int = 0  # keys per deeper map under "fast"; 0 takes DEFAULT_KEY_BUDGET
    # Levers on the matching, off in the paper's configs (docs/method.md "Levers on the matching"):
    # top_k > 0 keeps each S_hat row's k largest scores and renormalises (sparse matching); 0: every key
    matching_top_k: int = 0
    # > 0: weight of the supervised matching loss L_match (borrow_targets.py): -log of a small instance's
    # S_hat mass on the deeper cells inside larger instances of its class, from the training boxes; 0: off
    matching_loss: float = 0.0
    # > 0 (with matching_loss): also supervise background cells towards background keys, at this weight
    # relative to L_match (borrow_targets.py, L_bg), so that the borrowed map can tell a face from background
    matching_loss_background: float = 0.0
    # true (with matching_loss): the matching loss trains theta and phi only; the backbone maps under them take
    # no gradient from it, so it cannot pull the detection features towards matching (docs/method.md)
    matching_loss_detach: bool = False
    # L_match's targets: the instances of the query's class with at least this many times its area (2: the
    # paper's larger instances); 0: every other instance of its class, those of its own size included (peers)
    matching_loss_area_ratio: float = 2.0
    anchor_scale: float = 4.0  # S_k = anchor_scale * stride_k (Table 1: 32, 64, 128, 256)
    aspect_ratios: list[float] = field(default_factory=lambda: [1.5, 3.0])  # each r gives r and 1/r
    # octaves above the coarsest layer's sizes on that layer (S_N 2^i, S'_N 2^i, i = 1..top_octaves; 0: SPEC §3)
    top_octaves: int = 0
    match_iou: float = 0.5  # SPEC §5; S3FD / RetinaFace match tiny faces at 0.35
    # > 0: S3FD's scale compensation, every box gets at least this many positive anchors (of IoU > 0.1): the
    # faces under 12 px, which no 16 px anchor reaches at IoU 0.35, train more than their one forced anchor
    min_anchors_per_box: int = 0
    # > 0: RetinaNet's head init, N(0, 0.01^2) weights and class biases so that every anchor starts with this
    # foreground probability (0.25 is the balance point of 3:1 hard-negative mining); 0: SSD's Xavier init
    prior_prob: float = 0.0
    # The inference recipe, stored with the weights so predict, eval and the app need no flags (SPEC §1):
    # "resize" to S x S; "whole" image at native resolution, padded to multiples of 64 (photos whose
    # longer side exceeds max_whole_side are cut into S x S tiles instead); "tiles" of S x S always.
    inference: str = "resize"
    max_whole_side: int = 2048
    # "whole" on a photo with a side over max_whole_side: "tiles" cuts S x S tiles at native resolution;
    # "shrink" scales the photo down until its longer side is max_whole_side (a phone portrait's face stays
    # one face in the anchors' range), and detections are mapped back to the photo's pixels
    oversize: str = "tiles"
    # "whole": one more pass per scale s < 1 here (the photo scaled by s after any shrink), keeping only its
    # boxes of at least zoom_out_min px (sqrt of the area, in the photo): faces larger than the largest
    # anchors are seen at a size the anchors reach; merged with the native pass by class-wise NMS
    zoom_out: list[float] = field(default_factory=list)
    zoom_out_min: int = 256
    # > 0: after NMS, drop a box when at least this share of its area lies inside a better-scoring box of its
    # class (a face holds no face: the parts of a face larger than the anchors look like faces); 0: off
    drop_inside: float = 0.0
    display_threshold: float = 0.5  # the app's default score threshold (release: the F1-best on validation)
    score_threshold: float = 0.01
    nms_iou: float = 0.45
    candidates_per_class: int = 400
    detections_per_image: int = 200

    def __post_init__(self) -> None:
        if self.neck not in NECKS:
            raise ValueError(f"neck must be one of {NECKS}, got {self.neck!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {self.inference!r}")
        if self.oversize not in ("tiles", "shrink"):
            raise ValueError(f"oversize must be tiles or shrink, got {self.oversize!r}")
        if any(not 0 < z < 1 for z in self.zoom_out):
            raise ValueError(f"zoom_out lists scales in (0, 1), got {self.zoom_out}")
        self.zoom_out = [float(z) for z in self.zoom_out]
        if not 0 <= self.drop_inside <= 1:
            raise ValueError(f"drop_inside is a share of a box's area in [0, 1] (0: off), got {self.drop_inside}")
        if self.zoom_out_min < 0:
            raise ValueError(f"zoom_out_min must be >= 0 px, got {self.zoom_out_min}")
        if not 0 < self.match_iou <= 1:
            raise ValueError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if self.min_anchors_per_box < 0:
            raise ValueError(f"min_anchors_per_box must be >= 0 (0: SSD's matching), got {self.min_anchors_per_box}")
        if not 0 <= self.prior_prob < 1:
            raise ValueError(f"prior_prob must be in [0, 1) (0: zero biases), got {self.prior_prob}")
        if self.input_size < 128:
            raise ValueError(f"input_size must be >= 128 (SPEC §1), got {self.input_size}")
        if self.top_octaves < 0:
            raise ValueError(f"top_octaves must be >= 0, got {self.top_octaves}")
        if self.matching not in MATCHING_MODES:
            raise ValueError(f"matching must be one of {MATCHING_MODES}, got {self.matching!r}")
        if self.key_budget < 0:
            raise ValueError(f"key_budget must be >= 0 (0: the default, {DEFAULT_KEY_BUDGET}), got {self.key_budget}")
        if self.matching == "exact" and self.key_budget:
            raise ValueError(f"key_budget {self.key_budget} applies to matching: fast; matching: exact uses every cell")
        if self.matching_top_k < 0:
            raise ValueError(f"matching_top_k must be >= 0 (0: every key), got {self.matching_top_k}")
        if self.matching_loss_background < 0:
            raise ValueError(f"matching_loss_background is a loss weight >= 0 (0: off), got {self.matching_loss_background}")
        if self.matching_loss_area_ratio < 0:
            raise ValueError(f"matching_loss_area_ratio must be >= 0 (0: every other instance of the class), "
                             f"got {self.matching_loss_area_ratio}")
        if self.matching_loss < 0:
            raise ValueError(f"matching_loss is a loss weight >= 0 (0: off), got {self.matching_loss}")
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.fc6_dilation not in (1, 3):
            raise ValueError(f"fc6_dilation must be 1 or 3, got {self.fc6_dilation}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if any(r <= 1 for r in self.aspect_ratios):
            raise ValueError(f"aspect_ratios lists the ratios r > 1 (each adds r and 1/r), got {self.aspect_ratios}")
        self.aspect_ratios = [float(r) for r in self.aspect_ratios]

    @property
    def keys_per_map(self) -> int:
        """The key budget the neck applies: 0 (every cell) for exact matching, else the budget."""
        return 0 if self.matching == "exact" else self.key_budget or DEFAULT_KEY_BUDGET

    def describe_matching(self) -> str:
        """Which matching runs, in words (reports, the app)."""
        if self.neck not in ("borrow", "full"):
            return "no matching (this neck does not borrow)"
        top_k = f", top {self.matching_top_k} keys per cell" if self.matching_top_k else ""
        if self.matching == "exact":
            return f"exact matching (every deeper cell{top_k})"
        return f"fast matching (at most {self.keys_per_map} keys per deeper map{top_k})"


def config_from_dict(cls: type, values: dict[str, Any], source: str, sections: dict[str, type] | None = None) -> Any:
    """Build dataclass ``cls`` from a plain dict, naming unknown keys instead of ignoring them; the fields named
    in ``sections`` are dataclasses of their own, built alike from their dicts."""
    sections = sections or {}
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a mapping for {cls.__name__}, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        if name in sections:
            value = config_from_dict(sections[name], value or {}, f"{source}:{name}")
        else:
            value = _checked(value, known[name].type, f"{source}: {cls.__name__}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _checked(value: Any, annotation: str, where: str) -> Any:
    """``value`` as the field's type (``float`` takes ints; ``list[float]`` a list of numbers), or a clear
    error naming the field: ``--set model.width=wide`` says what it wanted instead of failing in a model."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if annotation == "float" and number(value):
        return float(value)
    if annotation == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation == "bool" and isinstance(value, bool):
        return value
    if annotation == "str" and isinstance(value, str):
        return value
    if annotation == "list[float]" and isinstance(value, list) and all(number(v) for v in value):
        return [float(v) for v in value]
    wanted = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
              "list[float]": "a list of numbers"}.get(annotation, annotation)
    raise ValueError(f"{where} must be {wanted}, got {value!r}")


def detector_config_from_dict(values: dict[str, Any], source: str = "config") -> DetectorConfig:
    return config_from_dict(DetectorConfig, values, source)
