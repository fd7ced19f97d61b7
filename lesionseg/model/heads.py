"""The one place where model logits become probabilities.

Models emit **logits** (no activation on the head).  Training metrics,
inference and the losses (which work in log space for stability) all turn
logits into probabilities here, so a double sigmoid — the classic "loss stuck
at 0.693, blank predictions" bug — cannot happen by construction.

Heads
-----
``sigmoid``: 1 channel, lesion probability = sigmoid(z).
``softmax``: 2 channels (background, lesion), lesion probability =
softmax(z)[..., 1].  A softmax head with logits (0, z) equals a sigmoid head
with logit z.

Every function here takes channels-last tensors of any rank (the 3D models
give (B, D, H, W, K)); the class axis is always the last one, never a fixed
index such as ``[:, :, :, c]`` (which on 5-D tensors would slice a spatial
axis).
"""

from __future__ import annotations

import numpy as np

from lesionseg.config import HEADS
from lesionseg.errors import LesionsegError



class HeadError(LesionsegError, ValueError):
    """An unknown head name (a :class:`LesionsegError` and a ``ValueError``)."""


def head_channels(head: str) -> int:
    """Number of output channels of a head (1 for sigmoid, 2 for softmax).

    Raises
    ------
    HeadError
        If ``head`` is not one of :data:`HEADS`.
    """
    if head not in HEADS:
        raise HeadError(f"model.head must be 'sigmoid' or 'softmax', got {head!r}")
    return 1 if head == "sigmoid" else 2


def lesion_probability(logits, head: str):
    """Lesion probability (..., 1) from logits (..., K), as a backend tensor.

    Uses ``keras.ops`` only, so it runs on any Keras backend.
    """
    # local: the NumPy functions below serve infer/tune, which load Keras only after checking inputs
    from keras import ops

    head_channels(head)
    if head == "sigmoid":
        return ops.sigmoid(logits)
    return ops.softmax(logits, axis=-1)[..., 1:2]


def class_log_probabilities(logits, head: str):
    """(log p_background, log p_lesion), each (..., 1), computed stably from logits.

    For a sigmoid head: log σ(-z) and log σ(z); for a softmax head: the two
    channels of log-softmax.  Never takes log of 0, so both are finite for any
    finite logits and their gradients never vanish through a saturated
    probability.
    """
    from keras import ops  # local: see lesion_probability

    head_channels(head)
    if head == "sigmoid":
        return ops.log_sigmoid(-logits), ops.log_sigmoid(logits)
    logp = ops.log_softmax(logits, axis=-1)
    return logp[..., 0:1], logp[..., 1:2]


def class_probabilities(logits, head: str):
    """(p_background, p_lesion), each (..., 1), as exp of the stable log-probabilities.

    Unlike ``1 - sigmoid(z)`` (which is exactly 0 in float32 for z > 17 and
    then has zero gradient), each member of the pair is computed directly, so
    a confidently wrong voxel still has a non-zero gradient.  p_background +
    p_lesion = 1 up to rounding.
    """
    from keras import ops  # local: see lesion_probability

    log_bg, log_fg = class_log_probabilities(logits, head)
    return ops.exp(log_bg), ops.exp(log_fg)


def lesion_probability_numpy(logits: np.ndarray, head: str) -> np.ndarray:
    """NumPy version of :func:`lesion_probability`: (..., K) logits → (..., 1) float32."""
    head_channels(head)
    z = np.asarray(logits, dtype=np.float32)
    if head == "sigmoid":
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # stable sigmoid
    d = z[..., 1:2] - z[..., 0:1]
    return (0.5 * (1.0 + np.tanh(0.5 * d))).astype(np.float32)
