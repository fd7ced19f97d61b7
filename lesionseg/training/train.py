"""The ``train`` stage: online lesion-aware patches -> 3D U-Net, best model by lesion F1.

One call of :func:`train` does, in order:

1. split the labelled cases into training and validation, whole patients at
   a time (:mod:`lesionseg.data.split`, ``data.group_pattern``);
2. load and normalise them once (:func:`lesionseg.sampling.feed.load_cases`); every
   epoch draws new lesion-aware, augmented patches
   (:class:`lesionseg.sampling.feed.PatchSequence`, seeded per epoch);
3. build the model and the loss named in the config, Adam with a
   reduce-on-plateau, cosine or constant learning rate
   (:mod:`lesionseg.training.schedule`), inside a ``tf.distribute`` strategy
   when one is configured (:mod:`lesionseg.training.distribution`, TensorFlow only);
4. after each epoch (:class:`lesionseg.training.loop.EpochControl`): predict
   the validation cases as whole volumes (:mod:`lesionseg.training.validation`:
   sliding window, lesion matching), keep ``model.keras`` when the pooled
   lesion-wise F1 improves (ties: higher Dice; :mod:`lesionseg.training.selection`),
   write the validation reports of that model, the history, the curves and a
   last-epoch checkpoint (:mod:`lesionseg.training.checkpoint`);
5. watch for the classic failures (:mod:`lesionseg.training.diagnostics`,
   :mod:`lesionseg.training.monitor`) and stop on a NaN loss with the last
   good model kept.

Run folder::

    RUN/model.keras          best model (by validation lesion F1)
    RUN/config.yaml          resolved configuration
    RUN/history.csv          one row per epoch (lesionseg.training.curves.HISTORY_COLUMNS)
    RUN/curves.png           loss/lr, Dice, lesion P/R/F1, foreground fractions
    RUN/validation/          lesions.csv, cases.csv, summary.csv of the best model
    RUN/split.csv            case, group, side (train/val)
    RUN/train.log            the log
    RUN/checkpoint/          last epoch: weights + optimizer state (last.npz) and
                             state.json (epoch, best score, schedule and sampler
                             state) for ``--resume``

The Keras side (the feed, the model, the per-epoch callback, the diagnostics callback) is
imported inside the steps that use it, after :func:`lesionseg.runtime.configure_backend`:
``lesionseg train`` answers a bad config, a bad case or an earlier run in one line before the
backend starts (seconds, and TensorFlow's start-up lines on stderr).

Several GPUs / machines: ``train.strategy = "mirrored"`` (all GPUs of one
machine) or ``"multi_worker"`` (``TF_CONFIG`` on every machine, the same
command everywhere; the chief writes RUN).  ``train.batch_size`` is the
global batch, split evenly across replicas.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.config import Config, save_config
from lesionseg.errors import LesionsegError
from lesionseg.logs import add_file_log
from lesionseg.runtime import configure_backend
from lesionseg.training.data import TrainingData, check_training_data, write_split
from lesionseg.training.checkpoint import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    RUN_FILES,
    RunState,
    check_resumable,
    holds_run,
    load_checkpoint,
    prepare_run_dir,
    remove_run,
    replace_run,
    resumed_history,
    save_model,
)
from lesionseg.training.distribution import (
    check_replicas,
    is_chief,
    jit_compile,
    make_strategy,
    replica_scaled,
    replicas,
    scope,
)
from lesionseg.training.history import History, finite_or_zero
from lesionseg.training.schedule import Schedule

log = logging.getLogger(__name__)


class TrainingStopped(LesionsegError):
    """Training stopped early for a failure (NaN/Inf loss); the last good model was kept."""


def train(
    config: Config,
    data_dir: Path,
    run_dir: Path,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    overwrite: bool = False,
) -> Path:
    """Train a 3D U-Net and write the run folder.

    Parameters
    ----------
    config : Config
        Resolved configuration (all sections are used: data, patches,
        augment, model, loss, train, infer and evaluate for validation).
    data_dir : Path
        Folder of labelled cases (``<case>/<channel>.nii.gz`` + mask).
    run_dir : Path
        Output folder RUN (created).
    resume : bool
        Continue from ``RUN/checkpoint`` (weights, optimizer, epoch, best
        score, schedule and sampler state) instead of starting anew.
    overwrite : bool
        ``RUN`` holds an earlier run: train the new one in ``.RUN.attempt`` beside it and
        replace the earlier run's files only when the new run has succeeded (without it,
        an earlier run is an error: it is never deleted by a run that may still fail).
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks for ``model.fit``, called after the stage's own at
        every hook: at ``on_epoch_end`` the epoch's history row, best model
        and checkpoint are already written (a callback that raises
        ``KeyboardInterrupt`` there is a Ctrl-C right after the checkpoint).

    Returns
    -------
    Path
        ``run_dir``.

    Raises
    ------
    LesionsegError
        Bad data or config, nothing to resume, an earlier run in ``RUN`` without
        ``overwrite``.  A new run that fails before its first checkpoint removes what
        it wrote; an interrupted one keeps its checkpoint for ``--resume``.
    TrainingStopped
        The loss became NaN/Inf; ``RUN/model.keras`` holds the last good
        model and the history shows where it happened.
    """
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    # everything that can be checked without the backend first: earlier run, checkpoint, data, split
    if not resume and holds_run(run_dir) and not overwrite:
        raise LesionsegError(
            f"{run_dir}: holds an earlier run ({', '.join(holds_run(run_dir))}); --resume continues it, "
            "--overwrite replaces it once the new run has succeeded"
        )
    check_resumable(run_dir, resume)
    data = check_training_data(config, data_dir)
    if config.model.kind == "threshold":
        return write_threshold_run(run_dir, data)
    backend = configure_backend(config.train.threads, config.train.seed)
    strategy = make_strategy(config.train.strategy, backend)
    check_replicas(config.train.batch_size, replicas(strategy), config.train.strategy)
    writes = is_chief(strategy)
    if resume or not holds_run(run_dir):
        return _train_in(run_dir, data, resume, backend, strategy, writes, callbacks)
    attempt = run_dir.parent / f".{run_dir.name}.attempt"
    shutil.rmtree(attempt, ignore_errors=True)  # a killed earlier attempt
    try:
        _train_in(attempt, data, False, backend, strategy, writes, callbacks, replaces=run_dir)
        if writes:
            replace_run(attempt, run_dir)
    finally:
        shutil.rmtree(attempt, ignore_errors=True)
    return run_dir


def write_threshold_run(run_dir: Path, data: TrainingData) -> Path:
    """The threshold baseline has nothing to fit: its run folder is its config and its split.

    An earlier run in ``run_dir`` (``--overwrite``) is replaced as a trained one would be, and
    an earlier ``tuning.json`` goes: ``lesionseg tune`` picks the threshold and minimum size anew.
    """
    m = data.config.model
    staging = run_dir.parent / f".{run_dir.name}.attempt" if holds_run(run_dir) else run_dir
    if staging != run_dir:
        shutil.rmtree(staging, ignore_errors=True)  # a killed earlier attempt
    staging.mkdir(parents=True, exist_ok=True)
    save_config(data.config, staging / "config.yaml")
    write_split(data.split, staging / "split.csv")
    if staging != run_dir:
        replace_run(staging, run_dir)
        shutil.rmtree(staging, ignore_errors=True)
    for name in ("tuning.json", "tuning.csv"):
        (run_dir / name).unlink(missing_ok=True)
    log.info(
        "threshold baseline -> %s: lesion where normalised %s >= %.3g + %.3g * logit(threshold) "
        "(nothing to fit; `lesionseg tune` picks the threshold and minimum lesion size)",
        run_dir, m.threshold_channel, m.threshold_center, m.threshold_scale,
    )
    return run_dir


def _train_in(
    run_dir: Path, data: TrainingData, resume: bool, backend: str, strategy: Any, writes: bool, callbacks: Sequence[Any],
    replaces: Path | None = None,
) -> Path:
    """Train into ``run_dir``; a new run that fails before its first checkpoint leaves nothing behind.

    ``replaces``: the run folder this one (an ``--overwrite`` attempt) is to replace once it succeeds.
    Files that were in ``run_dir`` before (not the run's) are never removed.
    """
    created = not run_dir.exists()
    before = set() if created else {name for name in RUN_FILES if (run_dir / name).exists()}
    prepare_run_dir(run_dir, resume, writes)
    try:
        with _file_log(run_dir, writes):
            run = _Setup(data.config, data.data_dir, run_dir, resume, backend, strategy, writes, data, replaces)
            return _train(run, list(callbacks))
    except BaseException as exc:  # also Ctrl-C: before the first checkpoint there is nothing to resume
        if writes and not resume and not isinstance(exc, TrainingStopped) and not (run_dir / CHECKPOINT_DIR).exists():
            remove_run(run_dir, created, keep=before)
        raise


@dataclass(frozen=True)
class _Setup:
    """The arguments of one run, as :func:`train` resolved them."""

    config: Config
    data_dir: Path
    run_dir: Path
    resume: bool
    backend: str
    strategy: Any
    writes: bool
    data: TrainingData
    replaces: Path | None = None


def _train(run: _Setup, callbacks: list[Any]) -> Path:
    from lesionseg.sampling.feed import PatchSequence
    from lesionseg.training.diagnostics import TrainingMonitor

    config, cfg = run.config, run.config.train
    mode = "resume" if run.resume else "new run"
    log.info("training %s -> %s (backend %s, %s)", run.data_dir, run.run_dir, run.backend, mode)
    train_cases, val_cases = _load_split(run)
    sequence = PatchSequence(
        train_cases, config.patches, config.augment, cfg.batch_size, cfg.steps_per_epoch, cfg.seed, augment=True
    )
    model, loss_fn = _build_model(run)
    state, history = RunState(lr=cfg.learning_rate), []
    monitor = TrainingMonitor(head=config.model.head, loss_name=config.loss.name, linear_head=True)  # build_unet checks it
    if run.resume:
        state, history = _resume(run, model, monitor)
        if state.stopped_early or state.epoch >= cfg.epochs:
            return run.run_dir
    probe = _find_probe(sequence, state.epoch)
    control = _epoch_control(run, sequence, val_cases, monitor, state, history, probe, loss_fn)
    _fit(run, model, sequence, control, callbacks)
    _finish(run, model, control)
    return run.run_dir


def _load_split(run: _Setup) -> tuple[list[Any], list[Any]]:
    """Split the labelled cases, load them; the chief writes config.yaml and split.csv."""
    from lesionseg.sampling.feed import load_cases

    config, split, case_dirs = run.config, run.data.split, run.data.case_dirs
    log.info("split: %s; validation: %s", split.describe(), ", ".join(split.val) or "none")
    by_name = {d.name: d for d in case_dirs}
    train_cases = load_cases(config, [by_name[c] for c in split.train])
    val_cases = load_cases(config, [by_name[c] for c in split.val]) if split.val else []
    if run.writes:
        save_config(config, run.run_dir / "config.yaml")
        write_split(split, run.run_dir / "split.csv")
    return train_cases, val_cases


def _build_model(run: _Setup) -> tuple[Any, Any]:
    """The compiled model (under the strategy) and the unscaled loss function."""
    import keras

    from lesionseg.model.losses import get_loss
    from lesionseg.model.metrics import make_metrics
    from lesionseg.model.unet import build_unet, count_parameters, precision_policy
    from lesionseg.runtime import warn_if_bfloat16_is_emulated
    from lesionseg.training.monitor import diagnostic_metrics

    config, cfg, strategy = run.config, run.config.train, run.strategy
    head = config.model.head
    warn_if_bfloat16_is_emulated("train.precision", cfg.precision)
    with scope(strategy):
        with precision_policy(cfg.precision):
            model = build_unet(config.model, len(config.data.channels), tuple(config.patches.size))
        loss_fn = get_loss(config.loss.name, head, **dict(config.loss.params))
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
            loss=replica_scaled(loss_fn, replicas(strategy)),
            metrics=make_metrics(head) + diagnostic_metrics(head),
            jit_compile=jit_compile(run.backend),
        )
        model.optimizer.build(model.trainable_variables)
    log.info(
        "model %s: %s parameters%s; loss %s; %s schedule from lr %.3g; %d x %d patches of %s per epoch%s",
        model.name,
        f"{count_parameters(model):,}",
        " (mixed bfloat16)" if cfg.precision == "bfloat16" else "",
        config.loss.name,
        cfg.schedule,
        cfg.learning_rate,
        cfg.steps_per_epoch,
        cfg.batch_size,
        "x".join(map(str, config.patches.size)),
        f" on {replicas(strategy)} replicas" if strategy is not None else "",
    )
    return model, loss_fn


def _resume(run: _Setup, model: Any, monitor: Any) -> tuple[RunState, list[dict[str, Any]]]:
    """Load the checkpoint into the model and the monitor; the state and the history rows kept."""
    cfg = run.config.train
    with scope(run.strategy):
        state = load_checkpoint(model, run.run_dir / CHECKPOINT_DIR)
    monitor.load_state(state.monitor)
    history = resumed_history(run.run_dir, state.epoch)
    if state.stopped_early or state.epoch >= cfg.epochs:
        log.info(
            "%s: training already finished at epoch %d of %d%s; nothing to resume",
            run.run_dir,
            state.epoch,
            cfg.epochs,
            " (early stopping)" if state.stopped_early else "",
        )
    else:
        log.info(
            "resuming after epoch %d of %d (best: epoch %d, lesion F1 %.3f)",
            state.epoch,
            cfg.epochs,
            state.best_epoch,
            max(state.best_score[-2], 0.0),  # the F1 of the selection key
        )
    return state, history


def _epoch_control(
    run: _Setup,
    sequence: Any,
    val_cases: list[Any],
    monitor: Any,
    state: RunState,
    history: list[dict[str, Any]],
    probe: tuple[np.ndarray, np.ndarray] | None,
    loss_fn: Any,
) -> Any:
    """The parts of the loop, restored from ``state``, wired into an :class:`EpochControl`."""
    from lesionseg.training.loop import EpochControl
    from lesionseg.training.monitor import DiagnosticsCallback
    from lesionseg.training.selection import BestModel

    cfg, out = run.config.train, (run.run_dir if run.writes else None)
    selection = BestModel(run.config, val_cases, out, distributed=run.strategy is not None)
    selection.load_state(state)
    schedule = Schedule(cfg, epochs_per_update=selection.epochs_per_validation)
    schedule.load_state(state.schedule_state())
    diagnostics = DiagnosticsCallback(monitor, probe=probe, loss_fn=loss_fn, enabled=cfg.diagnostics)
    ckpt_dir = run.run_dir / CHECKPOINT_DIR if run.writes else None
    return EpochControl(cfg.epochs, sequence, schedule, selection, diagnostics, History(history, out), state, ckpt_dir)


def _fit(run: _Setup, model: Any, sequence: Any, control: Any, callbacks: list[Any]) -> None:
    """``model.fit`` with the progress bar, the diagnostics, the epoch control and ``callbacks``."""
    from lesionseg.training.progress import progress_callback

    cfg = run.config.train
    sequence.set_epoch(control.state.epoch)
    stage = [progress_callback(cfg.epochs, cfg.steps_per_epoch), control.diagnostics, control]
    if run.config.patches.hard_mining_every > 0:
        from lesionseg.training.mining import HardNegativeMiner

        miner = HardNegativeMiner(sequence, run.config, control.checkpoint_dir, distributed=run.strategy is not None)
        miner.restore(control.state.epoch)
        stage.append(miner)
    try:
        # shuffle=False: fit's default shuffles the order of the sequence's batches with Python's global
        # `random`, which is re-seeded at every start and is in no checkpoint, so a resumed run would feed
        # its epochs' batches in another order than the uninterrupted run; the batches are already random
        # draws per (seed, epoch, index), so their order adds nothing and stays 0..steps_per_epoch-1.
        model.fit(
            sequence,
            epochs=cfg.epochs,
            initial_epoch=control.state.epoch,
            callbacks=stage + callbacks,
            shuffle=False,
            verbose=0,
        )
    except KeyboardInterrupt:
        if run.replaces is not None:  # an --overwrite attempt: it goes, the earlier run stays
            log.warning("interrupted during epoch %d; the earlier run in %s is unchanged (train again with "
                        "--overwrite to replace it)", control.state.epoch + 1, run.replaces)
        else:
            log.warning(
                "interrupted during epoch %d; resume with: lesionseg train --data %s --out %s --resume",
                control.state.epoch + 1,
                run.data_dir,
                run.run_dir,
            )
        control.history.write_curves()
        raise
    control.history.write_curves()


def _finish(run: _Setup, model: Any, control: Any) -> None:
    """After training: the NaN stop, the best model and the diagnostics in summary."""
    run_dir, diag = run.run_dir, control.diagnostics
    if diag.nan_stop is not None:
        if run.writes and not (run_dir / MODEL_FILE).is_file():
            save_model(model, run_dir / MODEL_FILE)  # the last good weights, restored by the callback
        raise TrainingStopped(
            f"{run_dir}: training stopped at epoch {diag.nan_stop.epoch}: loss became NaN/Inf; the last good "
            f"model is in {run_dir / MODEL_FILE} (epoch {control.selection.epoch}); lower train.learning_rate "
            "(see the DIAGNOSTIC line above)"
        )
    best = control.history.row(control.selection.epoch)
    if best is not None and "val_lesion_f1" in best:
        log.info(
            "best model: epoch %d, validation lesion F1 %.3f (precision %.3f, recall %.3f), Dice %.3f%s -> %s",
            best["epoch"],
            finite_or_zero(best["val_lesion_f1"]),
            finite_or_zero(best["val_lesion_precision"]),
            finite_or_zero(best["val_lesion_recall"]),
            finite_or_zero(best["val_dice"]),
            " (over-segmented: its F1 means nothing)" if control.selection.over_segmented else "",
            run_dir / MODEL_FILE,
        )
    if diag.findings:
        log.warning(
            "%d diagnostic warning(s) during training: %s (see above and %s)",
            len(diag.findings),
            ", ".join(sorted({f.code for f in diag.findings})),
            run_dir / "train.log",
        )


# ---------------------------------------------------------------- helpers


def _find_probe(sequence: Any, epoch: int, tries: int = 8) -> tuple[np.ndarray, np.ndarray] | None:
    """A training batch with lesion voxels (for the output-range check and reference losses)."""
    sequence.set_epoch(epoch)
    first = None
    for i in range(min(tries, len(sequence))):
        x, y = sequence[i]
        first = first or (x, y)
        if np.any(y > 0):
            return np.asarray(x), np.asarray(y)
    return first


@contextlib.contextmanager
def _file_log(run_dir: Path, enabled: bool) -> Iterator[None]:
    handler = add_file_log(run_dir / "train.log") if enabled else None
    try:
        yield
    finally:
        if handler is not None:
            logging.getLogger("lesionseg").removeHandler(handler)
            handler.close()
