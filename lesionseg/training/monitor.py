"""The Keras side of the training diagnostics: metrics and the callback that reports findings.

The metrics measure what the rules of :mod:`lesionseg.training.diagnostics`
need from the training batches (raw output range, true lesion fraction,
lesion / background probabilities); :class:`DiagnosticsCallback` feeds them
to a :class:`~lesionseg.training.diagnostics.TrainingMonitor` from
``model.fit``, logs every finding as one ``WARNING DIAGNOSTIC`` line and
stops training on a NaN/Inf loss with the last good weights restored.

Imports Keras: import this module after :func:`lesionseg.runtime.configure_backend`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lesionseg.model.heads import lesion_probability
from lesionseg.training.diagnostics import EpochStats, Finding, TrainingMonitor, reference_losses
from lesionseg.training.history import log_value

# the diagnostics' logger: the DIAGNOSTIC lines of train.log keep their source name
log = logging.getLogger("lesionseg.training.diagnostics")

#: diagnostic metric names (as they appear in the ``model.fit`` logs); the predicted
#: foreground fraction comes from :class:`lesionseg.model.metrics.ForegroundFraction` (``fg_fraction``)
DIAG_METRICS = ("logit_min", "logit_max", "true_fg", "p_lesion", "p_background")
PRED_FG_METRIC = "fg_fraction"


@keras.saving.register_keras_serializable(package="lesionseg")
class OutputExtreme(keras.metrics.Metric):
    """Smallest (``kind="min"``) or largest raw model output seen (logits range)."""

    def __init__(self, kind: str = "min", name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name or f"logit_{kind}", **kwargs)
        if kind not in ("min", "max"):
            raise ValueError(f"kind must be 'min' or 'max', got {kind!r}")
        self.kind = kind
        self.value = self.add_variable(shape=(), initializer="zeros", name="value")
        self.seen = self.add_variable(shape=(), initializer="zeros", name="seen")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_pred = ops.cast(y_pred, "float32")
        # read the variables as tensors: JAX cannot trace a variable passed to ops.where
        value, seen = ops.convert_to_tensor(self.value), ops.convert_to_tensor(self.seen)
        if self.kind == "min":
            batch = ops.min(y_pred)
            new = ops.where(seen > 0, ops.minimum(value, batch), batch)
        else:
            batch = ops.max(y_pred)
            new = ops.where(seen > 0, ops.maximum(value, batch), batch)
        self.value.assign(new)
        self.seen.assign(1.0)

    def result(self) -> Any:
        return ops.convert_to_tensor(self.value)

    def reset_state(self) -> None:
        self.value.assign(0.0)
        self.seen.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind}


class _RatioMetric(keras.metrics.Metric):
    """Accumulates sum(numerator) / sum(denominator) over batches."""

    def __init__(self, head: str = "sigmoid", name: str = "ratio", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.head = head
        self.num = self.add_variable(shape=(), initializer="zeros", name="num")
        self.den = self.add_variable(shape=(), initializer="zeros", name="den")

    def _parts(self, y_true: Any, prob: Any) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.cast(y_true, "float32")
        prob = ops.cast(lesion_probability(ops.cast(y_pred, "float32"), self.head), "float32")
        num, den = self._parts(y_true, prob)
        self.num.assign_add(ops.cast(num, "float32"))
        self.den.assign_add(ops.cast(den, "float32"))

    def result(self) -> Any:
        num, den = ops.convert_to_tensor(self.num), ops.convert_to_tensor(self.den)
        return ops.where(den > 0, num / ops.maximum(den, 1e-12), ops.full_like(den, float("nan")))

    def reset_state(self) -> None:
        self.num.assign(0.0)
        self.den.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "head": self.head}


@keras.saving.register_keras_serializable(package="lesionseg")
class TrueForeground(_RatioMetric):
    """Fraction of lesion voxels in the training batches."""

    def __init__(self, head: str = "sigmoid", name: str = "true_fg", **kwargs: Any) -> None:
        super().__init__(head=head, name=name, **kwargs)

    def _parts(self, y_true: Any, prob: Any) -> tuple[Any, Any]:
        return ops.sum(y_true), ops.cast(ops.size(y_true), "float32")


@keras.saving.register_keras_serializable(package="lesionseg")
class RegionProbability(_RatioMetric):
    """Mean predicted lesion probability inside (``inside=True``) or outside the truth."""

    def __init__(self, head: str = "sigmoid", inside: bool = True, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(head=head, name=name or ("p_lesion" if inside else "p_background"), **kwargs)
        self.inside = inside

    def _parts(self, y_true: Any, prob: Any) -> tuple[Any, Any]:
        region = y_true if self.inside else 1.0 - y_true
        return ops.sum(prob * region), ops.sum(region)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "inside": self.inside}


def diagnostic_metrics(head: str) -> list[keras.metrics.Metric]:
    """The metrics :class:`DiagnosticsCallback` reads, named as in :data:`DIAG_METRICS`.

    Compile them together with :func:`lesionseg.model.metrics.make_metrics`, which
    provides the predicted foreground fraction (``fg_fraction``).
    """
    return [
        OutputExtreme("min"),
        OutputExtreme("max"),
        TrueForeground(head),
        RegionProbability(head, inside=True),
        RegionProbability(head, inside=False),
    ]


def epoch_stats(epoch: int, logs: dict[str, Any] | None) -> EpochStats:
    """The :class:`EpochStats` of a 1-based epoch from its ``model.fit`` logs."""
    return EpochStats(
        epoch=epoch,
        loss=log_value(logs, "loss"),
        true_fg=log_value(logs, "true_fg"),
        pred_fg=log_value(logs, PRED_FG_METRIC),
        p_lesion=log_value(logs, "p_lesion"),
        p_background=log_value(logs, "p_background"),
        logit_min=log_value(logs, "logit_min"),
        logit_max=log_value(logs, "logit_max"),
    )


class DiagnosticsCallback(keras.callbacks.Callback):
    """Feeds :class:`TrainingMonitor` from ``model.fit`` and logs its findings.

    * before the first step: the raw outputs of a probe batch (logits range)
      and the reference losses of trivial outputs;
    * after every batch: NaN/Inf loss stops training at once and restores
      the last good weights (taken at the start and after every epoch);
    * after the first batch: the output range of that batch (computed with
      the weights training started from; later, an all-positive output is a
      trained "lesion everywhere", not a misplaced activation);
    * after every epoch: the epoch rules (flat loss, collapse, lesion
      everywhere, divergence, oscillation).

    Parameters
    ----------
    monitor : TrainingMonitor
        The rules (and their state, restored on resume).
    probe : tuple of numpy.ndarray or None
        (x, y) of one training batch with lesions.
    loss_fn : callable or None
        The training loss, for :func:`reference_losses`.
    enabled : bool
        ``False`` keeps only the NaN stop (always on).

    Attributes
    ----------
    findings : list of Finding
        Everything reported so far, in order.
    nan_stop : Finding or None
        Set when training was stopped for a NaN/Inf loss.
    """

    def __init__(
        self,
        monitor: TrainingMonitor,
        probe: tuple[np.ndarray, np.ndarray] | None = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.probe = probe
        self.loss_fn = loss_fn
        self.enabled = enabled
        self.findings: list[Finding] = []
        self.nan_stop: Finding | None = None
        self.good_weights: list[np.ndarray] | None = None
        self._epoch = 0
        self._checked_batch = False
        self._taken = 0

    def report(self, findings: Sequence[Finding]) -> None:
        """Add findings to :attr:`findings` and log each as a ``DIAGNOSTIC`` warning."""
        for f in findings:
            self.findings.append(f)
            log.warning("DIAGNOSTIC %s: %s", f.code, f.message)

    def take_new_findings(self) -> list[Finding]:
        """The findings reported since the last call (for the history row of an epoch)."""
        new = self.findings[self._taken :]
        self._taken = len(self.findings)
        return new

    def _snapshot(self) -> None:
        weights = self.model.get_weights()
        if all(np.all(np.isfinite(w)) for w in weights):
            self.good_weights = weights

    def _stop_for_nan(self, finding: Finding) -> None:
        """Stop training and go back to the last good weights."""
        self.nan_stop = finding
        if self.good_weights is not None:
            self.model.set_weights(self.good_weights)
        self.model.stop_training = True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._snapshot()
        if not self.enabled or self.probe is None:
            return
        x, y = self.probe
        raw = ops.convert_to_numpy(self.model(x, training=False))
        self.report(self.monitor.check_outputs(float(np.min(raw)), float(np.max(raw)), self._epoch))
        if self.loss_fn is not None and not self.monitor.reference_losses:
            self.monitor.reference_losses.update(reference_losses(self.loss_fn, y, self.monitor.head))
            log.debug("reference losses of trivial outputs: %s", self.monitor.reference_losses)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = log_value(logs, "loss")
        if not np.isfinite(loss):
            findings = self.monitor.check_loss_value(loss, self._epoch, batch + 1)
            self.report(findings)
            self._stop_for_nan(findings[0] if findings else Finding("nan", self._epoch, "loss is NaN"))
            return
        if self.enabled and not self._checked_batch:
            self._checked_batch = True
            lo, hi = log_value(logs, "logit_min"), log_value(logs, "logit_max")
            self.report(self.monitor.check_outputs(lo, hi, self._epoch))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.nan_stop is not None:
            return
        stats = epoch_stats(epoch + 1, logs)
        if self.enabled:
            findings = self.monitor.end_epoch(stats)
        else:
            findings = self.monitor.check_loss_value(stats.loss, epoch + 1)
        self.report(findings)
        nan = next((f for f in findings if f.code == "nan"), None)
        if nan is not None:
            self._stop_for_nan(nan)
            return
        self._snapshot()
