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
import os
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesionseg.data import io
from lesionseg.data.io import Grid
from lesionseg.data.preprocess import resample
from lesionseg.data.writing import replace_folder, write_like
from lesionseg.errors import LesionsegError
from lesionseg.paths import process_alive

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


def _thick_slice_names(case_dir: Path, channels: list[str], mask_name: str | None) -> list[str]:
    return list(channels) + ([mask_name] if mask_name and io.find_file(case_dir, mask_name) else [])


def check_thick_slice_case(case_dir: Path, channels: list[str], mask_name: str | None, slice_mm: float,
                           in_plane_mm: float, gap_mm: float, axis: int) -> None:
    """Read a case as infer would and size its thick-slice grid: the first problem, one line, before any write.

    The case's files must pass :func:`~lesionseg.data.io.read_case` (readable, 3D, finite, on one grid,
    a binary mask), and the thick grid may hold no more than :data:`~lesionseg.data.io.MAX_VOXELS`.
    """
    names = _thick_slice_names(case_dir, channels, mask_name)
    case = io.read_case(case_dir, channels, mask_name if mask_name in names else None)
    thick = thick_slice_grid(case.grid, slice_mm, in_plane_mm, gap_mm, axis)
    n = int(np.prod(thick.shape, dtype=np.int64))
    if n > io.MAX_VOXELS:
        raise LesionsegError(f"{case_dir.name}: {in_plane_mm:g} mm in plane and {slice_mm:g} mm slices make "
                             f"{'x'.join(map(str, thick.shape))} voxels, more than lesionseg writes "
                             f"({io.MAX_VOXELS / 1e6:.0f} M); check --in-plane-mm / --slice-mm")


def thick_slice_case(case_dir: Path, out_dir: Path, channels: list[str], mask_name: str | None,
                     slice_mm: float, in_plane_mm: float, gap_mm: float, axis: int) -> Path:
    """Write one case as a thick-slice exam into ``out_dir/<case>``; its folder."""
    target_dir = Path(out_dir) / case_dir.name
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in _thick_slice_names(case_dir, channels, mask_name):
        path = io.require_file(case_dir, name, "mask" if name == mask_name else "channel")
        if name == mask_name:
            data, img = io.read_mask(path)
        else:
            data, img = io.read_image(path)
        grid = io.grid_of(img)
        thick = thick_slice_grid(grid, slice_mm, in_plane_mm, gap_mm, axis)
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
    """Every case of ``data_dir`` as a thick-slice exam (see the module); the folders written.

    Every case is read and checked first (a bad file stops the command before anything is
    written); the cases are then written into a staging folder beside ``out_dir`` and moved in at
    the end, each replacing its earlier version whole, so a failed run leaves ``out_dir`` as it was.
    """
    thick_slice_grid(Grid((1, 1, 1), np.eye(4), (1.0, 1.0, 1.0)), slice_mm, in_plane_mm, gap_mm, axis)  # check args
    cases = io.list_cases(data_dir)
    for case_dir in cases:
        check_thick_slice_case(case_dir, channels, mask_name, slice_mm, in_plane_mm, gap_mm, axis)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for left in out_dir.parent.glob(f".{out_dir.name}.staging-*"):  # of a killed earlier run
        if left.name.rsplit("-", 1)[1].isdigit() and not process_alive(int(left.name.rsplit("-", 1)[1])):
            shutil.rmtree(left, ignore_errors=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    try:
        for n, case_dir in enumerate(cases, 1):
            thick_slice_case(case_dir, staging, channels, mask_name, slice_mm, in_plane_mm, gap_mm, axis)
            log.info("%d/%d %s: %g mm slices (+%g mm gap), %g mm in plane", n, len(cases), case_dir.name, slice_mm,
                     gap_mm, in_plane_mm)
        return [replace_folder(staging / case_dir.name, out_dir / case_dir.name) for case_dir in cases]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
