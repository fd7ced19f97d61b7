"""A case's decision written: ``_pred``, its record and its ``cohort.csv`` row.

From a probability map just predicted (:func:`lesionseg.inference.infer.predict_case`) or one
stored by an earlier run of the same model and probability settings (:func:`redecide_cases`: a
new ``tune`` or another threshold decides every exam again in seconds, without the network).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.config import Config
from lesionseg.data import io, writing
from lesionseg.errors import LesionsegError
from lesionseg.inference.atlas import LesionAtlas, load_atlas
from lesionseg.inference.cohort import append_cohort_row, cohort_row
from lesionseg.inference.postprocess import (
    DecisionSettings,
    postprocess,
    read_tuning,
    resolve_decision,
    resolve_min_atlas,
)
from lesionseg.provenance import Source, probability_sha256, reusable_probability, write_record

log = logging.getLogger(__name__)


def explicit_min_atlas(config: Config, tuned: DecisionSettings | None) -> bool:
    """True when the atlas cut-off was asked for (``infer.min_atlas`` or a tuned one), not the atlas's own default."""
    return config.infer.min_atlas is not None or getattr(tuned, "min_atlas", None) is not None



def decide_and_write(
    prob: np.ndarray,
    case_id: str,
    grid: io.Grid,
    header: Any,
    out_dir: Path,
    config: Config,
    tuned: DecisionSettings | None,
    atlas: LesionAtlas | None,
    source: Source | None,
    t0: float,
) -> tuple[Path, dict[str, object] | None]:
    """The decision on a case's probability map (on its input grid): ``_pred`` written, then the record.

    Returns the ``_pred`` path and, with a ``source``, the case's ``cohort.csv`` row.
    """
    calibrated = atlas.min_atlas if atlas is not None else 0.0
    min_atlas = resolve_min_atlas(config.infer, tuned, calibrated)
    atlas_values = None
    if min_atlas > 0 and atlas is not None:
        if explicit_min_atlas(config, tuned) or atlas.matches(prob.shape, grid.affine):
            atlas_values = atlas.on_grid(prob.shape, grid.affine, case_id)
        else:  # the model's own default filter, on an exam outside its space: predicted without it
            log.warning("%s: not on the grid of the model's lesion atlas (%s): no atlas filter for this exam",
                        case_id, atlas.path)
            min_atlas = calibrated = 0.0
    pred = postprocess(prob, config.infer, grid.zooms, tuned, atlas_values, calibrated)
    out_dir = Path(out_dir)
    pred_path = writing.write_like(out_dir / f"{case_id}_pred.nii.gz", pred, grid.affine, header, np.uint8)
    row = None
    if source is not None:
        threshold, min_mm3 = resolve_decision(config.infer, tuned)
        row = cohort_row(case_id, pred, grid.zooms, config.infer.connectivity, source, time.perf_counter() - t0)
        write_record(out_dir, case_id, source, threshold, min_mm3, time.perf_counter() - t0, cohort=row,
                     min_atlas=min_atlas, probability=probability_sha256(config))
    log.info("%s: %d lesion voxel(s) predicted, %.1f s", case_id, int(pred.sum()), time.perf_counter() - t0)
    return pred_path, row


def redecide_cases(
    run_dir: Path, config: Config, case_dirs: Sequence[Path], out_dir: Path, source: Source,
) -> tuple[list[Path], list[Path]]:
    """Cases whose stored probability map this model made with these settings: decided again, not predicted.

    A new ``tune`` or another threshold / minimum size / atlas cut-off changes only the decision; the
    stored ``_prob`` map (same model file, same :func:`~lesionseg.provenance.probability_sha256`) is
    read back and decided in seconds.  Returns (``_pred`` paths written, cases left to predict: no
    reusable map, or one that cannot be read).
    """
    wanted = probability_sha256(config)
    reusable = {c: reusable_probability(out_dir, c.name, source, wanted) for c in case_dirs}
    if not any(reusable.values()):
        return [], list(case_dirs)
    tuned, atlas = read_tuning(run_dir), load_atlas(run_dir)
    written, todo = [], []
    for case_dir, prob_path in reusable.items():
        if prob_path is None:
            todo.append(case_dir)
            continue
        t0 = time.perf_counter()
        try:
            img = io.load_nifti(prob_path)
            prob = np.asarray(img.dataobj, dtype=np.float32)
        except (LesionsegError, OSError, ValueError, EOFError) as exc:
            log.warning("%s: stored probability map unreadable (%s); predicting it again", case_dir.name, exc)
            todo.append(case_dir)
            continue
        path, row = decide_and_write(prob, case_dir.name, io.grid_of(img), img.header, out_dir, config, tuned,
                                     atlas, source, t0)
        written.append(path)
        if row is not None:
            append_cohort_row(out_dir, row)
    log.info("%d case(s) decided again from their stored probability maps (same model and probability "
             "settings, new decision; --force predicts them again)", len(written))
    return written, todo
