"""Run configuration: one frozen dataclass per stage, loaded from TOML/YAML/JSON.

A configuration file has one table per stage (``[data]``, ``[patches]``,
``[augment]``, ``[model]``, ``[loss]``, ``[train]``, ``[infer]``,
``[evaluate]``); every key is optional and defaults to the values below.
Any value can be overridden from the command line with
``--set section.key=value`` (the value is parsed as YAML, so ``0.5``,
``[flair, t1]``, ``true`` and ``null`` all work).

The resolved configuration is written next to every output (``config.yaml``)
so that a run can be reproduced and inference normalises exactly as training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lesionseg.errors import LesionsegError
from lesionseg.model.loss_spec import check_loss_name, check_loss_params

# The vocabulary of the configuration: every choice a key accepts, in one place.
MASK_VALUES = ("binary", "positive")
NORMALIZATIONS = ("zscore", "minmax", "none")
CONNECTIVITIES = (6, 18, 26)
HEADS = ("sigmoid", "softmax")
NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("relu", "leaky_relu")
UPSAMPLINGS = ("transpose", "upsample")
MIN_DEPTH, MAX_DEPTH = 2, 5
SCHEDULES = ("plateau", "cosine", "constant")
STRATEGIES = ("default", "mirrored", "multi_worker")
BLENDS = ("gaussian", "uniform")
PRECISIONS = ("float32", "bfloat16")
CRITERIA = ("any", "anima", "iou", "brats")


def _require(ok: bool, where: str, rule: str, value: Any) -> None:
    """Raise the one-line config error ``config <where>: must be <rule>, got <value>`` unless ``ok``."""
    if not ok:
        shown = list(value) if isinstance(value, tuple) else value
        raise LesionsegError(f"config {where}: must be {rule}, got {shown!r}")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _in(where: str, value: Any, choices: tuple) -> None:
    _require(value in choices, where, f"one of {', '.join(map(str, choices))}", value)


def _at_least(where: str, value: Any, low: float) -> None:
    _require(_number(value) and value >= low, where, f">= {low:g}", value)


def _unit(where: str, value: Any, closed_high: bool = True) -> None:
    ok = _number(value) and 0.0 <= value and (value <= 1.0 if closed_high else value < 1.0)
    _require(ok, where, "in [0, 1]" if closed_high else "in [0, 1)", value)


def _axes(where: str, axes: Any) -> None:
    _require(all(a in (0, 1, 2) for a in tuple(axes)), where, "spatial axes 0, 1, 2", axes)


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
    normalization : {"zscore", "minmax", "none"}
        Per-channel intensity normalisation, computed inside the non-zero
        (brain) region of each channel.
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
        _require(len(channels) > 0 and all(isinstance(c, str) and c for c in channels)
                 and len(set(channels)) == len(channels), "data.channels", "distinct non-empty names", channels)
        _require(isinstance(self.mask, str) and bool(self.mask), "data.mask", "a file stem", self.mask)
        _require(self.mask not in channels, "data.mask", "different from every channel", self.mask)
        _in("data.mask_values", self.mask_values, MASK_VALUES)
        _in("data.normalization", self.normalization, NORMALIZATIONS)
        clip = tuple(self.clip_percentiles)
        _require(len(clip) == 2 and all(_number(c) for c in clip) and 0.0 <= clip[0] < clip[1] <= 100.0,
                 "data.clip_percentiles", "[low, high] with 0 <= low < high <= 100", clip)
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                raise LesionsegError(
                    f"config data.group_pattern {self.group_pattern!r}: invalid regular expression ({exc})"
                ) from None
        _at_least("data.affine_tolerance", self.affine_tolerance, 0.0)


@dataclass(frozen=True)
class PatchConfig:
    """Lesion-aware patch sampling (stage 1).

    Attributes
    ----------
    size : tuple of int
        Patch size in voxels per axis.
    lesion_fraction, foreground_fraction, random_fraction : float
        Shares of patches holding a lesion, centred inside the non-zero
        (brain) region, or anywhere.  Normalised to sum to one.  Each patch
        first picks a case uniformly; lesion patches of a case without
        lesions become foreground patches.
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
    alpha: float = 0.0
    jitter: float = 0.5
    balance: bool = True
    connectivity: int = 26
    n_patches: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        size = tuple(self.size)
        _require(len(size) == 3 and all(isinstance(n, int) and n >= 1 for n in size),
                 "patches.size", "3 positive integers", size)
        fractions = (self.lesion_fraction, self.foreground_fraction, self.random_fraction)
        for name, value in zip(("lesion", "foreground", "random"), fractions):
            _at_least(f"patches.{name}_fraction", value, 0.0)
        _require(sum(fractions) > 0, "patches.lesion_fraction", "> 0 for at least one of the three fractions",
                 fractions)
        _require(_number(self.alpha), "patches.alpha", "a finite number", self.alpha)
        _unit("patches.jitter", self.jitter)
        _in("patches.connectivity", self.connectivity, CONNECTIVITIES)
        _at_least("patches.n_patches", self.n_patches, 1)
        _at_least("patches.seed", self.seed, 0)


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
    """

    flip_axes: tuple[int, ...] = (0, 1, 2)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.0
    noise_probability: float = 1.0
    rotate90: bool = False

    def __post_init__(self) -> None:
        _axes("augment.flip_axes", self.flip_axes)
        for name in ("intensity_scale", "intensity_shift", "noise_std"):
            _at_least(f"augment.{name}", getattr(self, name), 0.0)
        _require(self.intensity_scale < 1.0, "augment.intensity_scale", "< 1", self.intensity_scale)
        _unit("augment.noise_probability", self.noise_probability)


@dataclass(frozen=True)
class ModelConfig:
    """3D U-Net architecture.

    Attributes
    ----------
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
    """

    depth: int = 2
    base_filters: int = 16
    growth: float = 2.0
    head: str = "sigmoid"
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0
    upsampling: str = "transpose"

    def __post_init__(self) -> None:
        _require(isinstance(self.depth, int) and MIN_DEPTH <= self.depth <= MAX_DEPTH,
                 "model.depth", f"an integer in {MIN_DEPTH}..{MAX_DEPTH}", self.depth)
        _require(isinstance(self.base_filters, int) and self.base_filters >= 1,
                 "model.base_filters", "a positive integer", self.base_filters)
        _require(_number(self.growth) and self.growth > 0, "model.growth", "> 0", self.growth)
        _in("model.head", self.head, HEADS)
        _in("model.norm", self.norm, NORMS)
        _in("model.upsampling", self.upsampling, UPSAMPLINGS)
        _require(self.activation in ACTIVATIONS, "model.activation",
                 f"one of {', '.join(ACTIVATIONS)} (the head never has an activation: models emit logits)",
                 self.activation)
        _unit("model.dropout", self.dropout, closed_high=False)


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

    def __post_init__(self) -> None:
        for key in ("epochs", "steps_per_epoch", "batch_size", "validate_every", "plateau_patience"):
            _at_least(f"train.{key}", getattr(self, key), 1)
        for key in ("early_stopping_patience", "seed", "threads", "min_learning_rate"):
            _at_least(f"train.{key}", getattr(self, key), 0)
        _require(_number(self.learning_rate) and self.learning_rate > 0, "train.learning_rate", "> 0",
                 self.learning_rate)
        _require(_number(self.plateau_factor) and 0 < self.plateau_factor < 1, "train.plateau_factor",
                 "in (0, 1)", self.plateau_factor)
        _in("train.schedule", self.schedule, SCHEDULES)
        _unit("train.val_fraction", self.val_fraction, closed_high=False)
        _in("train.strategy", self.strategy, STRATEGIES)


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
    tune_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    tune_min_sizes_mm3: tuple[float, ...] = (0.0, 3.0, 5.0, 10.0, 20.0, 50.0)
    precision: str = "float32"
    crop_to_foreground: bool = True

    def __post_init__(self) -> None:
        _unit("infer.overlap", self.overlap, closed_high=False)
        _in("infer.blend", self.blend, BLENDS)
        _at_least("infer.batch_size", self.batch_size, 1)
        _axes("infer.tta_flips", self.tta_flips)
        if self.threshold is not None:
            _unit("infer.threshold", self.threshold)
        if self.min_lesion_mm3 is not None:
            _at_least("infer.min_lesion_mm3", self.min_lesion_mm3, 0)
        _in("infer.connectivity", self.connectivity, CONNECTIVITIES)
        _at_least("infer.workers", self.workers, 1)
        _require(len(self.tune_thresholds) > 0 and all(_number(t) and 0 <= t <= 1 for t in self.tune_thresholds),
                 "infer.tune_thresholds", "a non-empty list in [0, 1]", self.tune_thresholds)
        _require(len(self.tune_min_sizes_mm3) > 0 and all(_number(m) and m >= 0 for m in self.tune_min_sizes_mm3),
                 "infer.tune_min_sizes_mm3", "a non-empty list of sizes >= 0", self.tune_min_sizes_mm3)
        _in("infer.precision", self.precision, PRECISIONS)


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

    def __post_init__(self) -> None:
        _in("evaluate.criterion", self.criterion, CRITERIA)
        _in("evaluate.connectivity", self.connectivity, CONNECTIVITIES)
        if self.min_lesion_mm3 is not None:
            _at_least("evaluate.min_lesion_mm3", self.min_lesion_mm3, 0)
        for name in ("anima_alpha", "anima_beta", "anima_gamma"):
            _unit(f"evaluate.{name}", getattr(self, name))
        _require(_number(self.iou_threshold) and 0 < self.iou_threshold <= 1, "evaluate.iou_threshold",
                 "in (0, 1]", self.iou_threshold)
        _at_least("evaluate.brats_dilation", self.brats_dilation, 0)


@dataclass(frozen=True)
class Config:
    """The whole configuration, one section per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def check_training_config(config: Config) -> None:
    """The checks that involve two sections and matter only to ``train``: the patch fits the U-Net.

    ``lesionseg train`` calls this right after loading, before the backend starts.
    """
    check_patch_size(config.patches.size, config.model.depth)


def check_patch_size(patch_size: tuple[int, ...], depth: int) -> None:
    """Raise :class:`LesionsegError` unless every side is a positive multiple of 2**depth."""
    factor = 2**depth
    sizes = tuple(patch_size)
    if len(sizes) != 3 or any(int(s) != s or s <= 0 or s % factor for s in sizes):
        nearest = tuple(max(factor, factor * round(s / factor)) for s in sizes[:3])
        raise LesionsegError(
            f"patch size {sizes} must be 3 positive multiples of 2**depth = {factor} "
            f"(model.depth = {depth}), e.g. {nearest}"
        )


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LesionsegError(f"{path}: config file not found")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise LesionsegError(f"{path}: config must be .toml, .yaml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LesionsegError(f"{path}: not a text file (a config is UTF-8 TOML, YAML or JSON)") from None
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raw = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise LesionsegError(f"{path}: not a valid config file ({first})") from None
    if not isinstance(raw, dict):
        raise LesionsegError(
            f"{path}: a config is a table of sections ([data], [train], ...), got a {type(raw).__name__}"
        )
    return raw


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a parsed value to the dataclass field's type (lists to tuples)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if hint is type(None) or (args and type(None) in args):
            return None
        raise LesionsegError(f"config {where}: null is not allowed")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise LesionsegError(f"config {where}: expected a table, got {value!r}")
        return dict(value)
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise LesionsegError(f"config {where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise LesionsegError(f"config {where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LesionsegError(f"config {where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        return str(value)
    return value


def _build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise LesionsegError(
            f"config [{section}]: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dictionaries (unknown keys are errors)."""
    hints = typing.get_type_hints(Config)
    unknown = set(raw) - set(hints)
    if unknown:
        raise LesionsegError(
            f"config: unknown section(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(hints)}"
        )
    sections = {}
    for name, cls in hints.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise LesionsegError(f"config [{name}]: expected a table")
        sections[name] = _build_section(cls, values, name)
    return Config(**sections)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value`` into its parts (value parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise LesionsegError(f"--set {text!r}: expected section.key=value")
    dotted, raw_value = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return section, key, value


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dictionaries (tuples as lists) of a configuration."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {
        name: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, name)).items()}
        for name in typing.get_type_hints(Config)
    }


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a configuration file and apply command-line overrides.

    Parameters
    ----------
    path : str or Path or None
        A ``.toml``, ``.yaml``/``.yml`` or ``.json`` file; ``None`` for defaults.
    overrides : list of str
        ``section.key=value`` strings applied after the file, in order.

    Returns
    -------
    Config
        The resolved configuration, every section validated (types, ranges, choices and the
        patch size against the model depth), also the sections the calling command uses later.

    Raises
    ------
    LesionsegError
        On a missing or malformed file, an unknown key or a wrong type.
    """
    raw: dict[str, Any] = _read_file(Path(path)) if path is not None else {}
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if "." in key:  # e.g. loss.params.delta=0.6
            key, sub = key.split(".", 1)
            table = raw.setdefault(section, {}).setdefault(key, {})
            table[sub] = value
        else:
            raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically) and return its path."""
    from lesionseg.data.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
