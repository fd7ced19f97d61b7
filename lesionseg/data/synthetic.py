"""Deterministic synthetic MS-like cases (the bundled ``data_samples/``).

Each case is a small head-sized volume with a skull-stripped "brain" made of
white matter, a grey-matter rim and ventricles, smoothed, multiplied by a
low-frequency bias field and corrupted by Rician-like noise, in two channels:

* ``flair``: lesions hyperintense (about 1.8× white matter), CSF dark;
* ``t1``: lesions hypointense (about 0.6× white matter), CSF dark.

Lesions are irregular blobs inside the white matter whose sizes span from a
few voxels to a confluent lesion of several hundred, so that small lesions
coexist with large ones as in real exams.  One case has no lesion.  Images are
stored as int16 (as scanners do), masks as uint8.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from lesionseg.data.writing import atomic_path

log = logging.getLogger(__name__)

# lesion radii (voxels) drawn per case: tiny, small, medium and one large
_RADII = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case: images (D, H, W) float32, mask uint8 and affine."""

    case_id: str
    flair: np.ndarray
    t1: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def _ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    return dist <= 1.0


def _lesion_blob(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A small irregular binary blob of about the given radius."""
    half = int(np.ceil(radius * 1.6)) + 1
    size = 2 * half + 1
    radii = radius * rng.uniform(0.7, 1.3, size=3)
    blob = _ellipsoid((size,) * 3, np.array([half] * 3), np.maximum(radii, 0.75))
    if radius >= 2.0:  # roughen the border of larger lesions
        noise = ndimage.gaussian_filter(rng.standard_normal((size,) * 3), 1.0)
        blob &= noise > -0.6 * noise.std()
        blob = ndimage.binary_closing(blob, iterations=1)
    if not blob.any():
        blob[half, half, half] = True
    labels, n = ndimage.label(blob, structure=np.ones((3, 3, 3)))
    if n > 1:  # keep one connected lesion
        sizes = ndimage.sum(blob, labels, range(1, n + 1))
        blob = labels == (int(np.argmax(sizes)) + 1)
    return blob


def generate_case(
    case_id: str,
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 64),
    n_lesions: int = 6,
    orientation: str = "RAS",
) -> SyntheticCase:
    """Generate one case deterministically from ``seed``.

    Parameters
    ----------
    case_id : str
        Name of the case.
    seed : int
        Seed; the same seed gives the same volumes bit-for-bit.
    shape : tuple of int
        Volume shape (D, H, W), 1 mm isotropic voxels.
    n_lesions : int
        Number of lesions (0 for a lesion-free case).
    orientation : {"RAS", "LAS"}
        Orientation of the stored voxel axes.

    Returns
    -------
    SyntheticCase
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    centre = (np.array(shape) - 1) / 2 + rng.uniform(-1.5, 1.5, 3)
    brain_r = np.array(shape) * rng.uniform(0.40, 0.44, 3)
    brain = _ellipsoid(shape, centre, brain_r)
    wm = _ellipsoid(shape, centre, brain_r * 0.78)
    vent = np.zeros(shape, bool)
    for side in (-1, 1):
        c = centre + np.array([side * shape[0] * 0.07, 0, shape[2] * 0.03])
        vent |= _ellipsoid(shape, c, np.array(shape) * np.array([0.05, 0.16, 0.07]))

    # tissue maps, lesion placement inside white matter away from ventricles
    mask = np.zeros(shape, np.uint8)
    allowed = ndimage.binary_erosion(wm & ~ndimage.binary_dilation(vent, iterations=2), iterations=2)
    radii = list(rng.choice(_RADII[:-1], size=max(n_lesions - 1, 0))) + ([_RADII[-1]] if n_lesions else [])
    for r in radii:
        blob = _lesion_blob(rng, float(r))
        half = blob.shape[0] // 2
        candidates = np.argwhere(allowed)
        for _ in range(30):
            c = candidates[rng.integers(len(candidates))]
            sl = tuple(slice(ci - half, ci + half + 1) for ci in c)
            if any(s.start < 0 or s.stop > n for s, n in zip(sl, shape)):
                continue
            region = mask[sl]
            # keep lesions apart so they stay separate components
            if ndimage.binary_dilation(region > 0, iterations=2)[blob].any():
                continue
            region[blob] = 1
            break

    lesion = mask.astype(bool)
    gm = brain & ~wm
    flair = np.zeros(shape, np.float32)
    t1 = np.zeros(shape, np.float32)
    for tissue, f_val, t_val in ((gm, 0.72, 0.62), (wm, 0.55, 0.92), (vent, 0.12, 0.22)):
        flair[tissue] = f_val
        t1[tissue] = t_val
    flair[lesion] = rng.uniform(0.95, 1.1)
    t1[lesion] = rng.uniform(0.50, 0.58)
    # smooth tissue boundaries (partial volume), then texture, bias and noise
    flair = ndimage.gaussian_filter(flair, 0.7)
    t1 = ndimage.gaussian_filter(t1, 0.7)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0).astype(np.float32)
    texture *= 0.03 / max(texture.std(), 1e-6)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    coeffs = rng.uniform(-0.12, 0.12, size=3)
    bias = np.exp(np.tensordot(coeffs, grid, axes=1) + 0.05 * (grid[0] * grid[1])).astype(np.float32)
    out = []
    for img in (flair, t1):
        img = (img + texture * (img > 0.05)) * bias
        noise_a = rng.normal(0, 0.035, shape)
        noise_b = rng.normal(0, 0.035, shape)
        img = np.sqrt((img + noise_a) ** 2 + noise_b**2)  # Rician magnitude noise
        img[~brain] = 0.0  # skull-stripped
        out.append((img * 1000).astype(np.float32))
    flair, t1 = out

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -(np.array(shape) / 2.0)
    if orientation == "LAS":
        affine[0, 0] = -1.0
        affine[0, 3] = shape[0] / 2.0
    elif orientation != "RAS":
        raise ValueError(f"orientation must be RAS or LAS, got {orientation!r}")
    return SyntheticCase(case_id, flair, t1, mask, affine)


def with_head(case: SyntheticCase, margin: int = 14, seed: int = 0) -> SyntheticCase:
    """The case inside a head: CSF, skull and scalp around its brain, as an exam before brain extraction.

    The volume grows by ``margin`` voxels on every side (the affine moves so that the brain keeps
    its world position); around the brain come a CSF layer (dark on FLAIR, dark on T1), the skull
    (dark on both), and the scalp with its fat (bright on both: what a skull-stripping step must
    remove, and what a model trained on stripped brains takes for lesions).

    Parameters
    ----------
    case : SyntheticCase
        A skull-stripped case (:func:`generate_case`).
    margin : int
        Voxels added on each side (≥ 10 for the three layers).
    seed : int
        Seed of the layers' noise.

    Returns
    -------
    SyntheticCase
        Same case id, mask padded with zeros.
    """
    rng = np.random.default_rng(seed)
    pad = [(margin, margin)] * 3
    brain = np.pad(case.flair > 0, pad)
    dist = ndimage.distance_transform_edt(~brain)
    layers = {"csf": (dist > 0) & (dist <= 2), "skull": (dist > 2) & (dist <= 6), "scalp": (dist > 6) & (dist <= 10)}
    images = []
    for image, values in ((case.flair, {"csf": 120.0, "skull": 40.0, "scalp": 900.0}),
                          (case.t1, {"csf": 200.0, "skull": 60.0, "scalp": 1100.0})):
        out = np.pad(image, pad).astype(np.float32)
        for name, value in values.items():
            region = layers[name]
            out[region] = value * rng.uniform(0.9, 1.1) + rng.normal(0, 25.0, int(region.sum()))
        air = dist > 10
        out[air] = np.abs(rng.normal(0, 12.0, int(air.sum())))  # magnitude noise of the air: raw scans have no zeros
        images.append(np.clip(out, 0, None))
    affine = case.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, float(margin))
    return SyntheticCase(case.case_id, images[0], images[1], np.pad(case.mask, pad), affine)


def _save(array: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


# (case id, seed, shape, lesions, orientation): varied on purpose
SAMPLE_CASES = (
    ("sample01", 101, (64, 64, 64), 7, "RAS"),
    ("sample02", 102, (64, 64, 64), 6, "RAS"),
    ("sample03", 103, (64, 72, 64), 8, "RAS"),
    ("sample04", 104, (64, 64, 64), 5, "LAS"),
    ("sample05", 105, (64, 64, 64), 7, "RAS"),
    ("sample06", 106, (72, 64, 60), 6, "RAS"),
    ("sample07", 107, (64, 64, 64), 0, "RAS"),
    ("sample08", 108, (64, 64, 64), 6, "LAS"),
)


def write_samples(out_dir: str | Path, cases: tuple = SAMPLE_CASES, head: bool = False) -> list[Path]:
    """Write the bundled sample cases to ``out_dir/<case>/{flair,t1,lesion_mask}.nii.gz``.

    ``head=True`` writes them inside a head (skull and scalp, :func:`with_head`), as raw exams
    before brain extraction.

    Returns
    -------
    list of Path
        The case folders written.
    """
    out_dir = Path(out_dir)
    written = []
    for case_id, seed, shape, n_lesions, orientation in cases:
        case = generate_case(case_id, seed, shape, n_lesions, orientation)
        if head:
            case = with_head(case, seed=seed)
        folder = out_dir / case_id
        folder.mkdir(parents=True, exist_ok=True)
        _save(case.flair, case.affine, folder / "flair.nii.gz", np.int16)
        _save(case.t1, case.affine, folder / "t1.nii.gz", np.int16)
        _save(case.mask, case.affine, folder / "lesion_mask.nii.gz", np.uint8)
        log.info("wrote %s (%s, %d lesion voxels)", folder, "x".join(map(str, case.mask.shape)), int(case.mask.sum()))
        written.append(folder)
    return written
