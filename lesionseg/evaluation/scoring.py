"""Scores of lesion matching: the per-case record, pooling over cases, model selection.

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
- Voxel Dice is NaN when both masks are empty.

Pooling (:func:`pool_counts`) sums the counts over cases and computes
precision, recall and F1 from the sums (never a mean of per-case ratios);
Dice and per-case F1 are averaged over the cases where they are defined.
Model selection (:func:`selection_key`) never picks an over-segmented result
(:func:`over_segmented`) on its F1: it ranks by not over-segmented, then
pooled F1, then mean Dice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
import numpy as np
import pandas as pd

#: A prediction whose volume exceeds this multiple of the truth volume is
#: over-segmented: one component covering the volume touches every truth
#: lesion, which the ``any`` criterion credits as a perfect F1.  Model
#: selection (training) and tuning never pick such a prediction on its F1.
OVERSEGMENTATION = 10.0

#: the pooled counts, in the order of the report tables
COUNT_COLUMNS = ("GT", "TP", "FN", "FP", "n_pred", "TP_pred")


@dataclass(frozen=True)
class CaseEvaluation:
    """Lesion-wise and voxel-wise scores of one case.

    Counts follow the criterion (:mod:`lesionseg.evaluation.criteria`);
    ratios with a zero denominator are NaN.  Criterion-specific values are
    NaN for the other criteria.

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
        One row per truth and predicted lesion (columns
        :data:`lesionseg.evaluation.lesions.LESION_COLUMNS` plus the
        criterion's lesion columns).
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


@dataclass(frozen=True)
class CaseCounts:
    """What pooling reads from one case, without the lesion table (see :meth:`of`).

    :func:`pool_counts` accepts these, :class:`CaseEvaluation` objects, or
    any rows with the same fields.
    """

    GT: int
    TP: int
    FN: int
    FP: int
    n_pred: int
    TP_pred: int
    lesion_f1: float
    dice: float

    @classmethod
    def of(cls, ev: CaseEvaluation) -> CaseCounts:
        """The counts, lesion F1 and Dice of one case's evaluation."""
        return cls(ev.GT, ev.TP, ev.FN, ev.FP, ev.n_pred, ev.TP_pred, ev.lesion_f1, ev.dice)


@dataclass(frozen=True)
class PooledScores:
    """Counts summed over cases and the scores computed from the sums.

    Attributes
    ----------
    cases : int
        Number of cases pooled.
    GT, TP, FN, FP, n_pred, TP_pred : int
        Summed counts.
    lesion_precision, lesion_recall, lesion_f1 : float
        ``Σ TP_pred / Σ n_pred``, ``Σ TP / Σ GT`` and their harmonic mean.
    dice_mean, lesion_f1_mean : float
        Means of the per-case voxel Dice and lesion F1 over the cases where
        they are defined (NaN when none is).
    """

    cases: int
    GT: int
    TP: int
    FN: int
    FP: int
    n_pred: int
    TP_pred: int
    lesion_precision: float
    lesion_recall: float
    lesion_f1: float
    dice_mean: float
    lesion_f1_mean: float


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when ``den`` is 0."""
    return float(num) / float(den) if den else math.nan


def harmonic_f1(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (see the module docstring).

    NaN only when both are NaN; 0 when either is 0.

    Examples
    --------
    >>> harmonic_f1(0.5, 1.0), harmonic_f1(math.nan, 0.0)
    (0.6666666666666666, 0.0)
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


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN; NaN when there is none."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def pool_counts(rows: Sequence[CaseCounts | CaseEvaluation]) -> PooledScores:
    """Pool cases: sum their counts and score the sums (see the module docstring).

    Parameters
    ----------
    rows : sequence of CaseCounts or CaseEvaluation
        One per case (anything with the fields of :class:`CaseCounts`).

    Returns
    -------
    PooledScores

    Examples
    --------
    >>> a = CaseCounts(GT=2, TP=1, FN=1, FP=0, n_pred=1, TP_pred=1, lesion_f1=2 / 3, dice=0.5)
    >>> b = CaseCounts(GT=0, TP=0, FN=0, FP=0, n_pred=0, TP_pred=0, lesion_f1=math.nan, dice=math.nan)
    >>> p = pool_counts([a, b])
    >>> p.GT, p.lesion_precision, p.lesion_recall, p.dice_mean
    (2, 1.0, 0.5, 0.5)
    """
    total = {k: int(sum(getattr(row, k) for row in rows)) for k in COUNT_COLUMNS}
    precision, recall = ratio(total["TP_pred"], total["n_pred"]), ratio(total["TP"], total["GT"])
    return PooledScores(
        cases=len(rows),
        **total,
        lesion_precision=precision,
        lesion_recall=recall,
        lesion_f1=harmonic_f1(precision, recall),
        dice_mean=nanmean(row.dice for row in rows),
        lesion_f1_mean=nanmean(row.lesion_f1 for row in rows),
    )


def over_segmented(pred_voxels: int, truth_voxels: int) -> bool:
    """Whether a prediction holds more than :data:`OVERSEGMENTATION` times the truth voxels.

    Examples
    --------
    >>> over_segmented(1001, 100), over_segmented(1000, 100), over_segmented(5, 0)
    (True, False, False)
    """
    return truth_voxels > 0 and pred_voxels > OVERSEGMENTATION * truth_voxels


def selection_key(lesion_f1: float, dice: float, is_over_segmented: bool) -> tuple[float, float, float]:
    """The model-selection key: larger is better (compare keys as tuples).

    Never pick an over-segmented result on its F1: a result that is not
    over-segmented always wins over one that is; then the higher pooled
    lesion F1, then the higher mean Dice.  An undefined (NaN) F1 or Dice
    ranks below every defined value.

    Parameters
    ----------
    lesion_f1 : float
        Pooled lesion F1 (NaN: undefined).
    dice : float
        Mean voxel Dice (NaN: undefined).
    is_over_segmented : bool
        :func:`over_segmented` of the pooled voxel counts.

    Returns
    -------
    tuple of float
        ``(0 if over-segmented else 1, F1 or -1, Dice or -1)``.

    Examples
    --------
    >>> selection_key(0.9, 0.1, True) < selection_key(0.2, 0.3, False) < selection_key(0.2, 0.4, False)
    True
    """
    return (
        0.0 if is_over_segmented else 1.0,
        -1.0 if math.isnan(lesion_f1) else float(lesion_f1),
        -1.0 if math.isnan(dice) else float(dice),
    )
