"""The lesions of one case, labelled once and kept as voxel lists for sampling.

:func:`index_lesions` labels a mask into connected components
(:func:`~lesionseg.data.labels.label_components`) and keeps, per lesion, the
flat (C-order) indices of its voxels in a :class:`LesionTable`, plus the
non-zero (brain) voxels for ``foreground`` patches.  Everything the patch
sampler draws from a case comes from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionseg.data.labels import label_components


@dataclass(frozen=True, eq=False)
class LesionTable:
    """What sampling needs from one case, computed once.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape (D, H, W) of the case.
    voxels : numpy.ndarray
        (N,) int32/int64 flat (C-order) indices of all lesion voxels, grouped
        by lesion: lesion ``l`` (1-based label) owns
        ``voxels[offsets[l - 1]:offsets[l]]``.
    offsets : numpy.ndarray
        (L + 1,) int64 start of each lesion's run in ``voxels``.
    foreground : numpy.ndarray or None
        (M,) flat indices of the non-zero (brain) voxels; ``None`` means the
        whole volume.
    hard : numpy.ndarray or None
        (K,) flat indices of the hard-negative voxels, where a model fires
        away from every lesion (:mod:`~lesionseg.sampling.hard_negatives`);
        ``None``: none known (``hard`` patches fall back to ``foreground``).
    """

    shape: tuple[int, int, int]
    voxels: np.ndarray
    offsets: np.ndarray
    foreground: np.ndarray | None = None
    hard: np.ndarray | None = None

    @property
    def n_lesions(self) -> int:
        """Number of lesions (connected components)."""
        return len(self.offsets) - 1

    @property
    def volumes(self) -> np.ndarray:
        """(L,) int64 voxel count of each lesion, label order."""
        return np.diff(self.offsets)

    def labels(self) -> np.ndarray:
        """(D, H, W) lesion labels rebuilt from the voxel lists (uint16, or uint32 above 65535 lesions)."""
        dtype = np.uint16 if self.n_lesions < 65535 else np.uint32
        labels = np.zeros(self.shape, dtype)
        labels.ravel()[self.voxels] = np.repeat(np.arange(1, self.n_lesions + 1, dtype=dtype), self.volumes)
        return labels

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays, in bytes."""
        extra = sum(0 if a is None else a.nbytes for a in (self.foreground, self.hard))
        return int(self.voxels.nbytes + self.offsets.nbytes + extra)


def _index_dtype(n: int) -> type:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def index_lesions(
    mask: np.ndarray, connectivity: int = 26, foreground: np.ndarray | None = None
) -> LesionTable:
    """Label a mask once and keep the voxel lists sampling needs.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary lesion mask.
    connectivity : {6, 18, 26}
        Connectivity of lesions.
    foreground : numpy.ndarray or None
        (D, H, W) bool non-zero (brain) region for ``foreground`` patches;
        ``None`` or an empty region means the whole volume.

    Returns
    -------
    LesionTable

    Examples
    --------
    >>> m = np.zeros((8, 8, 8), np.uint8); m[1, 1, 1] = 1; m[5:7, 5, 5] = 1
    >>> t = index_lesions(m)
    >>> t.n_lesions, t.volumes.tolist()
    (2, [1, 2])
    """
    labels, n = label_components(mask, connectivity)
    flat = labels.ravel()
    dtype = _index_dtype(flat.size)
    where = np.flatnonzero(flat)
    order = np.argsort(flat[where], kind="stable")
    voxels = where[order].astype(dtype)
    counts = np.bincount(flat[where], minlength=n + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    fg = None
    if foreground is not None:
        if foreground.shape != labels.shape:
            raise ValueError(f"foreground shape {foreground.shape} differs from mask {labels.shape}")
        fg_idx = np.flatnonzero(foreground).astype(dtype)
        fg = fg_idx if fg_idx.size else None
    shape = tuple(int(s) for s in labels.shape)
    return LesionTable(shape=shape, voxels=voxels, offsets=offsets, foreground=fg)  # type: ignore[arg-type]
