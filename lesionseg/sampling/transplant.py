"""Lesion transplantation: real lesion shapes from other patients, painted into a training patch.

Four patients show a network a few hundred lesions; a folder of expert masks on the same grid
(``../shared/data/lesjak_masks``: 29 patients in MNI space) holds thousands more real shapes, at
the places MS puts them.  A transplanted patch (``augment.transplant_probability``) takes a donor
mask, cuts the *same voxels* as the patch (lesions stay at their own MNI positions), keeps the
donor lesions that fall inside the exam's brain and off its own lesions, and paints them with the
exam's own lesion contrast: each channel goes towards the mean normalised intensity of the exam's
lesions, with a soft edge (a donor mask blurred by σ = 0.7 voxel: partial volume) and noise of the
exam's lesion spread.  The target mask gains the painted lesions (where the soft mask ≥ 0.5), so
image and mask stay aligned (CarveMix / LesionMix style; Zhang et al. 2021, Basaran et al. 2023).

Donor masks of the patients being trained or evaluated on must be left out
(``augment.transplant_exclude``): in the leave-one-patient-out runs, the masks of the shared
exams' own patients (``patient07``, ``patient19``) would show a held-out patient's lesions.

Examples
--------
>>> import numpy as np
>>> donors = DonorMasks.from_arrays({"a": np.pad(np.ones((2, 2, 2), np.uint8), 3)})
>>> cut = donors.cut("a", corner=(2, 2, 2), size=(4, 4, 4))
>>> int(cut.sum()), cut.shape
(8, (4, 4, 4))
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

EDGE_SIGMA = 0.7


@dataclass(frozen=True, eq=False)
class DonorMasks:
    """Lesion voxel coordinates of donor masks, all on one grid.

    Attributes
    ----------
    shape : tuple of int
        The grid's shape.
    coords : dict of str to numpy.ndarray
        Per donor, (N, 3) int16 voxel coordinates of its lesion voxels.
    """

    shape: tuple[int, int, int]
    coords: dict[str, np.ndarray]

    @classmethod
    def from_arrays(cls, masks: dict[str, np.ndarray]) -> DonorMasks:
        """Donors from in-memory masks (all of one shape)."""
        shapes = {m.shape for m in masks.values()}
        if len(shapes) != 1:
            raise LesionsegError(f"transplant donor masks have different shapes: {sorted(shapes)}")
        return cls(shapes.pop(), {k: np.argwhere(np.asarray(m) != 0).astype(np.int16) for k, m in masks.items()})

    @classmethod
    def from_folder(cls, folder: str | Path, exclude: tuple[str, ...] = ()) -> DonorMasks:
        """Every ``*.nii.gz``/``*.nii`` mask of ``folder`` whose name matches none of ``exclude`` (regexes)."""
        import nibabel as nib

        folder = Path(folder)
        if not folder.is_dir():
            raise LesionsegError(f"{folder}: transplant donor folder not found (augment.transplant_masks)")
        files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")))
        kept = [p for p in files if not any(re.search(pattern, p.name) for pattern in exclude)]
        if not kept:
            raise LesionsegError(f"{folder}: no donor mask left (of {len(files)}; augment.transplant_exclude)")
        masks = {p.name.split(".nii")[0]: np.asarray(nib.load(str(p)).dataobj) for p in kept}
        donors = cls.from_arrays(masks)
        log.info("lesion transplantation: %d donor mask(s) from %s (%d left out), %d lesion voxels",
                 len(kept), folder, len(files) - len(kept), sum(len(c) for c in donors.coords.values()))
        return donors

    @property
    def names(self) -> list[str]:
        """Donor names, sorted."""
        return sorted(self.coords)

    def cut(self, name: str, corner: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
        """The donor's mask inside the box at ``corner`` (voxel indices of the grid; may hang over the edge)."""
        coords = self.coords[name]
        lo = np.asarray(corner, np.int32)
        rel = coords.astype(np.int32) - lo
        inside = np.all((rel >= 0) & (rel < np.asarray(size)), axis=1)
        out = np.zeros(tuple(size), np.uint8)
        r = rel[inside]
        out[r[:, 0], r[:, 1], r[:, 2]] = 1
        return out


def lesion_contrast(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel, mean and standard deviation of the (normalised) image inside the lesions; None without lesions."""
    lesion = np.asarray(mask) != 0
    if not lesion.any():
        return None
    values = image[lesion]
    return values.mean(axis=0).astype(np.float32), values.std(axis=0).astype(np.float32)


def transplant(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    donor: np.ndarray,
    contrast: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a donor's lesions (a patch-shaped mask) into an image patch with the exam's lesion contrast.

    Parameters
    ----------
    rng : numpy.random.Generator
        Noise source.
    image : numpy.ndarray
        (d, h, w, C) float32 normalised patch.
    mask : numpy.ndarray
        (d, h, w) lesion mask of the patch.
    donor : numpy.ndarray
        (d, h, w) donor lesion mask cut at the same voxels (:meth:`DonorMasks.cut`).
    contrast : tuple of numpy.ndarray
        Per-channel lesion mean and standard deviation of the exam (:func:`lesion_contrast`).

    Returns
    -------
    image, mask : numpy.ndarray
        New arrays; unchanged copies when no donor lesion lands in the brain off the exam's lesions.
    """
    brain = np.any(image != 0, axis=-1)
    keep = (donor != 0) & brain & (mask == 0)
    if not keep.any():
        return image.copy(), mask.copy()
    alpha = ndimage.gaussian_filter(keep.astype(np.float32), EDGE_SIGMA)
    alpha = np.clip(alpha / max(float(alpha.max()), 1e-6), 0.0, 1.0)
    alpha[~brain] = 0.0
    alpha[mask != 0] = 0.0
    mean, std = contrast
    noise = rng.standard_normal(image.shape).astype(np.float32) * (0.5 * std)
    target = mean + noise
    out = image * (1.0 - alpha[..., None]) + target * alpha[..., None]
    out[~brain] = 0.0
    new_mask = mask.copy()
    new_mask[alpha >= 0.5] = 1
    return out.astype(np.float32), new_mask
