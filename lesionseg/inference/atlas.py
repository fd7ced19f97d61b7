"""A lesion atlas: where in a standard space lesions occur, to drop predictions where they never do.

Built from lesion masks of other patients on one grid (e.g. the 29 Lesjak masks in MNI152 1 mm):
the fraction of masks that mark each voxel, smoothed by a Gaussian (``sigma_mm``) so that a
lesion a few millimetres from any seen one still counts.  A run that has one
(``RUN/lesion_atlas.nii.gz``, written by ``lesionseg atlas``) can drop every predicted component
whose *largest* atlas value is below ``min_atlas`` — cortex, skull-stripping rims and the
caps in front of the ventricles, where the network's false positives gather and no lesion
of the atlas's patients lay.  LST-LPA uses the same kind of spatial covariate.

The cut-off is calibrated on the masks themselves, not on exams: leaving each source patient
out in turn, it is the largest value that keeps ``coverage`` (default 95 %) of that patient's
lesions (:func:`calibrate_cut_off`), stored in ``RUN/lesion_atlas.json`` and applied after the
threshold and size filter that ``lesionseg tune`` picks.  ``infer.min_atlas`` overrides it (0
switches the filter off); with ``infer.tune_min_atlas`` set, ``lesionseg tune`` tunes it together
with the threshold and size instead (on 4 patients that overfitted the training exams).

The filter needs the predictions on the atlas's grid (shape and affine): exams registered to
that standard space.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from lesionseg.data import io, writing
from lesionseg.data.labels import component_sizes
from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

ATLAS_FILE = "lesion_atlas.nii.gz"
ATLAS_INFO = "lesion_atlas.json"
#: Largest difference between the atlas's affine and an exam's, in mm, for "the same grid".
AFFINE_TOLERANCE_MM = 1e-3
#: Stored resolution (uint16 levels) and the value below which the smoothed atlas is 0.
ATLAS_LEVELS = 65535
ATLAS_FLOOR = 1e-4


@dataclass(frozen=True, eq=False)
class LesionAtlas:
    """A lesion-frequency map on one grid.

    Attributes
    ----------
    values : numpy.ndarray
        (D, H, W) float32 in [0, 1]: smoothed fraction of the source masks marking each voxel.
    affine : numpy.ndarray
        (4, 4) voxel-to-world matrix of that grid.
    path : Path or None
        The file it was read from.
    min_atlas : float
        Its calibrated cut-off (:func:`calibrate_cut_off`), used when neither the config nor
        ``tuning.json`` sets one; 0: none.
    """

    values: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    min_atlas: float = 0.0

    def matches(self, shape: Sequence[int], affine: np.ndarray) -> bool:
        """True when ``shape``/``affine`` is the atlas's grid (affine within :data:`AFFINE_TOLERANCE_MM`)."""
        return tuple(int(s) for s in shape[:3]) == self.values.shape and np.allclose(
            np.asarray(affine, dtype=np.float64), self.affine, atol=AFFINE_TOLERANCE_MM, rtol=0.0
        )

    def on_grid(self, shape: Sequence[int], affine: np.ndarray, what: str) -> np.ndarray:
        """The atlas values for a volume of ``shape`` and ``affine``; one-line error when the grids differ.

        Parameters
        ----------
        shape : sequence of int
            The volume's (D, H, W).
        affine : numpy.ndarray
            Its (4, 4) affine.
        what : str
            Names the volume in the error (e.g. ``"case01/flair.nii.gz"``).

        Raises
        ------
        LesionsegError
            Another shape, or an affine more than :data:`AFFINE_TOLERANCE_MM` away.
        """
        check_same_grid(self, shape, affine, what)
        return self.values


def check_same_grid(atlas: LesionAtlas, shape: Sequence[int], affine: np.ndarray, what: str) -> None:
    """Raise a one-line :class:`LesionsegError` unless ``shape``/``affine`` is the atlas's grid."""
    shape = tuple(int(s) for s in shape[:3])
    if not atlas.matches(shape, affine):
        where = f" ({atlas.path})" if atlas.path else ""
        raise LesionsegError(
            f"{what}: grid {'x'.join(map(str, shape))} does not match the lesion atlas's "
            f"{'x'.join(map(str, atlas.values.shape))} grid{where}; the atlas filter needs exams registered to "
            "its space (switch it off with --set infer.min_atlas=0)"
        )


def build_atlas(mask_paths: Sequence[Path], sigma_mm: float = 2.0) -> LesionAtlas:
    """The smoothed fraction of ``mask_paths`` that mark each voxel.

    Parameters
    ----------
    mask_paths : sequence of Path
        Binary lesion masks (non-zero is lesion), all on one grid.
    sigma_mm : float
        Gaussian smoothing in mm (0: none).

    Returns
    -------
    LesionAtlas

    Raises
    ------
    LesionsegError
        No mask, a mask that is not 3D, or masks on different grids.

    Examples
    --------
    >>> import tempfile, nibabel as nib
    >>> d = Path(tempfile.mkdtemp())
    >>> for i in range(2):
    ...     m = np.zeros((5, 5, 5), np.uint8); m[2, 2, 2 + i] = 1
    ...     nib.save(nib.Nifti1Image(m, np.eye(4)), d / f"m{i}.nii.gz")
    >>> a = build_atlas(sorted(d.glob("*.nii.gz")), sigma_mm=0)
    >>> round(float(a.values[2, 2, 2]), 4), round(float(a.values[2, 2, 3]), 4), float(a.values[0, 0, 0])
    (0.5, 0.5, 0.0)
    """
    if not mask_paths:
        raise LesionsegError("lesion atlas: no mask given")
    total: np.ndarray | None = None
    affine = None
    for path in mask_paths:
        mask, img = io.read_mask(path, "positive")  # one-line errors: unreadable, truncated, not 3D, NaN
        if total is None:
            total, affine = mask.astype(np.float32), img.affine
        else:
            ref = LesionAtlas(total, affine)
            check_same_grid(ref, mask.shape, img.affine, str(path))
            total += mask
    assert total is not None and affine is not None
    total /= len(mask_paths)
    if sigma_mm > 0:
        zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
        total = ndimage.gaussian_filter(total, sigma=[sigma_mm / z for z in zooms])
    return LesionAtlas(quantise(total), np.asarray(affine, dtype=np.float64))


def quantise(values: np.ndarray) -> np.ndarray:
    """Atlas values as stored: clipped to [0, 1], below :data:`ATLAS_FLOOR` set to 0, on a 1/65535 grid.

    The file keeps them as uint16 with a scale factor (about 1 MB instead of 6 MB of float32
    Gaussian tails), so an atlas read back equals the one built.
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    v[v < ATLAS_FLOOR] = 0.0
    return (np.round(v * ATLAS_LEVELS) / ATLAS_LEVELS).astype(np.float32)


def calibrate_cut_off(mask_paths: Sequence[Path], sigma_mm: float, coverage: float,
                      min_lesion_voxels: int = 3) -> tuple[float, int]:
    """The largest cut-off that keeps ``coverage`` of the lesions of a patient the atlas has not seen.

    Leave one mask out: the atlas of the other masks is built, and each lesion (26-connected
    component of at least ``min_lesion_voxels``) of the left-out mask gets the largest atlas
    value over its voxels; the cut-off is the largest value with at least ``coverage`` of those
    values (over every lesion of every mask) at or above it.  It is calibrated on the masks alone, never on the exams a
    model is scored on.

    Parameters
    ----------
    mask_paths : sequence of Path
        At least two masks on one grid (those the atlas is built from).
    sigma_mm : float
        The atlas's smoothing.
    coverage : float
        Fraction of unseen lesions to keep, in (0, 1].
    min_lesion_voxels : int
        Smaller components are not counted as lesions.

    Returns
    -------
    cut_off : float
        On the stored 1/65535 grid; 0 when ``coverage`` is 1 or no lesion is found.
    n_lesions : int
        Lesions the quantile was taken over.
    """
    if not 0.0 < coverage <= 1.0:
        raise LesionsegError(f"lesion atlas: coverage must be in (0, 1], got {coverage}")
    if len(mask_paths) < 2:
        raise LesionsegError("lesion atlas: calibrating the cut-off needs at least 2 masks")
    read = [io.read_mask(p, "positive") for p in mask_paths]
    masks = [m.astype(bool) for m, _ in read]
    zooms = np.sqrt((np.asarray(read[0][1].affine)[:3, :3] ** 2).sum(axis=0))
    sigma = [sigma_mm / z for z in zooms] if sigma_mm > 0 else None

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma) if sigma is not None else a

    total = smooth(np.sum([m.astype(np.float32) for m in masks], axis=0))
    peaks: list[np.ndarray] = []
    for mask in masks:
        others = quantise((total - smooth(mask.astype(np.float32))) / (len(masks) - 1))
        labels, sizes = component_sizes(mask.astype(np.uint8), 26)
        peak = component_atlas_max(labels, sizes.size, others)
        peaks.append(peak[1:][sizes[1:] >= min_lesion_voxels])
    values = np.concatenate(peaks) if peaks else np.zeros(0)
    if coverage >= 1.0 or values.size == 0:
        return 0.0, int(values.size)
    drop = int(np.floor(values.size * (1.0 - coverage) + 1e-9))  # lesions the cut-off may lose
    cut = float(np.sort(values)[drop])
    return float(quantise(np.array([cut]))[0]), int(values.size)


def write_atlas(run_dir: Path, atlas: LesionAtlas, sources: Sequence[Path], sigma_mm: float,
                calibration: dict[str, float] | None = None) -> Path:
    """Store the atlas with a run: ``RUN/lesion_atlas.nii.gz`` and ``RUN/lesion_atlas.json``.

    The JSON holds its sources, smoothing and calibrated cut-off ``min_atlas`` (with the
    ``calibration`` details: coverage, lesions counted).
    """
    run_dir = Path(run_dir)
    path = run_dir / ATLAS_FILE
    levels = np.round(quantise(atlas.values).astype(np.float64) * ATLAS_LEVELS).astype(np.uint16)
    img = nib.Nifti1Image(levels, atlas.affine)
    img.set_sform(atlas.affine, code=2)
    img.set_qform(atlas.affine, code=2)
    img.header.set_slope_inter(1.0 / ATLAS_LEVELS, 0.0)
    with writing.atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    info: dict[str, object] = {"masks": [Path(s).name for s in sources], "n_masks": len(sources),
                               "sigma_mm": float(sigma_mm), "min_atlas": float(atlas.min_atlas)}
    if calibration:
        info["calibration"] = calibration
    with writing.atomic_path(run_dir / ATLAS_INFO) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
    return path


def load_atlas(run_dir: str | Path) -> LesionAtlas | None:
    """``RUN/lesion_atlas.nii.gz``, or ``None`` when the run has none."""
    path = Path(run_dir) / ATLAS_FILE
    if not path.is_file():
        return None
    try:
        img = nib.load(str(path))
        values = quantise(np.asarray(img.dataobj, dtype=np.float64))
    except Exception as exc:  # nibabel raises several types for a damaged file
        raise LesionsegError(f"{path}: cannot read the lesion atlas ({exc})") from None
    if values.ndim != 3:
        raise LesionsegError(f"{path}: the lesion atlas is not 3D (shape {values.shape})")
    cut = 0.0
    info = path.parent / ATLAS_INFO
    if info.is_file():
        try:
            cut = float(json.loads(info.read_text()).get("min_atlas", 0.0))
        except (ValueError, TypeError, AttributeError) as exc:
            raise LesionsegError(f"{info}: not a valid lesion-atlas description ({exc})") from None
        if not 0.0 <= cut <= 1.0:
            raise LesionsegError(f"{info}: min_atlas {cut} is not in [0, 1]")
    return LesionAtlas(values, np.asarray(img.affine, dtype=np.float64), path, cut)


def component_atlas_max(labels: np.ndarray, n_labels: int, atlas_values: np.ndarray) -> np.ndarray:
    """Per label (0 = background included), the largest atlas value over its voxels.

    Parameters
    ----------
    labels : numpy.ndarray
        (D, H, W) integer component labels.
    n_labels : int
        Number of labels including background (``sizes.size`` of
        :func:`~lesionseg.data.labels.component_sizes`).
    atlas_values : numpy.ndarray
        (D, H, W) atlas on the same grid.

    Returns
    -------
    numpy.ndarray
        (n_labels,) float64; 0 for background and empty labels.
    """
    out = np.zeros(n_labels, dtype=np.float64)
    if n_labels > 1:
        out[1:] = ndimage.maximum(atlas_values, labels, index=np.arange(1, n_labels))
    return np.nan_to_num(out, nan=0.0)


def drop_outside_atlas(mask: np.ndarray, atlas_values: np.ndarray, min_atlas: float,
                       connectivity: int = 26) -> np.ndarray:
    """Remove the components of ``mask`` whose largest atlas value is below ``min_atlas``.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary prediction.
    atlas_values : numpy.ndarray
        (D, H, W) lesion atlas on the same grid.
    min_atlas : float
        A component is kept when some voxel of it has atlas value ≥ this; ≤ 0 keeps all.
    connectivity : {6, 18, 26}
        Neighbourhood that joins voxels into one component.

    Returns
    -------
    numpy.ndarray
        (D, H, W) uint8 in {0, 1}.

    Examples
    --------
    >>> m = np.zeros((6, 6, 6), np.uint8); m[1, 1, 1] = 1; m[4, 4, 4] = 1
    >>> a = np.zeros((6, 6, 6), np.float32); a[4, 4, 4] = 0.2
    >>> [tuple(map(int, v)) for v in np.argwhere(drop_outside_atlas(m, a, 0.1))]
    [(4, 4, 4)]
    """
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    if min_atlas is None or min_atlas <= 0 or not binary.any():
        return binary
    if atlas_values.shape != binary.shape:
        raise ValueError(f"atlas {atlas_values.shape} and mask {binary.shape} must be one grid")
    labels, sizes = component_sizes(binary, connectivity)
    keep = component_atlas_max(labels, sizes.size, atlas_values) >= float(min_atlas)
    keep[0] = False
    return keep[labels].astype(np.uint8)
