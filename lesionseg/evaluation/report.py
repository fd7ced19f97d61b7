"""Evaluation reports: lesions.csv, cases.csv, summary.csv, and the comparison table.

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
    One row from the pooled counts: ``cases, GT, TP, FN, FP, n_pred,
    lesion_precision, lesion_recall, lesion_f1, dice_mean, lesion_f1_mean,
    TP_pred`` (+ pooled ``rq, sq, pq``; pooled ``lesion_dice`` and
    ``lesion_dice_mean``).  Means are over the cases where the value is
    defined.

Every file ends with ``criterion, connectivity, min_lesion_mm3`` (cases.csv
also ``min_lesion_vox`` and ``voxel_volume_mm3``), so a number is never
separated from the definition that produced it.  Undefined values (a zero
denominator) are written as empty cells.

``lesionseg compare`` names each report by its folder, or by the folder
above it when the report folder has a generic name (``report``,
``reports``, ``eval``, ``evaluation``, ``evaluate``, ``results``,
``validation``): ``runs/unet_dice/report`` becomes ``unet_dice``.  Reports
that would get the same name are named by their path instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lesionseg.data import io
from lesionseg.config import Config, EvaluateConfig
from lesionseg.errors import DataError, LesionsegError
from lesionseg.evaluation.lesions import (
    LESION_COLUMNS,
    CaseEvaluation,
    brats_lesion_dice,
    check_evaluate_config,
    evaluate_case,
    harmonic_f1,
    lesion_status_map,
    ratio,
    resolved_min_lesion_mm3,
)

log = logging.getLogger("lesionseg.evaluation.report")

CASE_COLUMNS = (
    "case", "GT", "TP", "FN", "FP", "n_pred", "lesion_precision", "lesion_recall",
    "lesion_f1", "dice", "gt_volume_mm3", "pred_volume_mm3", "TP_pred",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "cases", "GT", "TP", "FN", "FP", "n_pred", "lesion_precision", "lesion_recall",
    "lesion_f1", "dice_mean", "lesion_f1_mean", "TP_pred",
)  # fmt: skip
COMPARE_COLUMNS = (
    "run", "GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1", "dice_mean",
)  # fmt: skip
SETTINGS_COLUMNS = ("criterion", "connectivity", "min_lesion_mm3")
#: extra per-case columns of each criterion
CRITERION_CASE_COLUMNS = {"any": (), "anima": (), "iou": ("rq", "sq", "pq"), "brats": ("lesion_dice",)}
#: extra per-lesion columns of each criterion
CRITERION_LESION_COLUMNS = {"any": (), "anima": (), "iou": ("iou",), "brats": ("lesion_dice",)}
#: report folder names that say nothing about the run (compare uses the parent's name)
GENERIC_REPORT_NAMES = frozenset({"report", "reports", "eval", "evaluation", "evaluate", "results", "validation"})


# --------------------------------------------------------------------------- tables


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
    columns = [*CASE_COLUMNS, *CRITERION_CASE_COLUMNS[cfg.criterion]]
    rows = [[getattr(ev, c) for c in columns] for ev in evaluations]
    table = pd.DataFrame(rows, columns=columns)
    for key, value in _settings(cfg).items():
        table[key] = [getattr(ev, key) for ev in evaluations] if evaluations else value
    table["min_lesion_vox"] = [ev.min_lesion_vox for ev in evaluations]
    table["voxel_volume_mm3"] = [ev.voxel_volume_mm3 for ev in evaluations]
    return table


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def summary_table(evaluations: Sequence[CaseEvaluation], cfg: EvaluateConfig) -> pd.DataFrame:
    """The one-row ``summary.csv`` table from the pooled counts (see the module docstring)."""
    _check_consistent(evaluations, cfg)
    total = {k: int(sum(getattr(ev, k) for ev in evaluations)) for k in ("GT", "TP", "FN", "FP", "n_pred", "TP_pred")}
    precision, recall = ratio(total["TP_pred"], total["n_pred"]), ratio(total["TP"], total["GT"])
    row: dict[str, object] = {
        "cases": len(evaluations),
        **{k: total[k] for k in ("GT", "TP", "FN", "FP", "n_pred")},
        "lesion_precision": precision,
        "lesion_recall": recall,
        "lesion_f1": harmonic_f1(precision, recall),
        "dice_mean": _nanmean([ev.dice for ev in evaluations]),
        "lesion_f1_mean": _nanmean([ev.lesion_f1 for ev in evaluations]),
        "TP_pred": total["TP_pred"],
    }
    if cfg.criterion == "iou":
        tp, half = total["TP"], 0.5 * (total["FP"] + total["FN"])
        iou_sum = float(sum(ev.iou_sum for ev in evaluations))
        row.update(rq=ratio(tp, tp + half), sq=ratio(iou_sum, tp), pq=ratio(iou_sum, tp + half))
    elif cfg.criterion == "brats":
        dice_sum = float(sum(ev.lesion_dice_sum for ev in evaluations))
        row.update(
            lesion_dice=brats_lesion_dice(dice_sum, total["GT"], total["FP"]),
            lesion_dice_mean=_nanmean([ev.lesion_dice for ev in evaluations]),
        )
    row.update(_settings(cfg))
    return pd.DataFrame([row])


def lesions_table(evaluations: Sequence[CaseEvaluation], cfg: EvaluateConfig) -> pd.DataFrame:
    """The ``lesions.csv`` table: every lesion row of every case."""
    _check_consistent(evaluations, cfg)
    columns = [*LESION_COLUMNS, *CRITERION_LESION_COLUMNS[cfg.criterion]]
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
    """
    out_dir = Path(out_dir)
    tables = {
        "lesions.csv": lesions_table(evaluations, cfg),
        "cases.csv": cases_table(evaluations, cfg),
        "summary.csv": summary_table(evaluations, cfg),
    }
    with contextlib.ExitStack() as stack:
        for name, table in tables.items():
            tmp = stack.enter_context(io.atomic_path(out_dir / name))
            table.to_csv(tmp, index=False)
    return out_dir


# --------------------------------------------------------------------------- evaluate a folder


def find_prediction(pred_dir: Path, case_id: str) -> Path | None:
    """``PRED/<case>_pred.nii.gz`` (or ``.nii``) when it exists."""
    for suffix in io.NIFTI_SUFFIXES:
        path = Path(pred_dir) / f"{case_id}_pred{suffix}"
        if path.is_file():
            return path
    return None


def _prediction_ids(pred_dir: Path) -> set[str]:
    ids = set()
    for path in Path(pred_dir).iterdir():
        for suffix in io.NIFTI_SUFFIXES:
            if path.is_file() and path.name.endswith(f"_pred{suffix}") and not path.name.startswith("."):
                ids.add(path.name[: -len(f"_pred{suffix}")])
    return ids


def read_prediction(path: Path, truth_grid: io.Grid, truth_path: Path, tolerance: float) -> np.ndarray:
    """Read a binary prediction that must lie on the truth's grid.

    Returns
    -------
    numpy.ndarray
        (D, H, W) uint8 in {0, 1}.

    Raises
    ------
    DataError
        Unreadable, not 3D, not binary, or shape/affine different from the
        truth mask's (one line naming the file).
    """
    name = io.display_path(path)
    img = io.load_nifti(path)
    shape = tuple(img.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise DataError(f"{name}: prediction is not a 3D volume (shape {shape})")
    grid = io.grid_of(img)
    if grid.shape != truth_grid.shape:
        raise DataError(
            f"{name}: shape {grid.shape} differs from {io.display_path(truth_path)} {truth_grid.shape}; "
            "the prediction is not on the truth's grid"
        )
    diff = float(np.abs(grid.affine - truth_grid.affine).max())
    if diff > tolerance:
        raise DataError(
            f"{name}: affine differs from {io.display_path(truth_path)} by up to {diff:.3g} mm; "
            "the prediction is not on the truth's grid"
        )
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: corrupt or truncated data ({first})") from None
    if data.ndim == 4:
        data = data[..., 0]
    if data.dtype != bool:
        binary = (data == 0) | (data == 1)
        if not binary.all():
            found = np.unique(data[~binary])
            shown = ", ".join(f"{v:g}" for v in found[:5].tolist()) + (", ..." if found.size > 5 else "")
            raise DataError(
                f"{name}: prediction values are not in {{0, 1}} (found {shown}); "
                "evaluate the binary <case>_pred files, not probabilities"
            )
    return data.astype(np.uint8, copy=False)


def _background(case_dir: Path, config: Config, shape: tuple[int, ...]) -> np.ndarray | None:
    if not config.data.channels:
        return None
    path = io.find_file(case_dir, config.data.channels[0])
    if path is None:
        return None
    try:
        image, _ = io.read_image(path)
    except DataError as exc:
        log.warning("overlay without background: %s", exc)
        return None
    return image if image.shape == shape else None


def evaluate_folder(pred_dir: Path, truth_dir: Path, out_dir: Path, config: Config) -> Path:
    """The ``lesionseg evaluate`` stage: match every case's prediction to its truth mask.

    Pairs ``PRED/<case>_pred.nii.gz`` with ``DATA/<case>/<data.mask>.nii.gz``
    for every case folder of ``DATA``, evaluates each with
    :func:`lesionseg.evaluation.lesions.evaluate_case` (``config.evaluate``) and writes
    the reports (and, with ``evaluate.overlays``, ``REPORT/overlays/<case>.png``).
    Nothing is written unless every case succeeds.

    Parameters
    ----------
    pred_dir : Path
        Folder of ``<case>_pred.nii.gz`` (uint8 {0, 1}) files.
    truth_dir : Path
        Data folder (``DATA/<case>/<mask>.nii.gz``).
    out_dir : Path
        Report folder.
    config : Config
        ``data`` (mask name, mask values, channels, affine tolerance) and
        ``evaluate`` sections.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    LesionsegError
        A missing prediction folder, no prediction at all, a truth case
        without prediction, a prediction off the truth's grid or not binary,
        a missing/invalid mask, or invalid ``[evaluate]`` settings.
    """
    pred_dir, truth_dir, out_dir = Path(pred_dir), Path(truth_dir), Path(out_dir)
    cfg = config.evaluate
    check_evaluate_config(cfg)
    if not pred_dir.is_dir():
        raise LesionsegError(f"{pred_dir}: prediction folder not found")
    case_dirs = io.list_cases(truth_dir)
    predicted = _prediction_ids(pred_dir)
    if not predicted:
        raise LesionsegError(f"{pred_dir}: no <case>_pred.nii.gz predictions found")
    pairs = []
    for case_dir in case_dirs:
        pred_path = find_prediction(pred_dir, case_dir.name)
        if pred_path is None:
            raise LesionsegError(
                f"{pred_dir.name}/{case_dir.name}_pred.nii.gz: missing prediction for case "
                f"{case_dir.name} of {truth_dir}"
            )
        pairs.append((case_dir, pred_path))
    unmatched = sorted(predicted - {c.name for c in case_dirs})
    if unmatched:
        log.warning("%d prediction(s) without a truth case, ignored: %s", len(unmatched), ", ".join(unmatched[:10]))

    overlay_tmp = out_dir / f".overlays.tmp-{uuid.uuid4().hex[:8]}" if cfg.overlays else None
    created = not out_dir.exists()
    evaluations: list[CaseEvaluation] = []
    done = False
    try:
        for n, (case_dir, pred_path) in enumerate(pairs, 1):
            mask_path = io.require_file(case_dir, config.data.mask, "mask")
            truth, truth_img = io.read_mask(mask_path, config.data.mask_values)
            grid = io.grid_of(truth_img)
            pred = read_prediction(pred_path, grid, mask_path, config.data.affine_tolerance)
            if overlay_tmp is not None:
                from lesionseg.evaluation.overlays import write_overlay

                status, ev = lesion_status_map(truth, pred, grid.zooms, cfg, case_dir.name)
                write_overlay(
                    overlay_tmp / f"{case_dir.name}.png",
                    status,
                    _background(case_dir, config, truth.shape),
                    title=f"{case_dir.name}: TP {ev.TP}  FN {ev.FN}  FP {ev.FP}  ({cfg.criterion})",
                )
            else:
                ev = evaluate_case(truth, pred, grid.zooms, cfg, case_dir.name)
            evaluations.append(ev)
            log.info(
                "[%d/%d] %s: GT %d, TP %d, FN %d, FP %d, lesion F1 %s, Dice %s",
                n, len(pairs), ev.case, ev.GT, ev.TP, ev.FN, ev.FP, _fmt(ev.lesion_f1), _fmt(ev.dice),
            )  # fmt: skip
        write_reports(evaluations, out_dir, cfg)
        if overlay_tmp is not None:
            final = out_dir / "overlays"
            if final.exists():
                shutil.rmtree(final)
            overlay_tmp.rename(final)
        done = True
    finally:
        if overlay_tmp is not None and overlay_tmp.exists():
            shutil.rmtree(overlay_tmp)
        if not done and created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave nothing behind on failure
    summary = summary_table(evaluations, cfg).iloc[0]
    log.info(
        "%d case(s), criterion %s: GT %d, TP %d, FN %d, FP %d, lesion precision %s, recall %s, F1 %s, Dice mean %s",
        len(evaluations), cfg.criterion, summary.GT, summary.TP, summary.FN, summary.FP,
        _fmt(summary.lesion_precision), _fmt(summary.lesion_recall), _fmt(summary.lesion_f1), _fmt(summary.dice_mean),
    )  # fmt: skip
    return out_dir


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(float(value)) else f"{float(value):.3f}"


# --------------------------------------------------------------------------- compare


def run_name(report_dir: Path) -> str:
    """A readable run name for a report folder (see the module docstring).

    Examples
    --------
    >>> run_name(Path("runs/unet_dice/report")), run_name(Path("reports/baseline"))
    ('unet_dice', 'baseline')
    """
    path = Path(report_dir)
    if path.name in ("", ".", ".."):
        path = path.resolve()
    if path.name.lower() in GENERIC_REPORT_NAMES and path.parent.name not in ("", ".", ".."):
        return path.parent.name
    return path.name


def compare_reports(report_dirs: Sequence[Path], out_csv: Path) -> pd.DataFrame:
    """One row per report folder, side by side; written to ``out_csv`` (atomically).

    Parameters
    ----------
    report_dirs : sequence of Path
        Folders holding a ``summary.csv`` written by :func:`write_reports`.
    out_csv : Path
        Output CSV.

    Returns
    -------
    pandas.DataFrame
        Columns ``run, GT, TP, FP, FN, lesion_precision, lesion_recall,
        lesion_f1, dice_mean`` then ``cases`` and the settings
        (``criterion, connectivity, min_lesion_mm3``).

    Raises
    ------
    LesionsegError
        A folder without ``summary.csv`` or a summary missing columns.
    """
    if not report_dirs:
        raise LesionsegError("compare: name at least one report folder")
    rows = []
    for folder in map(Path, report_dirs):
        path = folder / "summary.csv"
        if not path.is_file():
            raise LesionsegError(f"{path}: missing; is {folder} a lesionseg report folder?")
        try:
            summary = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise LesionsegError(f"{path}: unreadable CSV ({str(exc).splitlines()[0]})") from None
        missing = [c for c in COMPARE_COLUMNS[1:] if c not in summary.columns]
        if missing or len(summary) != 1:
            what = f"missing column(s) {', '.join(missing)}" if missing else f"{len(summary)} rows, expected 1"
            raise LesionsegError(f"{path}: not a lesionseg summary ({what})")
        row = summary.iloc[0].to_dict()
        row["run"] = run_name(folder)
        row["_path"] = folder.as_posix()
        rows.append(row)
    names = [r["run"] for r in rows]
    for r in rows:
        if names.count(r["run"]) > 1:
            r["run"] = r["_path"]
    extra = [c for c in ("cases", *SETTINGS_COLUMNS) if any(c in r for r in rows)]
    table = pd.DataFrame(rows)[[*COMPARE_COLUMNS, *extra]]
    for column in SETTINGS_COLUMNS:
        if column in table and table[column].nunique(dropna=False) > 1:
            log.warning(
                "the reports differ in %s (%s): their counts are not comparable",
                column, ", ".join(map(str, table[column].unique())),
            )  # fmt: skip
    with io.atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value).replace("|", "\\|")


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown (GitHub) table of a data frame: numbers right-aligned, 3 decimals, NaN as n/a.

    Examples
    --------
    >>> print(to_markdown(pd.DataFrame({"run": ["a"], "TP": [3], "lesion_f1": [2 / 3]})))
    | run |  TP | lesion_f1 |
    |:----|----:|----------:|
    | a   |   3 |     0.667 |
    """
    columns = [str(c) for c in df.columns]
    cells = [[_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    widths = [max([len(c), 3, *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    marks = [("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1)) for w, num in zip(widths, numeric, strict=True)]
    rule = "|" + "|".join(marks) + "|"
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])
