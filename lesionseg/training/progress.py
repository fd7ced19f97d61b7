"""A progress bar per epoch (on a terminal) with the running loss and Dice.

Imports Keras: import this module after :func:`lesionseg.runtime.configure_backend`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import keras
from tqdm import tqdm

from lesionseg.training.history import log_value


class ProgressBar(keras.callbacks.Callback):
    """A Keras callback drawing a tqdm bar per epoch with the running loss and Dice.

    The bar is off when stderr is not a terminal or lesionseg logs less
    than INFO.

    Parameters
    ----------
    epochs : int
        Epochs of the run (for the label).
    steps : int
        Batches per epoch.
    """

    def __init__(self, epochs: int, steps: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self.bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        quiet = not logging.getLogger("lesionseg").isEnabledFor(logging.INFO)
        self.bar = tqdm(
            total=self.steps,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="batch",
            leave=False,
            file=sys.stderr,
            disable=True if quiet else None,  # None: off when stderr is not a terminal
            dynamic_ncols=True,
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{log_value(logs, 'loss'):.4f}", dice=f"{log_value(logs, 'hard_dice'):.3f}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_callback(epochs: int, steps: int) -> ProgressBar:
    """A :class:`ProgressBar` for ``model.fit`` (``epochs`` epochs of ``steps`` batches)."""
    return ProgressBar(epochs, steps)
