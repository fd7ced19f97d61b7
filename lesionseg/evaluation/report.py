"""Evaluation reports: the lesions.csv, cases.csv, sizes.csv and summary.csv tables and writing them.

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
``sizes.csv``
    Detection by lesion volume: per case and pooled (``case = "all"``), one
    row per volume band (:data:`SIZE_BANDS_MM3`): ``case, band, low_mm3,
    high_mm3, GT, TP, FN, lesion_recall, n_pred, FP`` — truth lesions in the
    band and how many were found; predicted lesions in the band and how many
    matched nothing.  Where a recipe loses its lesions (small ones, most
    often) and where its false ones lie, in one table.
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
SIZE_BANDS_MM3 = (0.0, 10.0, 30.0, 100.0, 1000.0, float("inf"))
"""Edges of the volume bands of ``sizes.csv`` (mm³; a lesion of volume v is in [low, high))."""
SIZE_COLUMNS = ("case", "band", "low_mm3", "high_mm3", "GT", "TP", "FN", "lesion_recall", "n_pred", "FP")


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


def _band_name(low: float, high: float) -> str:
    return f"<{high:g}" if low <= 0 else (f">={low:g}" if high == float("inf") else f"{low:g}-{high:g}")


def sizes_table(lesions: pd.DataFrame, bands: Sequence[float] = SIZE_BANDS_MM3) -> pd.DataFrame:
    """The ``sizes.csv`` table: detection per lesion-volume band, per case and pooled.

    Parameters
    ----------
    lesions : pandas.DataFrame
        The ``lesions.csv`` table (:func:`lesions_table`).
    bands : sequence of float
        Increasing band edges in mm³.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SIZE_COLUMNS`; ``lesion_recall`` is NaN where a band holds no truth lesion.

    Examples
    --------
    >>> t = pd.DataFrame({"case": ["a", "a", "a"], "source": ["truth", "truth", "pred"],
    ...                   "status": ["TP", "FN", "FP"], "volume_mm3": [50.0, 5.0, 4.0]})
    >>> s = sizes_table(t, (0, 10, float("inf")))
    >>> s[s.case == "all"][["band", "GT", "TP", "n_pred", "FP"]].values.tolist()
    [['<10', 1, 0, 1, 1], ['>=10', 1, 1, 0, 0]]
    """
    edges = [float(b) for b in bands]
    rows = []
    cases = [*sorted(set(lesions["case"])), "all"] if len(lesions) else ["all"]
    for case in cases:
        part = lesions if case == "all" else lesions[lesions["case"] == case]
        for low, high in zip(edges[:-1], edges[1:]):
            inside = part[(part["volume_mm3"] >= low) & (part["volume_mm3"] < high)]
            truth, pred = inside[inside["source"] == "truth"], inside[inside["source"] == "pred"]
            gt, tp = len(truth), int((truth["status"] == "TP").sum())
            rows.append((case, _band_name(low, high), low, high, gt, tp, gt - tp,
                         tp / gt if gt else float("nan"), len(pred), int((pred["status"] == "FP").sum())))
    return pd.DataFrame(rows, columns=list(SIZE_COLUMNS))


def write_reports(evaluations: Sequence[CaseEvaluation], out_dir: Path, cfg: EvaluateConfig) -> Path:
    """Write ``lesions.csv``, ``cases.csv``, ``sizes.csv`` and ``summary.csv`` into ``out_dir``.

    The four files are written to temporary names and renamed together only
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
    ['cases.csv', 'lesions.csv', 'sizes.csv', 'summary.csv']
    """
    out_dir = Path(out_dir)
    lesions = lesions_table(evaluations, cfg)
    tables = {
        "lesions.csv": lesions,
        "cases.csv": cases_table(evaluations, cfg),
        "sizes.csv": sizes_table(lesions).assign(**_settings(cfg)),
        "summary.csv": summary_table(evaluations, cfg),
    }
    with contextlib.ExitStack() as stack:
        for name, table in tables.items():
            tmp = stack.enter_context(writing.atomic_path(out_dir / name))
            table.to_csv(tmp, index=False)
    return out_dir
