"""NIfTI volumes and other outputs out: atomic writes, volumes on the input grid.

:func:`atomic_path` gives every output a temporary sibling name that is
renamed to the final name only on success, so a failed run never leaves a
half-written file behind.  :func:`write_like` writes a volume on the grid of a
case read by :func:`~lesionseg.data.io.read_case`: same shape, same affine
bit-for-bit, same orientation codes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.paths import temporary_name


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``path`` only on success.

    Nothing is left behind when the body raises, so a failed run never
    leaves a half-written output under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)  # names the writing process: a rerun removes it if that one died
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_folder(new: Path, final: Path) -> Path:
    """Move the finished folder ``new`` to ``final``, replacing an earlier ``final`` whole; ``final``.

    The earlier folder is renamed aside first and removed only once the new one is in place, so
    at every moment ``final`` is either the old folder or the new one.
    """
    new, final = Path(new), Path(final)
    aside = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, aside)
    try:
        os.replace(new, final)
    except OSError:
        if aside.exists() and not final.exists():
            os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return final


def write_like(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: type | np.dtype = np.float32,
) -> Path:
    """Write a volume on a reference grid, atomically.

    Parameters
    ----------
    path : str or Path
        Output ``.nii.gz`` or ``.nii`` path.
    array : numpy.ndarray
        (D, H, W) data on the reference grid.
    affine : numpy.ndarray
        The reference (4, 4) affine, kept bit-for-bit.
    header : nibabel.Nifti1Header or None
        Reference header (orientation codes, units, description are kept;
        data type and scaling are reset).
    dtype : numpy dtype
        Stored data type (``float32`` probabilities, ``uint8`` masks).

    Returns
    -------
    Path
        The written path.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_like expects a 3D array, got shape {array.shape}")
    out_header = header.copy() if header is not None else nib.Nifti1Header()
    out_header.set_data_dtype(dtype)
    out_header.set_data_shape(array.shape)
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine, out_header)
    # the reference's own codes (scanner/MNI/none): an input without orientation codes gets an output
    # without them too, read back by every tool as it read the input, never a claimed "aligned" space
    if header is not None:
        scode, qcode = int(header["sform_code"]), int(header["qform_code"])
        img.set_sform(affine, code=scode)
        img.set_qform(affine, code=qcode)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
