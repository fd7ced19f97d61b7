"""Training exams that went through the clinical path: the shared exams as thick-slice heads, preprocessed as infer does.

The online thick-slice augmentation blurs *normalised 1 mm patches*.  A clinical exam reaches the
network by another road: a head with skull, thick slices, then ``infer``'s own preprocessing
(reorientation, 1 mm, N4, brain extraction) and only then normalisation over what brain extraction
kept.  This script makes that road's output for every shared exam, so a model can be trained on
it: each exam is wrapped in a synthetic head whose layers (thickness, brightness) and bias field
are drawn at random, cut into thick slices, and run through the model config's ``[preprocess]``.
The lesion mask is the exam's own 1 mm mask moved onto the working grid (not the blocky thick-slice
one: the network predicts on that grid), inside what brain extraction kept.

The variants differ from what ``pipelines/clinical_path_check.py`` evaluates on (7 mm slices, 0.9 mm
in plane, its fixed head): 5 mm slices with 1 mm gaps at 1.0 mm in plane, and 8 mm slices at
0.8 mm.  Case folders are named ``<case>_clin<N>`` so that a leave-one-patient-out split keeps each
variant with its patient (``ms_experiments.py lopo --extra-train``)::

    python pipelines/clinical_training_set.py --config pipelines/ms_flair.toml --out runs/clinical_train

With ``--link-exams`` the exams themselves are linked in as well: the folder ``make train-ms-flair``
trains the shipped model on.

(about 1 minute per variant on one core: N4 and brain extraction of a 1 mm head.)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical_path_check import LAYERS, SHARED, wrap_in_head  # noqa: E402

from lesionseg.config import load_config  # noqa: E402
from lesionseg.data.io import Grid, grid_of, list_cases  # noqa: E402
from lesionseg.data.preprocess import prepare, resample  # noqa: E402
from lesionseg.data.simulate import thick_slice_case  # noqa: E402

log = logging.getLogger("clinical_training_set")


@dataclass(frozen=True)
class Variant:
    """One simulated acquisition: slice thickness, gap and in-plane voxel (mm), and the head's seed."""

    slice_mm: float
    gap_mm: float
    in_plane_mm: float
    seed: int


VARIANTS = (Variant(5.0, 1.0, 1.0, 1), Variant(8.0, 0.0, 0.8, 2))


def random_layers(rng: np.random.Generator) -> tuple[tuple[float, float], ...]:
    """:data:`LAYERS` with each thickness scaled by 0.7–1.2 and each brightness by 0.6–1.5."""
    out, inner, previous = [], 0.0, 0.0
    for outer, level in LAYERS:
        inner += (outer - previous) * rng.uniform(0.7, 1.2)
        previous = outer
        out.append((round(inner, 2), level * rng.uniform(0.6, 1.5)))
    return tuple(out)


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float = 0.15) -> np.ndarray:
    """A smooth multiplicative field exp(Σ c·x^i y^j z^k), degree ≤ 2, within about ±``strength``."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    log_field = np.zeros(shape, np.float32)
    for powers in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (0, 1, 1)]:
        term = np.ones((1, 1, 1), np.float32)
        for axis, power in zip(axes, powers):
            term = term * axis ** power
        log_field += rng.uniform(-1.0, 1.0) * term
    log_field *= strength / max(float(np.abs(log_field).max()), 1e-6)
    return np.exp(log_field)


def visible_lesions(truth: np.ndarray, thick_truth: np.ndarray) -> np.ndarray:
    """The lesions (26-connected parts) of ``truth`` that the thick-slice truth still marks somewhere.

    Both masks on one grid.  A lesion thinner than half a thick voxel is gone from the thick exam
    (:func:`lesionseg.data.simulate.thick_slice_case`'s rule, an expert's on such a scan); teaching
    the network to find it there would teach it to mark noise.

    >>> t = np.zeros((6, 6, 6), bool); t[1, 1, 1] = t[4, 4, 3:5] = True
    >>> k = np.zeros_like(t); k[4, 4, 4] = True
    >>> np.argwhere(visible_lesions(t, k)).tolist()
    [[4, 4, 3], [4, 4, 4]]
    """
    labels, n = ndimage.label(truth, structure=np.ones((3, 3, 3), bool))
    kept = np.unique(labels[thick_truth & (labels > 0)])
    return np.isin(labels, kept[kept > 0])


def simulate(case_dir: Path, variant: Variant, config_path: Path, out_dir: Path, work: Path,
             visible_only: bool = False) -> Path:
    """``out_dir/<case>_clin<seed>``: one exam through one simulated acquisition and infer's preprocessing.

    ``visible_only``: keep only the lesions the thick-slice exam still shows (:func:`visible_lesions`).
    """
    cfg = load_config(config_path)
    rng = np.random.default_rng(variant.seed * 1000 + sum(map(ord, case_dir.name)))
    head_dir = wrap_in_head(case_dir, work / "heads", seed=variant.seed, layers=random_layers(rng))
    flair_path = head_dir / "flair.nii.gz"
    img = nib.load(flair_path)
    head = np.asarray(img.dataobj, np.float32) * bias_field(img.shape[:3], rng)
    nib.save(nib.Nifti1Image(head, img.affine, img.header), flair_path)
    thick_dir = thick_slice_case(head_dir, work / "thick", ["flair"], "lesion_mask", variant.slice_mm,
                                 variant.in_plane_mm, variant.gap_mm, axis=2)
    thick = nib.load(thick_dir / "flair.nii.gz")
    prepared = prepare(np.asarray(thick.dataobj, np.float32)[..., None], None, grid_of(thick), cfg.preprocess)
    mask_img = nib.load(head_dir / "lesion_mask.nii.gz")
    truth = resample(np.asarray(mask_img.dataobj, np.float32), grid_of(mask_img), prepared.grid, order=1) >= 0.5
    truth &= prepared.image[..., 0] > 0  # a lesion that brain extraction cut off is not there to learn
    if visible_only:
        thick_mask = nib.load(thick_dir / "lesion_mask.nii.gz")
        thick_truth = resample(np.asarray(thick_mask.dataobj, np.uint8), grid_of(thick_mask), prepared.grid, order=0)
        truth = visible_lesions(truth, thick_truth > 0)
    target = out_dir / f"{case_dir.name}_clin{variant.seed}"
    target.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(prepared.grid.affine, float)
    nib.save(nib.Nifti1Image(prepared.image[..., 0], affine), target / "flair.nii.gz")
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), affine), target / "lesion_mask.nii.gz")
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("pipelines/ms_flair.toml"), help="its [preprocess] is applied")
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--out", type=Path, default=Path("runs/clinical_train"))
    p.add_argument("--visible-only", action="store_true",
                   help="mark only the lesions the thick-slice exam still shows (see visible_lesions)")
    p.add_argument("--link-exams", action="store_true",
                   help="also link the exams themselves into --out: one folder to train on (make train-ms-flair)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cases = list_cases(args.data)
    with tempfile.TemporaryDirectory(prefix="clinical_train_") as tmp:
        for n, case_dir in enumerate(cases, 1):
            for variant in VARIANTS:
                done = args.out / f"{case_dir.name}_clin{variant.seed}" / "lesion_mask.nii.gz"
                if done.is_file():
                    continue
                target = simulate(case_dir, variant, args.config, args.out, Path(tmp), args.visible_only)
                log.info("%d/%d %s: %g mm slices + %g mm gap, %g mm in plane -> %s", n, len(cases), case_dir.name,
                         variant.slice_mm, variant.gap_mm, variant.in_plane_mm, target)
                shutil.rmtree(Path(tmp) / "heads", ignore_errors=True)
                shutil.rmtree(Path(tmp) / "thick", ignore_errors=True)
            link = args.out / case_dir.name
            if args.link_exams and not link.exists():
                link.symlink_to(case_dir.resolve(), target_is_directory=True)


if __name__ == "__main__":
    main()
