"""Where a patch lies, cutting it out, and the per-patch random streams.

Conventions
-----------
* Volumes are ``(D, H, W)`` or ``(D, H, W, C)`` numpy arrays in the voxel
  order of the file as stored on disk (no reorientation).
* A patch is given by its first corner ``(i0, j0, k0)`` and its size; the
  corner is in the voxel indices of the stored file and **may be negative, or
  reach past the far border**, when the patch hangs over the edge of the volume
  (a centre near a border, or a volume smaller than the patch).  The part
  outside the volume is filled with 0 by :func:`extract_patch`; sampling never
  fails and never moves a patch to keep it inside.
* With ``jitter <= 0.5`` the chosen lesion voxel always lies in the patch's
  *central half* (:func:`central_half`), the middle 24³ of a 48³ patch.
* Every random draw goes through an explicit :class:`numpy.random.Generator`;
  :func:`patch_rng` derives one per patch from ``(seed, epoch, index)`` so that
  patch ``n`` of epoch ``e`` is the same whatever the batch size, the number of
  workers or the order in which batches are built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_STREAM = 0
AUGMENT_STREAM = 1
TRANSPLANT_STREAM = 2


@dataclass(frozen=True)
class PatchSpec:
    """Where one patch lies.

    Attributes
    ----------
    case : int
        Index of the case in the sampler's case list.
    corner : tuple of int
        First corner (i0, j0, k0) in the stored file's voxel indices; may be
        negative or past the far border (padded with zeros).
    size : tuple of int
        Patch size (d, h, w) in voxels.
    mode : {"lesion", "foreground", "random", "hard"}
        How the patch was placed (after any fallback).
    lesion : int
        Label (1-based, in :func:`~lesionseg.data.labels.label_components` order) of the targeted lesion
        for ``lesion`` patches, 0 otherwise.
    """

    case: int
    corner: tuple[int, int, int]
    size: tuple[int, int, int]
    mode: str
    lesion: int = 0


def central_half(size: Sequence[int]) -> tuple[slice, slice, slice]:
    """Slices of a patch's central half per axis (the middle 24³ of a 48³ patch).

    Examples
    --------
    >>> central_half((48, 48, 16))
    (slice(12, 36, None), slice(12, 36, None), slice(4, 12, None))
    """
    out = []
    for s in size:
        half = max(1, s // 2)
        start = (s - half) // 2
        out.append(slice(start, start + half))
    return tuple(out)  # type: ignore[return-value]


def target_position_range(size: Sequence[int], jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive range of the chosen lesion voxel's position inside the patch.

    The position is uniform over the integers within ``jitter * s / 2`` of the
    patch centre ``(s - 1) / 2`` on each axis: ``jitter = 0`` centres the voxel
    (index ``s // 2``), ``0.5`` lets it anywhere in the central half, ``1``
    anywhere in the patch.

    Returns
    -------
    lo, hi : numpy.ndarray
        (3,) int64 inclusive bounds, ``0 <= lo <= hi < s``.
    """
    s = np.asarray(size, dtype=np.int64)
    centre = (s - 1) / 2.0
    reach = float(jitter) * s / 2.0
    lo = np.clip(np.ceil(centre - reach - 1e-9), 0, s - 1).astype(np.int64)
    hi = np.clip(np.floor(centre + reach + 1e-9), 0, s - 1).astype(np.int64)
    empty = lo > hi  # jitter 0 with an even size: no integer at the exact centre
    lo = np.where(empty, s // 2, lo)
    hi = np.where(empty, s // 2, hi)
    return lo, hi


def extract_patch(volume: np.ndarray, corner: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """Cut a patch out of a volume, padding with ``fill`` outside it.

    Parameters
    ----------
    volume : numpy.ndarray
        (D, H, W) or (D, H, W, C) array.
    corner : sequence of int
        First corner (may be negative or past the border).
    size : sequence of int
        Patch size (d, h, w).
    fill : float
        Value of voxels outside the volume.

    Returns
    -------
    numpy.ndarray
        (d, h, w) or (d, h, w, C), same dtype as ``volume``; a new array.

    Examples
    --------
    >>> v = np.arange(27).reshape(3, 3, 3)
    >>> extract_patch(v, (-1, 0, 0), (2, 1, 1))[:, 0, 0].tolist()
    [0, 0]
    >>> extract_patch(v, (2, 2, 2), (2, 2, 2))[0, 0, 0].item()
    26
    """
    spatial = volume.shape[:3]
    out = np.full(tuple(size) + volume.shape[3:], fill, dtype=volume.dtype)
    src, dst = [], []
    for c, s, n in zip(corner, size, spatial):
        lo, hi = max(c, 0), min(c + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - c, hi - c))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def patch_rng(seed: int, epoch: int, index: int, stream: int = SAMPLE_STREAM) -> np.random.Generator:
    """The generator of patch ``index`` of ``epoch`` (stream 0 sampling, 1 augmentation, 2 transplantation)."""
    return np.random.default_rng([int(seed), int(epoch), int(index), int(stream)])


def lesion_corner(rng: np.random.Generator, voxel: np.ndarray, size: Sequence[int], jitter: float) -> np.ndarray:
    """Corner of a patch holding ``voxel`` at a jittered position (see :func:`target_position_range`)."""
    lo, hi = target_position_range(size, jitter)
    position = rng.integers(lo, hi + 1)
    return np.asarray(voxel, dtype=np.int64) - position


def centred_corner(voxel: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Corner of the patch whose centre (index ``s // 2``) is ``voxel``."""
    return np.asarray(voxel, dtype=np.int64) - np.asarray(size, dtype=np.int64) // 2


def own_target_probability(size: Sequence[int], jitter: float) -> float:
    """Probability that the chosen lesion voxel lands in the patch's central half (1 when jitter <= 0.5)."""
    lo, hi = target_position_range(size, jitter)
    p = 1.0
    for s, a, b in zip(central_half(size), lo, hi):
        inside = max(0, min(b + 1, s.stop) - max(a, s.start))
        p *= inside / (b - a + 1)
    return p
