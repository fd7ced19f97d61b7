"""The ``tune`` stage: pick the threshold and minimum lesion size for lesion-wise F1.

Lesion-wise F1 depends strongly on two post-processing choices that the
training loss never sees: the probability threshold and the minimum size of
a predicted lesion (tiny false positives cost as much as big ones).  The
cases are predicted once; every (threshold, minimum size) pair of a grid --
and, for a run with a lesion atlas, every atlas cut-off
(:mod:`lesionseg.inference.atlas`) -- is then scored with :func:`lesionseg.evaluation.lesions.evaluate_case` (the run's
``[evaluate]`` criterion) and the pair with the highest *pooled* lesion F1
(counts summed over cases) wins; ties go to the higher mean Dice, then the
smaller minimum size, then the threshold closest to 0.5.  The winner is
stored as ``RUN/tuning.json`` and used by ``lesionseg infer`` unless the
config sets ``infer.threshold`` / ``infer.min_lesion_mm3``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lesionseg.config import Config, EvaluateConfig
from lesionseg.data import io, writing
from lesionseg.data.labels import ORIGIN_BOX, bounding_box, component_sizes
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.lesions import evaluate_case
from lesionseg.evaluation.scoring import CaseCounts, over_segmented, pool_counts, selection_key
from lesionseg.inference.atlas import LesionAtlas, check_same_grid, component_atlas_max, load_atlas
from lesionseg.data.check import require_readable
from lesionseg.inference.infer import case_probability, check_channels
from lesionseg.inference.postprocess import TUNING_FILE, decide
from lesionseg.inference.predictor import Predictor
from lesionseg.runtime import configure_backend

log = logging.getLogger(__name__)

TABLE_FILE = "tuning.csv"
TABLE_COLUMNS = (
    "threshold",
    "min_lesion_mm3",
    "min_atlas",
    "GT",
    "TP",
    "FN",
    "FP",
    "n_pred",
    "TP_pred",
    "lesion_precision",
    "lesion_recall",
    "lesion_f1",
    "dice_mean",
    "pred_voxels",
    "truth_voxels",
    "over_segmented",
)


@dataclass(frozen=True)
class TuningResult:
    """The chosen decision settings and the whole grid.

    Attributes
    ----------
    threshold : float
        Lesion-probability threshold (lesion where probability > threshold).
    min_lesion_mm3 : float
        Predicted components smaller than this are removed.
    lesion_f1 : float
        Pooled lesion-wise F1 at that pair (NaN when undefined everywhere).
    table : pandas.DataFrame
        One row per (threshold, min size) pair: pooled counts, precision,
        recall, F1 and mean Dice (columns ``TABLE_COLUMNS``).
    dice : float
        Mean voxel Dice over cases at that pair (cases with both masks
        empty excluded).
    min_atlas : float or None
        Tuned lesion-atlas cut-off (:mod:`lesionseg.inference.atlas`); ``None``: not tuned
        (infer then uses the atlas's calibrated cut-off, if the run has an atlas).
    """

    threshold: float
    min_lesion_mm3: float
    lesion_f1: float
    table: pd.DataFrame = field(repr=False, compare=False)
    dice: float = math.nan
    min_atlas: float | None = None


def candidate_box(
    prob: np.ndarray, truth: np.ndarray, min_threshold: float, margin: int = 3
) -> tuple[slice, slice, slice]:
    """Bounding box (plus ``margin``) of every voxel that can matter when tuning.

    Voxels outside it are background in the truth and below every threshold
    tried, so cropping to it changes no component, count or Dice.
    """
    box = bounding_box(np.asarray(prob) > min_threshold, np.asarray(truth), margin=margin)
    return box or ORIGIN_BOX


def _crop_margin(eval_cfg: EvaluateConfig) -> int:
    return 2 + max(int(getattr(eval_cfg, "brats_dilation", 0)), 0)


def _check_grid(thresholds: Sequence[float], min_sizes_mm3: Sequence[float]) -> tuple[list[float], list[float]]:
    ts = sorted({float(t) for t in thresholds})
    ms = sorted({float(m) for m in min_sizes_mm3})
    if not ts or not ms:
        raise LesionsegError("infer.tune_thresholds and infer.tune_min_sizes_mm3 must not be empty")
    if ts[0] < 0 or ts[-1] > 1:
        raise LesionsegError(f"infer.tune_thresholds must lie in [0, 1], got {ts}")
    if ms[0] < 0:
        raise LesionsegError(f"infer.tune_min_sizes_mm3 must be ≥ 0, got {ms}")
    return ts, ms


def _check_atlas_grid(min_atlas: Sequence[float]) -> list[float]:
    values = sorted({float(a) for a in min_atlas})
    if not values or values[0] < 0 or values[-1] > 1:  # an empty grid is tune_run's "do not tune it"
        raise LesionsegError(f"infer.tune_min_atlas must be a non-empty list in [0, 1], got {values}")
    return values


def tune_threshold_and_size(
    probs: list[np.ndarray],
    truths: list[np.ndarray],
    zooms: list,
    thresholds: Sequence[float],
    min_sizes_mm3: Sequence[float],
    eval_cfg: EvaluateConfig | None = None,
    *,
    connectivity: int = 26,
    atlases: list[np.ndarray] | None = None,
    min_atlas: Sequence[float] = (0.0,),
) -> TuningResult:
    """Grid-search the (threshold, minimum lesion size, atlas cut-off) maximising pooled lesion F1.

    Parameters
    ----------
    probs : list of numpy.ndarray
        Per case, (D, H, W) float lesion probability.
    truths : list of numpy.ndarray
        Per case, (D, H, W) binary truth mask on the same grid.
    zooms : list of tuple of float
        Per case, voxel size in mm.
    thresholds : sequence of float
        Thresholds to try, in [0, 1] (lesion where probability > threshold).
    min_sizes_mm3 : sequence of float
        Minimum predicted lesion volumes to try, in mm³ (≥ 0).
    eval_cfg : EvaluateConfig or None
        Matching criterion and its settings (default: ``any``, 26-conn.).
    connectivity : {6, 18, 26}
        Connectivity of the size filter (as ``infer.connectivity``).
    atlases : list of numpy.ndarray or None
        Per case, the lesion atlas on the case's grid; ``None``: no atlas,
        only the cut-off 0 is tried.
    min_atlas : sequence of float
        Atlas cut-offs to try (components whose largest atlas value is below
        it are removed; 0 keeps all).

    Returns
    -------
    TuningResult
        The best pair: highest pooled F1 (``Σ TP_pred / Σ n_pred`` and
        ``Σ TP / Σ GT``), then higher mean Dice, then smaller minimum size,
        then the threshold closest to 0.5.  Pairs whose predicted volume
        exceeds :data:`~lesionseg.evaluation.scoring.OVERSEGMENTATION` × the truth
        volume are not chosen on their F1 (one merged blob touching every
        lesion scores F1 = 1 under ``any``): the ranking is
        :func:`~lesionseg.evaluation.scoring.selection_key`, as in training's
        model selection, then the two tie-breaks.

    Raises
    ------
    LesionsegError
        Empty grid or values out of range.
    ValueError
        Lists of different lengths, no case, or arrays of different shapes.
    """
    if not (len(probs) == len(truths) == len(zooms)) or not probs:
        raise ValueError(
            f"need one prob, truth and zooms per case, got {len(probs)}, {len(truths)}, {len(zooms)}"
        )
    ts, ms = _check_grid(thresholds, min_sizes_mm3)
    avs = _check_atlas_grid(min_atlas) if atlases is not None else [0.0]
    if atlases is not None and len(atlases) != len(probs):
        raise ValueError(f"need one atlas per case, got {len(atlases)} for {len(probs)}")
    eval_cfg = eval_cfg or EvaluateConfig()
    cases, voxels = _score_grid(probs, truths, zooms, ts, ms, eval_cfg, connectivity, atlases, avs)
    rows = _grid_rows(ts, ms, avs, cases, voxels)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    col = {name: i for i, name in enumerate(TABLE_COLUMNS)}

    def key(row: tuple) -> tuple[float, ...]:
        # an over-segmented setting only wins when every one is; then F1, Dice, smaller size, smaller atlas
        # cut-off (the filter only when it pays), threshold near 0.5
        return (*selection_key(row[col["lesion_f1"]], row[col["dice_mean"]], row[col["over_segmented"]]),
                -row[col["min_lesion_mm3"]], -row[col["min_atlas"]], -abs(row[col["threshold"]] - 0.5))

    best = max(rows, key=key)
    return TuningResult(
        threshold=best[col["threshold"]], min_lesion_mm3=best[col["min_lesion_mm3"]],
        lesion_f1=best[col["lesion_f1"]], table=table, dice=best[col["dice_mean"]],
        min_atlas=best[col["min_atlas"]] if atlases is not None else None,
    )


def _score_grid(
    probs: list[np.ndarray],
    truths: list[np.ndarray],
    zooms: list,
    ts: list[float],
    ms: list[float],
    eval_cfg: EvaluateConfig,
    connectivity: int,
    atlases: list[np.ndarray] | None = None,
    avs: Sequence[float] = (0.0,),
) -> tuple[list[list[CaseCounts]], np.ndarray]:
    """Per (threshold, min size, atlas cut-off), in row order: the counts of every case and the voxels.

    Returns
    -------
    cases : list of list of CaseCounts
        Per setting, the counts of every case (for pooling).
    voxels : numpy.ndarray
        (settings, 2) int64: predicted and truth voxels, summed over cases.
    """
    n_set = len(ts) * len(ms) * len(avs)
    cases: list[list[CaseCounts]] = [[] for _ in range(n_set)]
    voxels = np.zeros((n_set, 2), dtype=np.int64)  # predicted, truth voxels
    margin = _crop_margin(eval_cfg)
    for n, (prob, truth, zoom) in enumerate(zip(probs, truths, zooms)):
        prob, truth = np.asarray(prob), np.asarray(truth)
        if prob.shape != truth.shape or prob.ndim != 3:
            raise ValueError(f"prob {prob.shape} and truth {truth.shape} must be one 3D grid")
        atlas = None if atlases is None else np.asarray(atlases[n])
        if atlas is not None and atlas.shape != prob.shape:
            raise ValueError(f"atlas {atlas.shape} and prob {prob.shape} must be one grid")
        box = candidate_box(prob, truth, ts[0], margin)
        prob, truth = prob[box], (truth[box] != 0).astype(np.uint8)
        atlas = None if atlas is None else atlas[box]
        voxel_mm3 = float(np.prod([float(z) for z in zoom]))
        zoom3 = tuple(float(z) for z in zoom[:3])
        for a, t in enumerate(ts):
            labels, sizes = component_sizes(decide(prob, t), connectivity)
            volumes = sizes.astype(np.float64) * voxel_mm3
            peaks = (component_atlas_max(labels, sizes.size, atlas) if atlas is not None
                     else np.ones(sizes.size))
            last_kept: bytes | None = None
            last_eval = None
            for b, m in enumerate(ms):
                for c, av in enumerate(avs):
                    keep = (volumes >= m * (1 - 1e-9)) & (peaks >= av)
                    keep[0] = False
                    kept = keep.tobytes()
                    if kept != last_kept:  # a stricter setting that removes nothing new: same mask
                        ev = evaluate_case(truth, keep[labels].astype(np.uint8), zoom3, eval_cfg)
                        last_eval, last_kept = CaseCounts.of(ev), kept
                    assert last_eval is not None
                    k = (a * len(ms) + b) * len(avs) + c
                    cases[k].append(last_eval)
                    voxels[k] += (int(sizes[keep].sum()), int(truth.sum()))
    return cases, voxels


def _grid_rows(ts: list[float], ms: list[float], avs: Sequence[float], cases: list[list[CaseCounts]],
               voxels: np.ndarray) -> list[tuple]:
    """One row of ``TABLE_COLUMNS`` per setting: pooled counts, precision, recall, F1, mean Dice."""
    rows = []
    for a, t in enumerate(ts):
        for b, m in enumerate(ms):
            for c, av in enumerate(avs):
                k = (a * len(ms) + b) * len(avs) + c
                p = pool_counts(cases[k])
                pred_vox, truth_vox = (int(v) for v in voxels[k])
                rows.append(
                    (t, m, av, p.GT, p.TP, p.FN, p.FP, p.n_pred, p.TP_pred, p.lesion_precision, p.lesion_recall,
                     p.lesion_f1, p.dice_mean, pred_vox, truth_vox, over_segmented(pred_vox, truth_vox))
                )
    return rows


def _json_number(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def write_tuning(run_dir: Path, result: TuningResult, cases: Sequence[str]) -> Path:
    """Write ``RUN/tuning.json`` and ``RUN/tuning.csv`` atomically; return the JSON path."""
    run_dir = Path(run_dir)
    with writing.atomic_path(run_dir / TABLE_FILE) as tmp:
        result.table.to_csv(tmp, index=False, float_format="%.6g")
    payload = {
        "threshold": float(result.threshold),
        "min_lesion_mm3": float(result.min_lesion_mm3),
        "min_atlas": None if result.min_atlas is None else float(result.min_atlas),
        "lesion_f1": _json_number(result.lesion_f1),
        "dice": _json_number(result.dice),
        "cases": list(cases),
    }
    path = run_dir / TUNING_FILE
    with writing.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def tune_run(run_dir: Path, config: Config, data_dir: Path) -> TuningResult:
    """The ``lesionseg tune`` stage: predict labelled cases once, tune, store with the model.

    Parameters
    ----------
    run_dir : Path
        Run folder with ``model.keras``; receives ``tuning.json``
        (``{threshold, min_lesion_mm3, min_atlas, lesion_f1, dice, cases}``) and
        ``tuning.csv`` (the whole grid).  With ``RUN/lesion_atlas.nii.gz``
        (``lesionseg atlas``) the atlas cut-off is tuned too.
    config : Config
        The run's configuration: ``[data]`` (channels, mask, normalisation),
        ``patches.size``, ``model.head``, ``[infer]`` (windows and the grid
        ``tune_thresholds`` × ``tune_min_sizes_mm3`` [× ``tune_min_atlas``])
        and ``[evaluate]`` (the matching criterion).
    data_dir : Path
        Labelled cases (validation cases, not the training ones).

    Returns
    -------
    TuningResult
    """
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    case_dirs = io.list_cases(data_dir)
    check_channels(case_dirs, config.data.channels, run_dir)
    for case_dir in case_dirs:  # tuning scores every case: each needs its mask, known before any prediction
        io.require_file(case_dir, config.data.mask, "mask")
    require_readable(case_dirs, config.data, with_mask=True)  # every exam sound before the model loads
    ts, ms = _check_grid(config.infer.tune_thresholds, config.infer.tune_min_sizes_mm3)
    atlas = load_atlas(run_dir)
    if atlas is not None and not config.infer.tune_min_atlas:
        log.info("lesion atlas %s: its calibrated cut-off %g is kept (not tuned; infer.tune_min_atlas tunes it)",
                 atlas.path, atlas.min_atlas)
        atlas = None
    avs = _check_atlas_grid(config.infer.tune_min_atlas) if atlas is not None else [0.0]
    if atlas is not None:
        for case_dir in case_dirs:  # every exam on the atlas's grid, before any prediction
            path = io.find_file(case_dir, config.data.channels[0])
            img = io.load_nifti(path)
            check_same_grid(atlas, img.shape[:3], img.affine, f"{case_dir.name}/{Path(str(path)).name}")
        log.info("lesion atlas %s: cut-offs %s tried as well", atlas.path, ", ".join(f"{a:g}" for a in avs))
    configure_backend(0)
    predictor = Predictor.from_run(run_dir, config)
    probs, truths, zooms, ids, atlases = _predict_cases(
        predictor, case_dirs, ts[0], _crop_margin(config.evaluate), atlas
    )
    t0 = time.perf_counter()
    result = tune_threshold_and_size(
        probs, truths, zooms, ts, ms, config.evaluate, connectivity=config.infer.connectivity,
        atlases=atlases, min_atlas=avs,
    )
    path = write_tuning(run_dir, result, ids)
    table = result.table
    default = table[(table.threshold == 0.5) & (table.min_lesion_mm3 == 0.0) & (table.min_atlas == 0.0)]
    log.info(
        "tuned on %d case(s) in %.1f s: threshold %.3g, min lesion %.3g mm³%s -> pooled lesion F1 %.3f, "
        "mean Dice %.3f%s; written to %s",
        len(ids),
        time.perf_counter() - t0,
        result.threshold,
        result.min_lesion_mm3,
        f", atlas cut-off {result.min_atlas:g}" if result.min_atlas is not None else "",
        result.lesion_f1,
        result.dice,
        f" (0.5 / 0 mm³ gives F1 {default.lesion_f1.iloc[0]:.3f})" if len(default) else "",
        path,
    )
    edges = grid_edges(result.threshold, result.min_lesion_mm3, ts, ms)
    if edges:
        log.warning(
            "the tuned %s at the edge of its grid: the best decision may lie beyond it; widen the grid "
            "(e.g. --set 'infer.tune_thresholds=[...]' / 'infer.tune_min_sizes_mm3=[...]') and tune again",
            " and ".join(edges),
        )
    best_dice = result.table.dice_mean.max()
    if not math.isnan(result.dice) and best_dice > 0 and result.dice < 0.5 * best_dice:
        log.warning(
            "the chosen pair has mean Dice %.3f where %.3f is reachable: under evaluate.criterion=%s "
            "one large merged prediction can be credited with every lesion it touches; check "
            "%s or tune with --set evaluate.criterion=iou",
            result.dice,
            best_dice,
            config.evaluate.criterion,
            run_dir / TABLE_FILE,
        )
    return result


def grid_edges(threshold: float, min_size: float, thresholds: Sequence[float], min_sizes: Sequence[float]) -> list[str]:
    """The tuned values that sit on an outer edge of their grid (a best value may lie beyond it).

    A threshold at the grid's top or bottom and a minimum size at its top count; a minimum size of
    the smallest value (usually 0, no filter) does not.  Single-value grids are not tuned and never count.

    Examples
    --------
    >>> grid_edges(0.9, 5.0, [0.1, 0.5, 0.9], [0.0, 5.0, 50.0])
    ['threshold 0.9 is']
    >>> grid_edges(0.5, 50.0, [0.1, 0.5, 0.9], [0.0, 5.0, 50.0])
    ['minimum size 50 mm³ is']
    >>> grid_edges(0.5, 5.0, [0.1, 0.5, 0.9], [0.0, 5.0, 50.0])
    []
    """
    edges = []
    if len(thresholds) > 1 and threshold in (max(thresholds), min(thresholds)):
        edges.append(f"threshold {threshold:g} is")
    if len(min_sizes) > 1 and min_size == max(min_sizes):
        edges.append(f"minimum size {min_size:g} mm³ is")
    return edges


def _predict_cases(
    predictor: Predictor, case_dirs: Sequence[Path], min_threshold: float, margin: int,
    atlas: LesionAtlas | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list, list[str], list[np.ndarray] | None]:
    """Predict labelled cases; per case the probability, truth (and atlas) inside :func:`candidate_box`, zooms, id."""
    probs, truths, zooms, ids = [], [], [], []
    atlases: list[np.ndarray] | None = None if atlas is None else []
    for n, case_dir in enumerate(case_dirs, 1):
        t0 = time.perf_counter()
        case, prob = case_probability(predictor, case_dir, mask=True)
        box = candidate_box(prob, case.mask, min_threshold, margin)  # keep only what tuning can see
        probs.append(np.ascontiguousarray(prob[box]))
        truths.append(np.ascontiguousarray(case.mask[box]))  # type: ignore[index]
        if atlases is not None and atlas is not None:
            atlases.append(np.ascontiguousarray(atlas.on_grid(prob.shape, case.affine, case.case_id)[box]))
        zooms.append(case.grid.zooms)
        ids.append(case.case_id)
        log.info("case %d/%d %s predicted in %.1f s", n, len(case_dirs), case.case_id, time.perf_counter() - t0)
    return probs, truths, zooms, ids, atlases
