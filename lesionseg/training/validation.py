"""Whole-volume validation after an epoch: the infer and evaluate stages on the validation cases.

:func:`validate` predicts every validation volume with the sliding window,
post-processes it as ``lesionseg infer`` would and matches its lesions as
``lesionseg evaluate`` would; :class:`ValidationResult` holds the pooled
numbers and the model-selection key (:attr:`ValidationResult.selection_key`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from keras import ops

from lesionseg.config import Config
from lesionseg.evaluation.lesions import evaluate_case
from lesionseg.evaluation.report import summary_table
from lesionseg.evaluation.scoring import over_segmented, selection_key
from lesionseg.inference.postprocess import postprocess
from lesionseg.inference.predictor import Predictor


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
        The :class:`lesionseg.evaluation.scoring.CaseEvaluation` of every case.
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
        """Predicted volume above :data:`~lesionseg.evaluation.scoring.OVERSEGMENTATION` times the truth volume.

        One component covering the volume touches every truth lesion, which
        the ``any`` criterion counts as a perfect F1; such a model is not
        selected on its F1.
        """
        return over_segmented(self.pred_voxels, self.truth_voxels)

    @property
    def selection_key(self) -> tuple[float, float, float]:
        """The model-selection key (:func:`lesionseg.evaluation.scoring.selection_key`): larger is better."""
        return selection_key(self.lesion_f1, self.dice, self.over_segmented)

    @property
    def score(self) -> tuple[float, float]:
        """(F1, Dice) with NaN as 0, F1 as 0 when over-segmented: the parts of the schedule's monitored value."""
        return (0.0 if self.over_segmented else _nan0(self.lesion_f1), _nan0(self.dice))


def _nan0(x: float) -> float:
    return 0.0 if x is None or not math.isfinite(x) else float(x)


class DirectPredictor:
    """``predict_on_batch`` by a plain call: under a tf.distribute strategy Keras's
    ``predict_on_batch`` splits the windows across replicas and returns them twice."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
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
    t0 = time.perf_counter()
    evaluations = []
    n_fg = n_vox = n_truth = 0
    predictor = Predictor.from_model(DirectPredictor(model) if distributed else model, config)
    for case in cases:
        prob = predictor.probability(case.image)
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
