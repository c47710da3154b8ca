"""What each code base's CAM step does, as data: one frozen `Recipe` per format.

The runner (`_cam.py`) has one code path; a format is the answers to seven questions
(how the photo is resized, where the flip is merged, what the maps are upsampled to,
how scales are aggregated, how the label is used, how maps are normalised, how the
file is laid out).  The next code base is a new `Recipe`, not a new code path.

Each recipe names the commit it reproduces; the README lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

__all__ = [
    "FORMATS",
    "RECIPES",
    "FlipMerge",
    "Layout",
    "Normalisation",
    "Recipe",
    "Resize",
    "Targets",
]


class Resize(Enum):
    """How one scale of the photo is made."""

    PIL_ROUND = "pil-round"
    """Pillow bicubic on the uint8 photo to ``(round(W*s), round(H*s))`` for every scale,
    1.0 included (psa ``VOC12ClsDatasetMSF``, SEAM, PuzzleCAM ``get_cam``)."""
    PIL_IRN = "pil-irn"
    """Pillow bicubic to ``(int(np.round(H*s)), int(np.round(W*s)))``; scale 1 and an
    equal size leave the photo untouched (irn ``misc/imutils.pil_rescale``)."""
    TENSOR_BILINEAR = "tensor-bilinear"
    """The normalised full-size tensor through ``F.interpolate(bilinear,
    align_corners=False)`` to ``(int(s*h), int(s*w))``; scale 1.0 is always run first
    and once, whatever the list says (ToCo ``utils/camutils.multi_scale_cam2``)."""


class FlipMerge(Enum):
    """Where a scale's flipped variant joins the unflipped one."""

    SUM_AFTER_UPSAMPLE = "sum-after-upsample"
    """Each variant upsampled to H x W, flipped back and added (psa, SEAM)."""
    SUM_BEFORE_UPSAMPLE = "sum-before-upsample"
    """``cam[0] + cam[1].flip(-1)`` at the network's resolution (irn, PuzzleCAM)."""
    MAX_AFTER_UPSAMPLE = "max-after-upsample"
    """Both upsampled to H x W, merged by element-wise max (ToCo)."""


class Targets(Enum):
    """What the maps are upsampled to and summed at."""

    FULL = "full"
    """H x W (psa, SEAM, ToCo)."""
    IRN = "irn"
    """Stride 4 (``ceil(H/4) x ceil(W/4)``) and 16-aligned full size cropped to H x W."""


class Normalisation(Enum):
    """How each kept class map is scaled after the scales are summed."""

    MAX = "max"
    """``x / (max + 1e-5)`` (psa, irn, PuzzleCAM)."""
    SEAM = "seam"
    """Negatives to 0; pixels under ``min + 1e-5`` to 0; ``(x - min - 1e-5) / (max - min
    + 1e-5)``: pixels at the minimum come out negative (SEAM ``infer_SEAM.py``)."""
    MIN_MAX = "min-max"
    """``x - min``, then ``/ (max + 1e-5)`` (ToCo ``multi_scale_cam2``)."""


class Layout(Enum):
    """The saved file (always ``np.save`` of a dict)."""

    PSA = "psa"
    """``{class index: HxW float32}`` for the kept classes (psa, SEAM)."""
    IRN = "irn"
    """``{"keys": torch int64, "cam": torch float32 (stride 4), "high_res": float32}``."""
    PUZZLECAM = "puzzlecam"
    """``{"keys": np.pad(keys + 1, (1, 0)) int64 (background 0), "cam": torch float32,
    "hr_cam": float32}``."""
    TOCO = "toco"
    """``{"keys": int64 numpy (0-based), "high_res": float32 (k, H, W)}``."""


@dataclass(frozen=True)
class Recipe:
    """One code base's CAM step.

    Attributes:
        name: The ``--format`` value.
        source: The code and commit it reproduces (README).
        resize: How each scale is made.
        input_scale: ``1`` for ImageNet mean/std on RGB/255 (``(x/255 - m)/s``); ``255``
            for the same constants times 255 (``(x - 255m)/(255s)``, ToCo's
            ``normalize_img``).  A model's own ``normalize`` wins over either.
        flip_merge: Where the flip is merged.
        relu_variants: ReLU on the network's CAMs before anything else (PuzzleCAM).
        relu_merged: ReLU on each scale's merged map (ToCo).
        targets: Upsampling targets.
        weight_by_label: Multiply each upsampled variant by the label vector (psa, SEAM).
        keep_threshold: Classes kept: ``label > keep_threshold`` when set (psa, SEAM:
            1e-5), else ``label != 0`` (irn, PuzzleCAM, ToCo).
        normalisation: How kept maps are scaled.
        layout: How the file is laid out.
    """

    name: str
    source: str
    resize: Resize
    input_scale: int
    flip_merge: FlipMerge
    relu_variants: bool
    relu_merged: bool
    targets: Targets
    weight_by_label: bool
    keep_threshold: float | None
    normalisation: Normalisation
    layout: Layout

    @property
    def needs_nonnegative(self) -> bool:
        """Whether the network's CAMs must be non-negative: nothing in the recipe clamps
        them, and max-normalised negative maps would look valid."""
        return (
            not (self.relu_variants or self.relu_merged) and self.normalisation is Normalisation.MAX
        )

    @property
    def takes_merged_forward(self) -> bool:
        """Whether an irn-style network (forward merges ``[img, flip(img)]`` itself by
        summing) computes this recipe exactly or as psa's documented approximation."""
        return self.flip_merge is not FlipMerge.MAX_AFTER_UPSAMPLE and not self.relu_variants


PSA = Recipe(
    name="psa",
    source="jiwoon-ahn/psa 9493e59, infer_cls.py",
    resize=Resize.PIL_ROUND,
    input_scale=1,
    flip_merge=FlipMerge.SUM_AFTER_UPSAMPLE,
    relu_variants=False,
    relu_merged=False,
    targets=Targets.FULL,
    weight_by_label=True,
    keep_threshold=1e-5,
    normalisation=Normalisation.MAX,
    layout=Layout.PSA,
)

IRN = Recipe(
    name="irn",
    source="jiwoon-ahn/irn a2ece00, step/make_cam.py",
    resize=Resize.PIL_IRN,
    input_scale=1,
    flip_merge=FlipMerge.SUM_BEFORE_UPSAMPLE,
    relu_variants=False,
    relu_merged=False,
    targets=Targets.IRN,
    weight_by_label=False,
    keep_threshold=None,
    normalisation=Normalisation.MAX,
    layout=Layout.IRN,
)

# SEAM is psa's CAM step with its own min-max normalisation.
SEAM = replace(
    PSA,
    name="seam",
    source="YudeWang/SEAM 3212261, infer_SEAM.py",
    normalisation=Normalisation.SEAM,
)

# PuzzleCAM is irn's computation, every scale through PIL with round, each variant relu'd,
# saved in its own layout.
PUZZLECAM = replace(
    IRN,
    name="puzzlecam",
    source="shjo-april/PuzzleCAM 659b4c1, inference_classification.py",
    resize=Resize.PIL_ROUND,
    relu_variants=True,
    layout=Layout.PUZZLECAM,
)

TOCO = Recipe(
    name="toco",
    source="rulixiang/ToCo e13514d, utils/camutils.py multi_scale_cam2 + "
    "tools/infer_seg_as_cam.py's file",
    resize=Resize.TENSOR_BILINEAR,
    input_scale=255,
    flip_merge=FlipMerge.MAX_AFTER_UPSAMPLE,
    relu_variants=False,
    relu_merged=True,
    targets=Targets.FULL,
    weight_by_label=False,
    keep_threshold=None,
    normalisation=Normalisation.MIN_MAX,
    layout=Layout.TOCO,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (PSA, IRN, SEAM, PUZZLECAM, TOCO)}
FORMATS = tuple(RECIPES)
