"""The intensity-threshold baseline: a model with nothing to learn.

Lesions are the bright voxels of FLAIR: a voxel whose normalised FLAIR
intensity (a z-score of the brain) passes a threshold, in a connected
component of at least a minimum size, is called lesion.  Every results table
shows this floor beside the network, on the same exams, tuned the same way
(``lesionseg tune`` picks its threshold and minimum size), so a reader sees how
much the network adds.

It is a *model* like the U-Net: a run folder whose ``config.yaml`` says
``model.kind = "threshold"`` (no ``model.keras``), loaded by
:meth:`lesionseg.inference.predictor.Predictor.from_run`, emitting a lesion
logit per voxel::

    logit = (x - threshold_center) / threshold_scale

so the decision ``probability >= t`` is ``x >= threshold_center +
threshold_scale * log(t / (1 - t))``.  The map is voxel-wise: no window, no
context, the same with or without flips.

Examples
--------
>>> import numpy as np
>>> from lesionseg.config import Config, DataConfig, ModelConfig
>>> config = Config(data=DataConfig(channels=("flair", "t1")), model=ModelConfig(kind="threshold"))
>>> model = ThresholdModel.from_config(config)
>>> x = np.zeros((1, 2, 1, 1, 2), np.float32)
>>> x[0, :, 0, 0, 0] = [2.0, 3.0]           # FLAIR z-scores 2 and 3
>>> model.predict_on_batch(x)[0, :, 0, 0, 0].tolist()
[0.0, 2.0]
>>> round(float(threshold_intensity(model, 0.5)), 3), round(float(threshold_intensity(model, 0.9)), 3)
(2.0, 3.099)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lesionseg.config import Config


@dataclass(frozen=True)
class ThresholdModel:
    """Lesion logits from one normalised channel's intensity.

    Attributes
    ----------
    channel : int
        Index of the thresholded channel in the image's last axis.
    center : float
        Intensity of probability 0.5 (logit 0).
    scale : float
        Intensity per unit of logit (> 0).
    """

    channel: int
    center: float
    scale: float

    #: The map is computed voxel by voxel (no sliding window needed).
    voxelwise = True

    @classmethod
    def from_config(cls, config: Config) -> ThresholdModel:
        """The baseline of a ``model.kind = "threshold"`` configuration."""
        m = config.model
        return cls(config.data.channels.index(m.threshold_channel), float(m.threshold_center), float(m.threshold_scale))

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """Lesion logits (..., 1) of images (..., C), float32."""
        x = np.asarray(batch, dtype=np.float32)[..., self.channel : self.channel + 1]
        return (x - np.float32(self.center)) / np.float32(self.scale)


def threshold_intensity(model: ThresholdModel, probability: float) -> float:
    """The normalised intensity at which the baseline's probability equals ``probability`` (in (0, 1))."""
    return model.center + model.scale * math.log(probability / (1.0 - probability))
