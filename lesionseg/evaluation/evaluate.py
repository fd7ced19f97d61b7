"""The ``lesionseg evaluate`` stage: pair predictions with truth masks, evaluate, write the reports.

``PRED/<case>_pred.nii.gz`` is paired with ``DATA/<case>/<data.mask>.nii.gz``
for every case folder of ``DATA``; each pair is evaluated with
:func:`lesionseg.evaluation.lesions.evaluate_case` and the tables of
:mod:`lesionseg.evaluation.report` are written (with ``evaluate.overlays``,
also ``REPORT/overlays/<case>.png``).
"""

from __future__ import annotations

import logging
import math
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np

from lesionseg.config import Config
from lesionseg.data import io
from lesionseg.errors import DataError, LesionsegError
from lesionseg.evaluation.html_report import FILES_DIR, build_report, write_case_data
from lesionseg.evaluation.lesions import evaluate_case, lesion_status_map
from lesionseg.evaluation.overlays import write_overlay
from lesionseg.evaluation.report import summary_table, write_reports
from lesionseg.evaluation.scoring import CaseEvaluation
from lesionseg.provenance import check_single_source

log = logging.getLogger("lesionseg.evaluation.report")


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


def _pair_cases(pred_dir: Path, truth_dir: Path) -> list[tuple[Path, Path]]:
    """(case folder, prediction file) of every case of ``truth_dir``; every case must have one."""
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
    return pairs


def _evaluate_pair(
    case_dir: Path, pred_path: Path, config: Config, overlay_dir: Path | None, page_dir: Path | None = None
) -> CaseEvaluation:
    """Evaluate one case (its overlay into ``overlay_dir``, its viewer volumes into ``page_dir``, when given)."""
    cfg = config.evaluate
    mask_path = io.require_file(case_dir, config.data.mask, "mask")
    truth, truth_img = io.read_mask(mask_path, config.data.mask_values)
    grid = io.grid_of(truth_img)
    pred = read_prediction(pred_path, grid, mask_path, config.data.affine_tolerance)
    if overlay_dir is None and page_dir is None:
        return evaluate_case(truth, pred, grid.zooms, cfg, case_dir.name)
    status, ev = lesion_status_map(truth, pred, grid.zooms, cfg, case_dir.name)
    background = _background(case_dir, config, truth.shape)
    if overlay_dir is not None:
        write_overlay(
            overlay_dir / f"{case_dir.name}.png",
            status,
            background,
            title=f"{case_dir.name}: TP {ev.TP}  FN {ev.FN}  FP {ev.FP}  ({cfg.criterion})",
        )
    if page_dir is not None:
        write_case_data(page_dir, case_dir.name, status, background, grid.affine)
    return ev


def evaluate_folder(
    pred_dir: Path, truth_dir: Path, out_dir: Path, config: Config, allow_mixed: bool = False
) -> Path:
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
    allow_mixed : bool
        Score predictions whose ``<case>_record.json`` name different models or settings
        (by default a one-line error: such a folder is not one run).

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
    pairs = _pair_cases(pred_dir, truth_dir)
    if not allow_mixed:
        check_single_source(pred_dir, [case_dir.name for case_dir, _ in pairs])
    overlay_tmp = out_dir / f".overlays.tmp-{uuid.uuid4().hex[:8]}" if cfg.overlays else None
    page_tmp = out_dir / f".report_files.tmp-{uuid.uuid4().hex[:8]}" if cfg.html else None
    created = not out_dir.exists()
    evaluations: list[CaseEvaluation] = []
    done = False
    try:
        for n, (case_dir, pred_path) in enumerate(pairs, 1):
            ev = _evaluate_pair(case_dir, pred_path, config, overlay_tmp, page_tmp)
            evaluations.append(ev)
            log.info(
                "[%d/%d] %s: GT %d, TP %d, FN %d, FP %d, lesion F1 %s, Dice %s",
                n, len(pairs), ev.case, ev.GT, ev.TP, ev.FN, ev.FP, _fmt(ev.lesion_f1), _fmt(ev.dice),
            )  # fmt: skip
        write_reports(evaluations, out_dir, cfg)
        # write_case_data put the page's volumes in page_tmp/report_files
        moves = [(overlay_tmp, "overlays"), (page_tmp / FILES_DIR if page_tmp else None, FILES_DIR)]
        for tmp, name in moves:
            if tmp is None or not tmp.exists():
                continue
            final = out_dir / name
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        if page_tmp is not None:
            build_report(out_dir)
        done = True
    finally:
        for tmp in (overlay_tmp, page_tmp):
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp)
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
