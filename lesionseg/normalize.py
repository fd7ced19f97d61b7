"""Per-channel intensity normalisation, the same in training and inference.

Statistics are taken inside the non-zero region of each channel (the brain
of a skull-stripped scan); voxels outside it stay 0.  The method and clip
percentiles are part of :class:`~lesionseg.config.DataConfig`, stored with
every run, so inference normalises exactly as training did.
"""

from __future__ import annotations

import numpy as np

from lesionseg.errors import LesionsegError

METHODS = ("zscore", "minmax", "none")


def foreground_mask(channel: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """Non-zero voxels of a channel, or all voxels if fewer than ``min_fraction`` are non-zero."""
    mask = channel != 0
    if mask.mean() < min_fraction:
        mask = np.ones_like(mask, dtype=bool)
    return mask


def normalize_channel(
    channel: np.ndarray,
    method: str = "zscore",
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Normalise one (D, H, W) channel.

    Parameters
    ----------
    channel : numpy.ndarray
        Raw intensities.
    method : {"zscore", "minmax", "none"}
        ``zscore``: clip to the percentiles of the non-zero region, then
        subtract its mean and divide by its standard deviation.
        ``minmax``: clip likewise, then scale that range to [0, 1].
    clip_percentiles : tuple of float
        Lower and upper percentile (0–100) of the non-zero region.

    Returns
    -------
    numpy.ndarray
        (D, H, W) float32; voxels outside the non-zero region are 0.
    """
    if method not in METHODS:
        raise LesionsegError(f"data.normalization must be one of {', '.join(METHODS)}, got {method!r}")
    x = np.asarray(channel, dtype=np.float32)
    if method == "none":
        return x.copy()
    fg = foreground_mask(x)
    values = x[fg]
    lo, hi = np.percentile(values, clip_percentiles).astype(np.float32)
    out = np.clip(x, lo, hi)
    if method == "zscore":
        clipped = out[fg]
        mean, std = float(clipped.mean()), float(clipped.std())
        out = (out - mean) / (std if std > 1e-8 else 1.0)
    else:
        out = (out - lo) / (hi - lo if hi - lo > 1e-8 else 1.0)
    out[~fg] = 0.0
    return out.astype(np.float32, copy=False)


def normalize_image(
    image: np.ndarray,
    method: str = "zscore",
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Normalise every channel of a (D, H, W, C) image independently (float32)."""
    return np.stack(
        [normalize_channel(image[..., c], method, clip_percentiles) for c in range(image.shape[-1])],
        axis=-1,
    )
