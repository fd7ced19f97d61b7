"""Clinical acquisitions made from research exams: thick slices, coarse in-plane voxels, a head around the brain.

``lesionseg thick-slices --data DATA --out OUT`` writes, for every case of DATA, the same exam as a
2D clinical FLAIR would show it: each slice the average of ``slice_mm`` of tissue (a Gaussian slice
profile of that FWHM along the slice axis), slices every ``slice_mm + gap_mm``, in-plane voxels of
``in_plane_mm``.  The lesion mask goes onto the same grid (a thick voxel is lesion when at least
half of it was), so an exam and its truth stay aligned, as an expert marks a thick-slice scan.

Examples
--------
>>> import numpy as np
>>> from lesionseg.data.io import Grid
>>> grid = Grid((180, 200, 140), np.eye(4), (1.0, 1.0, 1.0))
>>> thick = thick_slice_grid(grid, slice_mm=7.0, in_plane_mm=0.9, gap_mm=0.0, axis=2)
>>> thick.shape, tuple(round(z, 2) for z in thick.zooms)
((200, 222, 20), (0.9, 0.9, 7.0))
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from lesionseg.data import io
from lesionseg.data.io import Grid
from lesionseg.data.preprocess import resample
from lesionseg.data.writing import write_like
from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def thick_slice_grid(grid: Grid, slice_mm: float, in_plane_mm: float, gap_mm: float = 0.0, axis: int = 2) -> Grid:
    """The grid of a thick-slice acquisition covering the field of view of ``grid``.

    Parameters
    ----------
    grid : Grid
        The source grid (any voxel size).
    slice_mm, in_plane_mm, gap_mm : float
        Slice thickness, in-plane voxel size and gap between slices (mm).
    axis : int
        The voxel axis across slices.

    Returns
    -------
    Grid
    """
    if not (slice_mm > 0 and in_plane_mm > 0 and gap_mm >= 0 and math.isfinite(slice_mm + in_plane_mm + gap_mm)) \
            or axis not in (0, 1, 2):
        raise LesionsegError(
            f"thick slices: need slice_mm > 0, in_plane_mm > 0, gap_mm >= 0 and axis 0-2, "
            f"got {slice_mm}, {in_plane_mm}, {gap_mm}, {axis}"
        )
    zooms = np.asarray(grid.zooms, float)
    target = np.full(3, float(in_plane_mm))
    target[axis] = slice_mm + gap_mm
    ratio = target / zooms
    shape = tuple(max(1, int(round(n / r))) for n, r in zip(grid.shape, ratio))
    step = np.diag([*ratio, 1.0])
    step[:3, 3] = (ratio - 1.0) / 2.0
    return Grid(shape, np.asarray(grid.affine, float) @ step, tuple(float(t) for t in target))  # type: ignore[arg-type]


def slice_profile(volume: np.ndarray, zooms: tuple[float, ...], slice_mm: float, in_plane_mm: float,
                  axis: int) -> np.ndarray:
    """Blur a volume as one thick slice and one coarse in-plane voxel average it (Gaussian profiles)."""
    sigma = []
    for a, z in enumerate(zooms):
        width = slice_mm if a == axis else in_plane_mm
        sigma.append(max(0.0, (width * width - float(z) * float(z))) ** 0.5 * FWHM_TO_SIGMA / float(z))
    return ndimage.gaussian_filter(np.asarray(volume, np.float32), sigma)


def thick_slice_case(case_dir: Path, out_dir: Path, channels: list[str], mask_name: str | None,
                     slice_mm: float, in_plane_mm: float, gap_mm: float, axis: int) -> Path:
    """Write one case as a thick-slice exam into ``out_dir/<case>``; its folder."""
    target_dir = Path(out_dir) / case_dir.name
    target_dir.mkdir(parents=True, exist_ok=True)
    names = list(channels) + ([mask_name] if mask_name and io.find_file(case_dir, mask_name) else [])
    for name in names:
        path = io.find_file(case_dir, name)
        if path is None:
            raise LesionsegError(f"{case_dir.name}/{name}.nii.gz: missing")
        img = nib.load(str(path))
        grid = Grid(img.shape[:3], img.affine, tuple(float(z) for z in img.header.get_zooms()[:3]))
        thick = thick_slice_grid(grid, slice_mm, in_plane_mm, gap_mm, axis)
        data = np.asarray(img.dataobj, np.float32)
        blurred = slice_profile(data, grid.zooms, slice_mm, in_plane_mm, axis)
        moved = resample(blurred, grid, thick, order=1)
        header = img.header.copy()
        header.set_zooms(thick.zooms)
        if name == mask_name:
            write_like(target_dir / f"{name}.nii.gz", (moved >= 0.5).astype(np.uint8), thick.affine, header, np.uint8)
        else:
            write_like(target_dir / f"{name}.nii.gz", np.clip(moved, 0, None), thick.affine, header, np.float32)
    return target_dir


def write_thick_slices(data_dir: Path, out_dir: Path, channels: list[str], mask_name: str | None = "lesion_mask",
                       slice_mm: float = 7.0, in_plane_mm: float = 0.9, gap_mm: float = 0.0,
                       axis: int = 2) -> list[Path]:
    """Every case of ``data_dir`` as a thick-slice exam (see the module); the folders written."""
    thick_slice_grid(Grid((1, 1, 1), np.eye(4), (1.0, 1.0, 1.0)), slice_mm, in_plane_mm, gap_mm, axis)  # check args
    cases = io.list_cases(data_dir)
    written = []
    for n, case_dir in enumerate(cases, 1):
        written.append(thick_slice_case(case_dir, out_dir, channels, mask_name, slice_mm, in_plane_mm, gap_mm, axis))
        log.info("%d/%d %s: %g mm slices (+%g mm gap), %g mm in plane", n, len(cases), case_dir.name, slice_mm,
                 gap_mm, in_plane_mm)
    return written
