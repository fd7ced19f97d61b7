"""Per-channel intensity normalisation, the same in training and inference.

Statistics are taken inside the non-zero region of each channel (the brain
of a skull-stripped scan); voxels outside it stay 0.  The method and clip
percentiles are part of :class:`~lesionseg.config.DataConfig`, stored with
every run, so inference normalises exactly as training did.
"""

from __future__ import annotations

import numpy as np

from lesionseg.errors import LesionsegError

from lesionseg.config.vocabulary import NORMALIZATIONS as METHODS

# The standard deviation of a normal distribution per unit of interquartile range.
IQR_TO_SD = 1.0 / 1.349
#: ``tissue_ratio``'s fixed unit, as a fraction of the tissue median: the ``tissue`` spread of the
#: shared 1 mm FLAIRs (IQR 16–19 % of the median, × IQR_TO_SD), so both give similar values at 1 mm.
RATIO_UNIT = 0.13


def foreground_mask(channel: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """Non-zero voxels of a channel, or all voxels if fewer than ``min_fraction`` are non-zero."""
    mask = channel != 0
    if mask.mean() < min_fraction:
        mask = np.ones_like(mask, dtype=bool)
    return mask


def tissue_mask(channel: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """The voxels of ``foreground`` brighter than the Otsu threshold of its intensities.

    On a FLAIR or T1 brain this is white and grey matter (and lesions) without CSF and without the
    partial-volume rim of a brain resampled from thick slices.  A foreground of one intensity, or
    a threshold that keeps fewer than 100 voxels, gives the foreground itself.
    """
    from skimage.filters import threshold_otsu  # local: only the tissue normalisation needs it

    values = channel[foreground]
    if values.size < 2 or float(values.min()) == float(values.max()):
        return foreground
    region = foreground & (channel > threshold_otsu(values))
    return region if int(region.sum()) >= 100 else foreground


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
    method : {"zscore", "robust", "tissue", "tissue_ratio", "minmax", "none"}
        ``zscore``: clip to the percentiles of the non-zero region, then
        subtract its mean and divide by its standard deviation.
        ``robust``: clip likewise, then subtract the median and divide by
        the interquartile range / 1.349 (the standard deviation of a normal
        distribution with that IQR): a few percent of bright lesion voxels
        barely move either, so the same tissue gets the same value in a
        low-load and a high-load exam.
        ``tissue``: as ``robust``, with median and interquartile range taken
        over the *tissue* only: the non-zero voxels above the Otsu threshold
        of the non-zero region (:func:`tissue_mask`).  CSF and the dim rim
        that partial volume leaves around a brain resampled from thick slices
        drop out of the statistics, so a lesion gets about the same value in a
        1 mm exam and in a 7 mm thick-slice version of it (measured on the
        shared exams: lesion median 2.15 / 1.79 here, 1.53 / 0.74 with
        ``robust``).
        ``tissue_ratio``: (x / tissue median − 1) / :data:`RATIO_UNIT`, the tissue
        median its only statistic.  Blurring an exam (thick slices) barely
        moves its tissue median but shrinks its interquartile range — on
        the clinical path the 7 mm exams' IQR fell from 16–19 % to 9–12 % of
        the median, stretching ``tissue`` values about twofold — so this
        normalisation commutes with the blur: normalising a thick exam gives
        what blurring the normalised 1 mm exam gives, which is how the
        thick-slice augmentation trains (on normalised patches).
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
    elif method == "tissue_ratio":
        median = float(np.median(out[tissue_mask(out, fg)]))
        out = (out / (median if median > 1e-8 else 1.0) - 1.0) / RATIO_UNIT
    elif method in ("robust", "tissue"):
        region = tissue_mask(out, fg) if method == "tissue" else fg
        q1, median, q3 = (float(q) for q in np.percentile(out[region], (25.0, 50.0, 75.0)))
        spread = (q3 - q1) * IQR_TO_SD
        out = (out - median) / (spread if spread > 1e-8 else 1.0)
    else:
        out = (out - lo) / (hi - lo if hi - lo > 1e-8 else 1.0)
    out[~fg] = 0.0
    return out.astype(np.float32, copy=False)


def saturated_fraction(
    channel: np.ndarray,
    mask: np.ndarray,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[float, float]:
    """Share of the lesion voxels that the percentile clipping flattens.

    Lesions are the brightest (FLAIR) or darkest (T1 black holes) voxels of
    an exam: when they are a larger share of the brain than the clipped
    tail, clipping gives them all one value and the contrast between
    lesion and other bright tissue is gone (an exam with 1 ml of lesions in
    a 1.5 l brain has them inside the top 0.5 %).

    Parameters
    ----------
    channel : numpy.ndarray
        (D, H, W) raw intensities.
    mask : numpy.ndarray
        (D, H, W) lesion mask (non-zero = lesion).
    clip_percentiles : tuple of float
        As :func:`normalize_channel`.

    Returns
    -------
    tuple of float
        Fractions of lesion voxels at or below the lower and at or above the
        upper clip value (0 where that side does not clip or there is no
        lesion).
    """
    x = np.asarray(channel, dtype=np.float32)
    lesion = np.asarray(mask) != 0
    if not lesion.any():
        return 0.0, 0.0
    lo_p, hi_p = clip_percentiles
    lo, hi = np.percentile(x[foreground_mask(x)], clip_percentiles)
    values = x[lesion]
    low = float(np.mean(values <= lo)) if lo_p > 0 else 0.0
    high = float(np.mean(values >= hi)) if hi_p < 100 else 0.0
    return low, high


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
