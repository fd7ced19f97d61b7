r"""The loss family compared on lesion data, computed from logits in ``keras.ops``.

Every loss is built from the two-class probability pair (background,
lesion) that :mod:`lesionseg.model.heads` derives from either head, in log space:
``log p_bg, log p_fg = class_log_probabilities(logits, head)`` and
``p = exp(log p)``.  Nothing takes ``log(0)``, nothing clips probabilities
(clipping zeroes the gradient of a confidently wrong voxel), and the class
axis is always the last one (channels-last, 5-D (B, D, H, W, K) tensors).

Notation (Yeung et al., 2022, "Unified Focal loss", CMIG 95:102026)
------------------------------------------------------------------
For voxel i: y_i ∈ {0, 1} is the lesion label, p_{i,1} the lesion and
p_{i,0} = 1 − p_{i,1} the background probability; class c has truth
g_{i,1} = y_i and g_{i,0} = 1 − y_i.  For class c, summed over voxels::

    TP_c = Σ g_c p_c,   FN_c = Σ g_c (1 − p_c),   FP_c = Σ (1 − g_c) p_c
    TI_c = (TP_c + s) / (TP_c + δ FN_c + (1 − δ) FP_c + s)     (Tversky index)

with 1 − p_c taken as the *other* class probability (exact, never 0 by
rounding).  δ = 0.5 gives the Dice coefficient; δ > 0.5 weighs false
negatives more.  The distribution terms are per voxel::

    CE_1 = −y log p_1,   CE_0 = −(1 − y) log p_0.

Which classes are averaged
--------------------------
A per-class Dice averaged with the background class is dominated by the
easy background (its Dice is ≈ 1 on any patch, halving the lesion signal),
so the classic region losses (``dice``, ``tversky``, ``focal_tversky``,
``combo``) default to ``classes="foreground"`` (lesion only);
``classes="both"`` averages the two classes.  The symmetric and asymmetric
losses of Yeung et al. are *defined* by how they treat the two classes, so
they always use both.  The distribution losses (``bce``, the focal family)
have one term per voxel for its true class, background voxels included.

Region terms are pooled over the whole batch by default (``batch_dice=True``,
as nnU-Net): a background-only patch then still contributes its false
positives to a well-defined Dice instead of a per-patch Dice that is 1 for
any false positive; ``batch_dice=False`` computes one index per patch and
averages them (the reference implementation).

Per-class terms
---------------
Every loss is written as a sum of named terms, one per class and part —
``ce_background``, ``ce_lesion`` (distribution), ``region_background``,
``region_lesion`` (region) — each already weighted (λ, δ, ½ over classes):
``LesionLoss.call`` is their sum and :meth:`LesionLoss.terms` returns them,
so what each class contributes to a loss (during training, or on a trained
network's predictions: ``lesionseg study --terms``) is read from the same
code that trains, not re-derived.

The defaults of each loss are in :data:`LOSS_DEFAULTS` (and the docstrings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from lesionseg.errors import LesionsegError
from lesionseg.model.heads import HEADS, class_log_probabilities, head_channels
from lesionseg.model.loss_spec import LOSS_DEFAULTS, LOSS_NAMES, check_loss_name, check_loss_params

__all__ = ["LOSS_DEFAULTS", "LOSS_NAMES", "TERM_NAMES", "LesionLoss", "Terms", "get_loss", "loss_from_config"]

Terms = dict[str, Any]
"""A loss's per-class terms: name -> scalar tensor; the loss is their sum."""

TERM_NAMES = ("ce_background", "ce_lesion", "region_background", "region_lesion")
"""Every term a loss of the family can have (see :meth:`LesionLoss.terms`)."""

_TINY = 1e-30  # floor of a base raised to a power < 1 (its gradient at 0 is infinite)



# --------------------------------------------------------------------------- building blocks


def _prepare(y_true, logits, head: str):
    """Cast, check shapes and return (y, log p_bg, log p_fg), each (B, D, H, W, 1)."""
    logits = ops.cast(logits, "float32")
    y = ops.cast(y_true, "float32")
    k = head_channels(head)
    if len(y.shape) == len(logits.shape) - 1:
        y = ops.expand_dims(y, -1)
    if logits.shape[-1] is not None and logits.shape[-1] != k:
        raise LesionsegError(
            f"loss for head {head!r} expects logits with {k} channel(s), "
            f"got shape {tuple(logits.shape)}"
        )
    if len(y.shape) != len(logits.shape) or (y.shape[-1] is not None and y.shape[-1] != 1):
        raise LesionsegError(
            f"loss expects y_true of shape (B, D, H, W, 1), got {tuple(y.shape)} "
            f"for logits {tuple(logits.shape)}"
        )
    log_bg, log_fg = class_log_probabilities(logits, head)
    return y, log_bg, log_fg


def _power(x, exponent: float):
    """x**exponent for x ≥ 0 with a finite gradient also at x = 0."""
    if exponent == 1.0:
        return x
    return ops.power(ops.maximum(x, _TINY), exponent)


def _tversky_errors(y, log_bg, log_fg, delta: float, smooth: float, batch_dice: bool):
    """1 − TI for (background, lesion), computed directly (no 1 − TI cancellation).

    Returns two tensors of shape () when ``batch_dice`` else (B,).
    """
    axes = tuple(range(len(y.shape))) if batch_dice else tuple(range(1, len(y.shape)))
    p_bg, p_fg = ops.exp(log_bg), ops.exp(log_fg)
    tp_fg = ops.sum(y * p_fg, axis=axes)
    fn_fg = ops.sum(y * p_bg, axis=axes)  # = FP of the background class
    fp_fg = ops.sum((1.0 - y) * p_fg, axis=axes)  # = FN of the background class
    tp_bg = ops.sum((1.0 - y) * p_bg, axis=axes)

    def error(tp, fn, fp):
        # Two equal forms, each exact (value and gradient) on its half:
        # miss/den near 0 (1 − TI would round to 0), 1 − (TP+s)/den near 1
        # (the gradient of miss/den cancels to exactly 0 in float32 there,
        # e.g. the lesion Dice of a background-only patch).
        miss = delta * fn + (1.0 - delta) * fp
        den = tp + miss + smooth
        small = miss / den
        return ops.where(small < 0.5, small, 1.0 - (tp + smooth) / den)

    return error(tp_bg, fp_fg, fn_fg), error(tp_fg, fn_fg, fp_fg)


def _region(y, log_bg, log_fg, *, delta, smooth, batch_dice, classes, exp_bg, exp_fg) -> Terms:
    """(1 − TI_c)**exponent_c averaged over patches, as per-class terms.

    ``classes="foreground"``: one term, ``region_lesion``; ``"both"``: the
    two classes' terms, each weighted ½ (their sum is the mean over classes).
    """
    err_bg, err_fg = _tversky_errors(y, log_bg, log_fg, delta, smooth, batch_dice)
    lesion = ops.mean(_power(err_fg, exp_fg))
    if classes != "both":
        return {"region_lesion": lesion}
    return {"region_background": 0.5 * ops.mean(_power(err_bg, exp_bg)), "region_lesion": 0.5 * lesion}


def _cross_entropy(y, log_bg, log_fg, *, w_bg, w_fg, gamma_bg, gamma_fg) -> Terms:
    """Voxel means of w_0 p_1**γ_0 CE_0 and w_1 p_0**γ_1 CE_1 (focal modulation in log space).

    Returned as the terms ``ce_background`` (background voxels' own class)
    and ``ce_lesion``; their sum is the voxel mean of the weighted
    cross-entropy.  (1 − p_t)**γ for a lesion voxel is p_0**γ = exp(γ log p_0):
    exact for confident voxels and differentiable everywhere.
    """
    ce_fg = -y * log_fg
    ce_bg = -(1.0 - y) * log_bg
    if gamma_fg:
        ce_fg = ops.exp(gamma_fg * log_bg) * ce_fg
    if gamma_bg:
        ce_bg = ops.exp(gamma_bg * log_fg) * ce_bg
    return {"ce_background": w_bg * ops.mean(ce_bg), "ce_lesion": w_fg * ops.mean(ce_fg)}


def _weighted(factor: float, terms: Terms) -> Terms:
    """Every term multiplied by ``factor`` (the λ of a compound loss)."""
    return {name: factor * value for name, value in terms.items()}


def _joined(*parts: Terms) -> Terms:
    """The union of compound losses' parts (their names never collide)."""
    joined: Terms = {}
    for part in parts:
        joined.update(part)
    return joined


# --------------------------------------------------------------------------- the losses


def dice_terms(y, log_bg, log_fg, *, classes, smooth, batch_dice):
    r"""Soft Dice loss: 1 − DSC, DSC = (2 TP + 2s) / (2 TP + FN + FP + 2s).

    The Tversky index with δ = 0.5.  Default ``classes="foreground"`` (the
    lesion Dice; see the module docstring for why), ``smooth=1e-6``,
    ``batch_dice=True``.
    """
    return _region(y, log_bg, log_fg, delta=0.5, smooth=smooth, batch_dice=batch_dice,
                   classes=classes, exp_bg=1.0, exp_fg=1.0)


def bce_terms(y, log_bg, log_fg):
    r"""Binary cross-entropy: mean over voxels of −y log p_1 − (1 − y) log p_0.

    Both classes by construction (every voxel contributes its true class).
    """
    return _cross_entropy(y, log_bg, log_fg, w_bg=1.0, w_fg=1.0, gamma_bg=0.0, gamma_fg=0.0)


def focal_terms(y, log_bg, log_fg, *, gamma, delta):
    r"""Focal loss (Lin et al., 2017): mean of −α_t (1 − p_t)^γ log p_t.

    γ = 2 by default.  ``delta`` is the optional class weight α_t (δ for the
    lesion class, 1 − δ for background); ``None`` (default) = unweighted, so
    γ = 0 gives :func:`bce_terms`.
    """
    w_fg, w_bg = (1.0, 1.0) if delta is None else (delta, 1.0 - delta)
    return _cross_entropy(y, log_bg, log_fg, w_bg=w_bg, w_fg=w_fg, gamma_bg=gamma, gamma_fg=gamma)


def tversky_terms(y, log_bg, log_fg, *, delta, classes, smooth, batch_dice):
    r"""Tversky loss (Salehi et al., 2017): 1 − TI, δ = 0.7 (false negatives weigh more).

    Default ``classes="foreground"``; with ``classes="both"`` the mean of
    1 − TI_c over the two classes.
    """
    return _region(y, log_bg, log_fg, delta=delta, smooth=smooth, batch_dice=batch_dice,
                   classes=classes, exp_bg=1.0, exp_fg=1.0)


def focal_tversky_terms(y, log_bg, log_fg, *, delta, gamma, classes, smooth, batch_dice):
    r"""Focal Tversky loss (Abraham & Khan, 2019): (1 − TI)^γ, δ = 0.7, γ = 0.75.

    γ is the exponent itself (Abraham & Khan write 1/γ with γ = 4/3; Yeung et
    al. and their code use γ = 0.75).  Default ``classes="foreground"``.
    """
    return _region(y, log_bg, log_fg, delta=delta, smooth=smooth, batch_dice=batch_dice,
                   classes=classes, exp_bg=gamma, exp_fg=gamma)


def combo_terms(y, log_bg, log_fg, *, weight, delta, classes, smooth, batch_dice):
    r"""Combo loss (Taghanaki et al., 2019): λ CE_δ + (1 − λ)(1 − DSC).

    CE_δ = mean over voxels of −δ y log p_1 − (1 − δ)(1 − y) log p_0.
    ``weight`` is Combo's α (λ, default 0.5), ``delta`` its β (default 0.5).
    The paper subtracts DSC; we add 1 − DSC (same gradient, minimum 0).
    Dice term: default ``classes="foreground"``.
    """
    ce = _cross_entropy(y, log_bg, log_fg, w_bg=1.0 - delta, w_fg=delta, gamma_bg=0.0, gamma_fg=0.0)
    dice = dice_terms(y, log_bg, log_fg, classes=classes, smooth=smooth, batch_dice=batch_dice)
    return _joined(_weighted(weight, ce), _weighted(1.0 - weight, dice))


def symmetric_focal_terms(y, log_bg, log_fg, *, delta, gamma):
    r"""Symmetric modified focal loss L_msF (Yeung et al., 2022).

    mean over voxels of −δ (1 − p_{t,1})^γ y log p_1
    − (1 − δ)(1 − p_{t,0})^γ (1 − y) log p_0: both classes focal-suppressed.  δ = 0.7, γ = 2.
    """
    return _cross_entropy(y, log_bg, log_fg, w_bg=1.0 - delta, w_fg=delta,
                          gamma_bg=gamma, gamma_fg=gamma)


def asymmetric_focal_terms(y, log_bg, log_fg, *, delta, gamma):
    r"""Asymmetric modified focal loss L_maF (Yeung et al., 2022).

    mean over voxels of −δ y log p_1 − (1 − δ)(1 − p_{t,0})^γ (1 − y) log p_0:
    the focal suppression of easy voxels is applied to the background class
    only; the rare lesion class keeps its full cross-entropy.  δ = 0.7, γ = 2.
    """
    return _cross_entropy(y, log_bg, log_fg, w_bg=1.0 - delta, w_fg=delta,
                          gamma_bg=gamma, gamma_fg=0.0)


def symmetric_focal_tversky_terms(y, log_bg, log_fg, *, delta, gamma, smooth, batch_dice):
    r"""Symmetric modified focal Tversky loss L_msFT (Yeung et al., 2022).

    ½ Σ_c (1 − mTI_c)^{1−γ} over background and lesion: both classes
    focal-enhanced (exponent 1 − γ < 1).  δ = 0.7, γ = 0.75.
    """
    return _region(y, log_bg, log_fg, delta=delta, smooth=smooth, batch_dice=batch_dice,
                   classes="both", exp_bg=1.0 - gamma, exp_fg=1.0 - gamma)


def asymmetric_focal_tversky_terms(y, log_bg, log_fg, *, delta, gamma, smooth, batch_dice):
    r"""Asymmetric modified focal Tversky loss L_maFT (Yeung et al., 2022).

    ½ [(1 − mTI_0) + (1 − mTI_1)^{1−γ}]: the focal enhancement is applied to
    the lesion class only; background is the plain Tversky error.  δ = 0.7,
    γ = 0.75.
    """
    return _region(y, log_bg, log_fg, delta=delta, smooth=smooth, batch_dice=batch_dice,
                   classes="both", exp_bg=1.0, exp_fg=1.0 - gamma)


def symmetric_unified_focal_terms(y, log_bg, log_fg, *, weight, delta, gamma, smooth, batch_dice):
    r"""Symmetric Unified Focal loss: L_sUF = λ L_msF + (1 − λ) L_msFT.

    One δ and one γ for both parts (γ suppresses in the focal part, 1 − γ
    enhances in the focal Tversky part).  λ = ``weight`` = 0.5, δ = 0.6,
    γ = 0.5.  (λ weighs the focal part, as in the paper and MONAI; the
    reference Keras code assigns it to the Tversky part — same at 0.5.)
    """
    fl = symmetric_focal_terms(y, log_bg, log_fg, delta=delta, gamma=gamma)
    ftl = symmetric_focal_tversky_terms(y, log_bg, log_fg, delta=delta, gamma=gamma,
                                       smooth=smooth, batch_dice=batch_dice)
    return _joined(_weighted(weight, fl), _weighted(1.0 - weight, ftl))


def asymmetric_unified_focal_terms(y, log_bg, log_fg, *, weight, delta, gamma, smooth, batch_dice):
    r"""Asymmetric Unified Focal loss: L_aUF = λ L_maF + (1 − λ) L_maFT.

    Background suppressed in the focal part, lesion enhanced in the focal
    Tversky part.  λ = ``weight`` = 0.5, δ = 0.6, γ = 0.5.
    """
    fl = asymmetric_focal_terms(y, log_bg, log_fg, delta=delta, gamma=gamma)
    ftl = asymmetric_focal_tversky_terms(y, log_bg, log_fg, delta=delta, gamma=gamma,
                                        smooth=smooth, batch_dice=batch_dice)
    return _joined(_weighted(weight, fl), _weighted(1.0 - weight, ftl))


_TERMS: dict[str, Callable[..., Terms]] = {
    "dice": dice_terms,
    "bce": bce_terms,
    "focal": focal_terms,
    "tversky": tversky_terms,
    "focal_tversky": focal_tversky_terms,
    "combo": combo_terms,
    "symmetric_focal": symmetric_focal_terms,
    "asymmetric_focal": asymmetric_focal_terms,
    "symmetric_focal_tversky": symmetric_focal_tversky_terms,
    "asymmetric_focal_tversky": asymmetric_focal_tversky_terms,
    "symmetric_unified_focal": symmetric_unified_focal_terms,
    "asymmetric_unified_focal": asymmetric_unified_focal_terms,
}

def _total(terms: Terms):
    """The loss: the sum of its terms (in :data:`TERM_NAMES` order)."""
    names = [name for name in TERM_NAMES if name in terms]
    total = terms[names[0]]
    for name in names[1:]:
        total = total + terms[name]
    return total


# --------------------------------------------------------------------------- validation


def _check_name_head(name: str, head: str) -> None:
    check_loss_name(name)
    if head not in HEADS:
        raise LesionsegError(f"model.head {head!r} is unknown; valid: {', '.join(HEADS)}")


# --------------------------------------------------------------------------- public API


@keras.saving.register_keras_serializable(package="lesionseg")
class LesionLoss(keras.losses.Loss):
    """A loss of the family as a serialisable Keras loss taking (y_true, logits).

    Parameters
    ----------
    loss_name : str
        One of :data:`LOSS_NAMES`.
    head : {"sigmoid", "softmax"}
        The model head the logits come from.
    params : dict or None
        Parameters of that loss (see :data:`LOSS_DEFAULTS`); missing ones
        take their defaults.

    Calling it with ``y_true`` (B, D, H, W, 1) in {0, 1} and logits
    (B, D, H, W, K) returns a float32 scalar.  ``sample_weight`` is not
    supported by the region losses and is ignored.
    """

    def __init__(self, loss_name: str = "dice", head: str = "sigmoid",
                 params: dict[str, Any] | None = None, name: str | None = None, **kwargs: Any):
        _check_name_head(loss_name, head)
        self.loss_name = loss_name
        self.head = head
        self.params = check_loss_params(loss_name, dict(params or {}))
        super().__init__(name=name or loss_name, **kwargs)

    def call(self, y_true, y_pred):
        return _total(self.terms(y_true, y_pred))

    def terms(self, y_true, y_pred) -> Terms:
        """The loss's per-class terms for (y_true, logits); they sum to the loss.

        Names: ``ce_background`` / ``ce_lesion`` (distribution part: the
        voxel mean of each class's weighted, focal-modulated cross-entropy)
        and ``region_background`` / ``region_lesion`` (region part: each
        class's (1 − Tversky index)**exponent), each already multiplied by
        the loss's weights (λ, ½ over classes), so that
        ``sum(terms.values()) == loss``.  Only the terms a loss has are
        returned (``dice``: ``region_lesion`` alone).
        """
        y, log_bg, log_fg = _prepare(y_true, y_pred, self.head)
        return _TERMS[self.loss_name](y, log_bg, log_fg, **self.params)

    def __call__(self, y_true, y_pred, sample_weight=None):
        return super().__call__(y_true, y_pred, sample_weight=None)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(loss_name=self.loss_name, head=self.head, params=dict(self.params))
        return config


def get_loss(name: str, head: str, **params: Any) -> LesionLoss:
    """The loss ``name`` for a ``head``, as ``loss(y_true, logits) -> scalar``.

    Parameters
    ----------
    name : str
        One of :data:`LOSS_NAMES`.
    head : {"sigmoid", "softmax"}
        Sigmoid: logits (B, D, H, W, 1); softmax: (B, D, H, W, 2), channel 1 =
        lesion.  Both give the same loss for equivalent logits.
    **params
        Loss parameters named as in Yeung et al. (2022): ``weight`` (λ),
        ``delta`` (δ), ``gamma`` (γ), plus ``smooth``, ``classes`` and
        ``batch_dice`` for the region losses; defaults in :data:`LOSS_DEFAULTS`.

    Returns
    -------
    LesionLoss
        A registered :class:`keras.losses.Loss`, usable in ``model.compile``
        and saved with ``.keras`` models.

    Raises
    ------
    LesionsegError
        Unknown name, head or parameter, or a parameter out of range.
    """
    return LesionLoss(loss_name=name, head=head, params=params)


def loss_from_config(loss_config: Any, head: str) -> LesionLoss:
    """:func:`get_loss` from a :class:`lesionseg.config.LossConfig` (``name``, ``params``)."""
    return get_loss(loss_config.name, head, **dict(loss_config.params))
