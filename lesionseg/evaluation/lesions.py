"""Lesion-wise evaluation: one labelling, every published matching criterion.

Lesions are 3D connected components of a binary mask, labelled with
connected-components-3d (``cc3d``) into 32-bit labels (never uint8, which
wraps above 255 lesions).  Truth and prediction are labelled once; every
criterion is then computed from the sparse table of *overlap pairs*
``(truth lesion, predicted lesion, shared voxels)`` gathered with one pass
over the truth voxels -- no Python loop over voxels, and all work is done
inside the bounding box of ``truth | pred``.

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

Conventions used by every criterion
-----------------------------------
- ``GT = TP + FN`` (truth lesions), ``n_pred = TP_pred + FP`` (predicted
  lesions); recall = TP / GT, precision = TP_pred / n_pred.
- A ratio with a zero denominator is NaN, not 0 or 1.  ``lesion_f1`` is the
  harmonic mean of precision and recall; when one of them is undefined and
  the other is 0 the harmonic mean is 0 whatever the undefined one would be,
  so F1 is 0 (a blank prediction of a case with lesions, or only false
  positives on a case without lesions) and NaN only when neither mask has a
  lesion.
- The minimum lesion size is applied to truth and prediction before
  matching (generic rule: components with fewer than
  ``ceil(min_mm3 / voxel_mm3)`` voxels are dropped; ``anima``: the tool's rule
  ``floor(min_mm3 / voxel_mm3) + 1``).  Voxel Dice and the volumes are
  computed on the masks as given (before the size filter).
- Voxel Dice is NaN when both masks are empty.
- Flags: a truth lesion is ``split`` when >= 2 predicted lesions overlap it
  and ``merge`` when it shares a predicted lesion with another truth lesion;
  a predicted lesion is ``merge`` when it overlaps >= 2 truth lesions and
  ``split`` when the truth lesion it overlaps is also overlapped by another
  predicted lesion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cc3d
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from lesionseg.config import EvaluateConfig
from lesionseg.errors import LesionsegError

CRITERIA = ("any", "anima", "iou", "brats")
CONNECTIVITIES = (6, 18, 26)
#: default minimum lesion volume (mm³) per criterion when ``min_lesion_mm3`` is None
DEFAULT_MIN_LESION_MM3 = {"any": 0.0, "anima": 3.0, "iou": 0.0, "brats": 0.0}

#: voxel codes of :func:`lesion_status_map`
STATUS_BACKGROUND, STATUS_TP, STATUS_FN, STATUS_FP = 0, 1, 2, 3

#: lesions.csv columns, in order (criterion columns ``iou`` / ``lesion_dice`` follow)
LESION_COLUMNS = (
    "case", "source", "lesion_id", "volume_vox", "volume_mm3",
    "centroid_i", "centroid_j", "centroid_k", "status", "matched_ids", "overlap_vox",
    "split", "merge",
    "bbox_i0", "bbox_i1", "bbox_j0", "bbox_j1", "bbox_k0", "bbox_k1",
)  # fmt: skip


@dataclass(frozen=True)
class Lesions:
    """Connected components of one binary mask and their statistics.

    Attributes
    ----------
    labels : numpy.ndarray
        (d, h, w) uint32 label image (0 = background, lesions 1..n) of the
        region that was labelled (a crop of the volume, see ``offset``).
    offset : tuple of int
        Voxel index of ``labels[0, 0, 0]`` in the whole volume.
    volume_vox : numpy.ndarray
        (n,) int64 voxels of lesion ``i + 1``.
    centroid : numpy.ndarray
        (n, 3) float64 centroid (i, j, k) in voxel indices of the volume.
    bbox : numpy.ndarray
        (n, 6) int64 bounding box ``i0, i1, j0, j1, k0, k1`` (start
        inclusive, stop exclusive, like slices) in voxel indices.
    voxels : numpy.ndarray
        (V,) int64 flat (C-order) indices into ``labels`` of every lesion
        voxel, in increasing order.
    voxel_labels : numpy.ndarray
        (V,) uint32 label of each of those voxels.
    """

    labels: np.ndarray
    offset: tuple[int, int, int]
    volume_vox: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    voxels: np.ndarray
    voxel_labels: np.ndarray

    @property
    def n(self) -> int:
        """Number of lesions."""
        return int(self.volume_vox.shape[0])


@dataclass(frozen=True)
class CaseEvaluation:
    """Lesion-wise and voxel-wise scores of one case.

    Counts follow the criterion (module docstring); ratios with a zero
    denominator are NaN.  Criterion-specific values are NaN for the other
    criteria.

    Attributes
    ----------
    case : str
        Case id.
    criterion, connectivity : str, int
        Matching rule and lesion connectivity used.
    min_lesion_mm3 : float
        Minimum lesion size used (after resolving the criterion default).
    min_lesion_vox : int
        The same threshold in voxels of this case (smallest kept size).
    GT, TP, FN : int
        Truth lesions, detected truth lesions, missed truth lesions.
    FP, n_pred, TP_pred : int
        Predicted lesions that are false positives, all predicted lesions,
        predicted lesions credited as true (``n_pred = TP_pred + FP``).
    lesion_precision, lesion_recall, lesion_f1 : float
        ``TP_pred / n_pred``, ``TP / GT`` and their harmonic mean.
    dice : float
        Voxel Dice of the masks as given (NaN when both are empty).
    gt_volume_mm3, pred_volume_mm3 : float
        Mask volumes as given, in mm³.
    voxel_volume_mm3 : float
        Volume of one voxel (product of the zooms).
    lesions : pandas.DataFrame
        One row per truth and predicted lesion (columns ``LESION_COLUMNS``
        plus ``iou`` for ``iou`` and ``lesion_dice`` for ``brats``).
    iou_sum, sq, rq, pq : float
        ``iou`` criterion: sum of matched IoU, segmentation, recognition and
        panoptic quality.
    lesion_dice_sum, lesion_dice : float
        ``brats`` criterion: sum of lesion Dice and the lesion-wise Dice.
    """

    case: str
    criterion: str
    connectivity: int
    min_lesion_mm3: float
    min_lesion_vox: int
    GT: int
    TP: int
    FN: int
    FP: int
    n_pred: int
    TP_pred: int
    lesion_precision: float
    lesion_recall: float
    lesion_f1: float
    dice: float
    gt_volume_mm3: float
    pred_volume_mm3: float
    voxel_volume_mm3: float
    lesions: pd.DataFrame = field(repr=False, compare=False)
    iou_sum: float = math.nan
    sq: float = math.nan
    rq: float = math.nan
    pq: float = math.nan
    lesion_dice_sum: float = math.nan
    lesion_dice: float = math.nan


# --------------------------------------------------------------------------- helpers

#: A prediction whose volume exceeds this multiple of the truth volume is
#: over-segmented: one component covering the volume touches every truth
#: lesion, which the ``any`` criterion credits as a perfect F1.  Model
#: selection (training) and tuning never pick such a prediction on its F1.
OVERSEGMENTATION = 10.0


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when ``den`` is 0."""
    return float(num) / float(den) if den else math.nan


def harmonic_f1(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (see the module docstring).

    NaN only when both are NaN; 0 when either is 0.
    """
    p_nan, r_nan = math.isnan(precision), math.isnan(recall)
    if p_nan and r_nan:
        return math.nan
    if p_nan or r_nan:
        other = recall if p_nan else precision
        return 0.0 if other == 0 else math.nan
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def check_evaluate_config(cfg: EvaluateConfig) -> None:
    """Raise a one-line :class:`LesionsegError` for an invalid ``[evaluate]`` section."""
    if cfg.criterion not in CRITERIA:
        raise LesionsegError(
            f"config evaluate.criterion: unknown {cfg.criterion!r}; known: {', '.join(CRITERIA)}"
        )
    if cfg.connectivity not in CONNECTIVITIES:
        raise LesionsegError(f"config evaluate.connectivity: must be 6, 18 or 26, got {cfg.connectivity!r}")
    if cfg.min_lesion_mm3 is not None and cfg.min_lesion_mm3 < 0:
        raise LesionsegError(f"config evaluate.min_lesion_mm3: must be >= 0, got {cfg.min_lesion_mm3}")
    for name in ("anima_alpha", "anima_beta", "anima_gamma"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise LesionsegError(f"config evaluate.{name}: must be in [0, 1], got {getattr(cfg, name)}")
    if not 0.0 < cfg.iou_threshold <= 1.0:
        raise LesionsegError(f"config evaluate.iou_threshold: must be in (0, 1], got {cfg.iou_threshold}")
    if cfg.brats_dilation < 0:
        raise LesionsegError(f"config evaluate.brats_dilation: must be >= 0, got {cfg.brats_dilation}")


def resolved_min_lesion_mm3(cfg: EvaluateConfig) -> float:
    """The minimum lesion volume (mm³) used: ``cfg.min_lesion_mm3`` or the criterion default."""
    if cfg.min_lesion_mm3 is not None:
        return float(cfg.min_lesion_mm3)
    return DEFAULT_MIN_LESION_MM3.get(cfg.criterion, 0.0)


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
    if criterion == "anima":
        return int(math.floor(q * (1 + 1e-9))) + 1
    return max(1, int(math.ceil(q * (1 - 1e-9))))


def _union_box(truth: np.ndarray, pred: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box (with ``margin``) of ``truth | pred``; one voxel at the origin if both are empty."""
    ij = np.any(truth, axis=2) | np.any(pred, axis=2)
    k = np.any(truth, axis=(0, 1)) | np.any(pred, axis=(0, 1))
    if not k.any():
        return (slice(0, 1), slice(0, 1), slice(0, 1))
    box = []
    for axis, flags in enumerate((ij.any(axis=1), ij.any(axis=0), k)):
        idx = np.flatnonzero(flags)
        box.append(slice(max(0, int(idx[0]) - margin), min(truth.shape[axis], int(idx[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def _lesions_from_voxels(
    labels: np.ndarray, voxels: np.ndarray, voxel_labels: np.ndarray, n: int, offset: tuple[int, int, int]
) -> Lesions:
    """Statistics of labels 1..n (all present) from the list of their voxels.

    Equal to ``cc3d.statistics`` (voxel counts, centroids, bounding boxes) but
    computed from the V lesion voxels only rather than by scanning the whole
    box, which is several times faster for sparse lesion masks.
    """
    counts = np.bincount(voxel_labels, minlength=n + 1)[1:].astype(np.int64)
    coords = np.unravel_index(voxels, labels.shape)
    centroid = np.empty((n, 3))
    bbox = np.empty((n, 6), np.int64)
    if n:
        order = np.argsort(voxel_labels, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        for axis, c in enumerate(coords):
            centroid[:, axis] = np.bincount(voxel_labels, weights=c, minlength=n + 1)[1:] / counts + offset[axis]
            c_sorted = c[order]
            bbox[:, 2 * axis] = np.minimum.reduceat(c_sorted, starts) + offset[axis]
            bbox[:, 2 * axis + 1] = np.maximum.reduceat(c_sorted, starts) + 1 + offset[axis]
    return Lesions(labels, offset, counts, centroid, bbox, voxels, voxel_labels)


def _label(
    mask: np.ndarray, connectivity: int, min_voxels: int, offset: tuple[int, int, int]
) -> Lesions:
    """Label a binary C-ordered (crop of a) mask and drop components below ``min_voxels``."""
    labels, n = cc3d.connected_components(
        mask, connectivity=connectivity, return_N=True, out_dtype=np.uint32, binary_image=True
    )
    labels = np.asarray(labels, dtype=np.uint32)
    voxels = np.flatnonzero(mask)  # on the bool mask: much faster than on the labels
    voxel_labels = labels.ravel()[voxels]
    if n and min_voxels > 1:
        counts = np.bincount(voxel_labels, minlength=n + 1)
        keep = counts >= min_voxels
        keep[0] = False
        if not keep[1:].all():
            lut = np.zeros(n + 1, np.uint32)
            n = int(keep.sum())
            lut[keep] = np.arange(1, n + 1, dtype=np.uint32)
            labels = lut[labels]
            voxel_labels = lut[voxel_labels]
            kept = voxel_labels > 0
            voxels, voxel_labels = voxels[kept], voxel_labels[kept]
    return _lesions_from_voxels(labels, voxels, voxel_labels, int(n), offset)


def label_lesions(mask: np.ndarray, connectivity: int = 26, min_voxels: int = 1) -> Lesions:
    """Connected components of a whole binary mask, with their statistics.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary mask (any dtype; non-zero is lesion).
    connectivity : {6, 18, 26}
        Voxel connectivity of a lesion.
    min_voxels : int
        Components with fewer voxels are dropped (and the rest renumbered
        1..n in cc3d's scan order).

    Returns
    -------
    Lesions
        ``labels`` is (D, H, W) uint32, ``offset`` is (0, 0, 0).
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return _label(np.ascontiguousarray(np.asarray(mask) != 0), connectivity, int(min_voxels), (0, 0, 0))


@dataclass(frozen=True)
class _Pairs:
    """Sparse overlap table between truth lesions (1..nt) and predicted lesions (1..np)."""

    t: np.ndarray  # (m,) int64 truth ids
    p: np.ndarray  # (m,) int64 predicted ids
    n: np.ndarray  # (m,) int64 shared voxels
    ov_t: np.ndarray  # (nt,) truth voxels covered by predicted lesions
    ov_p: np.ndarray  # (np,) predicted voxels inside truth lesions


def _pairs(a: Lesions, b: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _overlaps(truth: Lesions, pred: Lesions) -> _Pairs:
    t, p, n = _pairs(truth, pred.labels, pred.n)
    ov_t = np.bincount(t, weights=n, minlength=truth.n + 1)[1:].astype(np.int64)
    ov_p = np.bincount(p, weights=n, minlength=pred.n + 1)[1:].astype(np.int64)
    return _Pairs(t, p, n, ov_t, ov_p)


# --------------------------------------------------------------------------- criteria


@dataclass(frozen=True)
class _Match:
    """Outcome of a criterion: detection flags and the pairs it credits."""

    det_t: np.ndarray  # (nt,) bool
    det_p: np.ndarray  # (np,) bool
    links_t: tuple[np.ndarray, np.ndarray]  # (truth id, pred id) pairs shown on truth rows
    links_p: tuple[np.ndarray, np.ndarray]  # (pred id, truth id) pairs shown on pred rows
    value_t: np.ndarray | None = None  # per truth lesion: IoU (iou) or lesion Dice (brats)
    value_p: np.ndarray | None = None  # per predicted lesion: IoU (iou)


def _match_any(truth: Lesions, pred: Lesions, pairs: _Pairs) -> _Match:
    return _Match(pairs.ov_t > 0, pairs.ov_p > 0, (pairs.t, pairs.p), (pairs.p, pairs.t))


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


def _match_anima(truth: Lesions, pred: Lesions, pairs: _Pairs, cfg: EvaluateConfig) -> _Match:
    size_t, size_p = truth.volume_vox, pred.volume_vox
    outside_p = (size_p - pairs.ov_p) / np.maximum(size_p, 1)
    outside_t = (size_t - pairs.ov_t) / np.maximum(size_t, 1)
    args = (cfg.anima_alpha, cfg.anima_beta, cfg.anima_gamma)
    det_t, links_t = _anima_side(pairs.t, pairs.p, pairs.n, size_t, pairs.ov_t, outside_p, *args)
    det_p, links_p = _anima_side(pairs.p, pairs.t, pairs.n, size_p, pairs.ov_p, outside_t, *args)
    return _Match(det_t, det_p, links_t, links_p)


def _match_iou(truth: Lesions, pred: Lesions, pairs: _Pairs, threshold: float) -> _Match:
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
    return _Match(det_t, det_p, (mt, mp), (mp, mt), iou_t, iou_p)


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


def _brats_truth(truth_mask: np.ndarray, lesions: Lesions, cfg: EvaluateConfig) -> tuple[Lesions, np.ndarray]:
    """Merge truth components lying in one dilated blob; return them and the blob labels."""
    kept = lesions.labels > 0
    dilated = dilate18(kept, cfg.brats_dilation)
    blobs = np.asarray(
        cc3d.connected_components(dilated, connectivity=cfg.connectivity, out_dtype=np.uint32, binary_image=True),
        dtype=np.uint32,
    )
    merged = np.where(kept, blobs, np.uint32(0))
    voxel_labels = blobs.ravel()[lesions.voxels]
    n = int(voxel_labels.max()) if voxel_labels.size else 0  # every blob holds truth voxels
    return _lesions_from_voxels(merged, lesions.voxels, voxel_labels, n, lesions.offset), blobs


def _match_brats(truth: Lesions, pred: Lesions, pairs: _Pairs, blobs: np.ndarray) -> _Match:
    # predicted components touching each dilated truth blob (blob id == merged truth id)
    bt, bp, _ = _pairs(pred, blobs, truth.n)  # (pred id, blob id)
    det_p = np.zeros(pred.n, bool)
    det_p[bt - 1] = True
    det_t = np.zeros(truth.n, bool)
    det_t[bp - 1] = True
    union = np.bincount(bp, weights=pred.volume_vox[bt - 1], minlength=truth.n + 1)[1:]
    # every predicted voxel inside truth lesion b belongs to a component touching b's blob
    den = truth.volume_vox + union
    dice_t = np.where(den > 0, 2.0 * pairs.ov_t / np.maximum(den, 1), 0.0)
    order = np.lexsort((bt, bp))
    return _Match(det_t, det_p, (bp[order], bt[order]), (bt, bp), dice_t, None)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Evaluated:
    evaluation: CaseEvaluation
    box: tuple[slice, slice, slice]
    truth: Lesions
    pred: Lesions
    match: _Match


def _ids_text(links: tuple[np.ndarray, np.ndarray], n: int) -> list[str]:
    """``"3;7"``-style lists of linked ids for lesions 1..n (links sorted by the first id)."""
    own, other = links
    text = [""] * n
    if own.size == 0:
        return text
    order = np.lexsort((other, own))
    own, other = own[order], other[order]
    starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
    for lesion, ids in zip(own[starts], np.split(other, starts[1:]), strict=True):
        text[int(lesion) - 1] = ";".join(str(int(i)) for i in ids)
    return text


def _rows(
    case_id: str,
    source: str,
    lesions: Lesions,
    detected: np.ndarray,
    negative: str,
    links: tuple[np.ndarray, np.ndarray],
    overlap: np.ndarray,
    split: np.ndarray,
    merge: np.ndarray,
    voxel_mm3: float,
) -> dict[str, object]:
    n = lesions.n
    return {
        "case": [case_id] * n,
        "source": [source] * n,
        "lesion_id": np.arange(1, n + 1, dtype=np.int64),
        "volume_vox": lesions.volume_vox,
        "volume_mm3": lesions.volume_vox * voxel_mm3,
        "centroid_i": lesions.centroid[:, 0],
        "centroid_j": lesions.centroid[:, 1],
        "centroid_k": lesions.centroid[:, 2],
        "status": np.where(detected, "TP", negative),
        "matched_ids": _ids_text(links, n),
        "overlap_vox": overlap,
        "split": split,
        "merge": merge,
        **{name: lesions.bbox[:, c] for c, name in enumerate(LESION_COLUMNS[13:19])},
    }


def _evaluate(
    truth: np.ndarray,
    pred: np.ndarray,
    zooms: tuple[float, float, float],
    cfg: EvaluateConfig,
    case_id: str,
) -> _Evaluated:
    check_evaluate_config(cfg)
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.ndim != 3 or truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} must be 3D arrays of one shape")
    voxel_mm3 = float(np.prod(np.asarray(zooms, dtype=np.float64)))
    if not voxel_mm3 > 0:
        raise ValueError(f"voxel sizes must be positive, got {tuple(zooms)}")
    min_mm3 = resolved_min_lesion_mm3(cfg)
    min_vox = min_lesion_voxels(min_mm3, voxel_mm3, cfg.criterion)

    margin = cfg.brats_dilation + 1 if cfg.criterion == "brats" else 0
    box = _union_box(truth, pred, margin)
    offset = (box[0].start, box[1].start, box[2].start)
    # C order, so that ravel() never copies and both label images share one layout
    t_mask = np.not_equal(truth[box], 0, order="C")
    p_mask = np.not_equal(pred[box], 0, order="C")
    n_t, n_p = int(np.count_nonzero(t_mask)), int(np.count_nonzero(p_mask))
    inter = int(np.count_nonzero(t_mask & p_mask))

    t_les = _label(t_mask, cfg.connectivity, min_vox, offset)
    p_les = _label(p_mask, cfg.connectivity, min_vox, offset)
    blobs = None
    if cfg.criterion == "brats":
        t_les, blobs = _brats_truth(t_mask, t_les, cfg)
    pairs = _overlaps(t_les, p_les)
    if cfg.criterion == "any":
        match = _match_any(t_les, p_les, pairs)
    elif cfg.criterion == "anima":
        match = _match_anima(t_les, p_les, pairs, cfg)
    elif cfg.criterion == "iou":
        match = _match_iou(t_les, p_les, pairs, cfg.iou_threshold)
    else:
        match = _match_brats(t_les, p_les, pairs, blobs)  # type: ignore[arg-type]

    # split / merge flags from voxel overlap
    n_hits_t = np.bincount(pairs.t, minlength=t_les.n + 1)[1:]
    n_hits_p = np.bincount(pairs.p, minlength=p_les.n + 1)[1:]
    split_t, merge_p = n_hits_t >= 2, n_hits_p >= 2
    merge_t = np.bincount(pairs.t, weights=merge_p[pairs.p - 1], minlength=t_les.n + 1)[1:] > 0
    split_p = np.bincount(pairs.p, weights=split_t[pairs.t - 1], minlength=p_les.n + 1)[1:] > 0

    truth_rows = _rows(case_id, "truth", t_les, match.det_t, "FN", match.links_t, pairs.ov_t,
                       split_t, merge_t, voxel_mm3)  # fmt: skip
    pred_rows = _rows(case_id, "pred", p_les, match.det_p, "FP", match.links_p, pairs.ov_p,
                      split_p, merge_p, voxel_mm3)  # fmt: skip
    extras: dict[str, float] = {}
    if cfg.criterion == "iou":
        truth_rows["iou"], pred_rows["iou"] = match.value_t, match.value_p
    if cfg.criterion == "brats":
        truth_rows["lesion_dice"] = match.value_t
        pred_rows["lesion_dice"] = np.full(p_les.n, np.nan)
    frame = pd.concat([pd.DataFrame(truth_rows), pd.DataFrame(pred_rows)], ignore_index=True)

    gt, tp, n_pred, tp_pred = t_les.n, int(match.det_t.sum()), p_les.n, int(match.det_p.sum())
    fn, fp = gt - tp, n_pred - tp_pred
    precision, recall = ratio(tp_pred, n_pred), ratio(tp, gt)
    if cfg.criterion == "iou":
        iou_sum = float(np.nansum(match.value_t)) if gt else 0.0
        extras = {
            "iou_sum": iou_sum,
            "rq": ratio(tp, tp + 0.5 * fp + 0.5 * fn),
            "sq": ratio(iou_sum, tp),
            "pq": ratio(iou_sum, tp + 0.5 * fp + 0.5 * fn),
        }
    elif cfg.criterion == "brats":
        dice_sum = float(match.value_t.sum()) if gt else 0.0  # type: ignore[union-attr]
        extras = {"lesion_dice_sum": dice_sum, "lesion_dice": brats_lesion_dice(dice_sum, gt, fp)}
    evaluation = CaseEvaluation(
        case=case_id,
        criterion=cfg.criterion,
        connectivity=cfg.connectivity,
        min_lesion_mm3=min_mm3,
        min_lesion_vox=min_vox,
        GT=gt,
        TP=tp,
        FN=fn,
        FP=fp,
        n_pred=n_pred,
        TP_pred=tp_pred,
        lesion_precision=precision,
        lesion_recall=recall,
        lesion_f1=harmonic_f1(precision, recall),
        dice=ratio(2 * inter, n_t + n_p),
        gt_volume_mm3=n_t * voxel_mm3,
        pred_volume_mm3=n_p * voxel_mm3,
        voxel_volume_mm3=voxel_mm3,
        lesions=frame,
        **extras,
    )
    return _Evaluated(evaluation, box, t_les, p_les, match)


def brats_lesion_dice(dice_sum: float, gt: int, fp: int) -> float:
    """BraTS-2023 lesion-wise Dice ``dice_sum / (gt + fp)``; 0/0 is 1 (the BraTS convention)."""
    return 1.0 if gt + fp == 0 else float(dice_sum) / (gt + fp)


def evaluate_case(
    truth: np.ndarray,
    pred: np.ndarray,
    zooms: tuple[float, float, float],
    cfg: EvaluateConfig | None = None,
    case_id: str = "",
) -> CaseEvaluation:
    """Lesion-wise evaluation of one case under ``cfg.criterion``.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        (D, H, W) binary masks of one grid (any dtype; non-zero is lesion).
    zooms : tuple of float
        Voxel size in mm per axis (from the NIfTI header), for mm³.
    cfg : EvaluateConfig or None
        Criterion, connectivity, minimum lesion size and criterion
        parameters; ``None`` for the defaults (``any``, 26-connectivity).
    case_id : str
        Written into :attr:`CaseEvaluation.case` and the lesion rows.

    Returns
    -------
    CaseEvaluation
        Counts, ratios, voxel Dice, volumes and one row per lesion.

    Raises
    ------
    LesionsegError
        Invalid ``[evaluate]`` settings.
    ValueError
        Arrays that are not 3D or not of one shape.

    Examples
    --------
    >>> t = np.zeros((8, 8, 8), np.uint8); t[1:3, 1:3, 1:3] = 1; t[6, 6, 6] = 1
    >>> p = np.zeros_like(t); p[2, 2, 2] = 1; p[4, 0, 0] = 1
    >>> e = evaluate_case(t, p, (1.0, 1.0, 1.0))
    >>> e.GT, e.TP, e.FN, e.FP, e.n_pred, e.lesion_recall, e.lesion_precision
    (2, 1, 1, 1, 2, 0.5, 0.5)
    """
    return _evaluate(truth, pred, zooms, cfg or EvaluateConfig(), case_id).evaluation


def lesion_status_map(
    truth: np.ndarray,
    pred: np.ndarray,
    zooms: tuple[float, float, float],
    cfg: EvaluateConfig | None = None,
    case_id: str = "",
) -> tuple[np.ndarray, CaseEvaluation]:
    """Per-voxel lesion status for overlays, with the case's evaluation.

    Same arguments as :func:`evaluate_case`.

    Returns
    -------
    status : numpy.ndarray
        (D, H, W) uint8: ``STATUS_TP`` (1) for voxels of detected truth
        lesions and of credited predicted lesions, ``STATUS_FN`` (2) for
        missed truth lesions, ``STATUS_FP`` (3) for false-positive
        predictions (painted in that order), 0 elsewhere (including lesions
        removed by the size filter).
    evaluation : CaseEvaluation
        What :func:`evaluate_case` returns for these arguments.
    """
    ev = _evaluate(truth, pred, zooms, cfg or EvaluateConfig(), case_id)
    status = np.zeros(np.shape(truth), np.uint8)
    crop = status[ev.box]
    lut_p = np.zeros(ev.pred.n + 1, np.uint8)
    lut_p[1:] = np.where(ev.match.det_p, STATUS_TP, STATUS_FP)
    lut_t = np.zeros(ev.truth.n + 1, np.uint8)
    lut_t[1:] = np.where(ev.match.det_t, STATUS_TP, STATUS_FN)
    p_status, t_status = lut_p[ev.pred.labels], lut_t[ev.truth.labels]
    for code in (STATUS_TP, STATUS_FN, STATUS_FP):
        crop[(p_status == code) | (t_status == code)] = code
    return status, ev.evaluation
