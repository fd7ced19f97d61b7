"""NIfTI cases in: reading channels, masks and grids, with size and grid checks.

A *case* is a folder ``DATA/<case>/`` with one file per input channel
(``flair.nii.gz``, ``t1.nii.gz``, ...) and optionally the expert mask
(``lesion_mask.nii.gz``).  :func:`read_case` reads the channels into one
channels-last float32 array ``(D, H, W, C)`` in the voxel order stored on disk
(no reorientation), so that everything written back with
:func:`~lesionseg.data.writing.write_like` lies exactly on the input grid: same
shape, same affine bit-for-bit, same orientation (LAS stays LAS).

Every problem with a file raises :class:`~lesionseg.errors.DataError` whose
message names the file and the problem in one line.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.errors import DataError


NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Grid:
    """The voxel grid of a NIfTI file.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape (D, H, W).
    affine : numpy.ndarray
        (4, 4) voxel-to-world (mm) matrix, as nibabel reads it.
    zooms : tuple of float
        Voxel size in mm per axis.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    zooms: tuple[float, float, float]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.zooms))


@dataclass(frozen=True)
class Case:
    """One case read from disk.

    Attributes
    ----------
    case_id : str
        Folder name of the case.
    image : numpy.ndarray
        (D, H, W, C) float32 raw intensities, channels in the requested order.
    mask : numpy.ndarray or None
        (D, H, W) uint8 in {0, 1}, or ``None`` when no mask was read.
    grid : Grid
        The grid of the first channel (all files of a case share it).
    header : nibabel.Nifti1Header
        Header of the first channel, the template for outputs.
    channels : tuple of str
        Channel names, in the order of ``image``'s last axis.
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray | None
    grid: Grid
    header: nib.Nifti1Header
    channels: tuple[str, ...]

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) voxel-to-world matrix of the case."""
        return self.grid.affine


def display_path(path: Path) -> str:
    """``<case>/<file>`` for messages (the part a user recognises)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def find_file(case_dir: Path, stem: str) -> Path | None:
    """Return ``case_dir/stem.nii.gz`` or ``case_dir/stem.nii``, whichever exists.

    Without an exact match, the one file whose name matches ignoring case (``FLAIR.nii.gz`` for
    ``flair``), as scanners' exports name them; two such files are a question only the user answers.
    """
    for suffix in NIFTI_SUFFIXES:
        candidate = Path(case_dir) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    if not Path(case_dir).is_dir():
        return None
    wanted = {f"{stem}{suffix}".lower() for suffix in NIFTI_SUFFIXES}
    found = [p for p in Path(case_dir).iterdir() if p.name.lower() in wanted and p.is_file()]
    if len(found) > 1:
        raise DataError(f"{Path(case_dir).name}: {', '.join(sorted(p.name for p in found))} all name '{stem}' "
                        "(file names differ only in case); keep one")
    return found[0] if found else None


def require_file(case_dir: Path, stem: str, what: str = "file") -> Path:
    """Like :func:`find_file` but raise a one-line :class:`DataError` if missing."""
    found = find_file(case_dir, stem)
    if found is None:
        raise DataError(f"{Path(case_dir).name}/{stem}.nii.gz: missing {what}")
    return found


def list_cases(data_dir: str | Path) -> list[Path]:
    """Case folders of a data directory, sorted by name.

    A folder that itself holds NIfTI files is taken as a single case.

    Raises
    ------
    DataError
        If the folder does not exist or holds no case.
    """
    data_dir = Path(data_dir)
    if data_dir.is_file():
        raise DataError(
            f"{data_dir}: a file, where a folder of cases is read (DATA/<case>/<channel>.nii.gz); "
            f"give its folder {data_dir.parent} (one case) or the folder above it"
        )
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")

    def has_nifti(folder: Path) -> bool:
        return any(p.name.endswith(NIFTI_SUFFIXES) for p in folder.iterdir() if p.is_file())

    if has_nifti(data_dir):
        return [data_dir]
    cases = sorted(p for p in data_dir.iterdir() if p.is_dir() and has_nifti(p))
    if not cases:
        raise DataError(f"{data_dir}: no case folders with .nii/.nii.gz files found")
    return cases


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file, mapping every failure to a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{display_path(path)}: missing file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        reason = " ".join(_short(exc).replace(str(path), path.name).replace(str(path.resolve()), path.name).split())
        raise DataError(f"{display_path(path)}: unreadable NIfTI ({reason})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{display_path(path)}: not a NIfTI image")
    return img


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def grid_of(img: nib.Nifti1Image) -> Grid:
    """The :class:`Grid` of an image (spatial part of a 3D or 4D×1 image)."""
    shape = tuple(int(s) for s in img.shape[:3])
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Grid(shape=shape, affine=np.asarray(img.affine), zooms=zooms)  # type: ignore[arg-type]


def _spatial_shape_or_error(img: nib.Nifti1Image, path: Path) -> None:
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        return
    if len(shape) != 3:
        raise DataError(f"{display_path(path)}: not a 3D volume (shape {tuple(shape)})")


def _affine_or_error(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse a voxel-to-world matrix that places no volume: not finite, or a voxel axis without extent.

    Such a header (an sform row of zeros, a pixdim of 0) has no orientation or voxel size to
    reorient, resample or measure lesions in mm with, and outputs copy it.
    """
    affine = np.asarray(img.affine, np.float64)
    if not np.isfinite(affine).all():
        raise DataError(f"{display_path(path)}: its affine (sform/qform) is not finite; fix the header")
    axes = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(np.linalg.det(affine[:3, :3])) <= 1e-9 * max(float(axes.max()), 1.0) ** 3:
        lengths = ", ".join(f"{v:.3g}" for v in axes)
        raise DataError(f"{display_path(path)}: its affine (sform/qform) is singular (voxel axes of {lengths} mm, "
                        "no volume): no orientation or voxel size to work with; fix the header")


#: The largest volume lesionseg reads (voxels): 2**29, 2 GiB as float32; a 1 mm brain is 7.2 M voxels.
MAX_VOXELS = 2**29
_DEFLATE_MAX_RATIO = 1032  # no deflate stream expands by more than this


def _gzip_size(path: Path) -> int:
    """Uncompressed size of a single-member gzip file, modulo 2**32 (its ISIZE trailer)."""
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        return int.from_bytes(fh.read(4), "little")


def check_data_size(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse, before reading, a header whose data is larger than the file or than memory allows.

    Raises
    ------
    DataError
        More than :data:`MAX_VOXELS` voxels, or a file too short for the data its header describes.
    """
    n = int(np.prod([int(s) for s in img.shape], dtype=np.int64))
    if n > MAX_VOXELS:
        raise DataError(
            f"{display_path(path)}: header claims {'x'.join(map(str, img.shape))} voxels "
            f"({n / 1e6:.0f} M), more than lesionseg reads ({MAX_VOXELS / 1e6:.0f} M)"
        )
    needed = int(getattr(img.dataobj, "offset", 0)) + n * img.get_data_dtype().itemsize
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        have = _gzip_size(path) if size >= 18 else 0
        short = size * _DEFLATE_MAX_RATIO < needed or (needed < 2**32 and have < needed)
    else:
        have, short = size, size < needed
    if short:
        raise DataError(
            f"{display_path(path)}: truncated: the header describes {needed:,} bytes, "
            f"the file holds {have:,}"
        )


def _read_array(img: nib.Nifti1Image, path: Path, dtype: type) -> np.ndarray:
    check_data_size(img, path)
    try:
        data = np.asarray(img.dataobj, dtype=dtype) if _has_scaling(img) else np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{display_path(path)}: corrupt or truncated data ({_short(exc)})") from None
    if data.ndim == 4:
        data = data[..., 0]
    return data


def _has_scaling(img: nib.Nifti1Image) -> bool:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return not ((slope is None or slope == 1.0) and (inter is None or inter == 0.0))


def read_image(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read one image channel as float32.

    Returns
    -------
    data : numpy.ndarray
        (D, H, W) float32.
    img : nibabel.Nifti1Image
        The opened image (for its grid and header).

    Raises
    ------
    DataError
        Missing, unreadable, not 3D, truncated or too large, containing NaN/Inf,
        or blank (every voxel the same value: nothing to find lesions in).
    """
    path = Path(path)
    img = load_nifti(path)
    _spatial_shape_or_error(img, path)
    _affine_or_error(img, path)
    data = _read_array(img, path, np.float32).astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise DataError(f"{display_path(path)}: contains NaN/Inf ({bad} voxels)")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise DataError(f"{display_path(path)}: constant image (every voxel is {lo:g})")
    return data, img


def read_mask(path: str | Path, mask_values: str = "binary") -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a lesion mask as uint8 {0, 1} without a float64 copy of the volume.

    Parameters
    ----------
    path : str or Path
        The mask file.
    mask_values : {"binary", "positive"}
        ``binary``: values other than 0 and 1 are an error naming the values
        found.  ``positive``: any value > 0 is lesion.

    Returns
    -------
    mask : numpy.ndarray
        (D, H, W) uint8 in {0, 1}.
    img : nibabel.Nifti1Image
        The opened image.
    """
    path = Path(path)
    if mask_values not in ("binary", "positive"):
        raise DataError(f"data.mask_values must be 'binary' or 'positive', got {mask_values!r}")
    img = load_nifti(path)
    _spatial_shape_or_error(img, path)
    _affine_or_error(img, path)
    data = _read_array(img, path, np.float32)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError(f"{display_path(path)}: mask contains NaN/Inf")
    if mask_values == "positive":
        return (data > 0).astype(np.uint8), img
    binary = (data == 0) | (data == 1)
    if not binary.all():
        found = np.unique(data[~binary])
        allowed = [v for v in (0, 1) if np.any(data == v)]
        values = sorted({*allowed, *found.tolist()})
        shown = ", ".join(_fmt_value(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise DataError(
            f"{display_path(path)}: mask values are not in {{0, 1}} (found {shown}); "
            "set data.mask_values=positive to treat any value > 0 as lesion"
        )
    return data.astype(np.uint8), img


def _fmt_value(v: float) -> str:
    """A mask value as the user would read it: 1.0000001 stays distinct from 1."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def same_grid(a: Grid, b: Grid, tolerance: float = 1e-3) -> bool:
    """True when two grids have the same shape and affines within ``tolerance`` mm."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0, atol=tolerance))


def _grid_mismatch(ref: Grid, other: Grid, ref_path: Path, path: Path, tolerance: float) -> str | None:
    if ref.shape != other.shape:
        return f"shape {other.shape} differs from {display_path(ref_path)} {ref.shape}"
    diff = float(np.abs(ref.affine - other.affine).max())
    if diff > tolerance:
        return (
            f"affine differs from {display_path(ref_path)} by up to {diff:.3g} mm "
            f"(orientation {''.join(nib.aff2axcodes(other.affine))} vs "
            f"{''.join(nib.aff2axcodes(ref.affine))}); image and mask are not on one grid"
        )
    return None


def read_case(
    case_dir: str | Path,
    channels: Sequence[str],
    mask_name: str | None = None,
    mask_values: str = "binary",
    affine_tolerance: float = 1e-3,
) -> Case:
    """Read a case's channels (and mask) onto one channels-last array.

    Parameters
    ----------
    case_dir : str or Path
        The case folder.
    channels : sequence of str
        Channel file stems in model order.
    mask_name : str or None
        File stem of the mask; ``None`` reads no mask.
    mask_values : {"binary", "positive"}
        See :func:`read_mask`.
    affine_tolerance : float
        Largest allowed affine difference between the files, in mm.

    Returns
    -------
    Case

    Raises
    ------
    DataError
        Missing file, unreadable, not 3D, NaN/Inf, files not on one grid,
        or non-binary mask.
    """
    case_dir = Path(case_dir)
    if not channels:
        raise DataError("data.channels is empty: name at least one input channel")
    arrays = []
    ref_grid: Grid | None = None
    ref_path: Path | None = None
    header = None
    for name in channels:
        path = require_file(case_dir, name, "channel")
        data, img = read_image(path)
        grid = grid_of(img)
        if ref_grid is None:
            ref_grid, ref_path, header = grid, path, img.header.copy()
        else:
            problem = _grid_mismatch(ref_grid, grid, ref_path, path, affine_tolerance)  # type: ignore[arg-type]
            if problem:
                raise DataError(f"{display_path(path)}: {problem}")
        arrays.append(data)
    image = np.stack(arrays, axis=-1) if len(arrays) > 1 else arrays[0][..., None]
    mask = None
    if mask_name is not None:
        path = require_file(case_dir, mask_name, "mask")
        mask, img = read_mask(path, mask_values)
        problem = _grid_mismatch(ref_grid, grid_of(img), ref_path, path, affine_tolerance)  # type: ignore[arg-type]
        if problem:
            raise DataError(f"{display_path(path)}: {problem}")
    return Case(
        case_id=case_dir.name,
        image=image,
        mask=mask,
        grid=ref_grid,  # type: ignore[arg-type]
        header=header,  # type: ignore[arg-type]
        channels=tuple(channels),
    )
