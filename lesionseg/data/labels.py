"""Lesions as connected components: the one labelling, connectivity and bounding boxes.

Every stage that needs lesions labels them here: sampling (lesion patches),
inference post-processing (the size filter), tuning and evaluation.  A
lesion is a 3D connected component of the non-zero voxels of a mask,
labelled with connected-components-3d (``cc3d``) into 32-bit labels (never
uint8, which wraps above 255 lesions).

Label order
-----------
Components are numbered 1..n in the scan order of the array *as laid out in
memory*: C order for a C-contiguous mask, Fortran order for a Fortran
(nibabel) array.  Callers that need ids independent of the layout pass a
C-contiguous mask (evaluation does).

Pure NumPy + cc3d (no Keras), so every stage can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

from lesionseg.config import CONNECTIVITIES
from lesionseg.errors import LesionsegError

#: the box used when there is nothing to box: one voxel at the origin
ORIGIN_BOX = (slice(0, 1), slice(0, 1), slice(0, 1))

Box = tuple[slice, slice, slice]


class ConnectivityError(LesionsegError, ValueError):
    """A connectivity other than 6, 18 or 26 (a user error and a bad argument value)."""


def check_connectivity(connectivity: int, where: str = "connectivity") -> int:
    """Return ``connectivity`` as an int if it is 6, 18 or 26.

    Parameters
    ----------
    connectivity : int
        The value to check.
    where : str
        What holds it, for the message (e.g. ``"config patches.connectivity"``).

    Returns
    -------
    int

    Raises
    ------
    ConnectivityError
        Any other value (a :class:`LesionsegError` and a :class:`ValueError`).
    """
    if connectivity not in CONNECTIVITIES:
        raise ConnectivityError(f"{where} must be 6, 18 or 26, got {connectivity!r}")
    return int(connectivity)


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the lesions (3D connected components) of a binary mask.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) mask; any non-zero voxel is lesion.  Its memory layout
        decides the label order (module docstring).
    connectivity : {6, 18, 26}
        Neighbourhood that joins voxels into one lesion.

    Returns
    -------
    labels : numpy.ndarray
        (D, H, W) uint32, 0 = background, lesions numbered 1..n in scan
        order of their first voxel (32-bit: never wraps).
    n : int
        Number of lesions.

    Raises
    ------
    ConnectivityError
        ``connectivity`` not 6, 18 or 26.

    Examples
    --------
    >>> m = np.zeros((4, 4, 4), np.uint8); m[0, 0, 0] = m[1, 1, 1] = 1
    >>> label_components(m, 26)[1], label_components(m, 6)[1]
    (1, 2)
    """
    check_connectivity(connectivity)
    mask = np.asarray(mask)
    binary = mask if mask.dtype == bool else mask != 0
    labels, n = cc3d.connected_components(
        binary, connectivity=connectivity, return_N=True, out_dtype=np.uint32, binary_image=True
    )
    return np.asarray(labels, dtype=np.uint32), int(n)


def component_sizes(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """Label a binary mask (C order) and count the voxels of each component.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary mask (any non-zero is lesion).
    connectivity : {6, 18, 26}
        Neighbourhood that joins voxels into one component.

    Returns
    -------
    labels : numpy.ndarray
        (D, H, W) uint32 labels, 0 = background.
    sizes : numpy.ndarray
        (n + 1,) int64 voxel counts per label (``sizes[0]`` is background).
    """
    labels, _ = label_components(np.ascontiguousarray(mask), connectivity)
    return labels, np.bincount(labels.ravel())


def bounding_box(*masks: np.ndarray, margin: int = 0) -> Box | None:
    """Bounding box of the non-zero voxels of one or more masks of one shape, plus ``margin``.

    The box of the union is found from per-axis projections, without
    building the union.

    Parameters
    ----------
    *masks : numpy.ndarray
        (D, H, W) arrays of one shape; non-zero is foreground.
    margin : int
        Voxels added on every side, clipped to the volume.

    Returns
    -------
    tuple of slice or None
        Half-open ``(i, j, k)`` slices, or ``None`` when every mask is empty.

    Examples
    --------
    >>> a = np.zeros((6, 6, 6), bool); a[2, 3, 1] = True
    >>> b = np.zeros_like(a); b[4, 3, 2] = True
    >>> bounding_box(a, b, margin=1)
    (slice(1, 6, None), slice(2, 5, None), slice(0, 4, None))
    """
    if not masks:
        raise ValueError("bounding_box needs at least one mask")
    shape = np.shape(masks[0])
    ij = np.any(masks[0], axis=2)
    k = np.any(masks[0], axis=(0, 1))
    for mask in masks[1:]:
        ij = ij | np.any(mask, axis=2)
        k = k | np.any(mask, axis=(0, 1))
    if not k.any():
        return None
    box = []
    for axis, flags in enumerate((ij.any(axis=1), ij.any(axis=0), k)):
        idx = np.flatnonzero(flags)
        box.append(slice(max(0, int(idx[0]) - margin), min(shape[axis], int(idx[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


# --------------------------------------------------------------------------- lesions with statistics


@dataclass(frozen=True)
class Lesions:
    """Connected components of one binary mask and their statistics.

    Attributes
    ----------
    labels : numpy.ndarray
        (d, h, w) uint32 label image (0 = background, lesions 1..n) of the
        region that was labelled (a crop of the volume, see ``offset``).
    offset : tuple of int
        Voxel index of ``labels[0, 0, 0]`` in the whole volume.
    volume_vox : numpy.ndarray
        (n,) int64 voxels of lesion ``i + 1``.
    centroid : numpy.ndarray
        (n, 3) float64 centroid (i, j, k) in voxel indices of the volume.
    bbox : numpy.ndarray
        (n, 6) int64 bounding box ``i0, i1, j0, j1, k0, k1`` (start
        inclusive, stop exclusive, like slices) in voxel indices.
    voxels : numpy.ndarray
        (V,) int64 flat (C-order) indices into ``labels`` of every lesion
        voxel, in increasing order.
    voxel_labels : numpy.ndarray
        (V,) uint32 label of each of those voxels.
    """

    labels: np.ndarray
    offset: tuple[int, int, int]
    volume_vox: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    voxels: np.ndarray
    voxel_labels: np.ndarray

    @property
    def n(self) -> int:
        """Number of lesions."""
        return int(self.volume_vox.shape[0])


def lesions_from_voxels(
    labels: np.ndarray, voxels: np.ndarray, voxel_labels: np.ndarray, n: int, offset: tuple[int, int, int]
) -> Lesions:
    """Statistics of labels 1..n (all present) from the list of their voxels.

    Equal to ``cc3d.statistics`` (voxel counts, centroids, bounding boxes) but
    computed from the V lesion voxels only rather than by scanning the whole
    box, which is several times faster for sparse lesion masks.

    Parameters
    ----------
    labels : numpy.ndarray
        (d, h, w) label image with labels 0..n.
    voxels : numpy.ndarray
        (V,) flat C-order indices of the lesion voxels, increasing.
    voxel_labels : numpy.ndarray
        (V,) label of each of those voxels (1..n).
    n : int
        Number of lesions.
    offset : tuple of int
        Position of ``labels[0, 0, 0]`` in the volume.

    Returns
    -------
    Lesions
    """
    counts = np.bincount(voxel_labels, minlength=n + 1)[1:].astype(np.int64)
    coords = np.unravel_index(voxels, labels.shape)
    centroid = np.empty((n, 3))
    bbox = np.empty((n, 6), np.int64)
    if n:
        order = np.argsort(voxel_labels, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        for axis, c in enumerate(coords):
            centroid[:, axis] = np.bincount(voxel_labels, weights=c, minlength=n + 1)[1:] / counts + offset[axis]
            c_sorted = c[order]
            bbox[:, 2 * axis] = np.minimum.reduceat(c_sorted, starts) + offset[axis]
            bbox[:, 2 * axis + 1] = np.maximum.reduceat(c_sorted, starts) + 1 + offset[axis]
    return Lesions(labels, offset, counts, centroid, bbox, voxels, voxel_labels)


def label_lesions(
    mask: np.ndarray,
    connectivity: int = 26,
    min_voxels: int = 1,
    offset: tuple[int, int, int] = (0, 0, 0),
) -> Lesions:
    """Connected components of a binary mask (or a crop of one), with their statistics.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary mask (any dtype; non-zero is lesion); labelled in
        C order (a copy is made unless it is a C-contiguous bool array).
    connectivity : {6, 18, 26}
        Voxel connectivity of a lesion.
    min_voxels : int
        Components with fewer voxels are dropped (and the rest renumbered
        1..n in cc3d's scan order).
    offset : tuple of int
        Position of ``mask[0, 0, 0]`` in the whole volume (for a crop).

    Returns
    -------
    Lesions
        ``labels`` is (D, H, W) uint32.

    Raises
    ------
    ConnectivityError
        ``connectivity`` not 6, 18 or 26.
    """
    mask = np.asarray(mask)
    if not (mask.dtype == bool and mask.flags.c_contiguous):
        mask = np.ascontiguousarray(mask != 0)
    labels, n = label_components(mask, connectivity)
    voxels = np.flatnonzero(mask)  # on the bool mask: much faster than on the labels
    voxel_labels = labels.ravel()[voxels]
    if n and min_voxels > 1:
        counts = np.bincount(voxel_labels, minlength=n + 1)
        keep = counts >= min_voxels
        keep[0] = False
        if not keep[1:].all():
            lut = np.zeros(n + 1, np.uint32)
            n = int(keep.sum())
            lut[keep] = np.arange(1, n + 1, dtype=np.uint32)
            labels = lut[labels]
            voxel_labels = lut[voxel_labels]
            kept = voxel_labels > 0
            voxels, voxel_labels = voxels[kept], voxel_labels[kept]
    return lesions_from_voxels(labels, voxels, voxel_labels, int(n), offset)
