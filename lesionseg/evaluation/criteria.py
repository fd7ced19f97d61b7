"""Lesion matching criteria, registered by name in :data:`CRITERIA`.

Every criterion is computed from the sparse table of *overlap pairs*
``(truth lesion, predicted lesion, shared voxels)`` gathered with one pass
over the truth voxels (:func:`overlaps`) -- no Python loop over voxels.

Criteria (``EvaluateConfig.criterion``; see docs/METRICS.md)
-------------------------------------------------------------
``any`` (default, WMH-2017 style)
    A truth lesion is TP when any of its voxels is predicted lesion, else FN;
    a predicted lesion is TP when it touches truth, else FP.  Not one-to-one.
``anima`` (MSSEG, animaSegPerfAnalyzer)
    Truth lesion T is detected when the predicted voxels inside T exceed
    ``alpha`` of |T| and, taking the predicted components overlapping T in
    decreasing order of overlap until ``gamma`` of that overlap is covered,
    none of them has more than ``beta`` of its own volume outside the truth
    mask.  Predicted lesions are scored with the roles swapped.
``iou`` (panoptic quality)
    One-to-one Hungarian matching of the pairs with IoU >= ``iou_threshold``
    (maximising total IoU); ``RQ`` (= lesion F1), ``SQ`` (mean IoU of the
    matched pairs) and ``PQ = SQ * RQ``.
``brats`` (BraTS-2023 lesion-wise Dice)
    The truth mask is dilated (18-neighbour element, ``brats_dilation``
    iterations); truth components within one dilated blob form one lesion.
    A predicted component touching a lesion's dilated blob is TP for it;
    lesion Dice = Dice(lesion, union of its touching components), 0 for FN;
    ``lesion_dice`` = sum of lesion Dice / (GT + FP), 0/0 -> 1 (the BraTS
    convention).

The minimum lesion size is applied to truth and prediction before matching
(generic rule: components with fewer than ``ceil(min_mm3 / voxel_mm3)``
voxels are dropped; ``anima``: the tool's rule ``floor(min_mm3 / voxel_mm3)
+ 1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from lesionseg.config import EvaluateConfig
from lesionseg.data.labels import Lesions, label_components, lesions_from_voxels
from lesionseg.evaluation.scoring import ratio


@dataclass(frozen=True)
class Pairs:
    """Sparse overlap table between truth lesions (1..nt) and predicted lesions (1..np)."""

    t: np.ndarray  # (m,) int64 truth ids
    p: np.ndarray  # (m,) int64 predicted ids
    n: np.ndarray  # (m,) int64 shared voxels
    ov_t: np.ndarray  # (nt,) truth voxels covered by predicted lesions
    ov_p: np.ndarray  # (np,) predicted voxels inside truth lesions


@dataclass(frozen=True)
class Match:
    """Outcome of a criterion: the lesions it scored, detection flags and the pairs it credits."""

    truth: Lesions  # the truth lesions scored (brats: merged per dilated blob)
    pairs: Pairs  # voxel overlaps of those truth lesions with the predicted ones
    det_t: np.ndarray  # (nt,) bool
    det_p: np.ndarray  # (np,) bool
    links_t: tuple[np.ndarray, np.ndarray]  # (truth id, pred id) pairs shown on truth rows
    links_p: tuple[np.ndarray, np.ndarray]  # (pred id, truth id) pairs shown on pred rows
    value_t: np.ndarray | None = None  # per truth lesion: IoU (iou) or lesion Dice (brats)
    value_p: np.ndarray | None = None  # per predicted lesion: IoU (iou)


#: ``matcher(truth, pred, cfg)``: match the lesions of one case under one criterion
Matcher = Callable[[Lesions, Lesions, EvaluateConfig], Match]


def label_pairs(a: Lesions, b: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (a, b) label pairs over a's voxels where ``b`` > 0, with voxel counts.

    ``b`` is a label image of a's grid with labels 0..nb.  Pairs are sorted
    by a's label, then b's.
    """
    na = a.n
    av = a.voxel_labels
    bv = b.ravel()[a.voxels]
    hit = bv > 0
    code = av[hit].astype(np.int64) * (nb + 1) + bv[hit]
    if code.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    if (na + 1) * (nb + 1) <= 4 * code.size + 1_000_000:
        counts = np.bincount(code, minlength=(na + 1) * (nb + 1))
        uniq = np.flatnonzero(counts)
        cnt = counts[uniq]
    else:
        uniq, cnt = np.unique(code, return_counts=True)
    return uniq // (nb + 1), uniq % (nb + 1), cnt.astype(np.int64)


def overlaps(truth: Lesions, pred: Lesions) -> Pairs:
    """The overlap pairs of two labellings of one grid."""
    t, p, n = label_pairs(truth, pred.labels, pred.n)
    ov_t = np.bincount(t, weights=n, minlength=truth.n + 1)[1:].astype(np.int64)
    ov_p = np.bincount(p, weights=n, minlength=pred.n + 1)[1:].astype(np.int64)
    return Pairs(t, p, n, ov_t, ov_p)


# --------------------------------------------------------------------------- matchers


def match_any(truth: Lesions, pred: Lesions, cfg: EvaluateConfig) -> Match:
    """``any``: a lesion is TP when it touches the other side's lesions."""
    pairs = overlaps(truth, pred)
    return Match(truth, pairs, pairs.ov_t > 0, pairs.ov_p > 0, (pairs.t, pairs.p), (pairs.p, pairs.t))


def _anima_side(
    own: np.ndarray,
    other: np.ndarray,
    shared: np.ndarray,
    size_own: np.ndarray,
    ov_own: np.ndarray,
    outside_other: np.ndarray,
    alpha: float,
    beta: float,
    gamma: float,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """animaSegPerfAnalyzer's test for the lesions of one side.

    ``outside_other[j - 1]`` is the fraction of other-side lesion ``j`` lying
    outside this side's mask.  Returns the detection flags and the
    (own, other) pairs examined for the detected lesions.
    """
    n = size_own.shape[0]
    if own.size == 0:
        z = np.zeros(0, np.int64)
        return np.zeros(n, bool), (z, z)
    order = np.lexsort((other, -shared, own))  # by lesion, then decreasing overlap
    own, other, shared = own[order], other[order], shared[order]
    first = np.r_[True, own[1:] != own[:-1]]
    group = np.cumsum(first) - 1
    cum = np.cumsum(shared)
    before = cum - shared - (cum - shared)[first][group]
    # a component is examined while the overlap gathered before it is <= gamma
    examined = before / ov_own[own - 1] <= gamma
    bad = examined & (outside_other[other - 1] > beta)
    failed = np.bincount(own[bad], minlength=n + 1)[1:] > 0
    detected = (ov_own / size_own > alpha) & ~failed
    keep = examined & detected[own - 1]
    return detected, (own[keep], other[keep])


def match_anima(truth: Lesions, pred: Lesions, cfg: EvaluateConfig) -> Match:
    """``anima``: animaSegPerfAnalyzer's detection test on both sides."""
    pairs = overlaps(truth, pred)
    size_t, size_p = truth.volume_vox, pred.volume_vox
    outside_p = (size_p - pairs.ov_p) / np.maximum(size_p, 1)
    outside_t = (size_t - pairs.ov_t) / np.maximum(size_t, 1)
    args = (cfg.anima_alpha, cfg.anima_beta, cfg.anima_gamma)
    det_t, links_t = _anima_side(pairs.t, pairs.p, pairs.n, size_t, pairs.ov_t, outside_p, *args)
    det_p, links_p = _anima_side(pairs.p, pairs.t, pairs.n, size_p, pairs.ov_p, outside_t, *args)
    return Match(truth, pairs, det_t, det_p, links_t, links_p)


def match_iou(truth: Lesions, pred: Lesions, cfg: EvaluateConfig) -> Match:
    """``iou``: one-to-one Hungarian matching of the pairs with IoU >= ``cfg.iou_threshold``."""
    threshold = cfg.iou_threshold
    pairs = overlaps(truth, pred)
    iou_t = np.full(truth.n, np.nan)
    iou_p = np.full(pred.n, np.nan)
    z = np.zeros(0, np.int64)
    mt, mp = z, z
    if pairs.t.size:
        iou = pairs.n / (truth.volume_vox[pairs.t - 1] + pred.volume_vox[pairs.p - 1] - pairs.n)
        cand = iou >= threshold
        if cand.any():
            ct, cp, ci = pairs.t[cand], pairs.p[cand], iou[cand]
            ut, rt = np.unique(ct, return_inverse=True)
            up, rp = np.unique(cp, return_inverse=True)
            matrix = np.zeros((ut.size, up.size))
            matrix[rt, rp] = ci
            rows, cols = linear_sum_assignment(matrix, maximize=True)
            good = matrix[rows, cols] >= threshold
            mt, mp = ut[rows[good]], up[cols[good]]
            iou_t[mt - 1] = matrix[rows[good], cols[good]]
            iou_p[mp - 1] = matrix[rows[good], cols[good]]
    det_t = np.zeros(truth.n, bool)
    det_p = np.zeros(pred.n, bool)
    det_t[mt - 1] = True
    det_p[mp - 1] = True
    return Match(truth, pairs, det_t, det_p, (mt, mp), (mp, mt), iou_t, iou_p)


_OFFSETS18 = [
    (a, b, c)
    for a in (-1, 0, 1)
    for b in (-1, 0, 1)
    for c in (-1, 0, 1)
    if 0 < abs(a) + abs(b) + abs(c) <= 2
]


def dilate18(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary dilation with the 18-neighbour element (faces and edges), ``iterations`` times.

    The same result as ``scipy.ndimage.binary_dilation(mask,
    generate_binary_structure(3, 2), iterations)`` (outside the volume
    counts as background), computed as an OR of 18 shifted views, which is
    several times faster.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) bool.
    iterations : int
        Number of dilations (0 returns the mask).

    Returns
    -------
    numpy.ndarray
        (D, H, W) bool.
    """
    out = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        grown = out.copy()
        for shift in _OFFSETS18:
            dst = tuple(slice(max(0, s), n + min(0, s)) for s, n in zip(shift, out.shape, strict=True))
            src = tuple(slice(max(0, -s), n + min(0, -s)) for s, n in zip(shift, out.shape, strict=True))
            grown[dst] |= out[src]
        out = grown
    return out


def brats_lesion_dice(dice_sum: float, gt: int, fp: int) -> float:
    """BraTS-2023 lesion-wise Dice ``dice_sum / (gt + fp)``; 0/0 is 1 (the BraTS convention)."""
    return 1.0 if gt + fp == 0 else float(dice_sum) / (gt + fp)


def _brats_truth(lesions: Lesions, cfg: EvaluateConfig) -> tuple[Lesions, np.ndarray]:
    """Merge truth components lying in one dilated blob; return them and the blob labels."""
    kept = lesions.labels > 0
    blobs, _ = label_components(dilate18(kept, cfg.brats_dilation), cfg.connectivity)
    merged = np.where(kept, blobs, np.uint32(0))
    voxel_labels = blobs.ravel()[lesions.voxels]
    n = int(voxel_labels.max()) if voxel_labels.size else 0  # every blob holds truth voxels
    return lesions_from_voxels(merged, lesions.voxels, voxel_labels, n, lesions.offset), blobs


def match_brats(truth: Lesions, pred: Lesions, cfg: EvaluateConfig) -> Match:
    """``brats``: truth merged per dilated blob; a prediction touching a blob is TP for it."""
    truth, blobs = _brats_truth(truth, cfg)
    pairs = overlaps(truth, pred)
    # predicted components touching each dilated truth blob (blob id == merged truth id)
    bt, bp, _ = label_pairs(pred, blobs, truth.n)  # (pred id, blob id)
    det_p = np.zeros(pred.n, bool)
    det_p[bt - 1] = True
    det_t = np.zeros(truth.n, bool)
    det_t[bp - 1] = True
    union = np.bincount(bp, weights=pred.volume_vox[bt - 1], minlength=truth.n + 1)[1:]
    # every predicted voxel inside truth lesion b belongs to a component touching b's blob
    den = truth.volume_vox + union
    dice_t = np.where(den > 0, 2.0 * pairs.ov_t / np.maximum(den, 1), 0.0)
    order = np.lexsort((bt, bp))
    return Match(truth, pairs, det_t, det_p, (bp[order], bt[order]), (bt, bp), dice_t, None)


# --------------------------------------------------------------------------- the registry


def _iou_scores(tp: int, fn: int, fp: int, iou_sum: float) -> dict[str, float]:
    half = 0.5 * (fp + fn)
    return {"rq": ratio(tp, tp + half), "sq": ratio(iou_sum, tp), "pq": ratio(iou_sum, tp + half)}


def _brats_scores(tp: int, fn: int, fp: int, dice_sum: float) -> dict[str, float]:
    return {"lesion_dice": brats_lesion_dice(dice_sum, tp + fn, fp)}


@dataclass(frozen=True)
class Criterion:
    """One matching criterion and everything that depends on which one it is.

    Attributes
    ----------
    match : Matcher
        ``match(truth, pred, cfg) -> Match``.
    default_min_lesion_mm3 : float
        Minimum lesion volume when ``evaluate.min_lesion_mm3`` is None.
    drops_equal_size : bool
        The size filter also drops lesions of exactly the minimum volume
        (animaSegPerfAnalyzer's rule).
    lesion_column : str or None
        Per-lesion value column (``Match.value_t`` / ``value_p``) of lesions.csv.
    value_sum : str or None
        :class:`~lesionseg.evaluation.scoring.CaseEvaluation` field holding
        the case's sum of the per-truth-lesion values.
    scores : callable or None
        ``scores(TP, FN, FP, value_sum) -> {name: score}``: the criterion's
        scores, for one case and for pooled sums alike.
    case_means : tuple of str
        Per-case scores whose mean the summary also reports (as ``<name>_mean``).
    crop_margin : callable
        ``crop_margin(cfg)``: voxels around ``truth | pred`` that matching needs.
    """

    match: Matcher
    default_min_lesion_mm3: float = 0.0
    drops_equal_size: bool = False
    lesion_column: str | None = None
    value_sum: str | None = None
    scores: Callable[[int, int, int, float], dict[str, float]] | None = None
    case_means: tuple[str, ...] = ()
    crop_margin: Callable[[EvaluateConfig], int] = lambda cfg: 0

    @property
    def case_columns(self) -> tuple[str, ...]:
        """The criterion's extra cases.csv columns (its score names)."""
        return tuple(self.scores(0, 0, 0, 0.0)) if self.scores else ()


#: every matching criterion, by its ``evaluate.criterion`` name
CRITERIA: dict[str, Criterion] = {
    "any": Criterion(match_any),
    "anima": Criterion(match_anima, default_min_lesion_mm3=3.0, drops_equal_size=True),
    "iou": Criterion(match_iou, lesion_column="iou", value_sum="iou_sum", scores=_iou_scores),
    "brats": Criterion(
        match_brats,
        lesion_column="lesion_dice",
        value_sum="lesion_dice_sum",
        scores=_brats_scores,
        case_means=("lesion_dice",),
        crop_margin=lambda cfg: cfg.brats_dilation + 1,
    ),
}


# --------------------------------------------------------------------------- settings


def resolved_min_lesion_mm3(cfg: EvaluateConfig) -> float:
    """The minimum lesion volume (mm³) used: ``cfg.min_lesion_mm3`` or the criterion default."""
    if cfg.min_lesion_mm3 is not None:
        return float(cfg.min_lesion_mm3)
    criterion = CRITERIA.get(cfg.criterion)
    return criterion.default_min_lesion_mm3 if criterion else 0.0


def min_lesion_voxels(min_mm3: float, voxel_mm3: float, criterion: str = "any") -> int:
    """Smallest lesion size kept, in voxels.

    ``anima``: components of at most ``min_mm3`` are removed, i.e.
    ``floor(min_mm3 / voxel_mm3) + 1`` voxels (animaSegPerfAnalyzer).
    Others: components smaller than ``min_mm3`` are removed, i.e.
    ``ceil(min_mm3 / voxel_mm3)`` voxels (at least 1).  A relative tolerance
    of 1e-9 keeps exact boundaries exact despite floating point.

    Examples
    --------
    >>> min_lesion_voxels(3.0, 1.0, "anima"), min_lesion_voxels(3.0, 1.0, "any")
    (4, 3)
    >>> min_lesion_voxels(3.0, 0.5 * 0.5 * 2.0)
    6
    """
    if min_mm3 <= 0:
        return 1
    q = min_mm3 / voxel_mm3
    if criterion in CRITERIA and CRITERIA[criterion].drops_equal_size:
        return int(math.floor(q * (1 + 1e-9))) + 1
    return max(1, int(math.ceil(q * (1 - 1e-9))))
