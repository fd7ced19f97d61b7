"""Window options on top of :func:`~lesionseg.inference.sliding_window.predict_volume`.

One frozen :class:`WindowOptions` (built once from a config by
:meth:`WindowOptions.from_config`) holds every setting of the sliding
window, and :func:`predict_windows` applies them all: the window grid and
blending of :func:`~lesionseg.inference.sliding_window.predict_volume`,
flip test-time augmentation (:func:`flip_tta`) and the crop to the non-zero
box of the image (:func:`foreground_box`).  Pure NumPy, like the sliding
window: the model enters only as ``predict_fn``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.config import Config
from lesionseg.data.labels import bounding_box
from lesionseg.inference.sliding_window import PredictFn, Progress, predict_volume


def flip_combinations(flip_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of the spatial axes in ``flip_axes`` (the identity first)."""
    axes = sorted({int(a) for a in flip_axes})
    for a in axes:
        if a not in (0, 1, 2):
            raise ValueError(f"flip axes must be spatial axes 0, 1 or 2, got {a}")
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


def flip_tta(predict_fn: PredictFn, flip_axes: Sequence[int]) -> PredictFn:
    """Wrap ``predict_fn`` to average its probabilities over flips of each window.

    For every subset of ``flip_axes`` (spatial axes 0–2 of the volume) the
    batch is flipped, predicted and flipped back; the mean of the
    probabilities (not of any decision) is returned.
    """
    combos = flip_combinations(flip_axes)
    if len(combos) == 1:
        return predict_fn

    def averaged(batch: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for combo in combos:
            axes = tuple(a + 1 for a in combo)  # batch axis first
            x = np.flip(batch, axes) if axes else batch
            p = np.asarray(predict_fn(np.ascontiguousarray(x)), dtype=np.float32)
            p = np.flip(p, axes) if axes else p
            total = p.copy() if total is None else np.add(total, p, out=total)
        assert total is not None
        return total / np.float32(len(combos))

    return averaged


def foreground_box(image: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """Bounding box of the voxels where any channel is non-zero.

    Parameters
    ----------
    image : numpy.ndarray
        (D, H, W, C) normalised image (0 outside the head/brain of a
        skull-stripped scan).
    margin : int
        Voxels added on every side, clipped to the volume.

    Returns
    -------
    tuple of slice or None
        The box, or ``None`` when the image is all zeros.
    """
    return bounding_box(np.any(image != 0, axis=-1), margin=margin)


@dataclass(frozen=True)
class WindowOptions:
    """How whole volumes are predicted with windows: one object for every caller.

    Attributes
    ----------
    patch_size : tuple of int
        Window size (d, h, w) in voxels (the training patch size).
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).
    blend : {"gaussian", "uniform"}
        Weighting of the windows (Gaussian σ = patch / 8, never zero).
    batch_size : int
        Windows per call of the window predictor.
    tta_flips : tuple of int
        Spatial axes (0–2) whose flips are averaged: every subset of them,
        2**n predictions per window (test-time augmentation).
    crop_to_foreground : bool
        Predict only the box of the non-zero voxels (plus ``margin``) and
        return probability 0 outside it (see :func:`foreground_box`).
    margin : int or None
        Voxels kept around that box (``None``: an eighth of the largest
        window side).
    """

    patch_size: tuple[int, ...] = (48, 48, 48)
    overlap: float = 0.5
    blend: str = "gaussian"
    batch_size: int = 8
    tta_flips: tuple[int, ...] = ()
    crop_to_foreground: bool = False
    margin: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> WindowOptions:
        """The options of a run: ``patches.size`` is the window, ``[infer]`` the rest.

        Parameters
        ----------
        config : Config
            Its ``patches.size`` and ``infer.overlap``, ``blend``,
            ``batch_size``, ``tta_flips`` and ``crop_to_foreground``.

        Returns
        -------
        WindowOptions
        """
        infer = config.infer
        return cls(
            patch_size=tuple(config.patches.size),
            overlap=infer.overlap,
            blend=infer.blend,
            batch_size=infer.batch_size,
            tta_flips=tuple(infer.tta_flips),
            crop_to_foreground=bool(infer.crop_to_foreground),
        )


def predict_windows(
    image: np.ndarray,
    predict_fn: PredictFn,
    options: WindowOptions,
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """:func:`predict_volume` with every :class:`WindowOptions`: flip TTA, foreground crop.

    Each window is also predicted flipped along every subset of
    ``options.tta_flips`` (:func:`flip_tta`); the flipped-back
    probabilities are averaged before blending.  With
    ``options.crop_to_foreground`` only the non-zero box of the image is
    predicted: a skull-stripped 1 mm MNI exam (182×218×182) has its brain in
    a box of about half the volume, so half the windows would see nothing
    but zeros; they are skipped and the probability outside the box is 0 (as
    nnU-Net crops to the non-zero region).  An image without zeros is
    predicted whole.  With neither this is exactly :func:`predict_volume`.

    Parameters
    ----------
    image : numpy.ndarray
        (D, H, W, C) float32, normalised as in training.
    predict_fn : callable
        Maps a batch of windows (B, d, h, w, C) to probabilities
        (B, d, h, w, K), as for :func:`predict_volume`.
    options : WindowOptions
        Window size, overlap, blend, batch size, flips and crop.
    progress : callable or None
        Called as ``progress(done, total)`` after every batch of windows.

    Returns
    -------
    numpy.ndarray
        (D, H, W, K) float32 averaged probabilities (with the crop: 0
        outside the box, and K is 1 for an all-zero image, whose windows
        are never run).

    Raises
    ------
    ValueError
        As :func:`predict_volume`, or bad flip axes.
    """
    if not options.crop_to_foreground:
        return _predict_whole(image, predict_fn, options, progress)
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (D, H, W, C), got shape {image.shape}")
    margin = options.margin
    if margin is None:
        margin = max(int(p) for p in options.patch_size) // 8
    box = foreground_box(image, margin)
    if box is None:
        return np.zeros((*image.shape[:3], 1), dtype=np.float32)
    whole = all(b.start == 0 and b.stop == n for b, n in zip(box, image.shape[:3]))
    region = image if whole else np.ascontiguousarray(image[box])
    inner = _predict_whole(region, predict_fn, options, progress)
    if whole:
        return inner
    out = np.zeros((*image.shape[:3], inner.shape[-1]), dtype=np.float32)
    out[box] = inner
    return out


def _predict_whole(
    image: np.ndarray, predict_fn: PredictFn, options: WindowOptions, progress: Progress | None
) -> np.ndarray:
    """:func:`predict_volume` of the whole image with the options' window and flips."""
    return predict_volume(
        image,
        flip_tta(predict_fn, options.tta_flips),
        patch_size=options.patch_size,
        overlap=options.overlap,
        blend=options.blend,
        batch_size=options.batch_size,
        progress=progress,
    )
