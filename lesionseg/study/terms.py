"""Each loss's per-class terms on the held-out exams of a study's cells.

"Softmax gives more false positives than sigmoid with the same loss" is a
claim about what a loss rewards; this module reads it off the loss itself.
For every finished cell, the probability map the trained network predicted
for its held-out exams (``pred_default``, overlapping windows averaged) is fed
back through the cell's own loss — the same :class:`~lesionseg.model.losses.LesionLoss`
that trained it, with its head and parameters — and the loss is split into
its per-class terms (:meth:`LesionLoss.terms`: ``ce_background``,
``ce_lesion``, ``region_background``, ``region_lesion``, already weighted; they
sum to the loss).  Beside them, the soft error masses the region terms are
made of: ``soft_fp_ml`` (Σ p over true background, the mass of false
lesion probability) and ``soft_fn_ml`` (Σ 1 − p over true lesion voxels).

Voxels: the held-out exam's head (its first channel is non-zero: the exams
are skull-stripped, so the brain), all the fold's held-out exams pooled as
one batch — the region terms are then the whole-exam Tversky errors, as the
``batch_dice`` losses compute them over a batch of patches.

``lesionseg study --summarize --out STUDY`` appends the terms of cells not yet
in ``STUDY/terms.csv`` and writes ``STUDY/terms_table.md`` (mean ± sd per loss
× head over seeds and folds).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

TERMS_FILE = "terms.csv"
TERMS_TABLE = "terms_table.md"
PROBABILITY_FLOOR = 1e-6
"""Probabilities are clipped to [floor, 1 − floor] before taking logits (a stored 0 or 1 has none)."""


def exam_terms(prob: np.ndarray, truth: np.ndarray, loss: Any, voxel_ml: float) -> dict[str, float]:
    """A loss's per-class terms for lesion probabilities against the truth.

    Parameters
    ----------
    prob : numpy.ndarray
        Lesion probabilities of the voxels to score (any shape; flattened).
    truth : numpy.ndarray
        The same voxels' labels (non-zero = lesion).
    loss : lesionseg.model.losses.LesionLoss
        The loss (its head decides the logits' layout: sigmoid ``z``,
        softmax ``[0, z]`` — the same probabilities either way).
    voxel_ml : float
        Volume of one voxel in ml, for ``soft_fp_ml`` and ``soft_fn_ml``.

    Returns
    -------
    dict
        The loss's terms (only those it has), ``total`` (their sum, the loss),
        ``soft_fp_ml`` and ``soft_fn_ml``.
    """
    from keras import ops

    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    y = (np.asarray(truth).ravel() > 0).astype(np.float32)
    if p.shape != y.shape:
        raise LesionsegError(f"loss terms: {p.size} probabilities for {y.size} labels")
    z = (np.log(p) - np.log1p(-p)).astype(np.float32).reshape(1, -1, 1, 1, 1)
    if loss.head == "softmax":
        z = np.concatenate([np.zeros_like(z), z], axis=-1)
    terms = loss.terms(y.reshape(1, -1, 1, 1, 1), z)
    out = {name: float(ops.convert_to_numpy(value)) for name, value in terms.items()}
    out["total"] = float(sum(out.values()))
    out["soft_fp_ml"] = float(np.sum(p * (1.0 - y))) * voxel_ml
    out["soft_fn_ml"] = float(np.sum((1.0 - p) * y)) * voxel_ml
    return out


def cell_terms(cell_dir: Path, test_dir: Path, variant: str = "default") -> dict[str, float]:
    """The terms of one finished cell on its fold's held-out exams, pooled.

    Parameters
    ----------
    cell_dir : Path
        ``STUDY/cells/<cell>`` (``cell_config.yaml``, ``pred_<variant>/<case>_prob.nii.gz``).
    test_dir : Path
        ``STUDY/folds/<fold>/test`` (the held-out cases and their masks).
    variant : str
        Whose probability maps to score (``default``: overlapping windows averaged).
    """
    from lesionseg.config import load_config
    from lesionseg.data.io import list_cases, read_image, read_mask, require_file
    from lesionseg.model.losses import loss_from_config

    config = load_config(cell_dir / "cell_config.yaml")
    loss = loss_from_config(config.loss, config.model.head)
    probs, truths, voxel_ml = [], [], None
    for case in list_cases(test_dir):
        prob_path = cell_dir / f"pred_{variant}" / f"{case.name}_prob.nii.gz"
        if not prob_path.is_file():
            raise LesionsegError(f"{prob_path}: missing (the cell has not been scored '{variant}')")
        prob, img = _read_probability(prob_path)
        first, _ = read_image(require_file(case, config.data.channels[0], "image"))
        truth, _ = read_mask(require_file(case, config.data.mask, "mask"), config.data.mask_values)
        if not (prob.shape == first.shape == truth.shape):
            raise LesionsegError(f"{prob_path}: shape {prob.shape} differs from the exam's {first.shape}")
        inside = first != 0
        probs.append(prob[inside])
        truths.append(truth[inside])
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    if voxel_ml is None:
        raise LesionsegError(f"{test_dir}: no held-out case")
    return exam_terms(np.concatenate(probs), np.concatenate(truths), loss, voxel_ml)


def _read_probability(path: Path) -> tuple[np.ndarray, Any]:
    """A probability map (it may be constant, e.g. all 0, which :func:`read_image` refuses)."""
    from lesionseg.data.io import load_nifti

    img = load_nifti(path)
    return np.asarray(img.dataobj, dtype=np.float32), img


def update_terms(out: Path) -> pd.DataFrame:
    """``STUDY/terms.csv`` with a row for every finished cell (cells already there are kept).

    A cell is finished when its ``default`` row is in ``results.csv``; a cell whose
    files are gone (cleaned up, or run elsewhere) is skipped with a warning.
    """
    from lesionseg.study.summary import load_results

    out = Path(out)
    results = load_results(out / "results.csv")
    path = out / TERMS_FILE
    done = pd.read_csv(path) if path.is_file() and path.stat().st_size else None
    known = set() if done is None else set(done.cell)
    rows = []
    keys = [c for c in ("loss", "head", "seed", "fold") if c in results.columns]
    for _, row in results[results.variant == "default"].iterrows():
        if row.cell in known:
            continue
        cell_dir, test_dir = out / "cells" / row.cell, out / "folds" / str(row.fold) / "test"
        if not (cell_dir / "cell_config.yaml").is_file() or not test_dir.is_dir():
            log.warning("loss terms: %s has no cell folder or fold here; skipped", row.cell)
            continue
        rows.append({"cell": row.cell, **{k: row[k] for k in keys}, **cell_terms(cell_dir, test_dir)})
        log.info("loss terms: %s", row.cell)
    new = pd.DataFrame(rows)
    table = new if done is None else pd.concat([done, new], ignore_index=True) if rows else done
    if rows:
        table = table.reindex(columns=["cell", *keys, *_TERM_ORDER])  # every term a column: blank where a loss lacks it
        tmp = path.with_name(path.name + ".tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(path)
    return table


_TERM_ORDER = ("ce_background", "ce_lesion", "region_background", "region_lesion", "total",
               "soft_fp_ml", "soft_fn_ml")


def terms_table(terms: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd of every term per loss × head (seeds and folds pooled); a term a loss lacks is blank."""
    from lesionseg.study.summary import mean_sd

    rows = []
    for (loss, head), part in terms.groupby(["loss", "head"], sort=False):
        row: dict[str, Any] = {"loss": loss, "head": head, "runs": len(part)}
        for name in _TERM_ORDER:
            values = part[name].dropna() if name in part.columns else pd.Series(dtype=float)
            row[name] = mean_sd(values) if len(values) else ""
        rows.append(row)
    return pd.DataFrame(rows)
