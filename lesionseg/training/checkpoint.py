"""The run folder's saved state: ``model.keras``, the last-epoch checkpoint, ``--resume``.

``RUN/checkpoint/`` holds the weights and optimizer variables of the last
epoch (``last.npz``) and ``state.json`` (:class:`RunState`: epoch, best
score, schedule and diagnostics state), written after every epoch;
``--resume`` continues from it with the same history.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.data import writing
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.report import write_reports
from lesionseg.training.curves import read_history

# the stage's logger: the lines of train.log keep their source name
log = logging.getLogger("lesionseg.training.train")

MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
WEIGHTS_FILE = "last.npz"
HISTORY_FILE = "history.csv"
#: the fields of :class:`RunState` that :meth:`lesionseg.training.schedule.Schedule.state_dict` fills
SCHEDULE_FIELDS = ("lr", "plateau_wait", "plateau_best", "stop_wait", "stop_best")


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
        :attr:`ValidationResult.selection_key` of ``model.keras`` (not over-segmented,
        F1, Dice); ``[-1, -1]``: none yet.
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
        """``state.json`` text (infinities as ``"inf"``/``"-inf"``, NaN as null)."""

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
        """Read :meth:`to_json` output (unknown keys are ignored)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"state is a {type(raw).__name__}, not a table of fields")
        for key in ("plateau_best", "stop_best"):
            v = raw.get(key)
            raw[key] = -math.inf if v in (None, "-inf") else (math.inf if v == "inf" else float(v))
        state = cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
        for key in ("epoch", "best_epoch", "plateau_wait", "stop_wait"):
            value = getattr(state, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} is {value!r}, not a count")
        if isinstance(state.lr, bool) or not isinstance(state.lr, (int, float)) or not state.lr > 0:
            raise ValueError(f"lr is {state.lr!r}, not a learning rate")
        if not isinstance(state.best_score, list) or not isinstance(state.monitor, dict):
            raise ValueError("best_score or monitor has the wrong type")
        return state

    def schedule_state(self) -> dict[str, Any]:
        """The schedule's part, for :meth:`lesionseg.training.schedule.Schedule.load_state`."""
        return {k: getattr(self, k) for k in SCHEDULE_FIELDS}

    def update(self, **fields: Any) -> None:
        """Set fields by name (e.g. ``state.update(**schedule.state_dict())``).

        Raises
        ------
        TypeError
            A name that is not a field.
        """
        unknown = set(fields) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"RunState has no field(s) {', '.join(sorted(unknown))}")
        for key, value in fields.items():
            setattr(self, key, value)



def check_model_file(path: str | Path) -> Path:
    """A saved ``.keras`` model that can be opened: present, readable, non-empty, a complete archive.

    Raises
    ------
    LesionsegError
        One line naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise LesionsegError(f"{path}: model file not found")
    try:
        with open(path, "rb") as fh:
            fh.read(4)
    except OSError as exc:
        raise LesionsegError(f"{path}: cannot read the model file ({exc.strerror or type(exc).__name__})") from None
    if path.stat().st_size == 0:
        raise LesionsegError(f"{path}: cannot load model (empty file, 0 bytes)")
    if not zipfile.is_zipfile(path):
        raise LesionsegError(f"{path}: cannot load model (corrupt or truncated: not a complete .keras archive)")
    return path

def save_checkpoint(model: Any, state: RunState, ckpt_dir: Path) -> None:
    """Write the last-epoch checkpoint: weights + optimizer variables, then state.json."""
    from keras import ops  # here, not at the top: train.py imports this module before the backend starts

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update(
        {f"o{i:04d}": np.asarray(ops.convert_to_numpy(v)) for i, v in enumerate(model.optimizer.variables)}
    )
    with writing.atomic_path(ckpt_dir / WEIGHTS_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    with writing.atomic_path(ckpt_dir / STATE_FILE) as tmp:
        tmp.write_text(state.to_json())


def _read_checkpoint(ckpt_dir: Path) -> tuple[RunState, list[np.ndarray], list[np.ndarray]]:
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
    except (ValueError, OSError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise LesionsegError(f"{ckpt_dir}: unreadable checkpoint ({exc}); train again without --resume") from None
    return state, weights, opt


def load_checkpoint(model: Any, ckpt_dir: Path) -> RunState:
    """Restore weights and optimizer state written by :func:`save_checkpoint`.

    Raises
    ------
    LesionsegError
        Missing checkpoint, or one that does not fit this model (config changed).
    """
    state, weights, opt = _read_checkpoint(ckpt_dir)
    weights_path = ckpt_dir / WEIGHTS_FILE
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


def check_resumable(run_dir: Path, resume: bool) -> None:
    """With ``resume``: raise unless ``RUN/checkpoint`` exists and can be read (before any work)."""
    if not resume:
        return
    if not (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file():
        raise LesionsegError(f"{run_dir / CHECKPOINT_DIR / STATE_FILE}: missing; nothing to resume in {run_dir}")
    _read_checkpoint(run_dir / CHECKPOINT_DIR)
    if (run_dir / HISTORY_FILE).is_file():
        try:
            read_history(run_dir / HISTORY_FILE)
        except (ValueError, TypeError, OSError, csv.Error) as exc:
            raise LesionsegError(f"{run_dir / HISTORY_FILE}: unreadable ({exc}); resuming appends to it, so "
                                 "restore it or train again without --resume") from None


def prepare_run_dir(run_dir: Path, resume: bool, writes: bool) -> None:
    """Check there is something to resume; create ``run_dir`` and clear an earlier run in it.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    resume : bool
        ``--resume``: the checkpoint must exist and is kept.
    writes : bool
        This process writes the run folder (the chief).

    Raises
    ------
    LesionsegError
        ``resume`` without a checkpoint.
    """
    check_resumable(run_dir, resume)
    if not writes:
        return
    run_dir.mkdir(parents=True, exist_ok=True)


#: What a run folder holds (written by ``train`` and ``tune``); other files in it are not ours.
RUN_FILES = (MODEL_FILE, "config.yaml", HISTORY_FILE, "curves.png", "validation", "split.csv", "train.log",
             CHECKPOINT_DIR, "tuning.json", "tuning.csv", "members", "ensemble.json")


def holds_run(run_dir: Path) -> list[str]:
    """The run files already in ``run_dir`` (empty: nothing to lose there)."""
    return [name for name in (MODEL_FILE, CHECKPOINT_DIR, HISTORY_FILE) if (run_dir / name).exists()]


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_run(run_dir: Path, created: bool, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Remove what a failed new run wrote: the folder if it made it, else only the run's files.

    ``keep``: names that were in the folder before the run started (a user's own ``split.csv`` or
    notes are theirs, not the run's).
    """
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in RUN_FILES:
        if name not in keep:
            remove_path(run_dir / name)


def replace_run(new: Path, run_dir: Path) -> None:
    """Put the run in ``new`` in place of the one in ``run_dir`` (files of other tools stay).

    The earlier run's files are first moved aside (``.RUN.replaced``), so an interruption
    between the two moves leaves the earlier run recoverable, never half of each.  Its
    ``tuning.json`` goes too: a tuned decision belongs to the model it was tuned for.
    """
    aside = run_dir.parent / f".{run_dir.name}.replaced"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for name in RUN_FILES:
        if (run_dir / name).exists():
            os.replace(run_dir / name, aside / name)
    for name in RUN_FILES:
        if (new / name).exists():
            os.replace(new / name, run_dir / name)
    shutil.rmtree(aside)
    log.info("replaced the earlier run in %s", run_dir)


def resumed_history(run_dir: Path, epoch: int) -> list[dict[str, Any]]:
    """The rows of ``RUN/history.csv`` up to ``epoch`` (none when the file is missing)."""
    path = run_dir / HISTORY_FILE
    return [r for r in read_history(path) if r["epoch"] <= epoch] if path.is_file() else []


def save_model(model: Any, path: Path) -> None:
    """``model.save`` through a temporary file (never a half-written model), the network alone.

    A mixed-precision model is saved as its float32 copy
    (:func:`lesionseg.model.unet.float32_model`): inference picks its own precision.
    The optimizer is left out: ``--resume`` reads its variables from ``checkpoint/``,
    inference and tuning never need them, and under Adam they would triple the file.
    """
    from lesionseg.model.unet import float32_model, uncompiled_copy

    with writing.atomic_path(path) as tmp:
        uncompiled_copy(float32_model(model)).save(tmp)


def save_best(model: Any, run_dir: Path, evaluations: Sequence[Any] | None, evaluate_cfg: Any) -> None:
    """Write ``RUN/model.keras`` and, with validation, the reports of that model in ``RUN/validation``.

    Parameters
    ----------
    model : keras.Model
        The new best model.
    run_dir : Path
        The run folder.
    evaluations : sequence of CaseEvaluation or None
        Its validation evaluations (``None``/empty: no reports).
    evaluate_cfg : EvaluateConfig
        ``[evaluate]``, for the report tables.
    """
    save_model(model, run_dir / MODEL_FILE)
    if evaluations:
        final = run_dir / "validation"
        tmp_dir = run_dir / ".validation.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        write_reports(evaluations, tmp_dir, evaluate_cfg)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp_dir, final)
