"""``lesionseg check``: validate every case of a data folder before using it.

Each problem becomes one line ``ERROR <case>/<file>: <problem>`` (or
``WARNING ...`` for things that work but deserve a look: an empty mask, a
volume smaller than a patch).  All problems of all cases are reported, not
only the first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.config import DataConfig, PreprocessConfig
from lesionseg.data.io import (
    Grid,
    _grid_mismatch,
    display_path,
    find_file,
    grid_of,
    list_cases,
    read_case,
    read_image,
    read_mask,
)
from lesionseg.data.labels import label_components
from lesionseg.data.preprocess import ALREADY_STRIPPED_ZERO_SHARE, is_active, looks_skull_stripped, working_grid
from lesionseg.errors import DataError, LesionsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`check_case`.

    Attributes
    ----------
    level : {"ERROR", "WARNING"}
    text : str
        ``<case>/<file>: <problem>``.
    """

    level: str
    text: str

    def line(self) -> str:
        """The line printed for the user."""
        return f"{self.level} {self.text}"


@dataclass(frozen=True)
class CaseSummary:
    """One row of the ``check`` table."""

    case: str
    shape: tuple[int, ...] | None
    spacing_mm: tuple[float, ...] | None
    orientation: str
    lesions: int | None
    lesion_volume_ml: float | None
    status: str


@dataclass
class CheckReport:
    """All findings for a data folder."""

    cases: list[CaseSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no ERROR was found (warnings are allowed)."""
        return not any(p.level == "ERROR" for p in self.problems)

    def table(self) -> str:
        """The per-case table as aligned text."""
        header = ("case", "shape", "spacing_mm", "orient", "lesions", "lesion_ml", "status")
        rows = [header]
        for c in self.cases:
            rows.append(
                (
                    c.case,
                    "x".join(map(str, c.shape)) if c.shape else "-",
                    "x".join(f"{z:g}" for z in c.spacing_mm) if c.spacing_mm else "-",
                    c.orientation,
                    "-" if c.lesions is None else str(c.lesions),
                    "-" if c.lesion_volume_ml is None else f"{c.lesion_volume_ml:.2f}",
                    c.status,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _channel_grids(case_dir: Path, channels: Sequence[str], problems: list[Problem]) -> list[tuple[Grid, Path]]:
    """Read every channel (blank, constant, NaN, truncated ... are problems); their grids."""
    grids: list[tuple[Grid, Path]] = []
    for name in channels:
        path = find_file(case_dir, name)
        if path is None:
            problems.append(Problem("ERROR", f"{case_dir.name}/{name}.nii.gz: missing channel"))
            continue
        try:
            _, img = read_image(path)  # also refuses a blank or constant image
        except DataError as exc:
            problems.append(Problem("ERROR", str(exc)))
            continue
        grids.append((grid_of(img), path))
    return grids


def _check_mask(
    case_dir: Path, mask_name: str, mask_values: str, grids: list[tuple[Grid, Path]], problems: list[Problem]
) -> tuple[int | None, float | None]:
    """Read the mask (its grid joins ``grids``); its lesion count and volume in ml."""
    path = find_file(case_dir, mask_name)
    if path is None:
        problems.append(Problem("ERROR", f"{case_dir.name}/{mask_name}.nii.gz: missing mask"))
        return None, None
    try:
        mask, img = read_mask(path, mask_values)
    except DataError as exc:
        problems.append(Problem("ERROR", str(exc)))
        return None, None
    grid = grid_of(img)
    grids.append((grid, path))
    _, lesions = label_components(mask, 26)
    if lesions == 0:
        problems.append(Problem("WARNING", f"{display_path(path)}: mask is empty (no lesion)"))
    return lesions, float(mask.sum()) * grid.voxel_volume_mm3 / 1000.0


def _check_grids(
    grids: list[tuple[Grid, Path]], affine_tolerance: float, patch_size: Sequence[int], problems: list[Problem],
    preprocess: PreprocessConfig | None = None,
) -> None:
    """Every file on the first one's grid; a warning when the volume the network sees is smaller than a patch."""
    ref = grids[0]
    for grid, path in grids[1:]:
        mismatch = _grid_mismatch(ref[0], grid, ref[1], path, affine_tolerance)
        if mismatch:
            problems.append(Problem("ERROR", f"{display_path(path)}: {mismatch}"))
    seen = ref[0].shape
    if preprocess is not None and is_active(preprocess):
        try:
            seen = working_grid(ref[0], preprocess).shape  # what infer predicts on, not the file's grid
        except LesionsegError as exc:
            problems.append(Problem("ERROR", f"{display_path(ref[1])}: {exc}"))
            return
    if any(s < p for s, p in zip(seen, patch_size)):
        where = f"volume {ref[0].shape}" if seen == ref[0].shape else f"working grid {seen}"
        problems.append(Problem(
            "WARNING",
            f"{display_path(ref[1])}: {where} is smaller than the patch {tuple(patch_size)}; it will be padded",
        ))


def _check_header(path: Path, problems: list[Problem]) -> None:
    """A file without orientation codes: where it lies is nibabel's guess from its voxel sizes."""
    try:
        header = nib.load(str(path)).header
    except Exception:  # unreadable files are reported by the channel checks
        return
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        problems.append(Problem(
            "WARNING", f"{display_path(path)}: no orientation (qform and sform codes are 0): its axes are "
            "taken as nibabel's default, which may not be the scanner's; outputs keep the same header"))


#: Largest / smallest voxel side above which a scan counts as anisotropic (thick slices).
ANISOTROPY = 1.5
#: Smallest field of view (mm, every axis) of a scan that holds a whole head (smaller: a crop).
HEAD_FOV_MM = 80.0


#: The planes of a RAS working grid, by the axis across its slices.
PLANES = ("sagittal", "coronal", "axial")


def _check_processing(grids: list[tuple[Grid, Path]], preprocess: PreprocessConfig, problems: list[Problem],
                      trained_slice_axis: Sequence[int] | None = None) -> None:
    """Warn when the first channel looks unprocessed (thick slices, skull) and say what infer will do;
    and when its thick slices lie across another axis than the one the model learnt thick slices on."""
    grid, path = grids[0]
    zooms = [float(z) for z in grid.zooms]
    if max(zooms) / max(min(zooms), 1e-6) > ANISOTROPY:
        shown = " x ".join(f"{z:.2g}" for z in zooms)
        action = (f"infer resamples it to {' x '.join(f'{v:g}' for v in preprocess.spacing)} mm and back "
                  "([preprocess] spacing)" if preprocess.spacing is not None else
                  "this config predicts on the file's own grid: set preprocess.spacing or use a model that "
                  "resamples (models/ms_flair)")
        problems.append(Problem("WARNING", f"{display_path(path)}: anisotropic voxels ({shown} mm); {action}"))
        axis_warning = None if trained_slice_axis is None else slice_axis_warning(grid, path, preprocess,
                                                                                   trained_slice_axis)
        if axis_warning:
            problems.append(Problem("WARNING", axis_warning))
    if min(n * z for n, z in zip(grid.shape, zooms)) < HEAD_FOV_MM:
        return  # a crop, not a head: no skull to look for
    try:
        data, _ = read_image(path)  # a 4D file of one volume read as 3D, as infer reads it
    except LesionsegError:  # unreadable, NaN or constant files are reported by the channel checks
        return
    if not looks_skull_stripped(data, tuple(zooms)):  # the test infer's brain extraction makes
        zero_share = float(np.mean(data == 0))
        why = (f"only {100 * zero_share:.0f} % of the voxels are 0" if zero_share < ALREADY_STRIPPED_ZERO_SHARE
               else "a dark skull-like band lies under the edge of its non-zero region")
        action = ("infer extracts the brain first ([preprocess] brain_extraction)" if preprocess.brain_extraction
                  else "this config expects a skull-stripped brain: set preprocess.brain_extraction = true or use "
                  "a model that does (models/ms_flair)")
        problems.append(Problem("WARNING", f"{display_path(path)}: looks not skull-stripped ({why}); {action}"))


def slice_axis_warning(grid: Grid, path: Path, preprocess: PreprocessConfig, trained: Sequence[int]) -> str | None:
    """The warning for thick slices across another working-grid axis than the model learnt them on.

    ``trained`` is ``[augment] thick_slice_axis``; with ``preprocess.reorient`` the working grid is
    RAS (axis 0 across sagittal slices, 1 coronal, 2 axial).  ``None`` for isotropic voxels or
    slices across a trained axis.
    """
    zooms = [float(z) for z in grid.zooms]
    if max(zooms) / max(min(zooms), 1e-6) <= ANISOTROPY:
        return None
    trained = sorted(set(int(a) for a in trained), reverse=True)
    thick = int(np.argmax(zooms))
    if preprocess.reorient:
        axis = int(nib.orientations.io_orientation(np.asarray(grid.affine))[thick, 0])
        seen, learnt = f"{PLANES[axis]} slices", f"{' and '.join(PLANES[a] for a in trained)} ones"
    else:
        axis = thick
        seen, learnt = f"slices across voxel axis {axis}", f"ones across axis {' and '.join(map(str, trained))}"
    if axis in trained:
        return None
    shown = trained[0] if len(trained) == 1 else trained
    return (f"{display_path(path)}: {seen} ({zooms[thick]:.2g} mm); the model learnt thick slices only as "
            f"{learnt} ([augment] thick_slice_axis = {shown}): expect more false lesions (README, *Sagittal slices*)")


def check_case(
    case_dir: Path,
    channels: Sequence[str],
    mask_name: str | None = "lesion_mask",
    mask_values: str = "binary",
    affine_tolerance: float = 1e-3,
    patch_size: Sequence[int] = (48, 48, 48),
    preprocess: PreprocessConfig | None = None,
    trained_slice_axis: Sequence[int] | None = None,
) -> tuple[CaseSummary, list[Problem]]:
    """Check one case folder and return its summary row and all its problems.

    Parameters
    ----------
    case_dir : Path
        The case folder.
    channels : sequence of str
        Channel stems that must be present.
    mask_name : str or None
        Stem of the mask that must be present; ``None`` for unlabeled data.
    mask_values : {"binary", "positive"}
        See :func:`lesionseg.data.io.read_mask`.
    affine_tolerance : float
        Largest allowed affine difference (mm) between the case's files.
    patch_size : sequence of int
        Patch size, to warn about volumes that will need padding.
    preprocess : PreprocessConfig or None
        What infer will do to raw inputs; a case that looks unprocessed (thick slices, skull)
        gets a warning saying so.  ``None``: no preprocessing.
    trained_slice_axis : sequence of int or None
        The working-grid axes the model saw thick slices across in training (``[augment]
        thick_slice_axis`` when ``thick_slice_probability > 0``); thick slices across another one
        get a warning.  ``None``: not checked.
    """
    case = case_dir.name
    problems: list[Problem] = []
    grids = _channel_grids(case_dir, channels, problems)
    lesions = volume_ml = None
    if mask_name is not None:
        lesions, volume_ml = _check_mask(case_dir, mask_name, mask_values, grids, problems)
    ref = grids[0] if grids else None
    if ref is not None:
        _check_grids(grids, affine_tolerance, patch_size, problems, preprocess)
        _check_header(ref[1], problems)
        _check_processing(grids, preprocess or PreprocessConfig(), problems, trained_slice_axis)

    summary = CaseSummary(
        case=case,
        shape=ref[0].shape if ref else None,
        spacing_mm=ref[0].zooms if ref else None,
        orientation="".join(nib.aff2axcodes(ref[0].affine)) if ref else "-",
        lesions=lesions,
        lesion_volume_ml=volume_ml,
        status="ERROR" if any(p.level == "ERROR" for p in problems) else (
            "WARNING" if problems else "ok"
        ),
    )
    return summary, problems


def check_dataset(
    data_dir: str | Path,
    channels: Sequence[str],
    mask_name: str | None = "lesion_mask",
    mask_values: str = "binary",
    affine_tolerance: float = 1e-3,
    patch_size: Sequence[int] = (48, 48, 48),
    preprocess: PreprocessConfig | None = None,
    trained_slice_axis: Sequence[int] | None = None,
) -> CheckReport:
    """Check every case of a data folder (see :func:`check_case`).

    Raises
    ------
    DataError
        Only when the folder itself is missing or holds no case.
    """
    report = CheckReport()
    cases = list_cases(data_dir)
    for i, case_dir in enumerate(cases, 1):
        summary, problems = check_case(
            case_dir, channels, mask_name, mask_values, affine_tolerance, patch_size, preprocess, trained_slice_axis
        )
        log.info("checked %d/%d %s: %s", i, len(cases), case_dir.name, summary.status)
        report.cases.append(summary)
        report.problems.extend(problems)
    return report


def require_readable(case_dirs: Sequence[Path], data: DataConfig, with_mask: bool) -> None:
    """Read every case once before a stage uses any: the first problem is a one-line :class:`DataError`.

    ``train`` and ``infer`` call this before they write anything, so a blank or truncated
    file in the last case stops the run before the first case is used.  The checks are those
    of ``lesionseg check``: missing, unreadable, truncated or oversized, not 3D, a singular affine, NaN/Inf,
    blank or constant images, files off one grid, a non-binary mask.
    """
    t0 = time.perf_counter()
    for case_dir in case_dirs:
        read_case(case_dir, data.channels, data.mask if with_mask else None, data.mask_values, data.affine_tolerance)
    log.debug("%d case(s) checked in %.1f s", len(case_dirs), time.perf_counter() - t0)
