"""The vocabulary of the configuration: every choice a key accepts, and the validators.

The section dataclasses (:mod:`~lesionseg.config.training_sections`,
:mod:`~lesionseg.config.prediction_sections`) check their values in
``__post_init__`` with the validators here, which all raise the same one-line
:class:`~lesionseg.errors.LesionsegError`:
``config <section.key>: must be <rule>, got <value>``.
"""

from __future__ import annotations

import math
from typing import Any

from lesionseg.errors import LesionsegError

# The vocabulary of the configuration: every choice a key accepts, in one place.
MASK_VALUES = ("binary", "positive")
NORMALIZATIONS = ("zscore", "robust", "tissue", "tissue_ratio", "minmax", "none")
CONNECTIVITIES = (6, 18, 26)
HEADS = ("sigmoid", "softmax")
MODEL_KINDS = ("unet", "threshold")
NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("relu", "leaky_relu")
UPSAMPLINGS = ("transpose", "upsample")
MIN_DEPTH, MAX_DEPTH = 2, 5
SCHEDULES = ("plateau", "cosine", "constant")
STRATEGIES = ("default", "mirrored", "multi_worker")
BLENDS = ("gaussian", "uniform")
PRECISIONS = ("float32", "bfloat16")
CRITERIA = ("any", "anima", "iou", "brats")


def require(ok: bool, where: str, rule: str, value: Any) -> None:
    """Raise the one-line config error ``config <where>: must be <rule>, got <value>`` unless ``ok``."""
    if not ok:
        shown = list(value) if isinstance(value, tuple) else value
        raise LesionsegError(f"config {where}: must be {rule}, got {shown!r}")


def is_number(x: Any) -> bool:
    """True for a finite int or float (``bool`` is not a number here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def one_of(where: str, value: Any, choices: tuple) -> None:
    """Require ``value`` to be one of ``choices``."""
    require(value in choices, where, f"one of {', '.join(map(str, choices))}", value)


def at_least(where: str, value: Any, low: float) -> None:
    """Require a finite number ``>= low``."""
    require(is_number(value) and value >= low, where, f">= {low:g}", value)


def unit_interval(where: str, value: Any, closed_high: bool = True) -> None:
    """Require a finite number in [0, 1] (``closed_high``) or [0, 1)."""
    ok = is_number(value) and 0.0 <= value and (value <= 1.0 if closed_high else value < 1.0)
    require(ok, where, "in [0, 1]" if closed_high else "in [0, 1)", value)


def spatial_axes(where: str, axes: Any) -> None:
    """Require every axis to be a spatial axis 0, 1 or 2."""
    require(all(a in (0, 1, 2) for a in tuple(axes)), where, "spatial axes 0, 1, 2", axes)
