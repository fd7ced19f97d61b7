"""Lesion-wise evaluation of one case: label once, match under the criterion, score.

Truth and prediction are labelled once (:func:`lesionseg.data.labels.label_lesions`)
inside the bounding box of ``truth | pred``; the criterion named by
``EvaluateConfig.criterion`` (:data:`lesionseg.evaluation.criteria.CRITERIA`)
matches them and the counts become a
:class:`~lesionseg.evaluation.scoring.CaseEvaluation` (conventions in
:mod:`lesionseg.evaluation.scoring`).

- The minimum lesion size is applied to truth and prediction before
  matching (:func:`~lesionseg.evaluation.criteria.min_lesion_voxels`).  Voxel
  Dice and the volumes are computed on the masks as given (before the size
  filter).
- Flags: a truth lesion is ``split`` when >= 2 predicted lesions overlap it
  and ``merge`` when it shares a predicted lesion with another truth lesion;
  a predicted lesion is ``merge`` when it overlaps >= 2 truth lesions and
  ``split`` when the truth lesion it overlaps is also overlapped by another
  predicted lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionseg.config import EvaluateConfig
from lesionseg.data.labels import ORIGIN_BOX, Box, Lesions, bounding_box, label_lesions
from lesionseg.evaluation.criteria import (
    CRITERIA,
    Match,
    min_lesion_voxels,
    resolved_min_lesion_mm3,
)
from lesionseg.evaluation.scoring import CaseEvaluation, harmonic_f1, ratio

#: voxel codes of :func:`lesion_status_map`
STATUS_BACKGROUND, STATUS_TP, STATUS_FN, STATUS_FP = 0, 1, 2, 3

#: lesions.csv columns, in order (the criterion's lesion column follows)
LESION_COLUMNS = (
    "case", "source", "lesion_id", "volume_vox", "volume_mm3",
    "centroid_i", "centroid_j", "centroid_k", "status", "matched_ids", "overlap_vox",
    "split", "merge",
    "bbox_i0", "bbox_i1", "bbox_j0", "bbox_j1", "bbox_k0", "bbox_k1",
)  # fmt: skip


@dataclass(frozen=True)
class _Evaluated:
    evaluation: CaseEvaluation
    box: Box
    pred: Lesions
    match: Match


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
        "status": np.where(detected, "TP", "FN" if source == "truth" else "FP"),
        "matched_ids": _ids_text(links, n),
        "overlap_vox": overlap,
        "split": split,
        "merge": merge,
        **{name: lesions.bbox[:, c] for c, name in enumerate(LESION_COLUMNS[13:19])},
    }


def _lesion_table(case_id: str, pred: Lesions, match: Match, criterion: str, voxel_mm3: float) -> pd.DataFrame:
    """The lesions.csv rows of one case: truth lesions, then predicted lesions."""
    truth, pairs = match.truth, match.pairs
    # split / merge flags from voxel overlap
    n_hits_t = np.bincount(pairs.t, minlength=truth.n + 1)[1:]
    n_hits_p = np.bincount(pairs.p, minlength=pred.n + 1)[1:]
    split_t, merge_p = n_hits_t >= 2, n_hits_p >= 2
    merge_t = np.bincount(pairs.t, weights=merge_p[pairs.p - 1], minlength=truth.n + 1)[1:] > 0
    split_p = np.bincount(pairs.p, weights=split_t[pairs.t - 1], minlength=pred.n + 1)[1:] > 0
    truth_rows = _rows(case_id, "truth", truth, match.det_t, match.links_t, pairs.ov_t, split_t, merge_t, voxel_mm3)
    pred_rows = _rows(case_id, "pred", pred, match.det_p, match.links_p, pairs.ov_p, split_p, merge_p, voxel_mm3)
    column = CRITERIA[criterion].lesion_column
    if column is not None:
        truth_rows[column] = match.value_t
        pred_rows[column] = match.value_p if match.value_p is not None else np.full(pred.n, np.nan)
    return pd.concat([pd.DataFrame(truth_rows), pd.DataFrame(pred_rows)], ignore_index=True)


def _evaluate(
    truth: np.ndarray,
    pred: np.ndarray,
    zooms: tuple[float, float, float],
    cfg: EvaluateConfig,
    case_id: str,
) -> _Evaluated:
    criterion = CRITERIA[cfg.criterion]
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.ndim != 3 or truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} must be 3D arrays of one shape")
    voxel_mm3 = float(np.prod(np.asarray(zooms, dtype=np.float64)))
    if not voxel_mm3 > 0:
        raise ValueError(f"voxel sizes must be positive, got {tuple(zooms)}")
    min_mm3 = resolved_min_lesion_mm3(cfg)
    min_vox = min_lesion_voxels(min_mm3, voxel_mm3, cfg.criterion)

    box = bounding_box(truth, pred, margin=criterion.crop_margin(cfg)) or ORIGIN_BOX
    offset = (box[0].start, box[1].start, box[2].start)
    # C order, so that ravel() never copies and both label images share one layout
    t_mask = np.not_equal(truth[box], 0, order="C")
    p_mask = np.not_equal(pred[box], 0, order="C")
    n_t, n_p = int(np.count_nonzero(t_mask)), int(np.count_nonzero(p_mask))
    inter = int(np.count_nonzero(t_mask & p_mask))

    p_les = label_lesions(p_mask, cfg.connectivity, min_vox, offset)
    match = criterion.match(label_lesions(t_mask, cfg.connectivity, min_vox, offset), p_les, cfg)
    frame = _lesion_table(case_id, p_les, match, cfg.criterion, voxel_mm3)

    gt, tp, n_pred, tp_pred = match.truth.n, int(match.det_t.sum()), p_les.n, int(match.det_p.sum())
    fn, fp = gt - tp, n_pred - tp_pred
    precision, recall = ratio(tp_pred, n_pred), ratio(tp, gt)
    extras: dict[str, float] = {}
    if criterion.value_sum is not None and criterion.scores is not None:
        value_sum = float(np.nansum(match.value_t)) if gt else 0.0
        extras = {criterion.value_sum: value_sum, **criterion.scores(tp, fn, fp, value_sum)}
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
    return _Evaluated(evaluation, box, p_les, match)


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
    lut_t = np.zeros(ev.match.truth.n + 1, np.uint8)
    lut_t[1:] = np.where(ev.match.det_t, STATUS_TP, STATUS_FN)
    p_status, t_status = lut_p[ev.pred.labels], lut_t[ev.match.truth.labels]
    for code in (STATUS_TP, STATUS_FN, STATUS_FP):
        crop[(p_status == code) | (t_status == code)] = code
    return status, ev.evaluation
