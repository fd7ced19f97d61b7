"""The ``train`` stage: online lesion-aware patches -> 3D U-Net, best model by lesion F1.

One call of :func:`train` does, in order:

1. split the labelled cases into training and validation, whole patients at
   a time (:mod:`lesionseg.data.split`, ``data.group_pattern``);
2. load and normalise them once (:func:`lesionseg.sampling.feed.load_cases`); every
   epoch draws new lesion-aware, augmented patches
   (:class:`lesionseg.sampling.feed.PatchSequence`, seeded per epoch);
3. build the model and the loss named in the config, Adam with a
   reduce-on-plateau, cosine or constant learning rate, inside a
   ``tf.distribute`` strategy when one is configured (TensorFlow only);
4. after each epoch: predict the validation cases as whole volumes
   (sliding window, :mod:`lesionseg.inference.predictor`), match lesions
   (:mod:`lesionseg.evaluation.lesions`), keep ``model.keras`` when the pooled
   lesion-wise F1 improves (ties: higher Dice), write the validation reports
   of that model, the history, the curves and a last-epoch checkpoint;
5. watch for the classic failures (:mod:`lesionseg.training.diagnostics`) and stop on
   a NaN loss with the last good model kept.

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

Several GPUs / machines: ``train.strategy = "mirrored"`` (all GPUs of one
machine) or ``"multi_worker"`` (``TF_CONFIG`` on every machine, the same
command everywhere; the chief writes RUN).  ``train.batch_size`` is the
global batch, split evenly across replicas.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.data import io
from lesionseg.config import Config, save_config
from lesionseg.training.curves import plot_curves, read_history, write_history
from lesionseg.errors import LesionsegError
from lesionseg.logs import add_file_log
from lesionseg.data.split import Split, split_cases

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
WEIGHTS_FILE = "last.npz"
SCHEDULES = ("plateau", "cosine", "constant")
STRATEGIES = ("default", "mirrored", "multi_worker")
#: a validation prediction above this multiple of the truth volume is not selected on its lesion F1
from lesionseg.evaluation.lesions import OVERSEGMENTATION  # noqa: E402


class TrainingStopped(LesionsegError):
    """Training stopped early for a failure (NaN/Inf loss); the last good model was kept."""


# ---------------------------------------------------------------- learning rate


def cosine_lr(epoch: int, epochs: int, lr: float, min_lr: float) -> float:
    """Cosine-annealed learning rate for a 0-based epoch (``lr`` at 0, ``min_lr`` at the end).

    >>> cosine_lr(0, 10, 1e-3, 0.0), round(cosine_lr(5, 10, 1e-3, 0.0), 6)
    (0.001, 0.0005)
    """
    if epochs <= 1:
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / (epochs - 1)))


@dataclass
class RunState:
    """Everything besides the weights that ``--resume`` needs (``checkpoint/state.json``).

    Attributes
    ----------
    epoch : int
        Completed epochs (the sampler continues at this epoch).
    lr : float
        Learning rate for the next epoch.
    best_score : list of float
        (validation lesion F1, validation Dice) of ``model.keras``; NaN read as 0.
    best_epoch : int
        Epoch of ``model.keras`` (0: none yet).
    plateau_wait, stop_wait : int
        Epochs without improvement counted by reduce-on-plateau and early
        stopping.
    plateau_best, stop_best : float
        Their best monitored value so far.
    finished : bool
        Training ended (epochs done or stopped early).
    stopped_early : bool
        Early stopping ended it.
    monitor : dict
        :meth:`lesionseg.training.diagnostics.TrainingMonitor.state_dict`.
    """

    epoch: int = 0
    lr: float = 1e-3
    best_score: list[float] = field(default_factory=lambda: [-1.0, -1.0])
    best_epoch: int = 0
    plateau_wait: int = 0
    plateau_best: float = -math.inf
    stop_wait: int = 0
    stop_best: float = -math.inf
    finished: bool = False
    stopped_early: bool = False
    monitor: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return json.dumps(clean(self.__dict__), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunState:
        raw = json.loads(text)
        for key in ("plateau_best", "stop_best"):
            v = raw.get(key)
            raw[key] = -math.inf if v in (None, "-inf") else (math.inf if v == "inf" else float(v))
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ValidationResult:
    """Whole-volume validation of one epoch.

    Attributes
    ----------
    lesion_precision, lesion_recall, lesion_f1 : float
        From the pooled lesion counts of all validation cases (NaN: undefined).
    dice : float
        Mean voxel Dice over cases where it is defined.
    pred_fg : float
        Fraction of validation voxels predicted lesion.
    TP, FP, FN : int
        Pooled counts (TP = detected truth lesions).
    truth_voxels, pred_voxels : int
        Lesion voxels of the masks and of the predictions, all cases.
    evaluations : list
        The :class:`lesionseg.evaluation.lesions.CaseEvaluation` of every case.
    seconds : float
        Time taken.
    """

    lesion_precision: float
    lesion_recall: float
    lesion_f1: float
    dice: float
    pred_fg: float
    TP: int
    FP: int
    FN: int
    truth_voxels: int
    pred_voxels: int
    evaluations: list[Any]
    seconds: float

    @property
    def over_segmented(self) -> bool:
        """Predicted volume above :data:`OVERSEGMENTATION` times the truth volume.

        One component covering the volume touches every truth lesion, which
        the ``any`` criterion counts as a perfect F1; such a model is not
        selected on its F1.
        """
        return self.truth_voxels > 0 and self.pred_voxels > OVERSEGMENTATION * self.truth_voxels

    @property
    def score(self) -> tuple[float, float]:
        """(F1, Dice) with NaN as 0, F1 as 0 when over-segmented: the model-selection key."""
        return (0.0 if self.over_segmented else _nan0(self.lesion_f1), _nan0(self.dice))


def _nan0(x: float) -> float:
    return 0.0 if x is None or not math.isfinite(x) else float(x)


class _DirectPredictor:
    """``predict_on_batch`` by a plain call: under a tf.distribute strategy Keras's
    ``predict_on_batch`` splits the windows across replicas and returns them twice."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        from keras import ops

        return np.asarray(ops.convert_to_numpy(self.model(batch, training=False)))


def validate(model: Any, cases: Sequence[Any], config: Config, distributed: bool = False) -> ValidationResult:
    """Predict whole validation volumes and match their lesions (the infer + evaluate stages).

    Parameters
    ----------
    model : keras.Model
        Emits logits.
    cases : sequence of PreparedCase
        Normalised images (D, H, W, C) with masks (D, H, W) uint8.
    config : Config
        ``[infer]`` (windows, overlap, threshold 0.5 unless set, size
        filter), ``[patches].size`` (window size), ``[model].head`` and
        ``[evaluate]`` (criterion, connectivity).
    distributed : bool
        The model was built under a ``tf.distribute`` strategy.

    Returns
    -------
    ValidationResult
    """
    from lesionseg.evaluation.lesions import evaluate_case
    from lesionseg.inference.predictor import postprocess, predict_probability
    from lesionseg.evaluation.report import summary_table

    t0 = time.perf_counter()
    evaluations = []
    n_fg = n_vox = n_truth = 0
    predictor = _DirectPredictor(model) if distributed else model
    for case in cases:
        prob = predict_probability(predictor, case.image, config.infer, config.patches.size, config.model.head)
        pred = postprocess(prob, config.infer, case.grid.zooms, None)
        n_fg += int(pred.sum())
        n_vox += pred.size
        n_truth += int(np.count_nonzero(case.mask))
        evaluations.append(evaluate_case(case.mask, pred, case.grid.zooms, config.evaluate, case.case_id))
    summary = summary_table(evaluations, config.evaluate).iloc[0]  # the numbers of summary.csv
    return ValidationResult(
        lesion_precision=float(summary["lesion_precision"]),
        lesion_recall=float(summary["lesion_recall"]),
        lesion_f1=float(summary["lesion_f1"]),
        dice=float(summary["dice_mean"]),
        pred_fg=n_fg / max(n_vox, 1),
        TP=int(summary["TP"]),
        FP=int(summary["FP"]),
        FN=int(summary["FN"]),
        truth_voxels=n_truth,
        pred_voxels=n_fg,
        evaluations=evaluations,
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------- distribution


def make_strategy(name: str, backend: str) -> Any:
    """The ``tf.distribute`` strategy named in ``train.strategy`` (``None`` for default).

    ``mirrored``: every GPU of this machine (CPU when there is none);
    ``multi_worker``: every machine listed in ``TF_CONFIG``.  Must be called
    before TensorFlow runs any operation.
    """
    if name not in STRATEGIES:
        raise LesionsegError(f"config train.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "default":
        return None
    if backend != "tensorflow":
        raise LesionsegError(
            f"config train.strategy={name!r} needs the TensorFlow backend (KERAS_BACKEND=tensorflow), "
            f"this process runs {backend!r}"
        )
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        log.warning("train.strategy=multi_worker without TF_CONFIG: running as a single worker")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: Any) -> bool:
    """True on the worker that writes the run folder (always, without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", lambda: None)():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def replicas(strategy: Any) -> int:
    """Replicas in sync (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def replica_scaled(loss_fn: Any, n_replicas: int) -> Any:
    """The loss divided by the number of replicas, for ``model.compile`` under a strategy.

    Keras divides a per-voxel loss by the replica count before the
    cross-replica gradient sum, but passes a scalar loss through unscaled
    (``keras.losses.loss.reduce_values``); the region losses here are
    scalars pooled over the (per-replica) batch, so without this the
    gradients and the reported loss would be ``n_replicas`` times too large.
    """
    if n_replicas <= 1:
        return loss_fn

    def loss(y_true: Any, y_pred: Any) -> Any:
        return loss_fn(y_true, y_pred) / float(n_replicas)

    loss.__name__ = getattr(loss_fn, "name", "loss")
    return loss


def _scope(strategy: Any) -> contextlib.AbstractContextManager:
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model: Any, state: RunState, ckpt_dir: Path) -> None:
    """Write the last-epoch checkpoint: weights + optimizer variables, then state.json."""
    from keras import ops

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update(
        {f"o{i:04d}": np.asarray(ops.convert_to_numpy(v)) for i, v in enumerate(model.optimizer.variables)}
    )
    with io.atomic_path(ckpt_dir / WEIGHTS_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    with io.atomic_path(ckpt_dir / STATE_FILE) as tmp:
        tmp.write_text(state.to_json())


def load_checkpoint(model: Any, ckpt_dir: Path) -> RunState:
    """Restore weights and optimizer state written by :func:`save_checkpoint`.

    Raises
    ------
    LesionsegError
        Missing checkpoint, or one that does not fit this model (config changed).
    """
    state_path, weights_path = ckpt_dir / STATE_FILE, ckpt_dir / WEIGHTS_FILE
    if not state_path.is_file() or not weights_path.is_file():
        raise LesionsegError(
            f"{ckpt_dir}: no checkpoint to resume from (train once without --resume first)"
        )
    try:
        state = RunState.from_json(state_path.read_text())
        with np.load(weights_path) as data:
            weights = [data[k] for k in sorted(k for k in data.files if k.startswith("w"))]
            opt = [data[k] for k in sorted(k for k in data.files if k.startswith("o"))]
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise LesionsegError(f"{ckpt_dir}: unreadable checkpoint ({exc})") from None
    current = model.get_weights()
    if len(weights) != len(current) or any(a.shape != b.shape for a, b in zip(weights, current)):
        raise LesionsegError(
            f"{weights_path}: checkpoint does not fit the model of this config "
            "(model or data.channels changed?); resume with the run's own config.yaml"
        )
    model.set_weights(weights)
    model.optimizer.build(model.trainable_variables)
    variables = model.optimizer.variables
    if len(variables) != len(opt) or any(tuple(v.shape) != a.shape for v, a in zip(variables, opt)):
        raise LesionsegError(f"{weights_path}: optimizer state does not fit this model")
    for v, a in zip(variables, opt):
        v.assign(a)
    return state


# ---------------------------------------------------------------- callbacks


def _float(logs: dict[str, Any] | None, key: str) -> float:
    try:
        return float(np.asarray((logs or {})[key]))
    except (KeyError, TypeError, ValueError):
        return math.nan


def progress_callback(epochs: int, steps: int) -> Any:
    """A Keras callback drawing a tqdm bar per epoch (on a terminal) with the running loss and Dice."""
    import keras
    from tqdm import tqdm

    class Progress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.bar: Any = None

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            quiet = not logging.getLogger("lesionseg").isEnabledFor(logging.INFO)
            self.bar = tqdm(
                total=steps,
                desc=f"epoch {epoch + 1}/{epochs}",
                unit="batch",
                leave=False,
                file=sys.stderr,
                disable=True if quiet else None,  # None: off when stderr is not a terminal
                dynamic_ncols=True,
            )

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{_float(logs, 'loss'):.4f}", dice=f"{_float(logs, 'hard_dice'):.3f}")

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return Progress()


def _make_callbacks(run: _Run) -> list[Any]:
    """Progress bar, diagnostics, then the epoch control (keras loads after configure_backend)."""
    import keras

    class EpochControl(keras.callbacks.Callback):
        """Learning-rate schedule, validation, best model, history, checkpoint, early stop."""

        def __init__(self, run: _Run) -> None:
            super().__init__()
            self.run = run
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.t0 = time.perf_counter()
            self.run.sequence.set_epoch(epoch)
            self.model.optimizer.learning_rate.assign(self.run.lr_for_epoch(epoch))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.run.end_epoch(self.model, epoch + 1, logs or {}, self.t0)

    return [progress_callback(run.epochs, run.steps), run.diagnostics, EpochControl(run)]


class _Run:
    """The state of one training run and what happens at the end of each epoch."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        sequence: Any,
        val_cases: Sequence[Any],
        diagnostics: Any,
        state: RunState,
        history: list[dict[str, Any]],
        writes: bool,
        distributed: bool = False,
    ) -> None:
        self.config = config
        self.distributed = distributed
        self.cfg = config.train
        self.run_dir = run_dir
        self.sequence = sequence
        self.val_cases = list(val_cases)
        self.diagnostics = diagnostics
        self.state = state
        self.history = history
        self.writes = writes
        self.epochs = self.cfg.epochs
        self.steps = self.cfg.steps_per_epoch
        self.reported = len(diagnostics.findings)
        self.overseg_logged = False
        self.best_over_segmented = False

    def lr_for_epoch(self, epoch: int) -> float:
        """Learning rate of a 0-based epoch (cosine: the formula; plateau: the current one)."""
        if self.cfg.schedule == "cosine":
            return cosine_lr(epoch, self.epochs, self.cfg.learning_rate, self.cfg.min_learning_rate)
        if self.cfg.schedule == "constant":
            return self.cfg.learning_rate
        return self.state.lr

    def _validate_now(self, epoch: int) -> bool:
        every = max(1, self.cfg.validate_every)
        return bool(self.val_cases) and (epoch % every == 0 or epoch == self.epochs)

    def end_epoch(self, model: Any, epoch: int, logs: dict[str, Any], t0: float) -> None:
        """Validate, keep the best model, step the schedule, write history and checkpoint."""
        from keras import ops

        lr = float(ops.convert_to_numpy(model.optimizer.learning_rate))
        new = self.diagnostics.findings[self.reported :]
        self.reported = len(self.diagnostics.findings)
        row: dict[str, Any] = {
            "epoch": epoch,
            "loss": _float(logs, "loss"),
            "lr": lr,
            "train_dice": _float(logs, "hard_dice"),
            "train_pred_fg": _float(logs, "fg_fraction"),
            "train_true_fg": _float(logs, "true_fg"),
            "best": 0,
            "diagnostics": " ".join(sorted({f.code for f in new})),
        }
        if self.diagnostics.nan_stop is not None:  # no validation, no checkpoint of NaN weights
            row["seconds"] = time.perf_counter() - t0
            self.history.append(row)
            self._write_history()
            return

        improved = False
        monitored = -row["loss"] if math.isfinite(row["loss"]) else -math.inf
        if self._validate_now(epoch):
            val = validate(model, self.val_cases, self.config, distributed=self.distributed)
            row.update(
                val_dice=val.dice,
                val_lesion_precision=val.lesion_precision,
                val_lesion_recall=val.lesion_recall,
                val_lesion_f1=val.lesion_f1,
                val_pred_fg=val.pred_fg,
                val_TP=val.TP,
                val_FP=val.FP,
                val_FN=val.FN,
            )
            monitored = val.score[0] + 1e-3 * val.score[1]
            if val.over_segmented and _nan0(val.lesion_f1) > 0:
                (log.debug if self.overseg_logged else log.info)(
                    "validation lesion F1 %.3f not used to select the model: %d predicted voxels, %.0fx the %d "
                    "truth voxels (over-segmented: large predictions touch lesions by chance)",
                    val.lesion_f1,
                    val.pred_voxels,
                    val.pred_voxels / val.truth_voxels,
                    val.truth_voxels,
                )
                self.overseg_logged = True
            if list(val.score) > list(self.state.best_score):
                improved = True
                self.state.best_score = list(val.score)
                self.best_over_segmented = val.over_segmented
                self._save_best(model, epoch, val.evaluations)
            self._collapse_on_validation(epoch, val)
        elif not self.val_cases:  # no validation split: the last epoch is the best
            improved = True
            self._save_best(model, epoch, None)
        if improved:
            self.state.best_epoch = epoch
            row["best"] = 1
        row["seconds"] = time.perf_counter() - t0
        self.history.append(row)
        self._log_epoch(row)
        self._schedule(model, epoch, monitored, validated=self._validate_now(epoch) or not self.val_cases)
        self.state.epoch = epoch
        self.state.stopped_early = bool(model.stop_training)
        self.state.finished = epoch >= self.epochs or self.state.stopped_early
        self.state.monitor = self.diagnostics.monitor.state_dict()
        self._write_history()
        if self.writes:
            save_checkpoint(model, self.state, self.run_dir / CHECKPOINT_DIR)

    def _collapse_on_validation(self, epoch: int, val: ValidationResult) -> None:
        """Say so when validation volumes with lesions get a blank prediction (after the warm-up)."""
        gt = val.TP + val.FN
        mon = self.diagnostics.monitor
        if gt > 0 and val.pred_fg == 0.0 and epoch >= mon.patience and "collapse" not in mon.fired:
            mon.fired["collapse"] = epoch
            msg = (
                f"collapse to blank: no lesion voxel predicted on the {len(self.val_cases)} validation "
                f"volume(s) with {gt} lesion(s) at epoch {epoch}. Likely causes: learning rate too high, "
                "a loss dominated by background, or too few lesion patches (see the training diagnostics)."
            )
            from lesionseg.training.diagnostics import Finding

            self.diagnostics._report([Finding("collapse", epoch, msg)])
            self.reported = len(self.diagnostics.findings)
            self.history[-1]["diagnostics"] = " ".join(
                sorted(set(self.history[-1]["diagnostics"].split()) | {"collapse"})
            )

    def _schedule(self, model: Any, epoch: int, monitored: float, validated: bool) -> None:
        cfg, st = self.cfg, self.state
        if not validated:
            return
        step = max(1, cfg.validate_every) if self.val_cases else 1  # patience counts epochs, not validations
        if cfg.schedule == "plateau":
            if monitored > st.plateau_best + 1e-6:
                st.plateau_best, st.plateau_wait = monitored, 0
            else:
                st.plateau_wait += step
                if st.plateau_wait >= cfg.plateau_patience and st.lr > cfg.min_learning_rate:
                    st.lr = max(st.lr * cfg.plateau_factor, cfg.min_learning_rate)
                    st.plateau_wait = 0
                    log.info("learning rate reduced to %.3g (no improvement for %d epoch(s))", st.lr, cfg.plateau_patience)
        if cfg.early_stopping_patience > 0:
            if monitored > st.stop_best + 1e-6:
                st.stop_best, st.stop_wait = monitored, 0
            else:
                st.stop_wait += step
                if st.stop_wait >= cfg.early_stopping_patience:
                    log.info(
                        "early stopping at epoch %d: no improvement for %d epoch(s)", epoch, cfg.early_stopping_patience
                    )
                    model.stop_training = True

    def _save_best(self, model: Any, epoch: int, evaluations: list[Any] | None) -> None:
        if not self.writes:
            return
        with io.atomic_path(self.run_dir / MODEL_FILE) as tmp:
            model.save(tmp)
        if evaluations:
            from lesionseg.evaluation.report import write_reports

            final = self.run_dir / "validation"
            tmp_dir = self.run_dir / ".validation.tmp"
            shutil.rmtree(tmp_dir, ignore_errors=True)
            write_reports(evaluations, tmp_dir, self.config.evaluate)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp_dir, final)

    def _write_history(self) -> None:
        if self.writes:
            write_history(self.history, self.run_dir / "history.csv")

    def write_curves(self) -> None:
        if self.writes and self.history:
            try:
                plot_curves(self.history, self.run_dir / "curves.png")
            except Exception as exc:  # a plot must never lose a trained model
                log.warning("could not draw %s: %s", self.run_dir / "curves.png", exc)

    def _log_epoch(self, r: dict[str, Any]) -> None:
        def f(v: Any, fmt: str = ".3f") -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        val = ""
        if "val_lesion_f1" in r:
            val = (
                f" | val lesion F1 {f(r['val_lesion_f1'])} (P {f(r['val_lesion_precision'])} "
                f"R {f(r['val_lesion_recall'])}, TP {r['val_TP']} FP {r['val_FP']} FN {r['val_FN']}) "
                f"Dice {f(r['val_dice'])}"
            )
        log.info(
            "epoch %d/%d loss %s Dice %s fg %s%s | lr %.3g | %.0f s%s",
            r["epoch"],
            self.epochs,
            f(r["loss"], ".4f"),
            f(r["train_dice"]),
            f(r["train_pred_fg"], ".4f"),
            val,
            r["lr"],
            r["seconds"],
            " [best]" if r["best"] else "",
        )


# ---------------------------------------------------------------- the stage


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


def _write_split(split: Split, path: Path) -> None:
    import csv

    with io.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case", "group", "side"])
            for side, ids in (("train", split.train), ("val", split.val)):
                for c in ids:
                    w.writerow([c, split.groups[c], side])


def _check_train_config(config: Config, n_replicas: int) -> None:
    cfg = config.train
    if cfg.schedule not in SCHEDULES:
        raise LesionsegError(f"config train.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    for key in ("epochs", "steps_per_epoch", "batch_size"):
        if getattr(cfg, key) < 1:
            raise LesionsegError(f"config train.{key} must be >= 1, got {getattr(cfg, key)}")
    if not cfg.learning_rate > 0:
        raise LesionsegError(f"config train.learning_rate must be > 0, got {cfg.learning_rate}")
    if cfg.batch_size % n_replicas:
        raise LesionsegError(
            f"config train.batch_size={cfg.batch_size} is the global batch and must be divisible by the "
            f"{n_replicas} replicas of train.strategy={cfg.strategy!r}"
        )


def _labelled_case_dirs(config: Config, data_dir: Path) -> list[Path]:
    dirs = io.list_cases(data_dir)
    labelled = [d for d in dirs if io.find_file(d, config.data.mask) is not None]
    missing = [d.name for d in dirs if d not in labelled]
    if missing:
        log.warning("%d case(s) without %s ignored for training: %s", len(missing), config.data.mask, ", ".join(missing))
    if not labelled:
        raise LesionsegError(f"{data_dir}: no case has a {config.data.mask}.nii.gz; training needs lesion masks")
    return labelled


@contextlib.contextmanager
def _file_log(run_dir: Path, enabled: bool) -> Iterator[None]:
    handler = add_file_log(run_dir / "train.log") if enabled else None
    try:
        yield
    finally:
        if handler is not None:
            logging.getLogger("lesionseg").removeHandler(handler)
            handler.close()


def train(config: Config, data_dir: Path, run_dir: Path, resume: bool = False) -> Path:
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

    Returns
    -------
    Path
        ``run_dir``.

    Raises
    ------
    LesionsegError
        Bad data or config, nothing to resume.
    TrainingStopped
        The loss became NaN/Inf; ``RUN/model.keras`` holds the last good
        model and the history shows where it happened.
    """
    from lesionseg.runtime import configure_backend

    run_dir, data_dir = Path(run_dir), Path(data_dir)
    backend = configure_backend(config.train.threads, config.train.seed)
    strategy = make_strategy(config.train.strategy, backend)
    _check_train_config(config, replicas(strategy))
    writes = is_chief(strategy)
    if resume and not (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file():
        raise LesionsegError(f"{run_dir / CHECKPOINT_DIR / STATE_FILE}: missing; nothing to resume in {run_dir}")
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (run_dir / CHECKPOINT_DIR).exists():
            log.warning("%s holds an earlier run: starting over (use --resume to continue it)", run_dir)
            shutil.rmtree(run_dir / CHECKPOINT_DIR)
            for name in ("history.csv", MODEL_FILE, "curves.png"):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "validation", ignore_errors=True)
    with _file_log(run_dir, writes):
        return _train(config, data_dir, run_dir, resume, backend, strategy, writes)


def _train(
    config: Config, data_dir: Path, run_dir: Path, resume: bool, backend: str, strategy: Any, writes: bool
) -> Path:
    import keras

    from lesionseg.sampling.feed import PatchSequence, load_cases
    from lesionseg.training.diagnostics import DiagnosticsCallback, TrainingMonitor, diagnostic_metrics
    from lesionseg.model.losses import get_loss
    from lesionseg.model.metrics import make_metrics
    from lesionseg.model.unet import build_unet, count_parameters

    cfg = config.train
    log.info("training %s -> %s (backend %s, %s)", data_dir, run_dir, backend, "resume" if resume else "new run")
    case_dirs = _labelled_case_dirs(config, data_dir)
    split = split_cases([d.name for d in case_dirs], cfg.val_fraction, cfg.val_cases, config.data.group_pattern, cfg.seed)
    log.info("split: %s; validation: %s", split.describe(), ", ".join(split.val) or "none")
    by_name = {d.name: d for d in case_dirs}
    train_cases = load_cases(config, [by_name[c] for c in split.train])
    val_cases = load_cases(config, [by_name[c] for c in split.val]) if split.val else []
    if writes:
        save_config(config, run_dir / "config.yaml")
        _write_split(split, run_dir / "split.csv")

    sequence = PatchSequence(
        train_cases, config.patches, config.augment, cfg.batch_size, cfg.steps_per_epoch, cfg.seed, augment=True
    )
    head = config.model.head
    with _scope(strategy):
        model = build_unet(config.model, len(config.data.channels), tuple(config.patches.size))
        loss_fn = get_loss(config.loss.name, head, **dict(config.loss.params))
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
            loss=replica_scaled(loss_fn, replicas(strategy)),
            metrics=make_metrics(head) + diagnostic_metrics(head),
            jit_compile=_jit(backend),
        )
        model.optimizer.build(model.trainable_variables)
    log.info(
        "model %s: %s parameters; loss %s; %s schedule from lr %.3g; %d x %d patches of %s per epoch%s",
        model.name,
        f"{count_parameters(model):,}",
        config.loss.name,
        cfg.schedule,
        cfg.learning_rate,
        cfg.steps_per_epoch,
        cfg.batch_size,
        "x".join(map(str, config.patches.size)),
        f" on {replicas(strategy)} replicas" if strategy is not None else "",
    )

    state, history = RunState(lr=cfg.learning_rate), []
    monitor = TrainingMonitor(head=head, loss_name=config.loss.name)
    if resume:
        with _scope(strategy):
            state = load_checkpoint(model, run_dir / CHECKPOINT_DIR)
        monitor.load_state(state.monitor)
        hist_path = run_dir / "history.csv"
        history = [r for r in read_history(hist_path) if r["epoch"] <= state.epoch] if hist_path.is_file() else []
        if state.stopped_early or state.epoch >= cfg.epochs:
            log.info(
                "%s: training already finished at epoch %d of %d%s; nothing to resume",
                run_dir,
                state.epoch,
                cfg.epochs,
                " (early stopping)" if state.stopped_early else "",
            )
            return run_dir
        log.info(
            "resuming after epoch %d of %d (best: epoch %d, lesion F1 %.3f)",
            state.epoch,
            cfg.epochs,
            state.best_epoch,
            max(state.best_score[0], 0.0),
        )

    probe = _find_probe(sequence, state.epoch)
    diag = DiagnosticsCallback(monitor, probe=probe, loss_fn=loss_fn, enabled=cfg.diagnostics)
    run = _Run(config, run_dir, sequence, val_cases, diag, state, history, writes, distributed=strategy is not None)
    sequence.set_epoch(state.epoch)
    try:
        model.fit(
            sequence,
            epochs=cfg.epochs,
            initial_epoch=state.epoch,
            callbacks=_make_callbacks(run=run),
            verbose=0,
        )
    except KeyboardInterrupt:
        log.warning(
            "interrupted during epoch %d; resume with: lesionseg train --data %s --out %s --resume",
            run.state.epoch + 1,
            data_dir,
            run_dir,
        )
        run.write_curves()
        raise
    run.write_curves()

    if diag.nan_stop is not None:
        if writes and not (run_dir / MODEL_FILE).is_file():
            with io.atomic_path(run_dir / MODEL_FILE) as tmp:
                model.save(tmp)  # the last good weights, restored by the callback
        raise TrainingStopped(
            f"{run_dir}: training stopped at epoch {diag.nan_stop.epoch}: loss became NaN/Inf; the last good "
            f"model is in {run_dir / MODEL_FILE} (epoch {state.best_epoch}); lower train.learning_rate "
            "(see the DIAGNOSTIC line above)"
        )
    best = next((r for r in history if r["epoch"] == state.best_epoch), None)
    if best is not None and "val_lesion_f1" in best:
        log.info(
            "best model: epoch %d, validation lesion F1 %.3f (precision %.3f, recall %.3f), Dice %.3f%s -> %s",
            best["epoch"],
            _nan0(best["val_lesion_f1"]),
            _nan0(best["val_lesion_precision"]),
            _nan0(best["val_lesion_recall"]),
            _nan0(best["val_dice"]),
            " (over-segmented: its F1 means nothing)" if run.best_over_segmented else "",
            run_dir / MODEL_FILE,
        )
    if diag.findings:
        log.warning(
            "%d diagnostic warning(s) during training: %s (see above and %s)",
            len(diag.findings),
            ", ".join(sorted({f.code for f in diag.findings})),
            run_dir / "train.log",
        )
    return run_dir


def _jit(backend: str) -> bool | str:
    """XLA off on CPU (slower there and a long first step), automatic on GPUs."""
    if backend == "tensorflow":
        import tensorflow as tf

        return "auto" if tf.config.list_physical_devices("GPU") else False
    return False

