"""Lesion transplantation: donor lesions at their own voxels, painted with the exam's contrast, mask aligned."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_case

from lesionseg.config import AugmentConfig, Config, DataConfig, PatchConfig
from lesionseg.errors import LesionsegError
from lesionseg.sampling.feed import PatchSequence, load_cases
from lesionseg.sampling.transplant import DonorMasks, lesion_contrast, transplant


def test_transplant_paints_donor_lesions_with_the_exams_contrast():
    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 20, 2), np.float32)
    image[2:18, 2:18, 2:18] = rng.normal(0.0, 0.1, (16, 16, 16, 2))
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[4:7, 4:7, 4:7] = 1
    image[mask == 1] = [3.0, -2.0]
    donor = np.zeros_like(mask)
    donor[10:14, 10:14, 10:14] = 1  # inside the brain, away from the lesion
    donor[0:2, 0:2, 0:2] = 1  # outside the brain: dropped
    donor[5, 5, 5] = 1  # on the exam's own lesion: left as it is
    contrast = lesion_contrast(image, mask)
    out, new_mask = transplant(rng, image, mask, donor, contrast)
    assert (new_mask[11:13, 11:13, 11:13] == 1).all()  # the donor's core; its corners are soft (partial volume)
    assert new_mask[10:14, 10:14, 10:14].mean() > 0.7
    assert new_mask[0:2, 0:2, 0:2].sum() == 0 and (out[0:2, 0:2, 0:2] == 0).all()
    np.testing.assert_array_equal(out[mask == 1], image[mask == 1])  # the exam's lesion untouched
    painted = out[11:13, 11:13, 11:13].reshape(-1, 2).mean(axis=0)
    assert painted[0] > 2.0 and painted[1] < -1.0  # bright on channel 0, dark on channel 1, like its lesions
    added = (new_mask == 1) & (mask == 0)
    assert out[added][:, 0].min() > 1.0  # every new mask voxel is painted (image and mask aligned)
    far = np.zeros(mask.shape, bool)
    far[15:18, 2:5, 15:18] = True
    np.testing.assert_array_equal(out[far], image[far])  # nothing else changes


def test_donor_masks_cut_and_exclude(tmp_path):
    for name in ("patient01", "patient07", "patient19"):
        m = np.zeros((10, 10, 10), np.uint8)
        m[2:4, 2:4, 2:4] = 1
        nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / f"{name}_lesion_mask.nii.gz")
    donors = DonorMasks.from_folder(tmp_path, ("patient07", "patient19"))
    assert donors.names == ["patient01_lesion_mask"]
    cut = donors.cut("patient01_lesion_mask", (-1, 1, 2), (4, 4, 4))  # hangs over the edge
    assert cut.shape == (4, 4, 4) and cut.sum() == 4
    with pytest.raises(LesionsegError, match="no donor mask left"):
        DonorMasks.from_folder(tmp_path, ("patient",))
    with pytest.raises(LesionsegError, match="augment.transplant_masks"):
        AugmentConfig(transplant_probability=0.5)


def test_patch_sequence_transplants_deterministically(tmp_path):
    shape = (32, 32, 32)
    cases_dir = tmp_path / "cases"
    for n in range(2):
        make_case(cases_dir, f"c{n}", shape=shape, lesions=((6, 6, 6, 2),), seed=n)
    donors = tmp_path / "donors"
    donors.mkdir()
    m = np.zeros(shape, np.uint8)
    m[9:13, 9:13, 9:13] = 1  # beside the cases' lesion at (6, 6, 6): inside its lesion patches
    nib.save(nib.Nifti1Image(m, np.eye(4)), donors / "patient01_lesion_mask.nii.gz")
    config = Config(data=DataConfig(channels=("flair", "t1")), patches=PatchConfig(size=(16, 16, 16), lesion_fraction=1.0,
                                                                          foreground_fraction=0.0, random_fraction=0.0),
                    augment=AugmentConfig(flip_axes=(), intensity_scale=0.0, intensity_shift=0.0,
                                          transplant_probability=1.0, transplant_masks=str(donors)))
    cases = load_cases(config, sorted(cases_dir.iterdir()))
    seq = PatchSequence(cases, config.patches, config.augment, 2, 2, seed=3)
    plain = PatchSequence(cases, config.patches, AugmentConfig(flip_axes=(), intensity_scale=0.0,
                                                               intensity_shift=0.0), 2, 2, seed=3)
    x, y = seq[1]
    x0, y0 = plain[1]
    assert y.sum() > y0.sum()  # donor lesions added to the target
    gained = (y[..., 0] == 1) & (y0[..., 0] == 0)
    assert x[..., 0][gained].mean() > x0[..., 0][gained].mean() + 1.0  # and painted bright on FLAIR
    x2, y2 = PatchSequence(cases, config.patches, config.augment, 2, 2, seed=3)[1]
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    bad = tmp_path / "bad"
    bad.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((9, 9, 9), np.uint8), np.eye(4)), bad / "p_lesion_mask.nii.gz")
    wrong = AugmentConfig(transplant_probability=1.0, transplant_masks=str(bad))
    with pytest.raises(LesionsegError, match="differs from the donor masks"):
        PatchSequence(cases, config.patches, wrong, 2, 2, seed=3)
    assert Path(donors).is_dir()
