"""Sliding-window inference on whole volumes: the window grid, weights and blending.

Pure NumPy: the model enters only as ``predict_fn``, a callable mapping a batch
of windows ``(B, d, h, w, C)`` to probabilities ``(B, d, h, w, K)``, so every
function here is tested with hand-made predictors (identity, constant per
window) whose stitched result is known exactly.

Windows start at evenly spaced positions, the first at 0 and the last flush
with the far edge; their predictions are blended with a weight map (uniform,
or a Gaussian of σ = patch / 8 that is never zero) and divided by the summed
weights, so the result is the overlap-weighted average of the window
probabilities.  Probabilities are averaged before any decision (threshold or
argmax), never the decisions.

Memory stays bounded: one batch of windows at a time is predicted and added
into a float32 accumulator of the volume's shape.  Weights and the window
grid are separable, so the summed weight of a voxel is a product of three
1D sums and no weight-sum volume is ever stored.

Flip test-time augmentation, the crop to the non-zero box and the one
:class:`~lesionseg.inference.window_options.WindowOptions` object that
switches them on are in :mod:`lesionseg.inference.window_options`; the
decision and the size filter in :mod:`lesionseg.inference.postprocess`.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

BLENDS = ("gaussian", "uniform")

PredictFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows covering ``[0, size)`` along one axis.

    The step is at most ``patch * (1 - overlap)``; the windows are spread
    evenly between the first (at 0) and the last (ending exactly at
    ``size``), so neighbouring windows overlap by at least ``overlap``.

    Parameters
    ----------
    size : int
        Length of the axis in voxels (≥ 1).
    patch : int
        Window length in voxels (≥ 1).  If ``patch >= size`` there is one
        window at 0 (the caller pads the volume to the patch).
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).

    Returns
    -------
    list of int
        Sorted, distinct starts; ``starts[0] == 0`` and
        ``starts[-1] == max(size - patch, 0)``.

    Examples
    --------
    >>> window_starts(182, 48, 0.5)
    [0, 22, 45, 67, 89, 112, 134]
    >>> window_starts(10, 4, 0.0)
    [0, 3, 6]
    """
    _check_overlap(overlap)
    if size < 1 or patch < 1:
        raise ValueError(f"size and patch must be positive, got size={size}, patch={patch}")
    if patch >= size:
        return [0]
    step = patch * (1.0 - overlap)
    n = int(np.ceil((size - patch) / step - 1e-9)) + 1
    n = min(n, size - patch + 1)  # distinct starts even when the step is < 1 voxel
    spacing = (size - patch) / (n - 1)
    return [int(round(i * spacing)) for i in range(n)]


def _check_overlap(overlap: float) -> None:
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")


@functools.lru_cache(maxsize=32)
def _profile(p: int, blend: str) -> np.ndarray:
    """1D weight profile of a window side: ones, or a Gaussian of σ = p / 8 with maximum 1."""
    if blend == "uniform":
        prof = np.ones(p, dtype=np.float64)
    elif blend == "gaussian":
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        prof = np.exp(-0.5 * (x / (p / 8.0)) ** 2)
        prof /= prof.max()
        # never zero (≥ e^-8 ≈ 3e-4 anyway for σ = p / 8): every voxel keeps a defined average
        prof = np.maximum(prof, 1e-12)
    else:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    prof.flags.writeable = False
    return prof


def weight_profiles(patch: Sequence[int], blend: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three 1D profiles (float64) whose outer product is the window weight map."""
    return tuple(_profile(int(p), blend) for p in patch)  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
def _weights_cached(patch: tuple[int, ...], blend: str) -> np.ndarray:
    w = functools.reduce(np.multiply.outer, weight_profiles(patch, blend)).astype(np.float32)
    w.flags.writeable = False
    return w


def gaussian_weights(patch: Sequence[int]) -> np.ndarray:
    """The Gaussian blending weight map of a window.

    A product of 1D Gaussians centred on the window (centre ``(p - 1) / 2``,
    σ = p / 8 per axis), each scaled to a maximum of 1, so the map peaks
    at 1 and is never zero (≥ e^-24 in the far corners).  Computed once per
    patch shape and cached (the returned array is read-only).

    Parameters
    ----------
    patch : sequence of int
        Window size (d, h, w).

    Returns
    -------
    numpy.ndarray
        (d, h, w) float32, in (0, 1], symmetric under flips of every axis.
    """
    return blend_weights(patch, "gaussian")


def blend_weights(patch: Sequence[int], blend: str) -> np.ndarray:
    """Weight map (d, h, w) float32 of a window for ``blend`` ("uniform": ones; "gaussian"), cached."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    return _weights_cached(tuple(int(p) for p in patch), blend)


def _weight_sums(
    shape: Sequence[int], patch: Sequence[int], starts: Sequence[Sequence[int]], blend: str
) -> list[np.ndarray]:
    """Per axis, the sum of the 1D profiles of every window (float64).

    The weight map and the window grid are both separable, so the summed
    weight of voxel (i, j, k) is ``S0[i] * S1[j] * S2[k]``: no weight-sum
    volume is needed.
    """
    sums = []
    for size, p, axis_starts, prof in zip(shape, patch, starts, weight_profiles(patch, blend)):
        s = np.zeros(int(size), dtype=np.float64)
        for a in axis_starts:
            s[a : a + int(p)] += prof
        sums.append(s)
    return sums


def window_corners(
    shape: Sequence[int], patch: Sequence[int], overlap: float
) -> list[tuple[int, int, int]]:
    """Every window's first corner (i, j, k), in C order, for a (padded) volume shape."""
    per_axis = [window_starts(int(s), int(p), overlap) for s, p in zip(shape, patch)]
    return list(itertools.product(*per_axis))


def predict_volume(
    image: np.ndarray,
    predict_fn: PredictFn,
    patch_size: Sequence[int] = (48, 48, 48),
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 8,
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """Predict a whole volume with overlapping windows and blend the results.

    Parameters
    ----------
    image : numpy.ndarray
        (D, H, W, C) float32, normalised as in training.
    predict_fn : callable
        Maps a batch of windows (B, d, h, w, C) float32 to probabilities
        (B, d, h, w, K); B ≤ ``batch_size`` (the last batch may be smaller).
        The batch is a reused buffer: copy it if you keep it.
    patch_size : sequence of int
        Window size (d, h, w) in voxels.  Axes of the image shorter than the
        window are zero-padded at the far end and cropped back.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).
    blend : {"gaussian", "uniform"}
        Weighting of the windows (Gaussian σ = patch / 8, never zero).
    batch_size : int
        Windows per call of ``predict_fn``.
    progress : callable or None
        Called as ``progress(done, total)`` after every batch of windows.

    Returns
    -------
    numpy.ndarray
        (D, H, W, K) float32: per voxel, the weighted average of the
        probabilities of the windows covering it.

    Raises
    ------
    ValueError
        Bad image rank, overlap outside [0, 1), unknown blend, batch size
        < 1, or a ``predict_fn`` output of the wrong shape.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (D, H, W, C), got shape {image.shape}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be 3 positive ints, got {patch_size}")
    _check_overlap(overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    weights = blend_weights(patch, blend)

    shape = image.shape[:3]
    padded = _pad_to(image.astype(np.float32, copy=False), patch)
    pshape = padded.shape[:3]
    starts = [window_starts(int(s), p, overlap) for s, p in zip(pshape, patch)]
    acc = _accumulate(padded, predict_fn, weights, list(itertools.product(*starts)), batch_size, progress)
    s0, s1, s2 = _weight_sums(pshape, patch, starts, blend)
    s12 = np.multiply.outer(s1[: shape[1]], s2[: shape[2]])
    acc = acc[: shape[0], : shape[1], : shape[2]]
    for i in range(shape[0]):  # divide slab by slab: no weight-sum volume
        acc[i] /= (s0[i] * s12).astype(np.float32)[..., None]
    return acc


def _accumulate(
    padded: np.ndarray,
    predict_fn: PredictFn,
    weights: np.ndarray,
    corners: Sequence[tuple[int, int, int]],
    batch_size: int,
    progress: Progress | None,
) -> np.ndarray:
    """Predict the windows at ``corners`` batch by batch; the weighted sum (D', H', W', K) float32."""
    patch = weights.shape
    total = len(corners)
    acc: np.ndarray | None = None  # (D', H', W', K), allocated once K is known
    batch = np.empty((min(batch_size, total), *patch, padded.shape[3]), dtype=np.float32)
    d, h, w = patch
    for first in range(0, total, batch_size):
        chunk = corners[first : first + batch_size]
        for b, (i, j, k) in enumerate(chunk):
            batch[b] = padded[i : i + d, j : j + h, k : k + w]
        out = np.asarray(predict_fn(batch[: len(chunk)]), dtype=np.float32)
        if out.ndim != 5 or out.shape[:4] != (len(chunk), *patch):
            raise ValueError(
                f"predict_fn returned shape {out.shape}, expected ({len(chunk)}, {d}, {h}, {w}, K)"
            )
        if acc is None:
            acc = np.zeros((*padded.shape[:3], out.shape[4]), dtype=np.float32)
            weighted = np.empty(out.shape[1:], dtype=np.float32)
            w4 = weights[..., None]
        for b, (i, j, k) in enumerate(chunk):
            np.multiply(out[b], w4, out=weighted)
            view = acc[i : i + d, j : j + h, k : k + w]
            np.add(view, weighted, out=view)
        if progress is not None:
            progress(first + len(chunk), total)
    assert acc is not None
    return acc


def _pad_to(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Zero-pad the spatial axes shorter than ``patch`` at their far end."""
    pads = [(0, max(int(p) - s, 0)) for s, p in zip(image.shape[:3], patch)]
    if not any(after for _, after in pads):
        return image
    return np.pad(image, [*pads, (0, 0)], mode="constant")
