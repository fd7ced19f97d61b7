"""Learning-rate schedule and early stopping, with state that a checkpoint saves.

``train.schedule``: ``cosine`` (a formula of the epoch), ``constant``, or
``plateau`` (the learning rate is multiplied by ``train.plateau_factor``
after ``train.plateau_patience`` epochs without improvement of the monitored
value, down to ``train.min_learning_rate``).  Early stopping ends training
after ``train.early_stopping_patience`` epochs without improvement (0: never).
The monitored value is the validation score when there is a validation
split, else the negative training loss; higher is better.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lesionseg.config import SCHEDULES  # noqa: F401  (the choices of train.schedule)

# the stage's logger: the lines of train.log keep their source name
log = logging.getLogger("lesionseg.training.train")

#: smallest rise of the monitored value that counts as an improvement
MIN_DELTA = 1e-6


def cosine_lr(epoch: int, epochs: int, lr: float, min_lr: float) -> float:
    """Cosine-annealed learning rate for a 0-based epoch (``lr`` at 0, ``min_lr`` at the end).

    The last epoch is ``epochs - 1``, so with 11 epochs epoch 5 is half-way:

    >>> cosine_lr(0, 11, 1e-3, 0.0), round(cosine_lr(5, 11, 1e-3, 0.0), 6), cosine_lr(10, 11, 1e-3, 0.0)
    (0.001, 0.0005, 0.0)
    """
    if epochs <= 1:
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / (epochs - 1)))


@dataclass
class Patience:
    """Epochs without improvement of a monitored value (higher is better).

    Attributes
    ----------
    patience : int
        Epochs without improvement after which :meth:`update` says so.
    best : float
        Best monitored value so far.
    wait : int
        Epochs since it was seen.
    """

    patience: int
    best: float = -math.inf
    wait: int = 0

    def update(self, monitored: float, epochs: int = 1) -> bool:
        """Record a monitored value taken ``epochs`` epochs after the last one.

        Returns
        -------
        bool
            No improvement for ``patience`` epochs or more.
        """
        if monitored > self.best + MIN_DELTA:
            self.best, self.wait = monitored, 0
            return False
        self.wait += epochs
        return self.wait >= self.patience


class Schedule:
    """The learning rate of every epoch, reduce-on-plateau and early stopping.

    Parameters
    ----------
    cfg : TrainConfig
        ``schedule``, ``epochs``, ``learning_rate``, ``min_learning_rate``,
        ``plateau_patience``, ``plateau_factor``, ``early_stopping_patience``.
    epochs_per_update : int
        Epochs between two :meth:`update` calls (``train.validate_every``
        with validation): patience counts epochs, not validations.

    Attributes
    ----------
    lr : float
        Current learning rate of the plateau schedule (the initial one for
        the others).
    plateau, stopping : Patience
        The counters of reduce-on-plateau and early stopping.
    """

    def __init__(self, cfg: Any, epochs_per_update: int = 1) -> None:
        self.cfg = cfg
        self.epochs_per_update = max(1, epochs_per_update)
        self.lr = cfg.learning_rate
        self.plateau = Patience(cfg.plateau_patience)
        self.stopping = Patience(cfg.early_stopping_patience)

    def lr_for_epoch(self, epoch: int) -> float:
        """Learning rate of a 0-based epoch (cosine: the formula; plateau: the current one)."""
        if self.cfg.schedule == "cosine":
            return cosine_lr(epoch, self.cfg.epochs, self.cfg.learning_rate, self.cfg.min_learning_rate)
        if self.cfg.schedule == "constant":
            return self.cfg.learning_rate
        return self.lr

    def update(self, epoch: int, monitored: float) -> bool:
        """Step reduce-on-plateau and early stopping after a 1-based epoch.

        Parameters
        ----------
        epoch : int
            The epoch just ended (for the log line).
        monitored : float
            Its monitored value (higher is better).

        Returns
        -------
        bool
            Early stopping: training should stop.
        """
        if self.cfg.schedule == "plateau":
            self._step_plateau(monitored)
        if self.cfg.early_stopping_patience > 0 and self.stopping.update(monitored, self.epochs_per_update):
            log.info(
                "early stopping at epoch %d: no improvement for %d epoch(s)", epoch, self.cfg.early_stopping_patience
            )
            return True
        return False

    def _step_plateau(self, monitored: float) -> None:
        cfg = self.cfg
        if self.plateau.update(monitored, self.epochs_per_update) and self.lr > cfg.min_learning_rate:
            self.lr = max(self.lr * cfg.plateau_factor, cfg.min_learning_rate)
            self.plateau.wait = 0
            log.info("learning rate reduced to %.3g (no improvement for %d epoch(s))", self.lr, cfg.plateau_patience)

    def state_dict(self) -> dict[str, Any]:
        """The state a checkpoint keeps (the schedule fields of :class:`~lesionseg.training.checkpoint.RunState`)."""
        return {
            "lr": self.lr,
            "plateau_wait": self.plateau.wait,
            "plateau_best": self.plateau.best,
            "stop_wait": self.stopping.wait,
            "stop_best": self.stopping.best,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.lr = state["lr"]
        self.plateau.wait, self.plateau.best = state["plateau_wait"], state["plateau_best"]
        self.stopping.wait, self.stopping.best = state["stop_wait"], state["stop_best"]
