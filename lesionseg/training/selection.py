"""Which epoch's model becomes ``RUN/model.keras``.

With a validation split, the whole validation volumes are predicted every
``train.validate_every`` epochs (and at the last one) and the model is kept
when :attr:`~lesionseg.training.validation.ValidationResult.selection_key`
(:func:`lesionseg.evaluation.scoring.selection_key`: not over-segmented,
then pooled lesion F1, then Dice) improves.  Without one, the last epoch is the best.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lesionseg.config import Config
from lesionseg.training.checkpoint import save_best
from lesionseg.training.history import finite_or_zero
from lesionseg.training.validation import ValidationResult, validate

# the stage's logger: the lines of train.log keep their source name
log = logging.getLogger("lesionseg.training.train")


class BestModel:
    """Validates when due and keeps the best model.

    Parameters
    ----------
    config : Config
        ``[train]`` (epochs, validate_every) and what :func:`validate` reads.
    val_cases : sequence of PreparedCase
        The validation cases (empty: no validation split).
    run_dir : Path or None
        The run folder; ``None`` on workers that do not write it.
    distributed : bool
        The model was built under a ``tf.distribute`` strategy.

    Attributes
    ----------
    score : list of float
        Selection key of ``model.keras`` ([-1, -1]: none yet).
    epoch : int
        Its epoch (0: none yet).
    over_segmented : bool
        ``model.keras`` was chosen while over-segmenting (its F1 means nothing).
    """

    def __init__(
        self, config: Config, val_cases: Sequence[Any], run_dir: Path | None, distributed: bool = False
    ) -> None:
        self.config = config
        self.val_cases = list(val_cases)
        self.run_dir = run_dir
        self.distributed = distributed
        self.score: list[float] = [-1.0, -1.0]
        self.epoch = 0
        self.over_segmented = False
        self._over_segmented_logged = False

    @property
    def epochs_per_validation(self) -> int:
        """Epochs between two validations (1 without a validation split: every epoch counts)."""
        return max(1, self.config.train.validate_every) if self.val_cases else 1

    def due(self, epoch: int) -> bool:
        """A 1-based epoch is validated (every ``validate_every`` epochs and the last)."""
        every = max(1, self.config.train.validate_every)
        return bool(self.val_cases) and (epoch % every == 0 or epoch == self.config.train.epochs)

    def selects(self, epoch: int) -> bool:
        """The epoch takes part in model selection (and the schedule): validated, or no validation split."""
        return self.due(epoch) or not self.val_cases

    def validate(self, model: Any) -> ValidationResult:
        """Predict and evaluate the validation cases (logs when the F1 is not usable)."""
        val = validate(model, self.val_cases, self.config, distributed=self.distributed)
        if val.over_segmented and finite_or_zero(val.lesion_f1) > 0:
            (log.debug if self._over_segmented_logged else log.info)(
                "validation lesion F1 %.3f not used to select the model: %d predicted voxels, %.0fx the %d "
                "truth voxels (over-segmented: large predictions touch lesions by chance)",
                val.lesion_f1,
                val.pred_voxels,
                val.pred_voxels / val.truth_voxels,
                val.truth_voxels,
            )
            self._over_segmented_logged = True
        return val

    def offer(self, model: Any, epoch: int, val: ValidationResult) -> bool:
        """Keep the model when its selection key beats the best so far; True when it did."""
        if not list(val.selection_key) > list(self.score):
            return False
        self.score = list(val.selection_key)
        self.over_segmented = val.over_segmented
        self._keep(model, epoch, val.evaluations)
        return True

    def keep_last(self, model: Any, epoch: int) -> None:
        """Keep the model of an epoch without validation split (the last epoch is the best)."""
        self._keep(model, epoch, None)

    def _keep(self, model: Any, epoch: int, evaluations: list[Any] | None) -> None:
        self.epoch = epoch
        if self.run_dir is not None:
            save_best(model, self.run_dir, evaluations, self.config.evaluate)

    def state_dict(self) -> dict[str, Any]:
        """The state a checkpoint keeps (``best_score``, ``best_epoch`` of :class:`RunState`)."""
        return {"best_score": list(self.score), "best_epoch": self.epoch}

    def load_state(self, state: Any) -> None:
        """Restore from a :class:`~lesionseg.training.checkpoint.RunState`."""
        self.score, self.epoch = list(state.best_score), state.best_epoch
        if len(self.score) == 2 and self.score != [-1.0, -1.0]:  # (F1, Dice) of a run from before the key
            self.score = [1.0, *self.score]
