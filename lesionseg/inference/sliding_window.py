"""Sliding-window inference on whole volumes, the decision and post-processing.

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
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Sequence

import cc3d
import numpy as np

log = logging.getLogger(__name__)

BLENDS = ("gaussian", "uniform")
CONNECTIVITIES = (6, 18, 26)

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
    corners = list(itertools.product(*starts))
    total = len(corners)

    acc: np.ndarray | None = None  # (D', H', W', K), allocated once K is known
    batch = np.empty((min(batch_size, total), *patch, image.shape[3]), dtype=np.float32)
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
            acc = np.zeros((*pshape, out.shape[4]), dtype=np.float32)
            weighted = np.empty(out.shape[1:], dtype=np.float32)
            w4 = weights[..., None]
        for b, (i, j, k) in enumerate(chunk):
            np.multiply(out[b], w4, out=weighted)
            view = acc[i : i + d, j : j + h, k : k + w]
            np.add(view, weighted, out=view)
        if progress is not None:
            progress(first + len(chunk), total)
    assert acc is not None
    s0, s1, s2 = _weight_sums(pshape, patch, starts, blend)
    s12 = np.multiply.outer(s1[: shape[1]], s2[: shape[2]])
    acc = acc[: shape[0], : shape[1], : shape[2]]
    for i in range(shape[0]):  # divide slab by slab: no weight-sum volume
        acc[i] /= (s0[i] * s12).astype(np.float32)[..., None]
    return acc


def _pad_to(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Zero-pad the spatial axes shorter than ``patch`` at their far end."""
    pads = [(0, max(int(p) - s, 0)) for s, p in zip(image.shape[:3], patch)]
    if not any(after for _, after in pads):
        return image
    return np.pad(image, [*pads, (0, 0)], mode="constant")


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


def predict_volume_tta(
    image: np.ndarray,
    predict_fn: PredictFn,
    patch_size: Sequence[int] = (48, 48, 48),
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 8,
    flip_axes: Sequence[int] = (),
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """:func:`predict_volume` with flip test-time augmentation.

    Each window is also predicted flipped along every subset of
    ``flip_axes`` (2**n predictions per window); the flipped-back
    probabilities are averaged before blending.  With ``flip_axes=()`` this
    is exactly :func:`predict_volume`.

    Returns
    -------
    numpy.ndarray
        (D, H, W, K) float32 averaged probabilities.
    """
    return predict_volume(
        image,
        flip_tta(predict_fn, flip_axes),
        patch_size=patch_size,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
        progress=progress,
    )


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
    nonzero = np.any(image != 0, axis=-1)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(nonzero, axis=other))
        if hits.size == 0:
            return None
        lo = max(0, int(hits[0]) - margin)
        hi = min(image.shape[axis], int(hits[-1]) + 1 + margin)
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]


def predict_volume_cropped(
    image: np.ndarray,
    predict_fn: PredictFn,
    patch_size: Sequence[int] = (48, 48, 48),
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 8,
    flip_axes: Sequence[int] = (),
    *,
    margin: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """:func:`predict_volume_tta` over the non-zero box of the image only.

    A skull-stripped 1 mm MNI exam (182×218×182) has its brain in a box of
    about half the volume, so half the windows see nothing but zeros; they
    are skipped and the probability outside the box is 0 (as nnU-Net crops
    to the non-zero region).  An image without zeros is predicted whole.

    Parameters
    ----------
    margin : int or None
        Voxels kept around the box (``None``: an eighth of the window).
    Other parameters as :func:`predict_volume_tta`.

    Returns
    -------
    numpy.ndarray
        (D, H, W, K) float32 probabilities; 0 outside the box (K is 1 for
        an all-zero image, whose windows are never run).
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (D, H, W, C), got shape {image.shape}")
    if margin is None:
        margin = max(int(p) for p in patch_size) // 8
    box = foreground_box(image, margin)
    if box is None:
        return np.zeros((*image.shape[:3], 1), dtype=np.float32)
    whole = all(b.start == 0 and b.stop == n for b, n in zip(box, image.shape[:3]))
    region = image if whole else np.ascontiguousarray(image[box])
    inner = predict_volume_tta(region, predict_fn, patch_size, overlap, blend, batch_size, flip_axes, progress=progress)
    if whole:
        return inner
    out = np.zeros((*image.shape[:3], inner.shape[-1]), dtype=np.float32)
    out[box] = inner
    return out


def decide(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Binary lesion mask: voxels whose probability exceeds ``threshold``.

    Strictly greater, so ``threshold=0.5`` on the lesion probability of a
    two-class softmax equals its argmax (ties go to background, as argmax
    picks the first class).

    Parameters
    ----------
    prob : numpy.ndarray
        (D, H, W) lesion probabilities in [0, 1].
    threshold : float
        Decision threshold in [0, 1].

    Returns
    -------
    numpy.ndarray
        (D, H, W) uint8 in {0, 1}.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return (np.asarray(prob) > np.float32(threshold)).astype(np.uint8)


def component_sizes(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """Label a binary mask and count the voxels of each component.

    Returns
    -------
    labels : numpy.ndarray
        (D, H, W) uint32 labels, 0 = background.
    sizes : numpy.ndarray
        (n + 1,) int64 voxel counts per label (``sizes[0]`` is background).
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    labels = cc3d.connected_components(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity, out_dtype=np.uint32
    )
    sizes = np.bincount(labels.ravel())
    return labels, sizes


def remove_small_components(
    mask: np.ndarray,
    min_mm3: float,
    zooms: Sequence[float],
    connectivity: int = 26,
) -> np.ndarray:
    """Remove connected components smaller than ``min_mm3``.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary mask (any non-zero is lesion).
    min_mm3 : float
        Components whose volume (voxels × voxel volume) is below this are
        removed; components of exactly this volume are kept.  ≤ 0 keeps all.
    zooms : sequence of float
        Voxel size in mm per axis.
    connectivity : {6, 18, 26}
        Neighbourhood that joins voxels into one component.

    Returns
    -------
    numpy.ndarray
        (D, H, W) uint8 in {0, 1}.
    """
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    if min_mm3 is None or min_mm3 <= 0 or not binary.any():
        return binary
    voxel_mm3 = float(np.prod([float(z) for z in zooms[:3]]))
    labels, sizes = component_sizes(binary, connectivity)
    keep = sizes.astype(np.float64) * voxel_mm3 >= float(min_mm3) * (1 - 1e-9)
    keep[0] = False
    return keep[labels].astype(np.uint8)
