"""``pipelines/clinical_training_set.py``: training exams made by the clinical path (head, thick slices, preprocessing)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import REPO, load_pipeline


@pytest.fixture(scope="module")
def sim():
    return load_pipeline("clinical_training_set", "clinical_training_set")


def _stripped_exam(root, name="exam01"):
    """A skull-stripped 'brain' (a ball of ~100 on exact zeros, 1.2 mm voxels, LAS) with one bright lesion."""
    grid = np.indices((44, 44, 44)).astype(np.float32)
    ball = ((grid - 22.0) ** 2).sum(axis=0) <= 17.0**2
    rng = np.random.default_rng(0)
    flair = np.where(ball, 100.0 + rng.normal(0, 3, ball.shape), 0.0).astype(np.float32)
    lesion = ((grid - np.array([27.0, 22.0, 22.0])[:, None, None, None]) ** 2).sum(axis=0) <= 4.0**2
    flair[lesion] = 190.0
    affine = np.array([[-1.2, 0, 0, 30.0], [0, 1.2, 0, -12.0], [0, 0, 1.2, 5.0], [0, 0, 0, 1]])
    case = root / name
    case.mkdir(parents=True)
    nib.save(nib.Nifti1Image(flair, affine), case / "flair.nii.gz")
    nib.save(nib.Nifti1Image(lesion.astype(np.uint8), affine), case / "lesion_mask.nii.gz")
    return case, lesion, affine


def test_random_heads_keep_the_layer_order_and_vary_with_the_draw(sim):
    a = sim.random_layers(np.random.default_rng(1))
    b = sim.random_layers(np.random.default_rng(1))
    c = sim.random_layers(np.random.default_rng(2))
    assert a == b and a != c
    outers = [outer for outer, _ in a]
    assert outers == sorted(outers) and outers[-1] <= 1.2 * sim.LAYERS[-1][0] + 1e-9
    for (_, level), (_, base) in zip(a, sim.LAYERS):
        assert 0.6 * base <= level <= 1.5 * base


def test_bias_field_is_smooth_positive_and_bounded(sim):
    field = sim.bias_field((20, 24, 16), np.random.default_rng(0), strength=0.15)
    assert field.shape == (20, 24, 16) and field.dtype == np.float32
    assert np.isclose(np.abs(np.log(field)).max(), 0.15, atol=1e-4)
    assert np.abs(np.diff(np.log(field), axis=0)).max() < 0.05  # smooth: no voxel-to-voxel jumps


def test_a_simulated_exam_comes_out_stripped_on_the_working_grid_with_its_own_mask_in_place(sim, tmp_path):
    case, lesion, affine = _stripped_exam(tmp_path / "exams")
    variant = sim.Variant(slice_mm=4.0, gap_mm=0.0, in_plane_mm=1.0, seed=3)
    target = sim.simulate(case, variant, REPO / "pipelines" / "ms_flair.toml", tmp_path / "out", tmp_path / "work")

    assert target.name == "exam01_clin3"
    flair_img = nib.load(target / "flair.nii.gz")
    mask_img = nib.load(target / "lesion_mask.nii.gz")
    np.testing.assert_array_equal(flair_img.affine, mask_img.affine)
    assert flair_img.shape == mask_img.shape
    assert nib.aff2axcodes(flair_img.affine) == ("R", "A", "S")  # reoriented
    np.testing.assert_allclose(flair_img.header.get_zooms()[:3], (1.0, 1.0, 1.0))  # the working grid
    flair = np.asarray(flair_img.dataobj, np.float32)
    mask = np.asarray(mask_img.dataobj) > 0

    # brain extraction dropped the synthetic skull and scalp: what is left is about the ball
    ball_mm3 = 4.0 / 3.0 * np.pi * (17 * 1.2) ** 3
    assert 0.75 * ball_mm3 < (flair > 0).sum() < 1.25 * ball_mm3

    # the truth is the exam's own mask moved onto the grid: same volume, same place in the scanner
    assert abs(mask.sum() - lesion.sum() * 1.2**3) < 0.25 * lesion.sum() * 1.2**3
    centre = lambda m, a: (a @ [*ndimage.center_of_mass(m), 1.0])[:3]  # noqa: E731
    np.testing.assert_allclose(centre(mask, flair_img.affine), centre(lesion, affine), atol=1.0)
    # and the lesion is still the bright spot of the blurred exam
    assert np.median(flair[mask]) > 1.3 * np.median(flair[(flair > 0) & ~mask])


def test_derived_exams_stay_with_their_patient(tmp_path):
    experiments = load_pipeline("ms_experiments")
    extra = tmp_path / "extra"
    for name in ("mslesseg_P14_T1_clin1", "mslesseg_P14_T10_clin1", "lesjak_patient07_clin2", "lesjak_patient19_clin1"):
        (extra / name).mkdir(parents=True)
    source = tmp_path / "exams"
    for name in ("mslesseg_P14_T1", "lesjak_patient19", "lesjak_patient07"):
        (source / name).mkdir(parents=True)

    folder = experiments.case_folder(tmp_path / "train", ["mslesseg_P14_T1", "lesjak_patient19"], source, extra=extra)

    assert sorted(p.name for p in folder.iterdir()) == [
        "lesjak_patient19", "lesjak_patient19_clin1", "mslesseg_P14_T1", "mslesseg_P14_T1_clin1"]
    assert (folder / "lesjak_patient19_clin1").resolve() == (extra / "lesjak_patient19_clin1").resolve()


def test_visible_only_drops_a_lesion_thinner_than_half_a_slice_and_keeps_the_others_whole(sim, tmp_path):
    case, lesion, affine = _stripped_exam(tmp_path / "exams")
    thin = np.zeros_like(lesion)
    thin[14:20, 14:20, 22] = True  # a 1.2 mm thin plaque: under half of any 4 mm slice
    mask = (lesion | thin).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, affine), case / "lesion_mask.nii.gz")
    flair = np.asarray(nib.load(case / "flair.nii.gz").dataobj, np.float32)
    flair[thin] = 190.0
    nib.save(nib.Nifti1Image(flair, affine), case / "flair.nii.gz")
    variant = sim.Variant(slice_mm=4.0, gap_mm=0.0, in_plane_mm=1.0, seed=3)
    config = REPO / "pipelines" / "ms_flair.toml"

    every = sim.simulate(case, variant, config, tmp_path / "all", tmp_path / "w1")
    visible = sim.simulate(case, variant, config, tmp_path / "visible", tmp_path / "w2", visible_only=True)

    count = lambda path: ndimage.label(np.asarray(nib.load(path / "lesion_mask.nii.gz").dataobj))[1]  # noqa: E731
    assert count(every) == 2 and count(visible) == 1
    kept = np.asarray(nib.load(visible / "lesion_mask.nii.gz").dataobj) > 0
    labels, _ = ndimage.label(np.asarray(nib.load(every / "lesion_mask.nii.gz").dataobj))
    big = labels == np.argmax(np.bincount(labels[labels > 0]))
    np.testing.assert_array_equal(kept, big)  # the visible lesion keeps its 1 mm outline


def test_visible_lesions_keeps_whole_components_touched_by_the_thick_truth(sim):
    truth = np.zeros((8, 8, 8), bool)
    truth[1, 1, 1] = True
    truth[5:7, 5:7, 2:6] = True
    thick = np.zeros_like(truth)
    thick[6, 6, 5] = True
    np.testing.assert_array_equal(sim.visible_lesions(truth, thick), truth & (np.indices(truth.shape)[0] >= 5))
    assert not sim.visible_lesions(truth, np.zeros_like(truth)).any()
