"""Watch a training run for the classic failures and say so while it runs.

Lesion segmentation fails in a few well-known ways that a loss curve alone
hides for hours:

``flat_loss``
    The loss sits at its all-background value (ln 2 ≈ 0.693 for BCE with
    logits at 0, ≈ 1 for Dice) and does not move.
``collapse``
    The network predicts no lesion voxel although the batches hold lesions
    (Dice ≈ 0, blank predictions).
``nan``
    The loss became NaN/Inf: training stops and the last good weights are
    kept.
``logits``
    The outputs look like probabilities (all in [0, 1]) or are non-negative
    (a ReLU) where the losses and heads expect raw logits: a sigmoid/ReLU
    before a logits loss.
``everything``
    The opposite collapse: lesion predicted nearly everywhere (a learning
    rate far too high often ends here rather than in NaN).
``diverging`` / ``oscillating``
    The epoch loss rises or swings: the learning rate is probably too high.

The rules live in :class:`TrainingMonitor` (plain Python, fed with numbers, so
they are testable without a network); :class:`DiagnosticsCallback` feeds it
from ``model.fit`` and the small Keras metrics defined here, which report the
raw output range and the lesion / background probabilities of the training
batches.  Each finding is logged once as one ``WARNING`` line naming the
likely cause and the fix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from lesionseg.model.heads import head_channels, lesion_probability

log = logging.getLogger(__name__)

#: diagnostic metric names (as they appear in the ``model.fit`` logs); the predicted
#: foreground fraction comes from :class:`lesionseg.model.metrics.ForegroundFraction` (``fg_fraction``)
DIAG_METRICS = ("logit_min", "logit_max", "true_fg", "p_lesion", "p_background")
PRED_FG_METRIC = "fg_fraction"


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    Attributes
    ----------
    code : str
        ``flat_loss``, ``collapse``, ``everything``, ``nan``, ``logits``,
        ``diverging`` or ``oscillating``.
    epoch : int
        1-based epoch in which it was found (0: before training).
    message : str
        One line: what was seen, the likely cause and the fix.
    """

    code: str
    epoch: int
    message: str


@dataclass(frozen=True)
class EpochStats:
    """What the monitor needs to know about one training epoch.

    Attributes
    ----------
    epoch : int
        1-based epoch.
    loss : float
        Mean training loss of the epoch.
    true_fg, pred_fg : float
        Fraction of lesion voxels in the batches, and of voxels predicted
        lesion (probability > 0.5).
    p_lesion, p_background : float
        Mean predicted lesion probability inside the truth lesions and
        outside them.
    logit_min, logit_max : float
        Smallest and largest raw model output seen in the epoch.
    """

    epoch: int
    loss: float
    true_fg: float = math.nan
    pred_fg: float = math.nan
    p_lesion: float = math.nan
    p_background: float = math.nan
    logit_min: float = math.nan
    logit_max: float = math.nan


def output_range_problem(logit_min: float, logit_max: float) -> str | None:
    """Why raw outputs in ``[logit_min, logit_max]`` cannot be logits, or ``None``.

    Logits of a working network take both signs.  Outputs that all lie in
    [0, 1] are probabilities (a sigmoid/softmax already applied); outputs
    that are all ≥ 0 come from a ReLU and can never mean "background" (a
    sigmoid of them is ≥ 0.5).

    >>> output_range_problem(0.02, 0.97) is not None
    True
    >>> output_range_problem(-3.1, 2.4) is None
    True
    """
    if not (np.isfinite(logit_min) and np.isfinite(logit_max)):
        return None
    if logit_min >= 0.0 and logit_max <= 1.0:
        return "probabilities"
    if logit_min >= 0.0:
        return "non-negative"
    return None


def _logits_message(kind: str, lo: float, hi: float, head: str) -> str:
    if kind == "probabilities" and lo == 0.0:
        what = f"all model outputs lie in [0, 1] with a minimum of exactly 0 (max {hi:.3g}): a ReLU or probabilities"
    elif kind == "probabilities":
        what = f"all model outputs lie in [0, 1] (min {lo:.3g}, max {hi:.3g}): they look like probabilities"
    else:
        what = f"all model outputs are >= 0 (min {lo:.3g}, max {hi:.3g}): a ReLU sits on the output"
    return (
        f"logits misuse: {what}, but the {head} losses and heads expect raw logits. "
        "Likely cause: an activation (sigmoid/softmax/ReLU) on the last layer, so it is applied twice "
        "(loss stuck near ln 2 = 0.693, blank predictions). Fix: give the head no activation "
        "(lesionseg.model.unet.build_unet does) and turn logits into probabilities only via lesionseg.model.heads."
    )


@dataclass
class TrainingMonitor:
    """The diagnostic rules, fed with plain numbers (no network needed).

    Parameters
    ----------
    head : str
        ``sigmoid`` or ``softmax``.
    loss_name : str
        Loss name, for messages.
    reference_losses : dict
        Loss value of trivial outputs on a real batch, e.g.
        ``{"background": L(all logits -8), "uniform": L(all logits 0)}``;
        see :func:`reference_losses`.
    patience : int
        Consecutive epochs a symptom must persist before ``flat_loss`` or
        ``collapse`` is reported (noise on the first epochs is normal).
    flat_tolerance : float
        ``flat_loss``: relative distance to a reference value, and relative
        epoch-to-epoch change, below which the loss counts as flat there.
    collapse_ratio : float
        ``collapse``: predicted foreground below this share of the true
        lesion fraction counts as blank.
    separation : float
        ``collapse``: a network whose mean lesion probability inside lesions
        exceeds the one outside by this much is still learning (a transient
        blank phase is normal with BCE) and is not reported.
    flood_ratio : float
        ``everything``: predicted foreground above half the voxels and this
        many times the true lesion fraction, not shrinking, counts as
        "lesion everywhere".
    """

    head: str = "sigmoid"
    loss_name: str = "loss"
    reference_losses: dict[str, float] = field(default_factory=dict)
    patience: int = 3
    flat_tolerance: float = 0.02
    collapse_ratio: float = 0.05
    separation: float = 0.1
    flood_ratio: float = 10.0
    history: list[EpochStats] = field(default_factory=list)
    fired: dict[str, int] = field(default_factory=dict)

    # -- state for --resume -------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (epoch records and the findings already reported)."""
        return {
            "history": [asdict(h) for h in self.history],
            "fired": dict(self.fired),
            "reference_losses": dict(self.reference_losses),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.history = [EpochStats(**h) for h in state.get("history", [])]
        self.fired = {k: int(v) for k, v in state.get("fired", {}).items()}
        self.reference_losses.update(state.get("reference_losses", {}))

    # -- rules ----------------------------------------------------------------
    def _emit(self, code: str, epoch: int, message: str, once: bool = True) -> list[Finding]:
        if once and code in self.fired:
            return []
        self.fired.setdefault(code, epoch)
        return [Finding(code, epoch, message)]

    def check_loss_value(self, loss: float, epoch: int, step: int | None = None) -> list[Finding]:
        """``nan`` when a (batch or epoch) loss is NaN/Inf."""
        if loss is None or np.isfinite(loss):
            return []
        where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        return self._emit(
            "nan",
            epoch,
            f"loss is {loss} at {where}: training stops and the last good weights are kept. Likely causes: "
            "learning rate too high (try train.learning_rate ten times smaller), log/division of 0 in a "
            "loss fed probabilities instead of logits, or NaN/Inf in the input images (run lesionseg check).",
            once=False,
        )

    def check_outputs(self, logit_min: float, logit_max: float, epoch: int) -> list[Finding]:
        """``logits`` when the raw output range shows probabilities or a ReLU."""
        kind = output_range_problem(logit_min, logit_max)
        if kind is None:
            return []
        return self._emit("logits", epoch, _logits_message(kind, logit_min, logit_max, self.head))

    def end_epoch(self, stats: EpochStats) -> list[Finding]:
        """Record one epoch and return the findings it triggers."""
        self.history = [h for h in self.history if h.epoch < stats.epoch] + [stats]
        e = stats.epoch
        findings = self.check_loss_value(stats.loss, e)
        if findings:
            return findings
        findings += self._flat_loss(e)
        findings += self._collapse(e)
        findings += self._everything(e)
        findings += self._diverging(e)
        findings += self._oscillating(e)
        return findings

    def _recent(self, n: int) -> list[EpochStats]:
        recent = self.history[-n:]
        return recent if len(recent) == n else []

    def _flat_loss(self, epoch: int) -> list[Finding]:
        recent = self._recent(self.patience)
        if not recent or not self.reference_losses:
            return []
        losses = np.array([h.loss for h in recent])
        scale = max(float(np.abs(losses).mean()), 1e-6)
        if np.ptp(losses) > self.flat_tolerance * scale:
            return []  # still moving
        for name, ref in sorted(self.reference_losses.items()):
            if abs(losses[-1] - ref) <= self.flat_tolerance * max(abs(ref), 1e-3):
                what = "ln 2 = 0.693, " if abs(ref - math.log(2)) < 0.01 else ""
                meaning = "predicting background everywhere" if name == "background" else "outputs stuck at p = 0.5"
                return self._emit(
                    "flat_loss",
                    epoch,
                    f"loss flat near its all-background value: {self.loss_name} = {losses[-1]:.4f} for "
                    f"{self.patience} epochs, the value of {meaning} ({what}{ref:.4f}). Likely causes: "
                    "probabilities fed to a logits loss (sigmoid applied twice), a learning rate too high or too "
                    "low, or too few lesion patches. Fix: check the head emits logits, try "
                    "train.learning_rate=1e-4 or 1e-3, raise patches.lesion_fraction, or use a region loss "
                    "(dice, combo, asymmetric_unified_focal).",
                )
        return []

    def _collapse(self, epoch: int) -> list[Finding]:
        recent = self._recent(self.patience)
        if not recent:
            return []
        for h in recent:
            if not (np.isfinite(h.true_fg) and h.true_fg > 0 and np.isfinite(h.pred_fg)):
                return []
            if h.pred_fg >= self.collapse_ratio * h.true_fg:
                return []
            gap = h.p_lesion - h.p_background
            if np.isfinite(gap) and gap >= self.separation:
                return []  # blank but separating lesions: still learning
        last = recent[-1]
        return self._emit(
            "collapse",
            epoch,
            f"collapse to blank: the model predicts almost no lesion voxel (predicted foreground "
            f"{last.pred_fg:.5f} vs {last.true_fg:.5f} lesion voxels in the training batches, mean lesion "
            f"probability {last.p_lesion:.3f} inside lesions vs {last.p_background:.3f} outside) for "
            f"{self.patience} epochs. Likely causes: learning rate too high (try train.learning_rate ten "
            "times smaller), a loss dominated by background (use dice, combo or asymmetric_unified_focal), "
            "too few lesion patches (raise patches.lesion_fraction), or a crippled head.",
        )

    def _everything(self, epoch: int) -> list[Finding]:
        recent = self._recent(self.patience)
        if not recent:
            return []
        for h in recent:
            if not (np.isfinite(h.true_fg) and np.isfinite(h.pred_fg)):
                return []
            if h.pred_fg < max(0.5, self.flood_ratio * h.true_fg):
                return []
        if recent[-1].pred_fg < 0.9 * recent[0].pred_fg:
            return []  # shrinking: the usual first epochs of a region loss
        last = recent[-1]
        return self._emit(
            "everything",
            epoch,
            f"the model predicts lesion nearly everywhere (predicted foreground {last.pred_fg:.3f} vs "
            f"{last.true_fg:.4f} lesion voxels in the training batches) for {self.patience} epochs. Likely causes: "
            "learning rate too high (try train.learning_rate ten times smaller), or a loss that rewards recall "
            "only (e.g. a Tversky delta near 1). Lesion F1 under the 'any' criterion is meaningless here: one "
            "component covering the volume 'detects' every lesion.",
        )

    def _diverging(self, epoch: int) -> list[Finding]:
        recent = self._recent(3)
        if not recent or len(self.history) < 4:
            return []
        a, b, c = (h.loss for h in recent)
        best = min(h.loss for h in self.history)
        if c > b > a and c > best + 0.25 * max(abs(best), 1e-3) and c - best > 0.05 * abs(self.history[0].loss):
            return self._emit(
                "diverging",
                epoch,
                f"loss diverging: it rose two epochs in a row ({a:.4f} -> {b:.4f} -> {c:.4f}; best {best:.4f}). "
                "Likely cause: learning rate too high. Fix: train.learning_rate ten times smaller, or "
                "train.schedule=plateau / cosine.",
            )
        return []

    def _oscillating(self, epoch: int) -> list[Finding]:
        recent = self._recent(6)
        if not recent:
            return []
        losses = np.array([h.loss for h in recent])
        steps = np.diff(losses)
        sign_changes = int(np.sum(np.sign(steps[1:]) * np.sign(steps[:-1]) < 0))
        swing = float(np.mean(np.abs(steps)))
        drift = abs(float(losses[-1] - losses[0]))
        if sign_changes >= 4 and swing > 0.15 * max(abs(float(losses.mean())), 1e-3) and swing > drift:
            return self._emit(
                "oscillating",
                epoch,
                f"loss oscillating: it swung up and down {sign_changes} times in 6 epochs by {swing:.4f} on "
                f"average without net progress ({losses[0]:.4f} -> {losses[-1]:.4f}). Likely cause: learning rate "
                "too high (or batch too small). Fix: train.learning_rate ten times smaller or a larger "
                "train.batch_size.",
            )
        return []


def reference_losses(
    loss_fn: Callable[[Any, Any], Any], y_true: np.ndarray, head: str, margin: float = 8.0
) -> dict[str, float]:
    """Loss of trivial outputs on a real batch: the values a stuck run sits at.

    Parameters
    ----------
    loss_fn : callable
        ``loss(y_true, logits)`` as used for training.
    y_true : numpy.ndarray
        (B, d, h, w, 1) labels of a training batch.
    head : str
        ``sigmoid`` or ``softmax``.
    margin : float
        Logit magnitude of "certain background" outputs.

    Returns
    -------
    dict
        ``background``: every voxel background with certainty;
        ``uniform``: every logit 0 (p = 0.5; ln 2 for BCE).
    """
    k = head_channels(head)
    shape = tuple(y_true.shape[:-1]) + (k,)
    zeros = np.zeros(shape, np.float32)
    bg = np.full(shape, -margin, np.float32)
    if k == 2:
        bg[..., 0] = margin
        bg[..., 1] = -margin
    y = ops.convert_to_tensor(np.asarray(y_true, np.float32))
    out = {}
    for name, logits in (("background", bg), ("uniform", zeros)):
        value = float(ops.convert_to_numpy(ops.mean(loss_fn(y, ops.convert_to_tensor(logits)))))
        if np.isfinite(value):
            out[name] = value
    return out


# -- Keras metrics that feed the monitor ----------------------------------------


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


def _float(logs: dict[str, Any] | None, key: str) -> float:
    if not logs or key not in logs:
        return math.nan
    try:
        return float(np.asarray(logs[key]))
    except (TypeError, ValueError):
        return math.nan


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

    def _report(self, findings: Sequence[Finding]) -> None:
        for f in findings:
            self.findings.append(f)
            log.warning("DIAGNOSTIC %s: %s", f.code, f.message)

    def _snapshot(self) -> None:
        weights = self.model.get_weights()
        if all(np.all(np.isfinite(w)) for w in weights):
            self.good_weights = weights

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._snapshot()
        if not self.enabled or self.probe is None:
            return
        x, y = self.probe
        raw = ops.convert_to_numpy(self.model(x, training=False))
        self._report(self.monitor.check_outputs(float(np.min(raw)), float(np.max(raw)), self._epoch))
        if self.loss_fn is not None and not self.monitor.reference_losses:
            self.monitor.reference_losses.update(reference_losses(self.loss_fn, y, self.monitor.head))
            log.debug("reference losses of trivial outputs: %s", self.monitor.reference_losses)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = _float(logs, "loss")
        if not np.isfinite(loss):
            findings = self.monitor.check_loss_value(loss, self._epoch, batch + 1)
            self._report(findings)
            self.nan_stop = findings[0] if findings else Finding("nan", self._epoch, "loss is NaN")
            if self.good_weights is not None:
                self.model.set_weights(self.good_weights)
            self.model.stop_training = True
            return
        if self.enabled and not self._checked_batch:
            self._checked_batch = True
            self._report(
                self.monitor.check_outputs(_float(logs, "logit_min"), _float(logs, "logit_max"), self._epoch)
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.nan_stop is not None:
            return
        stats = EpochStats(
            epoch=epoch + 1,
            loss=_float(logs, "loss"),
            true_fg=_float(logs, "true_fg"),
            pred_fg=_float(logs, PRED_FG_METRIC),
            p_lesion=_float(logs, "p_lesion"),
            p_background=_float(logs, "p_background"),
            logit_min=_float(logs, "logit_min"),
            logit_max=_float(logs, "logit_max"),
        )
        findings = self.monitor.end_epoch(stats) if self.enabled else self.monitor.check_loss_value(stats.loss, epoch + 1)
        self._report(findings)
        if any(f.code == "nan" for f in findings):
            self.nan_stop = next(f for f in findings if f.code == "nan")
            if self.good_weights is not None:
                self.model.set_weights(self.good_weights)
            self.model.stop_training = True
            return
        self._snapshot()

