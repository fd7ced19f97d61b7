"""What happens around every epoch of ``model.fit``: the callback that wires the parts.

Before an epoch: the sampler's epoch and the learning rate of the
:class:`~lesionseg.training.schedule.Schedule`.  After it: the history row,
validation and model selection (:class:`~lesionseg.training.selection.BestModel`),
the epoch log line, reduce-on-plateau and early stopping, then
``history.csv`` and the checkpoint.

Imports Keras: import this module after :func:`lesionseg.runtime.configure_backend`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import keras
from keras import ops

from lesionseg.training.checkpoint import RunState, save_checkpoint
from lesionseg.training.history import History, epoch_row, log_epoch, validation_columns
from lesionseg.training.monitor import DiagnosticsCallback
from lesionseg.training.schedule import Schedule
from lesionseg.training.selection import BestModel
from lesionseg.training.validation import ValidationResult


class EpochControl(keras.callbacks.Callback):
    """Learning-rate schedule, validation, best model, history, checkpoint, early stop.

    Parameters
    ----------
    epochs : int
        Epochs of the run.
    sequence : PatchSequence
        The training batches (``set_epoch`` seeds each epoch).
    schedule : Schedule
        Learning rate, reduce-on-plateau, early stopping.
    selection : BestModel
        Validation and ``model.keras``.
    diagnostics : DiagnosticsCallback
        The diagnostics of the same ``model.fit`` (placed before this callback).
    history : History
        The rows of ``history.csv``.
    state : RunState
        The checkpoint's state, updated after every epoch.
    checkpoint_dir : Path or None
        Where the checkpoint goes; ``None`` on workers that do not write.
    """

    def __init__(
        self,
        epochs: int,
        sequence: Any,
        schedule: Schedule,
        selection: BestModel,
        diagnostics: DiagnosticsCallback,
        history: History,
        state: RunState,
        checkpoint_dir: Path | None,
    ) -> None:
        super().__init__()
        self.epochs = epochs
        self.sequence = sequence
        self.schedule = schedule
        self.selection = selection
        self.diagnostics = diagnostics
        self.history = history
        self.state = state
        self.checkpoint_dir = checkpoint_dir
        self.t0 = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.t0 = time.perf_counter()
        self.sequence.set_epoch(epoch)
        self.model.optimizer.learning_rate.assign(self.schedule.lr_for_epoch(epoch))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.end_epoch(epoch + 1, logs or {})

    def end_epoch(self, epoch: int, logs: dict[str, Any]) -> None:
        """Validate, keep the best model, step the schedule, write history and checkpoint (1-based epoch)."""
        lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        codes = [f.code for f in self.diagnostics.take_new_findings()]
        row = epoch_row(epoch, logs, lr, codes)
        if self.diagnostics.nan_stop is not None:  # no validation, no checkpoint of NaN weights
            self._add_row(row)
            self.history.write()
            return
        monitored = self._select(epoch, row)
        self._add_row(row)
        log_epoch(row, self.epochs)
        if self.selection.selects(epoch) and self.schedule.update(epoch, monitored):
            self.model.stop_training = True
        self._save_state(epoch)

    def _select(self, epoch: int, row: dict[str, Any]) -> float:
        """Validate when due and offer the model; returns the value the schedule monitors."""
        monitored = -row["loss"] if math.isfinite(row["loss"]) else -math.inf
        improved = False
        if self.selection.due(epoch):
            val = self.selection.validate(self.model)
            row.update(validation_columns(val))
            monitored = val.score[0] + 1e-3 * val.score[1]
            improved = self.selection.offer(self.model, epoch, val)
            self._collapse_on_validation(epoch, val)
        elif not self.selection.val_cases:  # no validation split: the last epoch is the best
            self.selection.keep_last(self.model, epoch)
            improved = True
        if improved:
            row["best"] = 1
        return monitored

    def _collapse_on_validation(self, epoch: int, val: ValidationResult) -> None:
        """Report validation volumes with lesions that get a blank prediction (after the warm-up)."""
        n_cases = len(self.selection.val_cases)
        findings = self.diagnostics.monitor.check_validation(epoch, n_cases, val.TP + val.FN, val.pred_fg)
        if not findings:
            return
        self.diagnostics.report(findings)
        self.diagnostics.take_new_findings()  # reported here, not in the next epoch's row
        # as before the split into modules: this epoch's row is not appended yet, so the
        # code lands on the last row written (the previous epoch's)
        self.history.add_code_to_last("collapse")

    def _add_row(self, row: dict[str, Any]) -> None:
        row["seconds"] = time.perf_counter() - self.t0
        self.history.append(row)

    def _save_state(self, epoch: int) -> None:
        stopped = bool(self.model.stop_training)
        self.state.update(
            epoch=epoch,
            stopped_early=stopped,
            finished=epoch >= self.epochs or stopped,
            monitor=self.diagnostics.monitor.state_dict(),
            **self.schedule.state_dict(),
            **self.selection.state_dict(),
        )
        self.history.write()
        if self.checkpoint_dir is not None:
            save_checkpoint(self.model, self.state, self.checkpoint_dir)
