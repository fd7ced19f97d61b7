"""The ``infer`` stage: a trained run applied to whole NIfTI volumes.

For each case: read the channels the run was trained on, normalise exactly
as training did (the run's stored ``[data]`` settings), predict lesion
probabilities with overlapping windows (:mod:`lesionseg.inference.sliding_window`), decide
(threshold or argmax) and drop components below the minimum lesion size,
then write ``PRED/<case>_prob.nii.gz`` (float32) and
``PRED/<case>_pred.nii.gz`` (uint8) on the input's grid: same shape, same
affine bit-for-bit, same orientation (LAS stays LAS).

Decision: ``infer.threshold`` when set, else the threshold stored in
``RUN/tuning.json`` by ``lesionseg tune``, else 0.5 — which, on the lesion
probability of a softmax head, is its argmax.  The minimum lesion size comes
the same way (``infer.min_lesion_mm3``, tuned, else 0).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from lesionseg.config import Config
from lesionseg.data import io, writing
from lesionseg.data.check import require_readable, slice_axis_warning
from lesionseg.data.normalize import normalize_image
from lesionseg.data.preprocess import prepare, to_input_grid
from lesionseg.errors import DataError, LesionsegError
from lesionseg.inference.atlas import ATLAS_FILE, LesionAtlas, check_same_grid, load_atlas
from lesionseg.inference.case_outputs import decide_and_write, explicit_min_atlas, redecide_cases
from lesionseg.inference.postprocess import (
    DecisionSettings,
    read_tuning,
    resolve_decision,
    resolve_min_atlas,
)
from lesionseg.inference.cohort import (
    FAILURES_FILE,
    Failure,
    append_cohort_row,
    compact_cohort,
    read_failed_cases,
    write_failures,
)
from lesionseg.inference.ensemble import check_members
from lesionseg.inference.predictor import Predictor, model_file
from lesionseg.inference.sliding_window import Progress
from lesionseg.logs import setup_logging
from lesionseg.provenance import Source, is_complete
from lesionseg.runtime import configure_backend

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- checks and cases


def check_channels(case_dirs: Sequence[Path], channels: Sequence[str], run_dir: Path) -> None:
    """Every case has every channel the model was trained on (before anything is written)."""
    for case_dir in case_dirs:
        for ch in channels:
            if io.find_file(case_dir, ch) is None:
                raise DataError(
                    f"{case_dir.name}/{ch}.nii.gz: missing channel {ch!r} "
                    f"(the model in {run_dir} was trained on {', '.join(channels)})"
                )


def read_normalised(case_dir: Path, config: Config, mask: bool = False) -> tuple[io.Case, np.ndarray]:
    """Read a case (channels, optionally the mask), preprocess and normalise it exactly as training.

    The image is on the working grid of ``[preprocess]`` (the input's grid when it is off); the
    case (its grid, header and mask) stays as read: :func:`~lesionseg.data.preprocess.to_input_grid`
    brings a probability map back to it.
    """
    case = io.read_case(
        case_dir,
        config.data.channels,
        mask_name=config.data.mask if mask else None,
        mask_values=config.data.mask_values,
        affine_tolerance=config.data.affine_tolerance,
    )
    if config.augment.thick_slice_probability > 0:
        first = io.find_file(case_dir, config.data.channels[0])
        warning = slice_axis_warning(case.grid, first, config.preprocess, config.augment.thick_slice_axis)
        if warning:
            log.warning("%s", warning)
    raw = prepare(case.image, None, case.grid, config.preprocess).image
    image = normalize_image(raw, config.data.normalization, config.data.clip_percentiles)
    return case, image


def case_probability(predictor: Predictor, case_dir: Path, mask: bool = False,
                     progress: Progress | None = None) -> tuple[io.Case, np.ndarray]:
    """A case as read and its lesion probability on its own grid (preprocessed, predicted, brought back)."""
    case, image = read_normalised(case_dir, predictor.config, mask=mask)
    prob = predictor.probability(image, progress=progress)
    del image
    return case, to_input_grid(prob, case.grid, predictor.config.preprocess)


def predict_case(
    predictor: Predictor,
    case_dir: Path,
    out_dir: Path,
    tuned: DecisionSettings | None,
    show_progress: bool = True,
    source: Source | None = None,
) -> tuple[Path, dict[str, object] | None]:
    """Predict one case folder and write its two outputs (then its record).

    Returns the ``_pred`` path and, with a ``source``, the case's ``cohort.csv`` row.
    """
    t0 = time.perf_counter()
    case, prob = case_probability(predictor, case_dir, progress=_window_bar(case_dir.name) if show_progress else None)
    writing.write_like(Path(out_dir) / f"{case.case_id}_prob.nii.gz", prob, case.affine, case.header, np.float32)
    return decide_and_write(prob, case.case_id, case.grid, case.header, out_dir, predictor.config, tuned,
                            predictor.atlas, source, t0)


def _window_bar(case_id: str) -> Callable[[int, int], None]:
    """A tqdm progress bar over a case's windows (silent when stderr is not a terminal)."""
    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=case_id, unit="win", leave=False, disable=None))
        b = bar[0]
        b.update(done - b.n)
        if done >= total:
            b.close()

    return update


def _threads_per_worker(workers: int) -> int:
    cpus = os.cpu_count() or 1
    if workers <= 1:
        return cpus
    return max(1, min(2, cpus // workers))


#: Errors of one exam that --keep-going records and goes past (anything else stops the run).
CASE_ERRORS = (LesionsegError, OSError, ValueError, EOFError, MemoryError)


# ---------------------------------------------------------------- the stage


def run_inference(
    run_dir: Path,
    config: Config,
    input_path: Path,
    out_dir: Path,
    force: bool = False,
    keep_going: bool = False,
    retry_failed: bool = False,
    engine: str = "local",
    address: str | None = None,
) -> list[Path]:
    """The ``lesionseg infer`` stage.

    Parameters
    ----------
    run_dir : Path
        Run folder with ``model.keras`` (and optionally ``tuning.json``).
    config : Config
        The run's stored configuration (with ``[infer]`` overrides): its
        ``data`` section names the channels and the normalisation, its
        ``patches.size`` is the window, ``model.head`` the head.
    input_path : Path
        A data folder of cases, or a single case folder.
    out_dir : Path
        Output folder ``PRED``.
    force : bool
        Predict every case again; by default a case whose outputs and record in ``PRED`` come
        from this model and these settings is kept as it is (a rerun after an interruption
        predicts only what is missing).
    keep_going : bool
        An exam that cannot be read or predicted is listed in ``PRED/failures.csv`` (case, file,
        one-line reason) and the others go on; the run then ends with a :class:`LesionsegError`
        saying how many failed.  Without it the first bad exam stops the run before anything is
        written.
    retry_failed : bool
        Predict only the exams listed in ``PRED/failures.csv`` (implies ``keep_going``).
    engine : {"local", "dask", "ray"}
        Where the exams run (:mod:`lesionseg.inference.engines`).
    address : str or None
        ``engine="dask"`` or ``"ray"``: the cluster to join (default: a local one).

    Returns
    -------
    list of Path
        ``PRED/<case>_pred.nii.gz`` per case (``<case>_prob.nii.gz`` beside it).

    Raises
    ------
    LesionsegError
        Missing model, a case lacking a channel the model was trained on
        (checked for every case before anything is written), unreadable
        files.
    """
    run_dir, input_path, out_dir = Path(run_dir), Path(input_path), Path(out_dir)
    model_path = model_file(run_dir, config)
    if not model_path.is_file():
        raise LesionsegError(f"{model_path}: missing; is {run_dir} a trained lesionseg run?")
    if config.model.kind != "threshold":
        check_members(run_dir)  # an ensemble's member missing or changed: said before any case is read
    case_dirs = io.list_cases(input_path)
    all_ids = [c.name for c in case_dirs]
    failures: list[Failure] = []
    if retry_failed:
        keep_going = True
        listed = set(read_failed_cases(out_dir))
        case_dirs = [c for c in case_dirs if c.name in listed]
        log.info("retrying %d failed case(s) listed in %s", len(case_dirs), out_dir / FAILURES_FILE)
    if keep_going:
        case_dirs, failures = _readable_cases(case_dirs, config, run_dir)
    else:
        check_channels(case_dirs, config.data.channels, run_dir)
        require_readable(case_dirs, config.data, with_mask=False)
    tuned = read_tuning(run_dir)
    threshold, min_mm3 = resolve_decision(config.infer, tuned)
    atlas = load_atlas(run_dir)
    min_atlas = resolve_min_atlas(config.infer, tuned, atlas.min_atlas if atlas is not None else 0.0)
    off_grid: set[str] = set()
    if min_atlas > 0 and (atlas is None or explicit_min_atlas(config, tuned)):
        case_dirs, failures = _on_atlas_grid(run_dir, config, case_dirs, min_atlas, keep_going, failures)
    elif min_atlas > 0:
        off_grid = _off_atlas_grid(atlas, config, case_dirs)
    source = Source.of_run(run_dir, model_path, config)

    def decision(case: str) -> tuple[float, float, float]:
        return threshold, min_mm3, 0.0 if case in off_grid else min_atlas

    done = [] if force else [c for c in case_dirs if is_complete(out_dir, c.name, source, decision(c.name))]
    if done:
        log.info("%d case(s) already predicted into %s by this model and settings, kept (--force redoes them)",
                 len(done), out_dir)
    todo = [c for c in case_dirs if c not in done]
    kept = [out_dir / f"{c.name}_pred.nii.gz" for c in done]
    try:
        if todo and not force:
            redecided, todo = redecide_cases(run_dir, config, todo, out_dir, source)
            kept += redecided
        if todo:
            if engine in ("dask", "ray"):
                kept += _predict_on_cluster(engine, run_dir, config, todo, out_dir, source, keep_going, failures,
                                            address)
            else:
                kept += _predict(run_dir, config, todo, out_dir, tuned, source, keep_going, failures, threshold,
                                 min_mm3)
    finally:
        compact_cohort(out_dir, all_ids, complete=[c.name for c in done])
        if keep_going:
            write_failures(out_dir, failures)
    if failures:
        raise LesionsegError(
            f"{len(failures)} of {len(failures) + len(kept)} case(s) failed (first: {failures[0].case}: "
            f"{failures[0].reason}); the others are in {out_dir}; see {out_dir / FAILURES_FILE}, "
            "rerun with --retry-failed"
        )
    return kept


def _predict_on_cluster(
    engine: str, run_dir: Path, config: Config, case_dirs: list[Path], out_dir: Path, source: Source,
    keep_going: bool, failures: list[Failure], address: str | None,
) -> list[Path]:
    """Predict on a Dask or Ray cluster; rows and failures recorded here, in the client, as exams finish."""
    from lesionseg.inference.engines import predict_with_dask, predict_with_ray

    outputs: list[Path] = []

    def on_result(case_dir: Path, result: Any) -> None:
        if isinstance(result, BaseException):
            if not keep_going or not isinstance(result, CASE_ERRORS):
                raise result
            failures.append(_failure(case_dir, result))
            log.error("%s: failed (%s)", case_dir.name, failures[-1].reason)
            return
        path, row = result
        outputs.append(path)
        if row is not None:
            append_cohort_row(out_dir, row)
        log.info("case %d/%d done: %s", len(outputs) + len(failures), len(case_dirs), case_dir.name)

    submit = predict_with_dask if engine == "dask" else predict_with_ray
    submit(run_dir, config, case_dirs, out_dir, source, on_result, address)
    return outputs


def _readable_cases(case_dirs: Sequence[Path], config: Config, run_dir: Path) -> tuple[list[Path], list[Failure]]:
    """The cases that pass the checks of :func:`require_readable`, and a failure row for each other one."""
    good, failures = [], []
    for case_dir in case_dirs:
        try:
            check_channels([case_dir], config.data.channels, run_dir)
            require_readable([case_dir], config.data, with_mask=False)
        except LesionsegError as exc:
            failures.append(_failure(case_dir, exc))
            log.error("%s: skipped (%s)", case_dir.name, exc)
            continue
        good.append(case_dir)
    return good, failures


def _off_atlas_grid(atlas: LesionAtlas, config: Config, case_dirs: list[Path]) -> set[str]:
    """The cases not on the grid of the model's atlas (headers only): predicted without its default filter."""
    off = set()
    for case_dir in case_dirs:
        path = io.find_file(case_dir, config.data.channels[0])
        img = nib.load(str(path))
        if not atlas.matches(img.shape, img.affine):
            off.add(case_dir.name)
    if off:
        log.warning("%d of %d exam(s) are not on the grid of the model's lesion atlas %s (e.g. %s): they are "
                    "predicted without its false-positive filter (it needs exams registered to its space)",
                    len(off), len(case_dirs), atlas.path, sorted(off)[0])
    return off


def _on_atlas_grid(run_dir: Path, config: Config, case_dirs: list[Path], min_atlas: float, keep_going: bool,
                   failures: list[Failure]) -> tuple[list[Path], list[Failure]]:
    """With an atlas cut-off asked for: the run has an atlas and every case is on its grid (headers only).

    A case on another grid stops the run before anything is written, or with ``keep_going`` is
    listed as failed.
    """
    atlas = load_atlas(run_dir)
    if atlas is None:
        raise LesionsegError(
            f"{run_dir}: the decision uses a lesion-atlas cut-off ({min_atlas:g}) but the run has no "
            f"{ATLAS_FILE} (lesionseg atlas --model {run_dir} --masks DIR makes one; --set infer.min_atlas=0 "
            "switches the filter off)"
        )
    good = []
    for case_dir in case_dirs:
        path = io.find_file(case_dir, config.data.channels[0])
        try:
            img = nib.load(str(path))
            check_same_grid(atlas, img.shape, img.affine, f"{case_dir.name}/{Path(str(path)).name}")
        except LesionsegError as exc:
            if not keep_going:
                raise
            failures.append(_failure(case_dir, exc))
            log.error("%s: skipped (%s)", case_dir.name, exc)
            continue
        good.append(case_dir)
    return good, failures


def _failure(case_dir: Path, exc: BaseException) -> Failure:
    """A failure row: the file named by the error's first word when it is one of the case's, else the folder."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    head = text.split(":", 1)[0]
    file = head if case_dir.name in head or head.endswith((".nii", ".nii.gz")) else case_dir.name
    return Failure(case_dir.name, file, text)


def _predict(
    run_dir: Path, config: Config, case_dirs: list[Path], out_dir: Path, tuned: DecisionSettings | None,
    source: Source, keep_going: bool, failures: list[Failure], threshold: float, min_mm3: float,
) -> list[Path]:
    """Predict the cases still to do (serially or in a pool); failures collected when ``keep_going``."""
    workers = max(1, min(int(config.infer.workers), len(case_dirs)))
    log.info(
        "predicting %d case(s) with %s: window %s, overlap %.2f, %s blend, threshold %.3g, "
        "min lesion %.3g mm³%s",
        len(case_dirs),
        run_dir,
        "×".join(map(str, config.patches.size)),
        config.infer.overlap,
        config.infer.blend,
        threshold,
        min_mm3,
        f", {workers} workers" if workers > 1 else "",
    )
    if workers == 1:
        return _predict_serial(run_dir, config, case_dirs, out_dir, tuned, source, keep_going, failures)
    return _predict_in_pool(run_dir, config, case_dirs, out_dir, workers, source, keep_going, failures)


def _predict_serial(
    run_dir: Path,
    config: Config,
    case_dirs: Sequence[Path],
    out_dir: Path,
    tuned: DecisionSettings | None,
    source: Source,
    keep_going: bool = False,
    failures: list[Failure] | None = None,
) -> list[Path]:
    """Every case in this process, the backend on every CPU."""
    configure_backend(_threads_per_worker(1))
    predictor = Predictor.from_run(run_dir, config)
    outputs = []
    for n, case_dir in enumerate(case_dirs, 1):
        log.info("case %d/%d: %s", n, len(case_dirs), case_dir.name)
        try:
            path, row = predict_case(predictor, case_dir, out_dir, tuned, source=source)
        except CASE_ERRORS as exc:
            if not keep_going or failures is None:
                raise
            failures.append(_failure(case_dir, exc))
            log.error("%s: failed (%s)", case_dir.name, failures[-1].reason)
            continue
        outputs.append(path)
        if row is not None:
            append_cohort_row(out_dir, row)
    return outputs


def _predict_in_pool(
    run_dir: Path, config: Config, case_dirs: Sequence[Path], out_dir: Path, workers: int, source: Source,
    keep_going: bool = False, failures: list[Failure] | None = None,
) -> list[Path]:
    """One case per task in ``workers`` spawned processes, each loading the model once."""
    level = logging.getLogger("lesionseg").getEffectiveLevel()
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(run_dir, config, _threads_per_worker(workers), level),
    ) as pool:
        futures = [pool.submit(_worker_predict, c, out_dir, source) for c in case_dirs]
        outputs = []
        try:
            for n, fut in enumerate(futures, 1):
                try:
                    path, row = fut.result()
                except CASE_ERRORS as exc:
                    if not keep_going or failures is None:
                        raise
                    failures.append(_failure(case_dirs[n - 1], exc))
                    log.error("%s: failed (%s)", case_dirs[n - 1].name, failures[-1].reason)
                    continue
                outputs.append(path)
                if row is not None:
                    append_cohort_row(out_dir, row)
                log.info("case %d/%d done: %s", n, len(case_dirs), case_dirs[n - 1].name)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return outputs


# ---------------------------------------------------------------- process-pool workers

_WORKER: dict[str, Any] = {}


def _init_worker(run_dir: Path, config: Config, threads: int, log_level: int) -> None:
    """Process-pool initialiser: logging, quiet backend and its thread count."""
    setup_logging(verbose=int(log_level <= logging.DEBUG), quiet=log_level > logging.INFO)
    configure_backend(threads)
    _WORKER.update(run_dir=run_dir, config=config)


def _worker_predict(case_dir: Path, out_dir: Path, source: Source) -> tuple[Path, dict[str, object] | None]:
    """Predict one case in a worker (the model is loaded once, on its first case)."""
    if "predictor" not in _WORKER:  # loaded here, not in the initialiser, so errors reach the parent
        _WORKER["predictor"] = Predictor.from_run(_WORKER["run_dir"], _WORKER["config"])
        _WORKER["tuned"] = read_tuning(_WORKER["run_dir"])
    return predict_case(_WORKER["predictor"], case_dir, out_dir, _WORKER["tuned"], show_progress=False,
                        source=source)
