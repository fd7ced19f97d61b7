"""Evaluation reports: the lesions.csv, cases.csv and summary.csv tables and writing them.

Files (contract columns first, then criterion columns, then the settings)
------------------------------------------------------------------------
``lesions.csv``
    One row per truth and predicted lesion: ``case, source, lesion_id,
    volume_vox, volume_mm3, centroid_i, centroid_j, centroid_k, status,
    matched_ids, overlap_vox, split, merge, bbox_*`` (+ ``iou`` for the
    ``iou`` criterion, ``lesion_dice`` for ``brats``).  ``matched_ids`` lists
    the other side's lesions the criterion credits (``"2;5"``);
    ``overlap_vox`` counts this lesion's voxels inside the other side's
    lesions; bounding boxes are half-open voxel ranges.
``cases.csv``
    One row per case: ``case, GT, TP, FN, FP, n_pred, lesion_precision,
    lesion_recall, lesion_f1, dice, gt_volume_mm3, pred_volume_mm3,
    TP_pred`` (+ ``rq, sq, pq`` for ``iou``; ``lesion_dice`` for ``brats``).
``summary.csv``
    One row from the pooled counts
    (:func:`~lesionseg.evaluation.scoring.pool_counts`): ``cases, GT, TP,
    FN, FP, n_pred, lesion_precision, lesion_recall, lesion_f1, dice_mean,
    lesion_f1_mean, TP_pred`` (+ pooled ``rq, sq, pq``; pooled
    ``lesion_dice`` and ``lesion_dice_mean``).  Means are over the cases
    where the value is defined.

Every file ends with ``criterion, connectivity, min_lesion_mm3`` (cases.csv
also ``min_lesion_vox`` and ``voxel_volume_mm3``), so a number is never
separated from the definition that produced it.  Undefined values (a zero
denominator) are written as empty cells.

The ``lesionseg evaluate`` stage is :mod:`lesionseg.evaluation.evaluate`,
``lesionseg compare`` is :mod:`lesionseg.evaluation.compare`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lesionseg.config import EvaluateConfig
from lesionseg.data import writing
from lesionseg.evaluation.criteria import CRITERIA, resolved_min_lesion_mm3
from lesionseg.evaluation.lesions import LESION_COLUMNS
from lesionseg.evaluation.scoring import CaseEvaluation, nanmean, pool_counts

CASE_COLUMNS = (
    "case", "GT", "TP", "FN", "FP", "n_pred", "lesion_precision", "lesion_recall",
    "lesion_f1", "dice", "gt_volume_mm3", "pred_volume_mm3", "TP_pred",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "cases", "GT", "TP", "FN", "FP", "n_pred", "lesion_precision", "lesion_recall",
    "lesion_f1", "dice_mean", "lesion_f1_mean", "TP_pred",
)  # fmt: skip
SETTINGS_COLUMNS = ("criterion", "connectivity", "min_lesion_mm3")


def _settings(cfg: EvaluateConfig) -> dict[str, object]:
    return {
        "criterion": cfg.criterion,
        "connectivity": cfg.connectivity,
        "min_lesion_mm3": resolved_min_lesion_mm3(cfg),
    }


def _check_consistent(evaluations: Sequence[CaseEvaluation], cfg: EvaluateConfig) -> None:
    for ev in evaluations:
        if ev.criterion != cfg.criterion or ev.connectivity != cfg.connectivity:
            raise ValueError(
                f"case {ev.case!r} was evaluated with {ev.criterion}/{ev.connectivity}, "
                f"the report is for {cfg.criterion}/{cfg.connectivity}"
            )


def cases_table(evaluations: Sequence[CaseEvaluation], cfg: EvaluateConfig) -> pd.DataFrame:
    """The ``cases.csv`` table: one row per case (see the module docstring)."""
    _check_consistent(evaluations, cfg)
    columns = [*CASE_COLUMNS, *CRITERIA[cfg.criterion].case_columns]
    rows = [[getattr(ev, c) for c in columns] for ev in evaluations]
    table = pd.DataFrame(rows, columns=columns)
    for key, value in _settings(cfg).items():
        table[key] = [getattr(ev, key) for ev in evaluations] if evaluations else value
    table["min_lesion_vox"] = [ev.min_lesion_vox for ev in evaluations]
    table["voxel_volume_mm3"] = [ev.voxel_volume_mm3 for ev in evaluations]
    return table


def summary_table(evaluations: Sequence[CaseEvaluation], cfg: EvaluateConfig) -> pd.DataFrame:
    """The one-row ``summary.csv`` table from the pooled counts (see the module docstring)."""
    _check_consistent(evaluations, cfg)
    pooled = pool_counts(evaluations)
    row: dict[str, object] = {column: getattr(pooled, column) for column in SUMMARY_COLUMNS}
    criterion = CRITERIA[cfg.criterion]
    if criterion.scores is not None and criterion.value_sum is not None:
        value_sum = float(sum(getattr(ev, criterion.value_sum) for ev in evaluations))
        row.update(criterion.scores(pooled.TP, pooled.FN, pooled.FP, value_sum))
    for name in criterion.case_means:
        row[f"{name}_mean"] = nanmean(getattr(ev, name) for ev in evaluations)
    row.update(_settings(cfg))
    return pd.DataFrame([row])


def lesions_table(evaluations: Sequence[CaseEvaluation], cfg: EvaluateConfig) -> pd.DataFrame:
    """The ``lesions.csv`` table: every lesion row of every case."""
    _check_consistent(evaluations, cfg)
    extra = CRITERIA[cfg.criterion].lesion_column
    columns = [*LESION_COLUMNS, *([extra] if extra else [])]
    frames = [ev.lesions for ev in evaluations if len(ev.lesions)]
    table = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    for axis in "ijk":  # a centroid to 1/1000 voxel is plenty and keeps the file readable
        table[f"centroid_{axis}"] = table[f"centroid_{axis}"].astype(float).round(3)
    for key, value in _settings(cfg).items():
        table[key] = value
    return table


def write_reports(evaluations: Sequence[CaseEvaluation], out_dir: Path, cfg: EvaluateConfig) -> Path:
    """Write ``lesions.csv``, ``cases.csv`` and ``summary.csv`` into ``out_dir``.

    The three files are written to temporary names and renamed together only
    when all are complete.

    Parameters
    ----------
    evaluations : sequence of CaseEvaluation
        One per case, all computed with ``cfg``.
    out_dir : Path
        Report folder (created if needed).
    cfg : EvaluateConfig
        The settings the evaluations used (written into every file).

    Returns
    -------
    Path
        ``out_dir``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from lesionseg.evaluation.lesions import evaluate_case
    >>> t = np.zeros((4, 4, 4), np.uint8); t[1, 1, 1] = 1
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = write_reports([evaluate_case(t, t, (1.0, 1.0, 1.0))], Path(d), EvaluateConfig())
    ...     sorted(p.name for p in out.iterdir())
    ['cases.csv', 'lesions.csv', 'summary.csv']
    """
    out_dir = Path(out_dir)
    tables = {
        "lesions.csv": lesions_table(evaluations, cfg),
        "cases.csv": cases_table(evaluations, cfg),
        "summary.csv": summary_table(evaluations, cfg),
    }
    with contextlib.ExitStack() as stack:
        for name, table in tables.items():
            tmp = stack.enter_context(writing.atomic_path(out_dir / name))
            table.to_csv(tmp, index=False)
    return out_dir
