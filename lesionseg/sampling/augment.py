"""Training-time augmentation of patches, suited to MRI lesions.

Spatial changes (flips, axial 90° rotations) are applied to image and mask
alike; voxel-wise intensity changes (per-channel scaling and shift, Gaussian noise, gamma
contrast, a smooth bias field, fainter lesions) to the image only, and only inside the non-zero region, so the background stays
exactly 0 as in the normalised volumes inference sees.  :func:`thick_slices` makes a
patch look like a thick-slice clinical scan resampled to the working grid (the mask keeps
its full resolution: the model learns to find the lesion the thick slices blurred).  Everything is plain
numpy on one patch, driven by an explicit :class:`numpy.random.Generator`;
the same generator state gives the same result.
"""

from __future__ import annotations

import numpy as np

from lesionseg.config import AugmentConfig


def random_flip(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)
) -> tuple[np.ndarray, np.ndarray]:
    """Flip each of ``axes`` with probability 0.5 (image (d, h, w, C), mask (d, h, w))."""
    flips = tuple(a for a in axes if rng.random() < 0.5)
    if not flips:
        return image, mask
    return np.flip(image, flips), np.flip(mask, flips)


def random_rot90(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by k·90° in the plane of axes 0 and 1 (the axial plane of RAS/LAS volumes).

    A patch that is not square in that plane is only rotated by 0° or 180°,
    so its shape never changes.
    """
    k = int(rng.integers(4))
    if image.shape[0] != image.shape[1]:
        k = 2 * (k % 2)
    if k == 0:
        return image, mask
    return np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))


def intensity_jitter(
    rng: np.random.Generator, image: np.ndarray, scale: float = 0.1, shift: float = 0.1, noise_std: float = 0.0
) -> np.ndarray:
    """Per-channel ``x * a + b`` (+ noise) inside the non-zero region.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    image : numpy.ndarray
        (d, h, w, C) float32 normalised patch.
    scale : float
        ``a`` uniform in [1 - scale, 1 + scale] per channel.
    shift : float
        ``b`` uniform in [-shift, shift] per channel (normalised units).
    noise_std : float
        Standard deviation of added Gaussian noise (0 = none).

    Returns
    -------
    numpy.ndarray
        (d, h, w, C) float32, a new array; voxels that are 0 in every
        channel stay 0.
    """
    channels = image.shape[-1]
    a = rng.uniform(1 - scale, 1 + scale, channels).astype(np.float32)
    b = rng.uniform(-shift, shift, channels).astype(np.float32)
    # channel by channel: numpy is slow on a broadcast over a last axis of length C
    out = np.empty(image.shape, np.float32)
    inside = image[..., 0] != 0 if shift > 0 or noise_std > 0 else None
    for c in range(1, channels if inside is not None else 1):
        inside |= image[..., c] != 0
    noise = (
        rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_std) if noise_std > 0 else None
    )
    for c in range(channels):
        o = out[..., c]
        np.multiply(image[..., c], a[c], out=o)  # zero background stays zero
        if inside is None:
            continue
        if shift > 0:
            o += b[c]
        if noise is not None:
            o += noise[..., c]
        o *= inside
    return out


FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def gamma_contrast(rng: np.random.Generator, image: np.ndarray, gamma: tuple[float, float]) -> np.ndarray:
    """Another field strength's or sequence's contrast: ``x ** g`` on each channel rescaled to [0, 1].

    ``g`` is drawn log-uniformly from ``gamma`` (per patch, the same for every channel, as nnU-Net
    does); each channel's non-zero voxels are mapped to [0, 1] by their patch minimum and maximum,
    raised to ``g`` and mapped back, so the range is kept and the contrast between bright lesions
    and the tissue around them changes.  Voxels 0 in every channel stay 0.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    image : numpy.ndarray
        (d, h, w, C) float32 patch.
    gamma : tuple of float
        Range of the exponent, ``0 < low <= high``.

    Returns
    -------
    numpy.ndarray
        (d, h, w, C) float32, a new array.
    """
    g = float(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]))))
    inside = np.any(image != 0, axis=-1)
    out = np.array(image, dtype=np.float32, copy=True)
    if not inside.any():
        return out
    for c in range(image.shape[-1]):
        values = image[..., c][inside]
        lo, hi = float(values.min()), float(values.max())
        if hi - lo < 1e-6:
            continue
        unit = (values - lo) / (hi - lo)
        out[..., c][inside] = (np.power(unit, g) * (hi - lo) + lo).astype(np.float32)
    return out


def bias_field(rng: np.random.Generator, image: np.ndarray, strength: float, order: int = 3) -> np.ndarray:
    """A smooth multiplicative intensity inhomogeneity, as a receive coil leaves it.

    The field is ``exp(p(x, y, z))`` with ``p`` a polynomial of degree ``order`` in patch
    coordinates scaled to [-1, 1], random coefficients scaled so that ``|p| <= strength``.  It
    multiplies the intensities measured from the patch's lowest non-zero value (for normalised
    images that value stands for the scanner's zero), so bright voxels change most.  Voxels 0 in
    every channel stay 0.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    image : numpy.ndarray
        (d, h, w, C) float32 patch.
    strength : float
        Largest log-amplitude of the field (0.3: intensities within about ×0.74–×1.35).
    order : int
        Degree of the polynomial.

    Returns
    -------
    numpy.ndarray
        (d, h, w, C) float32, a new array.
    """
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in image.shape[:3]]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    field = np.zeros(image.shape[:3], np.float32)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                if i + j + k:
                    field += np.float32(rng.uniform(-1.0, 1.0)) * (x**i) * (y**j) * (z**k)
    peak = float(np.abs(field).max())
    if peak > 0:
        field *= np.float32(strength / peak)
    gain = np.exp(field)
    inside = np.any(image != 0, axis=-1)
    out = np.array(image, dtype=np.float32, copy=True)
    if not inside.any():
        return out
    for c in range(image.shape[-1]):
        channel = image[..., c]
        base = float(channel[inside].min())
        out[..., c] = np.where(inside, (channel - base) * gain + base, 0.0)
    return out


def thick_slices(rng: np.random.Generator, image: np.ndarray, thickness: tuple[float, float], axis: int,
                 in_plane: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A patch as a thick-slice acquisition would show it after resampling to the working grid.

    A thickness ``t`` (voxels) is drawn uniformly from ``thickness``; the image is blurred along
    ``axis`` with a Gaussian slice profile of FWHM ``t``, kept only at slices ``t`` apart (a random
    phase), and linearly interpolated back between them.  An in-plane voxel size ``p`` drawn from
    ``in_plane`` blurs the two other axes with FWHM ``sqrt(p² - 1)`` (``p <= 1``: nothing, a voxel
    finer than the working grid is not seen there).  Voxels that were 0 in every channel stay 0.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    image : numpy.ndarray
        (d, h, w, C) float32 patch.
    thickness : tuple of float
        Range of slice thickness in voxels.
    axis : int
        Spatial axis across slices.
    in_plane : tuple of float
        Range of the in-plane voxel size in voxels of the working grid.

    Returns
    -------
    numpy.ndarray
        (d, h, w, C) float32, a new array.
    """
    from scipy import ndimage  # local: only this augmentation needs it

    t = float(rng.uniform(thickness[0], thickness[1]))
    inside = np.any(image != 0, axis=-1)
    blurred = ndimage.gaussian_filter1d(image, t * FWHM_TO_SIGMA, axis=axis, mode="nearest")
    if in_plane[1] > 1.0:
        p = float(rng.uniform(in_plane[0], in_plane[1]))
        if p > 1.0:
            sigma = [0.0] * image.ndim
            for a in range(3):
                if a != axis:
                    sigma[a] = float(np.sqrt(p * p - 1.0)) * FWHM_TO_SIGMA
            blurred = ndimage.gaussian_filter(blurred, sigma, mode="nearest")
    n = image.shape[axis]
    phase = float(rng.uniform(0.0, t))
    centres = np.arange(phase, n, t)
    if centres.size < 2:
        centres = np.array([min(phase, n - 1.0), n - 1.0])
    lo = np.clip(np.floor(centres).astype(int), 0, n - 1)
    kept = np.take(blurred, lo, axis=axis)  # the acquired slices
    pos = np.clip((np.arange(n) - centres[0]) / t, 0.0, centres.size - 1.0)
    left = np.floor(pos).astype(int)
    right = np.minimum(left + 1, centres.size - 1)
    w = (pos - left).astype(np.float32)
    shape = [1] * image.ndim
    shape[axis] = n
    w = w.reshape(shape)
    out = np.take(kept, left, axis=axis) * (1 - w) + np.take(kept, right, axis=axis) * w
    out *= inside[..., np.newaxis]
    return out.astype(np.float32, copy=False)


def lesion_contrast(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, factor: tuple[float, float]
) -> np.ndarray:
    """Dim (or brighten) the lesions of a patch towards the normal tissue around them.

    Lesions differ in how far they stand out from the tissue: an old plaque, a confluent lesion
    in a low-contrast exam, a small lesion halved by partial volume.  Every voxel's deviation
    from the normalised tissue level 0 (what the ``tissue``/``tissue_ratio``/``zscore``
    normalisations put there) is multiplied by ``1 - (1 - c) * w``: ``c`` is drawn once per patch
    from ``factor``, ``w`` is 1 on the lesion mask and falls off over about a voxel around it
    (a Gaussian of σ = 1 voxel), so no step appears at the lesion's edge.  The mask is unchanged:
    the network learns that a lesion stays a lesion when it is fainter.  Voxels 0 in every
    channel stay 0; a patch without lesion voxels is returned unchanged.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    image : numpy.ndarray
        (d, h, w, C) float32 normalised patch.
    mask : numpy.ndarray
        (d, h, w) lesion mask.
    factor : tuple of float
        Range of ``c`` (uniform), ``0 < low <= high``; 1 leaves the patch as it is.

    Returns
    -------
    numpy.ndarray
        (d, h, w, C) float32, a new array (or ``image`` itself when the patch has no lesion).
    """
    lesion = np.asarray(mask) > 0
    if not lesion.any():
        return image
    from scipy import ndimage  # local: only the augmentations need it

    c = float(rng.uniform(factor[0], factor[1]))
    weight = np.maximum(ndimage.gaussian_filter(lesion.astype(np.float32), 1.0, mode="nearest"), lesion)
    gain = (1.0 - (1.0 - c) * weight).astype(np.float32)
    return (image * gain[..., np.newaxis]).astype(np.float32, copy=False)


def augment_patch(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the configured augmentation to one patch.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source (one per patch, see :func:`lesionseg.sampling.extraction.patch_rng`).
    image : numpy.ndarray
        (d, h, w, C) float32 normalised patch.
    mask : numpy.ndarray
        (d, h, w) lesion mask.
    cfg : AugmentConfig
        Flips, rotation, intensity and noise settings.

    Returns
    -------
    image, mask : numpy.ndarray
        New C-contiguous arrays of the same shapes and dtypes.
    """
    if cfg.flip_axes:
        image, mask = random_flip(rng, image, mask, tuple(cfg.flip_axes))
    if cfg.rotate90:
        image, mask = random_rot90(rng, image, mask)
    if cfg.lesion_contrast_probability > 0 and rng.random() < cfg.lesion_contrast_probability:
        image = lesion_contrast(rng, image, mask, tuple(cfg.lesion_contrast_range))  # type: ignore[arg-type]
    if cfg.intensity_scale > 0 or cfg.intensity_shift > 0 or cfg.noise_std > 0:
        # reads the flipped/rotated view once and writes a fresh contiguous array
        noise = cfg.noise_std if cfg.noise_std > 0 and rng.random() < cfg.noise_probability else 0.0
        image = intensity_jitter(rng, image, cfg.intensity_scale, cfg.intensity_shift, noise)
    if cfg.gamma_probability > 0 and rng.random() < cfg.gamma_probability:
        image = gamma_contrast(rng, image, tuple(cfg.gamma_range))  # type: ignore[arg-type]
    if cfg.bias_field_probability > 0 and rng.random() < cfg.bias_field_probability:
        image = bias_field(rng, image, cfg.bias_field_strength)
    if cfg.thick_slice_probability > 0 and rng.random() < cfg.thick_slice_probability:
        axes = tuple(cfg.thick_slice_axis)
        axis = axes[0] if len(axes) == 1 else int(axes[rng.integers(len(axes))])  # one axis: the stream of before
        image = thick_slices(rng, image, tuple(cfg.thick_slice_mm), axis,  # type: ignore[arg-type]
                             tuple(cfg.thick_slice_in_plane_mm))  # type: ignore[arg-type]
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask)
