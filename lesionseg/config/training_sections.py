"""The configuration sections ``lesionseg train`` reads: data, patches, augment, model, loss, train.

One frozen dataclass per stage; each checks its own values in ``__post_init__``
(types, ranges, choices of :mod:`~lesionseg.config.vocabulary`), so a section
that exists is valid.  Checks involving two sections live in
:mod:`~lesionseg.config.sections`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lesionseg.config.vocabulary import (
    ACTIVATIONS,
    CONNECTIVITIES,
    HEADS,
    MASK_VALUES,
    MAX_DEPTH,
    MIN_DEPTH,
    MODEL_KINDS,
    NORMALIZATIONS,
    NORMS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    UPSAMPLINGS,
    at_least,
    is_number,
    one_of,
    require,
    spatial_axes,
    unit_interval,
)
from lesionseg.errors import LesionsegError
from lesionseg.model.loss_spec import check_loss_name, check_loss_params

MAX_SEED = 2**31 - 1
"""Largest seed: every backend and NumPy accept it."""
MAX_PATCH_SIDE, MAX_PATCH_VOXELS = 512, 2**25
"""Largest patch / window: 512 a side, 32 M voxels (a 320³ window)."""
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0
"""The working voxel sizes preprocessing may resample to."""


@dataclass(frozen=True)
class DataConfig:
    """Which files make a case and how intensities are normalised.

    Attributes
    ----------
    channels : tuple of str
        Input channel file stems, in model channel order (``flair`` reads
        ``<case>/flair.nii.gz`` or ``<case>/flair.nii``).
    mask : str
        File stem of the expert lesion mask.
    mask_values : {"binary", "positive"}
        ``binary``: a mask whose values are not all in {0, 1} is an error.
        ``positive``: any value > 0 is lesion (opt-in, for label maps).
    normalization : {"zscore", "robust", "tissue", "tissue_ratio", "minmax", "none"}
        Per-channel intensity normalisation, computed inside the non-zero
        (brain) region of each channel (``robust``: median and interquartile
        range, stable across lesion loads; ``tissue``: the same over the
        voxels above the region's Otsu threshold, stable across slice
        thickness; :func:`~lesionseg.data.normalize.normalize_channel`).
    clip_percentiles : tuple of float
        Percentiles (of the non-zero region) the intensities are clipped to
        before normalising.
    group_pattern : str or None
        Regular expression whose first group (or whole match) taken from the
        case id is the patient key; cases of one patient stay on one side of
        a train/validation split.  ``None``: every case is its own group.
    affine_tolerance : float
        Largest absolute difference allowed between the affines of a case's
        files (mm); larger means image and mask are not on one grid.
    """

    channels: tuple[str, ...] = ("flair", "t1")
    mask: str = "lesion_mask"
    mask_values: str = "binary"
    normalization: str = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    group_pattern: str | None = None
    affine_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        channels = tuple(self.channels)
        require(len(channels) > 0 and all(isinstance(c, str) and c for c in channels)
                 and len(set(channels)) == len(channels), "data.channels", "distinct non-empty names", channels)
        require(isinstance(self.mask, str) and bool(self.mask), "data.mask", "a file stem", self.mask)
        require(self.mask not in channels, "data.mask", "different from every channel", self.mask)
        one_of("data.mask_values", self.mask_values, MASK_VALUES)
        one_of("data.normalization", self.normalization, NORMALIZATIONS)
        clip = tuple(self.clip_percentiles)
        require(len(clip) == 2 and all(is_number(c) for c in clip) and 0.0 <= clip[0] < clip[1] <= 100.0,
                "data.clip_percentiles", "[low, high] with 0 <= low < high <= 100", clip)
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                raise LesionsegError(
                    f"config data.group_pattern {self.group_pattern!r}: invalid regular expression ({exc})"
                ) from None
        at_least("data.affine_tolerance", self.affine_tolerance, 0.0)


@dataclass(frozen=True)
class PreprocessConfig:
    """Bringing raw exams to the model's working grid, the same in training and inference.

    Stored with the run, so ``lesionseg infer`` repeats it exactly; outputs go back to each input's
    own grid (:mod:`lesionseg.data.preprocess`).  Every step is off by default.

    Attributes
    ----------
    reorient : bool
        Reorder and flip the voxel axes to RAS+ (no interpolation).
    spacing : tuple of float or None
        Resample to voxels of this size in mm (e.g. ``[1, 1, 1]`` for a 0.9 × 0.9 × 7 mm
        clinical FLAIR); ``None`` keeps the input's grid.
    bias_correction : bool
        N4 bias-field correction of every channel (SimpleITK).
    brain_extraction : bool
        Zero everything outside the brain (a morphological skull strip of the first channel).
    """

    reorient: bool = False
    spacing: tuple[float, float, float] | None = None
    bias_correction: bool = False
    brain_extraction: bool = False

    def __post_init__(self) -> None:
        for key in ("reorient", "bias_correction", "brain_extraction"):
            require(isinstance(getattr(self, key), bool), f"preprocess.{key}", "true or false", getattr(self, key))
        if self.spacing is not None:
            spacing = tuple(self.spacing)
            require(len(spacing) == 3 and all(is_number(v) and MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in spacing),
                    "preprocess.spacing", f"3 voxel sizes in mm, {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} (or absent)",
                    spacing)


@dataclass(frozen=True)
class PatchConfig:
    """Lesion-aware patch sampling (stage 1).

    Attributes
    ----------
    size : tuple of int
        Patch size in voxels per axis.
    lesion_fraction, foreground_fraction, random_fraction, hard_fraction : float
        Shares of patches holding a lesion, centred inside the non-zero
        (brain) region, anywhere, or holding a hard negative (below).
        Normalised to sum to one.  Each patch first picks a case uniformly;
        lesion (hard) patches of a case without lesions (hard negatives)
        become foreground patches.
    hard_channel : str
        Hard negatives are the voxels whose normalised ``hard_channel``
        (one of ``data.channels``) is at least ``hard_threshold`` and that lie
        more than ``hard_margin`` voxels from every lesion: the bright
        periventricular caps, cortex and artefacts where an intensity model
        fires falsely (:mod:`lesionseg.sampling.hard_negatives`).
    hard_threshold : float
        Normalised intensity (a z-score) from which a voxel is a candidate.
    hard_margin : int
        Voxels within this distance (chessboard) of a lesion are not hard
        negatives (lesion borders are uncertain, not false).
    hard_mining_every : int
        0 (default): the hard negatives are the bright voxels above, fixed.
        N > 0: online hard-negative mining — from epoch ``hard_mining_start``
        on, every N epochs the network being trained predicts its training
        exams and the voxels where it fires (probability at least
        ``hard_mining_probability``) inside the brain and more than
        ``hard_margin`` voxels from every lesion become the hard negatives
        of the next epochs (:mod:`lesionseg.training.mining`); an exam where
        it fires nowhere keeps its bright voxels.
    hard_mining_start : int
        Epochs trained before the first mining (the network must fire first).
    hard_mining_probability : float
        Probability from which a voxel counts as fired.
    alpha : float
        Lesion choice weight (within the case) ∝ volume**alpha: 0 = uniform
        over lesions, 1 = proportional to lesion voxels (the peers' behaviour).
    jitter : float
        Random offset of the patch centre from the chosen lesion voxel, as a
        fraction of half the patch size (0 = always centred; <= 0.5 keeps the
        voxel in the patch's central half).
    balance : bool
        Correct the lesion weights for what patches aimed at neighbouring
        lesions already show, so that each lesion is seen in a patch's
        central half at a rate ∝ volume**alpha (lesions crowded around a large
        confluent lesion are not over-shown).  False: chosen at that rate.
    connectivity : {6, 18, 26}
        Connectivity that defines lesions (connected components).
    n_patches : int
        Number of patches written by ``lesionseg patches``.
    seed : int
        Seed of the sampler; same seed, same patches.
    """

    size: tuple[int, int, int] = (48, 48, 48)
    lesion_fraction: float = 0.5
    foreground_fraction: float = 0.4
    random_fraction: float = 0.1
    hard_fraction: float = 0.0
    hard_channel: str = "flair"
    hard_threshold: float = 2.0
    hard_margin: int = 2
    hard_mining_every: int = 0
    hard_mining_start: int = 2
    hard_mining_probability: float = 0.5
    alpha: float = 0.0
    jitter: float = 0.5
    balance: bool = True
    connectivity: int = 26
    n_patches: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        size = tuple(self.size)
        require(len(size) == 3 and all(isinstance(n, int) and n >= 1 for n in size),
                "patches.size", "3 positive integers", size)
        require(max(size) <= MAX_PATCH_SIDE and size[0] * size[1] * size[2] <= MAX_PATCH_VOXELS, "patches.size",
                f"at most {MAX_PATCH_SIDE} voxels a side and {MAX_PATCH_VOXELS // 2**20} M in all "
                "(a patch is held in memory several times per batch)", size)
        fractions = (self.lesion_fraction, self.foreground_fraction, self.random_fraction, self.hard_fraction)
        for name, value in zip(("lesion", "foreground", "random", "hard"), fractions):
            at_least(f"patches.{name}_fraction", value, 0.0)
        require(sum(fractions) > 0, "patches.lesion_fraction", "> 0 for at least one of the four fractions",
                fractions)
        require(isinstance(self.hard_channel, str) and bool(self.hard_channel), "patches.hard_channel",
                "a channel name", self.hard_channel)
        require(is_number(self.hard_threshold), "patches.hard_threshold", "a finite number", self.hard_threshold)
        require(isinstance(self.hard_margin, int) and not isinstance(self.hard_margin, bool) and self.hard_margin >= 0,
                "patches.hard_margin", "an integer >= 0", self.hard_margin)
        at_least("patches.hard_mining_every", self.hard_mining_every, 0)
        at_least("patches.hard_mining_start", self.hard_mining_start, 1)
        unit_interval("patches.hard_mining_probability", self.hard_mining_probability)
        require(self.hard_mining_every == 0 or self.hard_fraction > 0, "patches.hard_mining_every",
                "0 unless patches.hard_fraction > 0 (mined negatives are drawn as hard patches)",
                self.hard_mining_every)
        require(is_number(self.alpha), "patches.alpha", "a finite number", self.alpha)
        unit_interval("patches.jitter", self.jitter)
        one_of("patches.connectivity", self.connectivity, CONNECTIVITIES)
        at_least("patches.n_patches", self.n_patches, 1)
        at_least("patches.seed", self.seed, 0)
        require(self.seed <= MAX_SEED, "patches.seed", f"<= {MAX_SEED}", self.seed)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation suited to MRI lesions.

    Attributes
    ----------
    flip_axes : tuple of int
        Spatial axes that may be flipped (each with probability 0.5).
    intensity_scale : float
        Per-channel multiplicative jitter, uniform in [1 - s, 1 + s].
    intensity_shift : float
        Per-channel additive jitter, uniform in [-s, s] (normalised units).
    noise_std : float
        Standard deviation of added Gaussian noise (0 = off).
    noise_probability : float
        Share of patches that get the noise (nnU-Net uses 0.1); the noise is
        the costliest augmentation (a normal draw per voxel).
    rotate90 : bool
        Random 90° rotations in the axial plane.
    thick_slice_probability : float
        Share of patches made to look like a thick-slice clinical acquisition resampled to the
        working grid (:func:`lesionseg.sampling.augment.thick_slices`): the image (not the mask)
        blurred along ``thick_slice_axis`` with a slice profile of a thickness drawn from
        ``thick_slice_mm``, sampled every slice and interpolated back.  0 = off.
    thick_slice_mm : tuple of float
        Range of slice thickness, in voxels of the working grid (mm on a 1 mm grid).
    thick_slice_axis : tuple of int
        The patch axis across slices (2: axial slices of a RAS volume); several: one is drawn
        uniformly for each thick-slice patch, so repeating one weights it (``[2, 2, 0, 1]``: axial
        half the time, sagittal and coronal a quarter each).  A single number is read as one axis.
    thick_slice_in_plane_mm : tuple of float
        Range of the in-plane voxel size of those acquisitions (voxels of the working grid); sizes
        above 1 blur the two in-plane axes, finer ones leave them alone.
    gamma_probability : float
        Share of patches whose contrast is changed by ``x ** g`` on the patch's range
        (:func:`lesionseg.sampling.augment.gamma_contrast`): other field strengths and sequences.
    gamma_range : tuple of float
        Range of ``g`` (drawn log-uniformly).
    bias_field_probability : float
        Share of patches multiplied by a smooth random bias field
        (:func:`lesionseg.sampling.augment.bias_field`).
    bias_field_strength : float
        Largest log-amplitude of that field.
    lesion_contrast_probability : float
        Share of patches whose lesions are made fainter (or brighter) against the tissue around
        them (:func:`lesionseg.sampling.augment.lesion_contrast`); the mask is kept.  0 = off.
    lesion_contrast_range : tuple of float
        Range of the factor on the lesions' contrast (1 = unchanged, 0.5 = half as bright above
        the tissue level).
    transplant_probability : float
        Share of patches that receive the lesions of a donor mask at the same voxels, painted with
        the exam's own lesion contrast (:mod:`lesionseg.sampling.transplant`).  0 = off.
    transplant_masks : str
        Folder of donor lesion masks on the training exams' grid (e.g. ``../shared/data/lesjak_masks``).
    transplant_exclude : tuple of str
        Regular expressions; donor files whose name matches one are left out (the patients
        trained or evaluated on, e.g. ``["patient07", "patient19"]``).
    """

    flip_axes: tuple[int, ...] = (0, 1, 2)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.0
    noise_probability: float = 1.0
    rotate90: bool = False
    thick_slice_probability: float = 0.0
    thick_slice_mm: tuple[float, float] = (3.0, 8.0)
    thick_slice_axis: tuple[int, ...] = (2,)
    thick_slice_in_plane_mm: tuple[float, float] = (1.0, 1.0)
    gamma_probability: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_field_probability: float = 0.0
    bias_field_strength: float = 0.3
    lesion_contrast_probability: float = 0.0
    lesion_contrast_range: tuple[float, float] = (0.5, 1.0)
    transplant_probability: float = 0.0
    transplant_masks: str = ""
    transplant_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        spatial_axes("augment.flip_axes", self.flip_axes)
        for name in ("intensity_scale", "intensity_shift", "noise_std"):
            at_least(f"augment.{name}", getattr(self, name), 0.0)
        require(self.intensity_scale < 1.0, "augment.intensity_scale", "< 1", self.intensity_scale)
        unit_interval("augment.noise_probability", self.noise_probability)
        unit_interval("augment.thick_slice_probability", self.thick_slice_probability)
        thick = tuple(self.thick_slice_mm)
        require(len(thick) == 2 and all(is_number(t) for t in thick) and 1.0 <= thick[0] <= thick[1],
                "augment.thick_slice_mm", "[low, high] with 1 <= low <= high", thick)
        if isinstance(self.thick_slice_axis, int) and not isinstance(self.thick_slice_axis, bool):
            object.__setattr__(self, "thick_slice_axis", (self.thick_slice_axis,))  # one axis, as configs wrote it
        axes = tuple(self.thick_slice_axis)
        require(len(axes) > 0 and all(a in (0, 1, 2) for a in axes), "augment.thick_slice_axis",
                "0, 1 or 2, or a list of them", axes)
        plane = tuple(self.thick_slice_in_plane_mm)
        require(len(plane) == 2 and all(is_number(t) for t in plane) and 0.0 < plane[0] <= plane[1],
                "augment.thick_slice_in_plane_mm", "[low, high] with 0 < low <= high", plane)
        unit_interval("augment.gamma_probability", self.gamma_probability)
        gamma = tuple(self.gamma_range)
        require(len(gamma) == 2 and all(is_number(t) for t in gamma) and 0.0 < gamma[0] <= gamma[1],
                "augment.gamma_range", "[low, high] with 0 < low <= high", gamma)
        unit_interval("augment.bias_field_probability", self.bias_field_probability)
        at_least("augment.bias_field_strength", self.bias_field_strength, 0.0)
        unit_interval("augment.lesion_contrast_probability", self.lesion_contrast_probability)
        contrast = tuple(self.lesion_contrast_range)
        require(len(contrast) == 2 and all(is_number(t) for t in contrast) and 0.0 < contrast[0] <= contrast[1],
                "augment.lesion_contrast_range", "[low, high] with 0 < low <= high", contrast)
        unit_interval("augment.transplant_probability", self.transplant_probability)
        if self.transplant_probability > 0:
            require(isinstance(self.transplant_masks, str) and bool(self.transplant_masks), "augment.transplant_masks",
                    "a folder of donor masks when augment.transplant_probability > 0", self.transplant_masks)
        for pattern in self.transplant_exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise LesionsegError(f"config augment.transplant_exclude {pattern!r}: invalid regular expression ({exc})") from None


@dataclass(frozen=True)
class ModelConfig:
    """The model: a 3D U-Net, or the intensity-threshold baseline.

    Attributes
    ----------
    kind : {"unet", "threshold"}
        ``unet``: the 3D U-Net below, trained by ``lesionseg train``.
        ``threshold``: the baseline every table shows beside the network: the
        lesion logit of a voxel is ``(x - threshold_center) / threshold_scale``
        with ``x`` its normalised ``threshold_channel`` intensity (a FLAIR
        z-score), so a probability threshold ``t`` is the intensity
        ``threshold_center + threshold_scale * logit(t)``.  Nothing is fitted:
        ``train`` writes the run folder, ``tune`` picks the threshold and
        minimum lesion size like any model's (:mod:`lesionseg.model.threshold`).
    depth : int
        Number of down-sampling steps (2–5); patch size must be divisible by
        2**depth.
    base_filters : int
        Filters of the first level.
    growth : float
        Filter multiplier per level (16/32/64 at depth 2 with 16 and 2).
    head : {"sigmoid", "softmax"}
        One lesion logit channel (sigmoid) or two class logits (softmax).
    norm : {"batch", "instance", "group", "none"}
        Normalisation after each convolution.
    activation : {"relu", "leaky_relu"}
        Activation of the convolution blocks (never of the head).
    dropout : float
        Dropout rate in the bottleneck and decoder (0 = off).
    upsampling : {"transpose", "upsample"}
        Decoder up-sampling: transposed convolution or nearest + conv.
    threshold_channel : str
        ``kind = "threshold"``: the channel thresholded (one of ``data.channels``).
    threshold_center, threshold_scale : float
        ``kind = "threshold"``: the intensity of probability 0.5 and the
        intensity per unit of logit (> 0).
    """

    kind: str = "unet"
    depth: int = 2
    base_filters: int = 16
    growth: float = 2.0
    head: str = "sigmoid"
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0
    upsampling: str = "transpose"
    threshold_channel: str = "flair"
    threshold_center: float = 2.0
    threshold_scale: float = 0.5

    def __post_init__(self) -> None:
        one_of("model.kind", self.kind, MODEL_KINDS)
        require(isinstance(self.threshold_channel, str) and bool(self.threshold_channel),
                "model.threshold_channel", "a channel name", self.threshold_channel)
        require(is_number(self.threshold_center), "model.threshold_center", "a finite number",
                self.threshold_center)
        require(is_number(self.threshold_scale) and self.threshold_scale > 0, "model.threshold_scale", "> 0",
                self.threshold_scale)
        if self.kind == "threshold":
            require(self.head == "sigmoid", "model.head", 'sigmoid with model.kind = "threshold" (one logit)',
                    self.head)
        require(isinstance(self.depth, int) and MIN_DEPTH <= self.depth <= MAX_DEPTH,
                "model.depth", f"an integer in {MIN_DEPTH}..{MAX_DEPTH}", self.depth)
        require(isinstance(self.base_filters, int) and self.base_filters >= 1,
                "model.base_filters", "a positive integer", self.base_filters)
        require(is_number(self.growth) and self.growth > 0, "model.growth", "> 0", self.growth)
        one_of("model.head", self.head, HEADS)
        one_of("model.norm", self.norm, NORMS)
        one_of("model.upsampling", self.upsampling, UPSAMPLINGS)
        require(self.activation in ACTIVATIONS, "model.activation",
                f"one of {', '.join(ACTIVATIONS)} (the head never has an activation: models emit logits)",
                self.activation)
        unit_interval("model.dropout", self.dropout, closed_high=False)


@dataclass(frozen=True)
class LossConfig:
    """Loss function by name, with its parameters.

    Attributes
    ----------
    name : str
        One of the names of :func:`lesionseg.model.losses.get_loss`.
    params : dict
        Keyword parameters of that loss (e.g. ``weight``, ``delta``,
        ``gamma``), named as in Yeung et al. (2022).
    """

    name: str = "dice"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_loss_name(self.name)
        check_loss_params(self.name, dict(self.params))


@dataclass(frozen=True)
class TrainConfig:
    """Training stage.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs.
    steps_per_epoch : int
        Batches per epoch (online sampling: every epoch draws new patches).
    batch_size : int
        Global batch size (split across replicas by the strategy).
    learning_rate : float
        Initial Adam learning rate.
    schedule : {"plateau", "cosine", "constant"}
        Learning-rate schedule.
    plateau_patience, plateau_factor : int, float
        Reduce-on-plateau settings (on validation lesion F1).
    min_learning_rate : float
        Floor of the schedule.
    early_stopping_patience : int
        Epochs without improvement of validation lesion F1 before stopping
        (0 = never stop early).
    val_fraction : float
        Share of groups (patients) held out for validation.
    val_cases : tuple of str
        Explicit validation case ids (overrides ``val_fraction``).
    validate_every : int
        Whole-volume validation every N epochs.
    seed : int
        Global seed (weights, split, sampling).
    strategy : {"default", "mirrored", "multi_worker"}
        ``tf.distribute`` strategy (TensorFlow backend only).
    threads : int
        Intra-op threads (0 = let the backend decide).
    diagnostics : bool
        Watch for the classic failures (blank collapse, NaN, logits misuse).
    precision : {"float32", "bfloat16"}
        Arithmetic of the training step.  ``bfloat16`` is Keras mixed
        precision: convolutions in bfloat16, weights, batch-norm statistics,
        logits and loss in float32 (no loss scaling needed).  It pays only
        where the hardware computes bfloat16 natively (GPUs, CPUs with
        AVX-512 BF16 or AMX; ``bench/bench_train.py --precisions`` measures
        it); the saved ``model.keras`` is float32 either way.
    """

    epochs: int = 30
    steps_per_epoch: int = 50
    batch_size: int = 2
    learning_rate: float = 1e-3
    schedule: str = "plateau"
    plateau_patience: int = 4
    plateau_factor: float = 0.5
    min_learning_rate: float = 1e-5
    early_stopping_patience: int = 10
    val_fraction: float = 0.25
    val_cases: tuple[str, ...] = ()
    validate_every: int = 1
    seed: int = 0
    strategy: str = "default"
    threads: int = 2
    diagnostics: bool = True
    precision: str = "float32"

    def __post_init__(self) -> None:
        for key in ("epochs", "steps_per_epoch", "batch_size", "validate_every", "plateau_patience"):
            at_least(f"train.{key}", getattr(self, key), 1)
        for key in ("early_stopping_patience", "seed", "threads", "min_learning_rate"):
            at_least(f"train.{key}", getattr(self, key), 0)
        require(self.seed <= MAX_SEED, "train.seed", f"<= {MAX_SEED} (the backends' seed range)", self.seed)
        require(is_number(self.learning_rate) and self.learning_rate > 0, "train.learning_rate", "> 0",
                self.learning_rate)
        require(is_number(self.plateau_factor) and 0 < self.plateau_factor < 1, "train.plateau_factor",
                "in (0, 1)", self.plateau_factor)
        one_of("train.schedule", self.schedule, SCHEDULES)
        unit_interval("train.val_fraction", self.val_fraction, closed_high=False)
        one_of("train.strategy", self.strategy, STRATEGIES)
        one_of("train.precision", self.precision, PRECISIONS)
