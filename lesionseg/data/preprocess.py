"""Preprocessing of raw exams, the same at training and inference, undone on the way out.

Clinical exams are not what a model trained on 1 mm, skull-stripped, MNI-aligned
scans has seen: 2D FLAIR with 5–8 mm slices, any voxel orientation, skull and
scalp, a bias field.  ``[preprocess]`` (:class:`~lesionseg.config.PreprocessConfig`,
stored with every run) brings an exam to the model's *working grid* and back:

1. **reorient** the voxel axes to RAS+ (exact: axes permuted and flipped, no interpolation);
2. **resample** to ``spacing`` mm voxels covering the same field of view (trilinear for
   images, nearest for masks);
3. **bias-field correction** of every channel with N4 (SimpleITK's
   ``N4BiasFieldCorrectionImageFilter``, on a 4× shrunk copy, the field applied at full size);
4. **brain extraction**: voxels outside the brain set to 0 (:func:`brain_mask`).

Predictions are made on the working grid and the *probability map* is resampled back onto the
input file's grid (trilinear, through the two affines) before the threshold, so outputs have the
shape and affine of the file the user gave.  Every step is off by default (the shared MNI exams
are processed already).

Examples
--------
>>> import numpy as np
>>> from lesionseg.config import PreprocessConfig
>>> from lesionseg.data.io import Grid
>>> las = Grid((4, 3, 2), np.diag([-2.0, 1.0, 3.0, 1.0]), (2.0, 1.0, 3.0))
>>> work = working_grid(las, PreprocessConfig(reorient=True, spacing=(1.0, 1.0, 1.0)))
>>> work.shape, np.diag(work.affine).tolist()
((8, 3, 6), [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from lesionseg.config import PreprocessConfig
from lesionseg.data.io import MAX_VOXELS, Grid
from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

#: Share of exact zeros from which an image may be skull-stripped already (see :func:`looks_skull_stripped`).
ALREADY_STRIPPED_ZERO_SHARE = 0.3
#: Largest share of dark voxels (under a fifth of the 90th percentile) 3–12 mm under the edge of a
#: skull-stripped image's non-zero region.  Measured (in plane, central slices): the 6 shared MNI
#: exams 0.000–0.082, their 7 mm thick-slice versions 0.12–0.20; lesjak_patient07 inside a
#: synthetic skull and scalp on a zero background 0.68 (1 mm) and 0.34 (7 mm slices).
STRIPPED_DARK_BAND = 0.27


def is_active(cfg: PreprocessConfig) -> bool:
    """True when any step is switched on."""
    return bool(cfg.reorient or cfg.spacing is not None or cfg.bias_correction or cfg.brain_extraction)


def working_grid(grid: Grid, cfg: PreprocessConfig) -> Grid:
    """The grid the model sees: RAS+ axes (``reorient``) and ``spacing`` mm voxels over the same field of view."""
    affine, shape = np.asarray(grid.affine, float), tuple(int(s) for s in grid.shape)
    if cfg.reorient:
        current = nib.orientations.io_orientation(affine)
        transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt("RAS"))
        affine = affine @ nib.orientations.inv_ornt_aff(transform, shape)
        shape = tuple(shape[int(i)] for i in np.argsort(transform[:, 0]))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if cfg.spacing is not None:
        ratio = np.asarray(cfg.spacing, float) / zooms  # new voxel size in old voxels
        new_shape = tuple(max(1, int(round(n / r))) for n, r in zip(shape, ratio))
        step = np.diag([*ratio, 1.0])
        step[:3, 3] = (ratio - 1.0) / 2.0  # first new voxel centred in the old field of view's corner
        affine = affine @ step
        shape = new_shape
        zooms = np.asarray(cfg.spacing, float)
        n = int(np.prod(shape, dtype=np.int64))
        if n > MAX_VOXELS:
            raise LesionsegError(f"preprocess.spacing {tuple(cfg.spacing)} mm makes a {'x'.join(map(str, shape))} "
                                 f"working grid ({n / 1e6:.0f} M voxels), more than lesionseg holds "
                                 f"({MAX_VOXELS / 1e6:.0f} M); choose larger voxels")
    return Grid(shape, affine, tuple(float(z) for z in zooms))  # type: ignore[arg-type]


def resample(volume: np.ndarray, source: Grid, target: Grid, order: int = 1) -> np.ndarray:
    """``volume`` (on ``source``) sampled at the voxel centres of ``target`` (0 outside the source).

    A source voxel covers its whole extent, half a voxel either side of its centre: target
    centres in that outer half of the edge voxels take the edge value (the volume is padded by
    its edge before sampling), so the first and last thick slice of an exam reach the working
    grid at full brightness, not faded or blanked by where exactly the grids' corners fall.
    Beyond one source voxel outside, the result is 0.

    Parameters
    ----------
    volume : numpy.ndarray
        (D, H, W) on the source grid.
    source, target : Grid
        The two grids (their affines place both in one world space).
    order : int
        0 nearest (masks), 1 trilinear (images, probabilities).

    Returns
    -------
    numpy.ndarray
        (target.shape) float32 (order 1) or the input's dtype (order 0).
    """
    if tuple(source.shape) == tuple(target.shape) and np.allclose(source.affine, target.affine, atol=1e-6):
        return volume.copy()
    mapping = np.linalg.inv(np.asarray(source.affine, float)) @ np.asarray(target.affine, float)
    data = volume.astype(np.float32, copy=False) if order > 0 else volume
    padded = np.pad(data, 1, mode="edge")  # the edge voxels' outer halves (see above); index shift +1
    out = ndimage.affine_transform(padded, mapping[:3, :3], offset=mapping[:3, 3] + 1.0,
                                   output_shape=tuple(target.shape), order=order, mode="constant", cval=0.0,
                                   prefilter=False)
    return out


def bias_correct(channel: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...], shrink: int = 4) -> np.ndarray:
    """N4 bias-field correction of one channel (SimpleITK), fitted inside ``mask`` on a shrunk copy.

    Parameters
    ----------
    channel : numpy.ndarray
        (D, H, W) intensities (≥ 0).
    mask : numpy.ndarray
        (D, H, W) bool region whose intensities define the field (the head or the brain).
    spacing : tuple of float
        Voxel size in mm.
    shrink : int
        Shrink factor of the fitting copy (4: a 1 mm brain fits in seconds).

    Returns
    -------
    numpy.ndarray
        (D, H, W) float32 corrected intensities (0 where ``channel`` is 0).
    """
    import SimpleITK as sitk  # local: a compiled library only the preprocessing needs

    image = sitk.GetImageFromArray(np.ascontiguousarray(channel, np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    region = sitk.GetImageFromArray(np.ascontiguousarray(mask, np.uint8))
    region.CopyInformation(image)
    factors = [max(1, min(shrink, n // 8)) for n in image.GetSize()]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(region, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([30, 30, 20])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    field = np.exp(sitk.GetArrayFromImage(log_field)).astype(np.float32)
    out = np.asarray(channel, np.float32) / np.maximum(field, 1e-6)
    out[np.asarray(channel) == 0] = 0.0
    return out


def dark_band_share(channel: np.ndarray, zooms: tuple[float, ...]) -> float:
    """Share of dark voxels 3–12 mm inside the edge of the non-zero region, in plane, over the central slices.

    Under the edge of a head lies the skull (dark on every MR contrast); under the edge of a
    skull-stripped brain lies brain.  Distances are taken within each slice (across the thickest
    axis, or the last for isotropic voxels) so that thick slices' partial volume at the top and
    bottom of a brain does not count, and only the central half of the slices that are at least
    half filled is read.  Dark: under a fifth of the 90th percentile of the non-zero voxels (the
    brightest tissue; not Otsu, which a thick skull class pulls down to its own level).  Zeros
    enclosed by the non-zero region (a skull whose low values a scanner set to 0) are inside it, and dark.

    Returns
    -------
    float
        In [0, 1]; NaN when the image has no such band (empty, or thinner than 3 mm).
    """
    x = np.asarray(channel, np.float32)
    nonzero = x > 0
    if not nonzero.any():
        return float("nan")
    zooms = tuple(float(z) for z in zooms)
    axis = int(np.argmax(zooms)) if max(zooms) > 1.5 * min(zooms) else 2
    filled = nonzero.sum(axis=tuple(a for a in range(3) if a != axis))
    central = np.flatnonzero(filled >= 0.5 * filled.max())
    keep = [slice(None)] * 3
    keep[axis] = slice(int(central[len(central) // 4]), int(central[(3 * len(central)) // 4]) + 1)
    part = x[tuple(keep)]
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[tuple(1 if a == axis else slice(None) for a in range(3))] = ndimage.generate_binary_structure(2, 1)
    inside = ndimage.binary_fill_holes(nonzero[tuple(keep)], structure=in_plane)  # zeros within the head count
    sampling = list(zooms)
    sampling[axis] = 1e6  # no distance across slices
    depth = ndimage.distance_transform_edt(inside, sampling=sampling)
    band = (depth > 3.0) & (depth <= 12.0)
    if not band.any():
        return float("nan")
    return float(np.mean(part[band] < 0.2 * np.percentile(x[nonzero], 90)))


def looks_skull_stripped(channel: np.ndarray, zooms: tuple[float, ...]) -> bool:
    """Whether an image is a skull-stripped brain: mostly exact zeros, and no skull under its edge.

    Exact zeros alone are not enough: a head whose background the scanner or a conversion set to
    0 has them too; :func:`dark_band_share` tells the two apart (:data:`STRIPPED_DARK_BAND`).
    Read it on the file's own grid (before resampling).

    Examples
    --------
    >>> brain = np.zeros((40, 40, 40), np.float32); brain[8:32, 8:32, 8:32] = 100.0
    >>> looks_skull_stripped(brain, (1.0, 1.0, 1.0))
    True
    >>> head = np.zeros((60, 60, 60), np.float32); head[4:56, 4:56, 4:56] = 150.0  # scalp
    >>> head[9:51, 9:51, 9:51] = 5.0                                                # skull
    >>> head[18:42, 18:42, 18:42] = 100.0                                          # brain
    >>> looks_skull_stripped(head, (1.0, 1.0, 1.0))  # exact zeros around it, but a skull under its edge
    False
    """
    x = np.asarray(channel)
    if float(np.mean(x == 0)) < ALREADY_STRIPPED_ZERO_SHARE:
        return False
    share = dark_band_share(x, zooms)
    return bool(np.isnan(share) or share <= STRIPPED_DARK_BAND)


def brain_mask(channel: np.ndarray, spacing: tuple[float, ...], erosion_mm: float = 3.0,
               stripped: bool | None = None) -> np.ndarray:
    """The brain of a head: Otsu foreground, cut from skull and scalp by erosion, largest part, grown back.

    A morphological skull strip (no trained weights to download).  An image that is already
    skull-stripped (``stripped``; ``None``: :func:`looks_skull_stripped` of ``channel``) keeps its
    non-zero region.  Otherwise the head's foreground is
    thresholded (Otsu, scikit-image), eroded by ``erosion_mm`` so that the thin dark skull and CSF
    layers separate the brain from the scalp, the largest connected part is kept, dilated back by
    the same amount inside the foreground, and its holes (ventricles) filled.

    Parameters
    ----------
    channel : numpy.ndarray
        (D, H, W) intensities (a FLAIR or T1 of the whole head).
    spacing : tuple of float
        Voxel size in mm (the erosion is in mm along every axis).
    erosion_mm : float
        Erosion depth.
    stripped : bool or None
        Whether the image is skull-stripped already, as read on the exam's own grid
        (:func:`prepare` does); ``None`` reads it from ``channel``.

    Returns
    -------
    numpy.ndarray
        (D, H, W) bool brain mask.
    """
    from skimage.filters import threshold_otsu

    x = np.asarray(channel, np.float32)
    values = x[x > 0]
    if values.size == 0:
        raise LesionsegError("brain extraction: no voxel above 0 (an image of zeros, or of negative values only)")
    if stripped is None:
        stripped = looks_skull_stripped(x, spacing)
    if stripped:
        return x > 0  # skull-stripped already: keep its brain
    # Otsu on values clipped at their 99.9th percentile: a few spikes (1e6 in the air) would otherwise
    # set the threshold above every tissue and leave a "brain" of the spikes alone
    head = x > threshold_otsu(np.minimum(values, np.percentile(values, 99.9)))
    radius = [max(1, int(round(erosion_mm / float(s)))) for s in spacing]
    ball = _ellipsoid_structure(radius)
    core = ndimage.binary_erosion(head, structure=ball)
    labels, n = ndimage.label(core)
    if n == 0:
        return ndimage.binary_fill_holes(head)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    # the largest part, and any part at least BRAIN_PART_SHARE of it: a brain cut in two by missing
    # (zeroed) slices keeps both halves, while eyes and scalp islands (a few % of it) go; a thick scalp
    # survives the erosion as a shell around the brain, which no brain part is
    sizes = _without_shells(labels, sizes)
    brain = np.isin(labels, 1 + np.flatnonzero(sizes >= BRAIN_PART_SHARE * sizes.max()))
    brain = ndimage.binary_dilation(brain, structure=ball) & (x > 0)
    return ndimage.binary_fill_holes(brain)


BRAIN_PART_SHARE = 0.2
"""Smallest part of the eroded head kept beside the largest, as a share of it."""


def _encloses(outer: np.ndarray, inner: np.ndarray) -> bool:
    """Whether ``outer`` surrounds most of ``inner`` within the slices of some axis (a shell, open at its ends or not).

    Surrounded: from a voxel of ``inner``, the four rays within its slice (both ways along the two
    other axes) all meet ``outer``.  Rays, not hole filling, so that a shell that erosion left with
    gaps still counts; a brain half beside the other half meets it along one ray only.
    """
    for axis in range(3):
        hit = np.ones(outer.shape, bool)
        for along in (a for a in range(3) if a != axis):
            hit &= np.logical_or.accumulate(outer, axis=along)
            hit &= np.flip(np.logical_or.accumulate(np.flip(outer, along), axis=along), along)
        if hit[inner].mean() > 0.5:
            return True
    return False


def _without_shells(labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``sizes`` with 0 for the parts that surround another large part: scalp that outlasted the erosion.

    A scalp thicker than twice the erosion depth (fat, 7 mm and more) stays one part around the
    brain, possibly larger than it; kept, it and everything inside it (skull, CSF) would be filled in
    as brain.  Only parts of at least :data:`BRAIN_PART_SHARE` of the largest are looked at.
    """
    large = np.flatnonzero(sizes >= BRAIN_PART_SHARE * sizes.max())
    if len(large) < 2:
        return sizes
    large = large[np.argsort(sizes[large])[::-1]]
    out = sizes.copy()
    for i in large:
        other = next(j for j in large if j != i)  # the largest other part
        if _encloses(labels == i + 1, labels == other + 1):
            out[i] = 0
    return out if out.max() > 0 else sizes


def _nonnegative(image: np.ndarray) -> np.ndarray:
    """Channels shifted to start at 0 where they go below it (an offset from the converter; MR magnitudes are >= 0).

    Brain extraction and N4 read intensities above 0 as the head; an exam stored with an offset
    (all values negative, or its air at -200) would otherwise lose its air, or all of itself.
    """
    low = image.reshape(-1, image.shape[-1]).min(axis=0)
    if (low >= 0).all():
        return image
    log.warning("negative intensities (minimum %s): each such channel is shifted to start at 0 before brain "
                "extraction and bias correction", ", ".join(f"{v:g}" for v in low))
    return (image - np.minimum(low, 0.0)).astype(np.float32)


def _ellipsoid_structure(radius: list[int]) -> np.ndarray:
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grid, radius)) <= 1.0


@dataclass(frozen=True, eq=False)
class Prepared:
    """A case on its working grid.

    Attributes
    ----------
    image : numpy.ndarray
        (d, h, w, C) float32 raw intensities on the working grid (brain only with brain extraction).
    mask : numpy.ndarray or None
        (d, h, w) uint8 lesion mask on the working grid.
    grid : Grid
        The working grid.
    source : Grid
        The input file's grid (where outputs go back to).
    """

    image: np.ndarray
    mask: np.ndarray | None
    grid: Grid
    source: Grid

    def to_source(self, prob: np.ndarray) -> np.ndarray:
        """A working-grid probability map on the input's grid (trilinear), in [0, 1]."""
        return np.clip(resample(prob, self.grid, self.source, order=1), 0.0, 1.0).astype(np.float32)


def to_input_grid(prob: np.ndarray, grid: Grid, cfg: PreprocessConfig) -> np.ndarray:
    """A probability map on the working grid of ``grid`` under ``cfg``, resampled onto ``grid`` itself.

    The identity (no copy) when preprocessing is off.
    """
    if not is_active(cfg):
        return prob
    work = working_grid(grid, cfg)
    return np.clip(resample(prob, work, grid, order=1), 0.0, 1.0).astype(np.float32)


def prepare(image: np.ndarray, mask: np.ndarray | None, grid: Grid, cfg: PreprocessConfig) -> Prepared:
    """Bring a case (channels-last image, optional lesion mask) to the working grid of ``cfg``.

    With every step off this is the identity (the arrays themselves, no copy).
    """
    if not is_active(cfg):
        return Prepared(image, mask, grid, grid)
    work = working_grid(grid, cfg)
    if cfg.brain_extraction or cfg.bias_correction:
        image = _nonnegative(image)
    channels = [resample(image[..., c], grid, work, order=1) for c in range(image.shape[-1])]
    moved = None if mask is None else resample(np.asarray(mask, np.uint8), grid, work, order=0).astype(np.uint8)
    if cfg.brain_extraction or cfg.bias_correction:
        reference = channels[0]
        stripped = looks_skull_stripped(image[..., 0], grid.zooms) if cfg.brain_extraction else True
        region = brain_mask(reference, work.zooms, stripped=stripped) if cfg.brain_extraction else reference > 0
        if cfg.bias_correction:
            channels = [bias_correct(ch, region & (ch > 0), work.zooms) for ch in channels]
        if cfg.brain_extraction:
            channels = [np.where(region, ch, 0.0).astype(np.float32) for ch in channels]
    stacked = np.stack(channels, axis=-1).astype(np.float32, copy=False)
    log.debug("preprocessed %s -> %s voxels of %s mm", grid.shape, work.shape, work.zooms)
    return Prepared(stacked, moved, work, grid)
