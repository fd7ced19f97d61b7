"""Training metrics computed from (y_true, logits), and the logits-misuse checks.

All metrics are of the lesion class and are *pooled* over the epoch (sums of
voxel counts, then one ratio), not averages of per-batch ratios, so they do
not depend on how patches fall into batches:

- ``soft_dice``: 2 Σ p y / (Σ p + Σ y), p = lesion probability.
- ``hard_dice``: the same with p > 0.5 (the default decision).
- ``fg_fraction``: fraction of voxels with p > 0.5 — falls to 0 when the
  model collapses to blank predictions, to 1 when it predicts everything.
- ``mean_prob``: mean lesion probability.

A Dice whose denominator is 0 (no lesion voxel, none predicted) is NaN, as in
the evaluation reports (docs/METRICS.md).  Logits become probabilities only
through :func:`lesionseg.model.heads.lesion_probability`.  ``sample_weight`` is
ignored.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from lesionseg.model.heads import head_channels, lesion_probability

THRESHOLD = 0.5


class _LesionMetric(keras.metrics.Metric):
    """Base: validates the head, accumulates float32 sums, serialises ``head``."""

    _sums: tuple[str, ...] = ()

    def __init__(self, head: str = "sigmoid", name: str | None = None, **kwargs: Any):
        head_channels(head)
        super().__init__(name=name or self.default_name, **kwargs)
        self.head = head
        for s in self._sums:
            variable = self.add_variable(shape=(), initializer="zeros", name=s, dtype="float32")
            setattr(self, s, variable)

    def _prob_truth(self, y_true, y_pred):
        p = ops.cast(lesion_probability(ops.cast(y_pred, "float32"), self.head), "float32")
        y = ops.cast(y_true, "float32")
        if len(y.shape) == len(p.shape) - 1:
            y = ops.expand_dims(y, -1)
        return p, y

    def reset_state(self) -> None:
        for s in self._sums:
            getattr(self, s).assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "head": self.head}


def _ratio(num, den):
    """num / den, NaN where den == 0 (variables read as tensors, for every backend)."""
    num, den = ops.convert_to_tensor(num), ops.convert_to_tensor(den)
    safe = ops.where(den > 0, den, ops.ones_like(den))
    return ops.where(den > 0, num / safe, ops.full_like(den, float("nan")))


@keras.saving.register_keras_serializable(package="lesionseg")
class SoftDice(_LesionMetric):
    """Soft Dice of the lesion class, 2 Σ p y / (Σ p + Σ y), pooled over the epoch."""

    default_name = "soft_dice"
    _sums = ("intersection", "total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        p, y = self._prob_truth(y_true, y_pred)
        self.intersection.assign_add(ops.sum(p * y))
        self.total.assign_add(ops.sum(p) + ops.sum(y))

    def result(self):
        return _ratio(2.0 * ops.convert_to_tensor(self.intersection), self.total)


@keras.saving.register_keras_serializable(package="lesionseg")
class HardDice(_LesionMetric):
    """Dice of the lesion class after thresholding p > 0.5, pooled over the epoch."""

    default_name = "hard_dice"
    _sums = ("intersection", "total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        p, y = self._prob_truth(y_true, y_pred)
        pred = ops.cast(p > THRESHOLD, "float32")
        truth = ops.cast(y > 0.5, "float32")
        self.intersection.assign_add(ops.sum(pred * truth))
        self.total.assign_add(ops.sum(pred) + ops.sum(truth))

    def result(self):
        return _ratio(2.0 * ops.convert_to_tensor(self.intersection), self.total)


@keras.saving.register_keras_serializable(package="lesionseg")
class ForegroundFraction(_LesionMetric):
    """Fraction of voxels predicted lesion (p > 0.5); ~0 signals blank collapse."""

    default_name = "fg_fraction"
    _sums = ("positive", "count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        p, _ = self._prob_truth(y_true, y_pred)
        self.positive.assign_add(ops.sum(ops.cast(p > THRESHOLD, "float32")))
        self.count.assign_add(ops.cast(ops.size(p), "float32"))

    def result(self):
        return _ratio(self.positive, self.count)


@keras.saving.register_keras_serializable(package="lesionseg")
class MeanProbability(_LesionMetric):
    """Mean lesion probability over all voxels."""

    default_name = "mean_prob"
    _sums = ("total", "count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        p, _ = self._prob_truth(y_true, y_pred)
        self.total.assign_add(ops.sum(p))
        self.count.assign_add(ops.cast(ops.size(p), "float32"))

    def result(self):
        return _ratio(self.total, self.count)


def make_metrics(head: str) -> list[keras.metrics.Metric]:
    """The training metrics for ``model.compile(metrics=...)``.

    Returns
    -------
    list of keras.metrics.Metric
        ``soft_dice``, ``hard_dice``, ``fg_fraction``, ``mean_prob`` (history
        columns carry these names, ``val_`` prefixed for validation).
    """
    return [SoftDice(head), HardDice(head), ForegroundFraction(head), MeanProbability(head)]


def looks_like_probabilities(values: np.ndarray) -> bool:
    """True when a batch of model outputs all lie in [0, 1] — probabilities, not logits.

    The logits of an activation-free head on a batch of many voxels take both
    signs; outputs confined to [0, 1] mean a sigmoid/softmax (or a clipped
    ReLU) ran before the loss, which then applies its own and trains on
    nonsense.  Empty arrays and arrays with non-finite values give False.

    Parameters
    ----------
    values : np.ndarray
        Model outputs of any shape (e.g. (B, D, H, W, K)).
    """
    v = np.asarray(values)
    if v.size == 0 or not np.issubdtype(v.dtype, np.number):
        return False
    if not np.all(np.isfinite(v)):
        return False
    return bool(v.min() >= 0.0 and v.max() <= 1.0)
