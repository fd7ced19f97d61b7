"""The rules that watch a training run for the classic failures (plain Python, no network).

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

The rules live in :class:`TrainingMonitor`, fed with numbers, so they are
testable without a network; :mod:`lesionseg.training.monitor` holds the Keras
side (the metrics that measure the raw output range and the lesion /
background probabilities of the training batches, and the callback that
feeds the monitor from ``model.fit``).  Each finding is logged once as one
``WARNING`` line naming the likely cause and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from keras import ops

from lesionseg.model.heads import head_channels


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


# -- messages ------------------------------------------------------------------


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


def _state_message(lo: float, hi: float, head: str) -> str:
    return (
        f"outputs never negative: all raw model outputs on the probe batch are >= 0 (min {lo:.3g}, max {hi:.3g}) "
        f"although the output layer is linear (no activation, checked), so the {head} head cannot say "
        "'background' anywhere yet. Likely cause: the ReLU features under the head are dead or all positive "
        "(a small network, e.g. few filters, or an unlucky initialisation); it often passes within an epoch. "
        "If it persists: more filters (model.base_filters), another train.seed, or a smaller learning rate."
    )


def _nan_message(loss: float, where: str) -> str:
    return (
        f"loss is {loss} at {where}: training stops and the last good weights are kept. Likely causes: "
        "learning rate too high (try train.learning_rate ten times smaller), log/division of 0 in a "
        "loss fed probabilities instead of logits, or NaN/Inf in the input images (run lesionseg check)."
    )


def _flat_loss_message(loss_name: str, loss: float, patience: int, name: str, ref: float) -> str:
    what = "ln 2 = 0.693, " if abs(ref - math.log(2)) < 0.01 else ""
    meaning = "predicting background everywhere" if name == "background" else "outputs stuck at p = 0.5"
    return (
        f"loss flat near its all-background value: {loss_name} = {loss:.4f} for "
        f"{patience} epochs, the value of {meaning} ({what}{ref:.4f}). Likely causes: "
        "probabilities fed to a logits loss (sigmoid applied twice), a learning rate too high or too "
        "low, or too few lesion patches. Fix: check the head emits logits, try "
        "train.learning_rate=1e-4 or 1e-3, raise patches.lesion_fraction, or use a region loss "
        "(dice, combo, asymmetric_unified_focal)."
    )


def _collapse_message(last: EpochStats, patience: int) -> str:
    return (
        f"collapse to blank: the model predicts almost no lesion voxel (predicted foreground "
        f"{last.pred_fg:.5f} vs {last.true_fg:.5f} lesion voxels in the training batches, mean lesion "
        f"probability {last.p_lesion:.3f} inside lesions vs {last.p_background:.3f} outside) for "
        f"{patience} epochs. Likely causes: learning rate too high (try train.learning_rate ten "
        "times smaller), a loss dominated by background (use dice, combo or asymmetric_unified_focal), "
        "too few lesion patches (raise patches.lesion_fraction), or a crippled head."
    )


def _validation_collapse_message(n_cases: int, n_lesions: int, epoch: int) -> str:
    return (
        f"collapse to blank: no lesion voxel predicted on the {n_cases} validation "
        f"volume(s) with {n_lesions} lesion(s) at epoch {epoch}. Likely causes: learning rate too high, "
        "a loss dominated by background, or too few lesion patches (see the training diagnostics)."
    )


def _everything_message(last: EpochStats, patience: int) -> str:
    return (
        f"the model predicts lesion nearly everywhere (predicted foreground {last.pred_fg:.3f} vs "
        f"{last.true_fg:.4f} lesion voxels in the training batches) for {patience} epochs. Likely causes: "
        "learning rate too high (try train.learning_rate ten times smaller), or a loss that rewards recall "
        "only (e.g. a Tversky delta near 1). Lesion F1 under the 'any' criterion is meaningless here: one "
        "component covering the volume 'detects' every lesion."
    )


def _diverging_message(a: float, b: float, c: float, best: float) -> str:
    return (
        f"loss diverging: it rose two epochs in a row ({a:.4f} -> {b:.4f} -> {c:.4f}; best {best:.4f}). "
        "Likely cause: learning rate too high. Fix: train.learning_rate ten times smaller, or "
        "train.schedule=plateau / cosine."
    )


def _oscillating_message(sign_changes: int, swing: float, first: float, last: float) -> str:
    return (
        f"loss oscillating: it swung up and down {sign_changes} times in 6 epochs by {swing:.4f} on "
        f"average without net progress ({first:.4f} -> {last:.4f}). Likely cause: learning rate "
        "too high (or batch too small). Fix: train.learning_rate ten times smaller or a larger "
        "train.batch_size."
    )


# -- the rules -----------------------------------------------------------------


def _is_blank(h: EpochStats, collapse_ratio: float, separation: float) -> bool | None:
    """Blank and not separating lesions from background; ``None``: cannot tell (no lesion, no numbers)."""
    if not (np.isfinite(h.true_fg) and h.true_fg > 0 and np.isfinite(h.pred_fg)):
        return None
    if h.pred_fg >= collapse_ratio * h.true_fg:
        return False
    gap = h.p_lesion - h.p_background
    return not (np.isfinite(gap) and gap >= separation)  # blank but separating lesions: still learning


def _is_flooded(h: EpochStats, flood_ratio: float) -> bool:
    """Lesion predicted on over half the voxels and ``flood_ratio`` times the true lesion fraction."""
    if not (np.isfinite(h.true_fg) and np.isfinite(h.pred_fg)):
        return False
    return h.pred_fg >= max(0.5, flood_ratio * h.true_fg)


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
    linear_head : bool
        The model's output layer is known to carry no activation (lesionseg's U-Net, checked
        when it is built): outputs that are all ≥ 0 then come from the network's state, not from
        a misplaced activation, and ``logits`` says so.
    """

    head: str = "sigmoid"
    loss_name: str = "loss"
    reference_losses: dict[str, float] = field(default_factory=dict)
    patience: int = 3
    flat_tolerance: float = 0.02
    collapse_ratio: float = 0.05
    separation: float = 0.1
    flood_ratio: float = 10.0
    linear_head: bool = False
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

    # -- checks called by the callback ----------------------------------------
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
        return self._emit("nan", epoch, _nan_message(loss, where), once=False)

    def check_outputs(self, logit_min: float, logit_max: float, epoch: int) -> list[Finding]:
        """``logits`` when the raw output range shows probabilities or a ReLU."""
        kind = output_range_problem(logit_min, logit_max)
        if kind is None:
            return []
        if self.linear_head:
            return self._emit("logits", epoch, _state_message(logit_min, logit_max, self.head))
        return self._emit("logits", epoch, _logits_message(kind, logit_min, logit_max, self.head))

    def check_validation(self, epoch: int, n_cases: int, n_lesions: int, pred_fg: float) -> list[Finding]:
        """``collapse`` when validation volumes with lesions get a blank prediction (after the warm-up).

        Parameters
        ----------
        epoch : int
            1-based epoch of the validation.
        n_cases, n_lesions : int
            Validation volumes, and truth lesions in them.
        pred_fg : float
            Fraction of validation voxels predicted lesion.
        """
        if n_lesions > 0 and pred_fg == 0.0 and epoch >= self.patience:
            return self._emit("collapse", epoch, _validation_collapse_message(n_cases, n_lesions, epoch))
        return []

    def end_epoch(self, stats: EpochStats) -> list[Finding]:
        """Record one epoch and return the findings it triggers."""
        self.history = [h for h in self.history if h.epoch < stats.epoch] + [stats]
        e = stats.epoch
        findings = self.check_loss_value(stats.loss, e)
        if findings:
            return findings
        for rule in (self._flat_loss, self._collapse, self._everything, self._diverging, self._oscillating):
            findings += rule(e)
        return findings

    # -- epoch rules --------------------------------------------------------------
    def _recent(self, n: int) -> list[EpochStats]:
        recent = self.history[-n:]
        return recent if len(recent) == n else []

    def _flat_reference(self, loss: float) -> tuple[str, float] | None:
        """The reference loss (name, value) that ``loss`` sits at, if any."""
        for name, ref in sorted(self.reference_losses.items()):
            if abs(loss - ref) <= self.flat_tolerance * max(abs(ref), 1e-3):
                return name, ref
        return None

    def _flat_loss(self, epoch: int) -> list[Finding]:
        recent = self._recent(self.patience)
        if not recent or not self.reference_losses:
            return []
        losses = np.array([h.loss for h in recent])
        scale = max(float(np.abs(losses).mean()), 1e-6)
        if np.ptp(losses) > self.flat_tolerance * scale:
            return []  # still moving
        found = self._flat_reference(losses[-1])
        if found is None:
            return []
        message = _flat_loss_message(self.loss_name, losses[-1], self.patience, *found)
        return self._emit("flat_loss", epoch, message)

    def _collapse(self, epoch: int) -> list[Finding]:
        recent = self._recent(self.patience)
        if not recent or not all(_is_blank(h, self.collapse_ratio, self.separation) for h in recent):
            return []
        return self._emit("collapse", epoch, _collapse_message(recent[-1], self.patience))

    def _everything(self, epoch: int) -> list[Finding]:
        recent = self._recent(self.patience)
        if not recent or not all(_is_flooded(h, self.flood_ratio) for h in recent):
            return []
        if recent[-1].pred_fg < 0.9 * recent[0].pred_fg:
            return []  # shrinking: the usual first epochs of a region loss
        return self._emit("everything", epoch, _everything_message(recent[-1], self.patience))

    def _diverging(self, epoch: int) -> list[Finding]:
        recent = self._recent(3)
        if not recent or len(self.history) < 4:
            return []
        a, b, c = (h.loss for h in recent)
        best = min(h.loss for h in self.history)
        if c > b > a and c > best + 0.25 * max(abs(best), 1e-3) and c - best > 0.05 * abs(self.history[0].loss):
            return self._emit("diverging", epoch, _diverging_message(a, b, c, best))
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
            return self._emit("oscillating", epoch, _oscillating_message(sign_changes, swing, losses[0], losses[-1]))
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
