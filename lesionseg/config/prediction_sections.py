"""The configuration sections of prediction and scoring: infer and evaluate.

One frozen dataclass per stage; each checks its own values in ``__post_init__``
with the validators of :mod:`~lesionseg.config.vocabulary`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lesionseg.config.vocabulary import (
    BLENDS,
    CONNECTIVITIES,
    CRITERIA,
    PRECISIONS,
    at_least,
    is_number,
    one_of,
    require,
    spatial_axes,
    unit_interval,
)


@dataclass(frozen=True)
class InferConfig:
    """Sliding-window inference, decision and post-processing.

    Attributes
    ----------
    overlap : float
        Window overlap in [0, 1).
    blend : {"gaussian", "uniform"}
        Weighting of overlapping windows (Gaussian σ = patch / 8).
    batch_size : int
        Windows predicted per batch.
    tta_flips : tuple of int
        Spatial axes whose flips are averaged (test-time augmentation;
        all 2**n combinations).
    threshold : float or None
        Lesion-probability threshold; ``None`` uses the one stored with the
        model (after tuning), else 0.5 (softmax: argmax).
    min_lesion_mm3 : float or None
        Predicted components smaller than this are removed; ``None`` uses the
        tuned value stored with the model, else 0.
    connectivity : {6, 18, 26}
        Connectivity for the size filter.
    workers : int
        Cases predicted in parallel processes.
    tune_thresholds : tuple of float
        Thresholds tried by ``lesionseg tune``.
    tune_min_sizes_mm3 : tuple of float
        Minimum lesion sizes (mm³) tried by ``lesionseg tune``.
    min_atlas : float or None
        Predicted components whose largest lesion-atlas value is below this
        are removed (:mod:`lesionseg.inference.atlas`; needs
        ``RUN/lesion_atlas.nii.gz`` and exams on its grid); ``None`` uses
        the tuned value, else the atlas's calibrated cut-off, else 0 (off).
    tune_min_atlas : tuple of float
        Atlas cut-offs ``lesionseg tune`` tries together with the threshold
        and size when the run has an atlas; empty (the default): the
        atlas's calibrated cut-off is kept and not tuned.
    precision : {"float32", "bfloat16"}
        Arithmetic of the model at inference.  ``float32`` is exact (batch
        norm is folded into the convolutions, same logits to ~1e-5);
        ``bfloat16`` is about 2× faster on CPUs with AVX512-BF16/AMX and on
        GPUs, with probabilities differing by ~1e-2.
    crop_to_foreground : bool
        Predict only the bounding box of the non-zero voxels (the brain of
        a skull-stripped scan, about half of a 1 mm MNI volume) and write
        probability 0 outside it.  An image without zero voxels is
        predicted whole either way.
    """

    overlap: float = 0.5
    blend: str = "gaussian"
    batch_size: int = 8
    tta_flips: tuple[int, ...] = ()
    threshold: float | None = None
    min_lesion_mm3: float | None = None
    connectivity: int = 26
    workers: int = 1
    # up to 0.99 and 100 mm³: the Dice-trained networks' decisions sat at 0.9, the old grid's top, and the
    # wider grid raised their leave-one-patient-out Dice 0.464 -> 0.489 (README, Leave-one-patient-out)
    tune_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    tune_min_sizes_mm3: tuple[float, ...] = (0.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    min_atlas: float | None = None
    tune_min_atlas: tuple[float, ...] = ()
    precision: str = "float32"
    crop_to_foreground: bool = True

    def __post_init__(self) -> None:
        unit_interval("infer.overlap", self.overlap, closed_high=False)
        one_of("infer.blend", self.blend, BLENDS)
        at_least("infer.batch_size", self.batch_size, 1)
        spatial_axes("infer.tta_flips", self.tta_flips)
        if self.threshold is not None:
            unit_interval("infer.threshold", self.threshold)
        if self.min_lesion_mm3 is not None:
            at_least("infer.min_lesion_mm3", self.min_lesion_mm3, 0)
        one_of("infer.connectivity", self.connectivity, CONNECTIVITIES)
        at_least("infer.workers", self.workers, 1)
        require(len(self.tune_thresholds) > 0 and all(is_number(t) and 0 <= t <= 1 for t in self.tune_thresholds),
                "infer.tune_thresholds", "a non-empty list in [0, 1]", self.tune_thresholds)
        require(len(self.tune_min_sizes_mm3) > 0 and all(is_number(m) and m >= 0 for m in self.tune_min_sizes_mm3),
                "infer.tune_min_sizes_mm3", "a non-empty list of sizes >= 0", self.tune_min_sizes_mm3)
        if self.min_atlas is not None:
            unit_interval("infer.min_atlas", self.min_atlas)
        require(all(is_number(a) and 0 <= a <= 1 for a in self.tune_min_atlas),
                "infer.tune_min_atlas", "a list of cut-offs in [0, 1]", self.tune_min_atlas)
        one_of("infer.precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class EvaluateConfig:
    """Lesion-wise evaluation.

    Attributes
    ----------
    criterion : {"any", "anima", "iou", "brats"}
        Lesion matching rule (see docs/METRICS.md); ``any`` by default.
    connectivity : {6, 18, 26}
        Connectivity of lesions.
    min_lesion_mm3 : float or None
        Components smaller than this (mm³) are dropped from truth and
        prediction before matching (``anima``: the tool's rule, components
        of at most this volume are dropped, i.e. minimum voxels =
        floor(v / voxel volume) + 1).  ``None`` (default) uses the
        criterion's published default: 3 mm³ for ``anima``, 0 (keep all)
        for ``any``, ``iou`` and ``brats``.
    anima_alpha, anima_beta, anima_gamma : float
        The MSSEG detection parameters.
    iou_threshold : float
        Pair threshold of the ``iou`` criterion.
    brats_dilation : int
        Dilation iterations of the truth mask for the ``brats`` criterion.
    overlays : bool
        Also write PNG overlays (TP green, FN red, FP yellow).
    html : bool
        Also write ``report.html`` with a 3D viewer per case and sortable lesion tables
        (:mod:`lesionseg.evaluation.html_report`).
    """

    criterion: str = "any"
    connectivity: int = 26
    min_lesion_mm3: float | None = None
    anima_alpha: float = 0.10
    anima_beta: float = 0.70
    anima_gamma: float = 0.65
    iou_threshold: float = 0.5
    brats_dilation: int = 1
    overlays: bool = False
    html: bool = True

    def __post_init__(self) -> None:
        one_of("evaluate.criterion", self.criterion, CRITERIA)
        one_of("evaluate.connectivity", self.connectivity, CONNECTIVITIES)
        if self.min_lesion_mm3 is not None:
            at_least("evaluate.min_lesion_mm3", self.min_lesion_mm3, 0)
        for name in ("anima_alpha", "anima_beta", "anima_gamma"):
            unit_interval(f"evaluate.{name}", getattr(self, name))
        require(is_number(self.iou_threshold) and 0 < self.iou_threshold <= 1, "evaluate.iou_threshold",
                "in (0, 1]", self.iou_threshold)
        at_least("evaluate.brats_dilation", self.brats_dilation, 0)
