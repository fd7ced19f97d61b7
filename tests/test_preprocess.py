"""Preprocessing of raw exams (reorient, resample, N4, brain extraction) and thick-slice simulation."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lesionseg.cli import main
from lesionseg.config import PreprocessConfig
from lesionseg.data.io import Grid
from lesionseg.data.preprocess import bias_correct, brain_mask, prepare, resample, to_input_grid, working_grid
from lesionseg.data.simulate import thick_slice_grid
from lesionseg.data.synthetic import generate_case, with_head
from lesionseg.errors import LesionsegError

SMOKE_CONFIG = "pipelines/smoke.toml"


def las_grid(shape=(10, 12, 8)):
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [5.0, -6.0, -4.0]
    return Grid(shape, affine, (1.0, 1.0, 1.0))


def test_reorientation_is_exact_and_goes_back():
    grid = las_grid()
    rng = np.random.default_rng(0)
    vol = rng.random(grid.shape).astype(np.float32)
    cfg = PreprocessConfig(reorient=True)
    work = working_grid(grid, cfg)
    assert "".join(nib.aff2axcodes(work.affine)) == "RAS" and work.shape == grid.shape
    moved = resample(vol, grid, work, order=1)
    np.testing.assert_allclose(moved, vol[::-1], atol=1e-6)  # the first axis flipped, nothing interpolated
    np.testing.assert_allclose(to_input_grid(moved, grid, cfg), np.clip(vol, 0, 1), atol=1e-6)


def test_resampling_keeps_the_field_of_view_and_returns_to_the_input_grid():
    grid = Grid((20, 20, 4), np.diag([0.9, 0.9, 7.0, 1.0]), (0.9, 0.9, 7.0))
    cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0))
    work = working_grid(grid, cfg)
    assert work.shape == (18, 18, 28) and work.zooms == (1.0, 1.0, 1.0)
    # the field of view's centre stays where it was
    centre = lambda g: g.affine[:3, :3] @ ((np.asarray(g.shape) - 1) / 2) + g.affine[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(work), centre(grid), atol=1e-6)
    # a smooth probability map survives the round trip
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in work.shape], indexing="ij")
    prob = (0.25 + 0.5 * i * j).astype(np.float32)
    back = to_input_grid(prob, grid, cfg)
    assert back.shape == grid.shape and back.dtype == np.float32
    assert np.abs(back[2:-2, 2:-2, 1:-1] - back[2:-2, 2:-2, 1:-1].mean()).max() < 0.5  # sane values inside
    assert 0.2 < float(back[5:15, 5:15, 1:3].mean()) < 0.8


def test_prepare_is_the_identity_when_off():
    grid = las_grid()
    image = np.ones((*grid.shape, 2), np.float32)
    prepared = prepare(image, None, grid, PreprocessConfig())
    assert prepared.image is image and prepared.grid is grid


def test_brain_extraction_removes_skull_and_scalp():
    brain_only = generate_case("h", 3, (64, 64, 64), 5)
    head = with_head(brain_only, seed=3)
    truth = np.pad(brain_only.flair > 0, 14)
    mask = brain_mask(head.flair, (1.0, 1.0, 1.0))
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.97, dice
    scalp_bright = head.flair > 800
    assert not (mask & scalp_bright & ~truth).any()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.mark.parametrize("scalp_mm", [7, 12])
def test_brain_extraction_drops_a_scalp_thick_enough_to_outlast_the_erosion(scalp_mm):
    """A fatty scalp over twice the erosion depth stays a shell around the brain (once larger than 20 % of it,
    even larger than the brain); kept, it and the skull and CSF inside it were filled in as brain (Dice 0.58 at 7 mm)."""
    brain_only = generate_case("h", 3, (64, 64, 64), 5)
    margin = 8 + scalp_mm
    brain = np.pad(brain_only.flair > 0, margin)
    dist = ndimage.distance_transform_edt(~brain)
    rng = np.random.default_rng(0)
    head = np.pad(brain_only.flair, margin).astype(np.float32)
    for low, high, value in ((0, 2, 120.0), (2, 6, 40.0), (6, 6 + scalp_mm, 900.0)):  # CSF, skull, scalp
        layer = (dist > low) & (dist <= high)
        head[layer] = value + rng.normal(0, 25.0, int(layer.sum()))
    air = dist > 6 + scalp_mm
    head[air] = np.abs(rng.normal(0, 12.0, int(air.sum())))
    mask = brain_mask(np.clip(head, 0, None), (1.0, 1.0, 1.0))
    assert _dice(mask, brain) > 0.97
    assert not (mask & (dist > 6)).any()  # no scalp


def test_brain_extraction_ignores_a_few_extreme_voxels_in_the_air():
    """Three voxels of 1e6 in the air once made Otsu's threshold exceed every tissue (a 23-voxel 'brain')."""
    brain_only = generate_case("h", 3, (64, 64, 64), 5)
    head = with_head(brain_only, seed=3)
    truth = np.pad(brain_only.flair > 0, 14)
    spiked = head.flair.astype(np.float32).copy()
    spiked[2:5, 3, 3] = 1e6
    assert _dice(brain_mask(spiked, (1.0, 1.0, 1.0)), truth) > 0.97


def test_brain_extraction_keeps_both_halves_of_a_brain_cut_by_missing_slices():
    brain_only = generate_case("h", 3, (64, 64, 64), 5)
    head = with_head(brain_only, seed=3)
    truth = np.pad(brain_only.flair > 0, 14)
    gap = head.flair.astype(np.float32).copy()
    gap[:, :, 44:48] = 0  # four zeroed slices through the middle of the brain
    mask = brain_mask(gap, (1.0, 1.0, 1.0))
    kept = truth.copy()
    kept[:, :, 44:48] = False
    assert mask[:, :, :44].sum() > 0.9 * kept[:, :, :44].sum() and mask[:, :, 48:].sum() > 0.9 * kept[:, :, 48:].sum()


def test_negative_intensities_are_shifted_before_brain_extraction():
    """An exam stored with an offset (air at -1000) is extracted like the same exam without it."""
    brain_only = generate_case("h", 3, (64, 64, 64), 5)
    head = with_head(brain_only, seed=3)
    grid = Grid(head.flair.shape, np.eye(4), (1.0, 1.0, 1.0))
    cfg = PreprocessConfig(reorient=True, brain_extraction=True)
    plain = prepare(head.flair[..., None].astype(np.float32), None, grid, cfg)
    shifted = prepare(head.flair[..., None].astype(np.float32) - 1000.0, None, grid, cfg)
    assert _dice(plain.image[..., 0] > 0, shifted.image[..., 0] > 0) > 0.99


@pytest.mark.parametrize("slice_mm, origin", [(7.0, (-30.0, -40.0, -70.3)), (7.0, (-28.8, -28.8, -66.5)),
                                              (6.4, (0.0, 0.0, 0.0)), (8.0, (0.0, 0.0, 0.0))])
def test_the_outer_thick_slices_reach_the_working_grid_at_full_brightness(slice_mm, origin):
    """A 7 mm slice covers 3.5 mm either side of its centre: the 1 mm grid there holds its value, not 0 or 70 %."""
    cfg = PreprocessConfig(reorient=True, spacing=(1.0, 1.0, 1.0))
    x = np.full((16, 16, 20), 100.0, np.float32)
    affine = np.diag([0.9, 0.9, slice_mm, 1.0])
    affine[:3, 3] = origin
    grid = Grid(x.shape, affine, (0.9, 0.9, slice_mm))
    work = working_grid(grid, cfg)
    on_work = resample(x, grid, work)
    assert on_work.min() == pytest.approx(100.0)
    back = resample(on_work, work, grid)
    assert np.allclose(back, 100.0)


def test_resampling_is_zero_beyond_one_source_voxel_outside():
    x = np.full((4, 4, 4), 5.0, np.float32)
    source = Grid(x.shape, np.eye(4), (1.0, 1.0, 1.0))
    shifted = np.eye(4)
    shifted[:3, 3] = -3.0  # the target starts 3 voxels before the source
    out = resample(x, source, Grid((10, 10, 10), shifted, (1.0, 1.0, 1.0)))
    assert out[0, 5, 5] == 0.0 and out[1, 5, 5] == 0.0  # 3 and 2 voxels outside
    assert out[3, 5, 5] == pytest.approx(5.0) and out[2, 5, 5] == pytest.approx(5.0)  # inside / its edge's pad


def test_n4_removes_a_smooth_bias_field():
    rng = np.random.default_rng(1)
    shape = (40, 40, 40)
    tissue = np.full(shape, 500.0, np.float32) + rng.normal(0, 5, shape).astype(np.float32)
    i = np.linspace(-1, 1, shape[0])[:, None, None]
    biased = (tissue * np.exp(0.3 * i)).astype(np.float32)
    mask = np.ones(shape, bool)
    corrected = bias_correct(biased, mask, (1.0, 1.0, 1.0))
    cv = lambda x: float(x.std() / x.mean())  # noqa: E731
    assert cv(corrected) < 0.5 * cv(biased), (cv(biased), cv(corrected))


def test_config_checks_spacing():
    with pytest.raises(LesionsegError, match="preprocess.spacing"):
        PreprocessConfig(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(LesionsegError, match="preprocess.reorient"):
        PreprocessConfig(reorient="yes")  # type: ignore[arg-type]


def test_thick_slices_command_keeps_image_and_truth_on_one_grid(samples_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(samples_dir / "sample01", data / "sample01")
    out = tmp_path / "thick"
    assert main(["thick-slices", "--data", str(data), "--out", str(out), "--slice-mm", "6", "--gap-mm", "1"]) == 0
    flair = nib.load(out / "sample01" / "flair.nii.gz")
    mask = nib.load(out / "sample01" / "lesion_mask.nii.gz")
    assert np.allclose(flair.header.get_zooms()[:3], (0.9, 0.9, 7.0), atol=1e-4)
    assert flair.shape == mask.shape and np.allclose(flair.affine, mask.affine)
    src = nib.load(samples_dir / "sample01" / "lesion_mask.nii.gz")
    before = float(np.asarray(src.dataobj).sum())  # 1 mm³ voxels
    after = float(np.asarray(mask.dataobj).sum()) * 0.9 * 0.9 * 7.0
    assert 0.3 * before < after < 2.0 * before, (before, after)
    grid = Grid(src.shape, src.affine, (1.0, 1.0, 1.0))
    assert thick_slice_grid(grid, 6.0, 0.9, 1.0).shape == flair.shape


def test_thick_slices_checks_every_case_before_writing_and_keeps_the_earlier_output(samples_dir, tmp_path, capsys):
    """A bad case stops thick-slices before it writes; a failed rerun leaves the earlier output whole."""
    data = tmp_path / "data"
    for case in ("sample01", "sample02"):
        shutil.copytree(samples_dir / case, data / case)
    out = tmp_path / "thick"
    assert main(["thick-slices", "--data", str(data), "--out", str(out), "--slice-mm", "6"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.nii.gz")}
    capsys.readouterr()

    flair = data / "sample02" / "flair.nii.gz"
    img = nib.load(flair)
    bad = np.asarray(img.dataobj, np.float32)
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, img.affine), flair)
    assert main(["thick-slices", "--data", str(data), "--out", str(out), "--slice-mm", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR ") and "sample02/flair.nii.gz: contains NaN/Inf" in err and err.count("\n") == 1
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.nii.gz")} == before
    assert main(["thick-slices", "--data", str(data), "--out", str(tmp_path / "new"), "--slice-mm", "3"]) == 1
    assert not (tmp_path / "new" / "sample01").exists()  # the good case is not written either

    flair.write_text("not a NIfTI")
    assert main(["thick-slices", "--data", str(data), "--out", str(out)]) == 1
    assert "sample02/flair.nii.gz: unreadable NIfTI" in capsys.readouterr().err
    shutil.rmtree(data / "sample02")
    assert main(["thick-slices", "--data", str(data), "--out", str(out), "--in-plane-mm", "0.001"]) == 1
    assert "more than lesionseg writes" in capsys.readouterr().err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.nii.gz")} == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


@pytest.mark.slow
def test_a_preprocessing_model_predicts_raw_heads_and_thick_slices_on_their_own_grids(samples_dir, tmp_path):
    """Train with [preprocess] on; infer on skull-on heads (RAS and LAS) and thick slices: outputs on each input grid."""
    train_data = tmp_path / "train"
    train_data.mkdir()
    for case in ("sample01", "sample02", "sample03"):
        shutil.copytree(samples_dir / case, train_data / case)
    run = tmp_path / "run"
    sets = ["--set", "preprocess.reorient=true", "--set", "preprocess.spacing=[1,1,1]",
            "--set", "preprocess.brain_extraction=true", "--set", "preprocess.bias_correction=true",
            "--set", "train.val_cases=[sample03]"]
    assert main(["train", "--config", SMOKE_CONFIG, "--data", str(train_data), "--out", str(run), *sets]) == 0

    heads = tmp_path / "heads"
    assert main(["samples", "--head", "--out", str(heads)]) == 0
    raw = tmp_path / "raw"
    raw.mkdir()
    for case in ("sample01", "sample04"):  # RAS and LAS
        shutil.copytree(heads / case, raw / case)
    assert main(["thick-slices", "--data", str(raw), "--out", str(tmp_path / "thick"), "--slice-mm", "6"]) == 0
    for case in ("sample01", "sample04"):
        shutil.copytree(tmp_path / "thick" / case, raw / f"{case}_thick")
    pred = tmp_path / "pred"
    assert main(["infer", "--model", str(run), "--input", str(raw), "--out", str(pred)]) == 0
    for case_dir in sorted(raw.iterdir()):
        given = nib.load(case_dir / "flair.nii.gz")
        for kind in ("prob", "pred"):
            out = nib.load(pred / f"{case_dir.name}_{kind}.nii.gz")
            assert out.shape == given.shape, (case_dir.name, kind)
            np.testing.assert_array_equal(out.affine, given.affine)
        prob = np.asarray(nib.load(pred / f"{case_dir.name}_prob.nii.gz").dataobj)
        assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
        # brain extraction: nothing predicted in the air around the head
        assert prob[:3].max() == 0 and prob[-3:].max() == 0
    assert "LAS" == "".join(nib.aff2axcodes(nib.load(raw / "sample04" / "flair.nii.gz").affine))


def test_thick_slice_augmentation_blurs_across_slices_only():
    from lesionseg.sampling.augment import thick_slices

    rng = np.random.default_rng(0)
    image = np.zeros((16, 16, 32, 1), np.float32)
    image[..., ::2, 0] = 1.0  # stripes across axis 2: the finest detail along the slice axis
    image[..., 1::2, 0] = -1.0
    image[:2] = 0.0  # background
    out = thick_slices(rng, image, (4.0, 6.0), axis=2)
    assert out.shape == image.shape and out.dtype == np.float32
    assert (out[:2] == 0).all()  # background stays 0
    assert np.abs(out[4:, :, 6:-6]).max() < 0.3  # the stripes are gone across slices
    in_plane = np.ones((16, 16, 32, 1), np.float32)
    in_plane[::2] = 2.0  # stripes along axis 0 (in plane) survive
    kept = thick_slices(np.random.default_rng(1), in_plane, (6.0, 6.0), axis=2)
    np.testing.assert_allclose(kept, in_plane, atol=1e-5)


def test_thick_slice_augmentation_is_off_by_default_and_keeps_the_mask():
    from lesionseg.config import AugmentConfig
    from lesionseg.sampling.augment import augment_patch

    rng_image = np.random.default_rng(2).standard_normal((8, 8, 8, 2)).astype(np.float32)
    mask = (rng_image[..., 0] > 1).astype(np.uint8)
    plain = augment_patch(np.random.default_rng(5), rng_image, mask, AugmentConfig())
    again = augment_patch(np.random.default_rng(5), rng_image, mask, AugmentConfig(thick_slice_probability=0.0))
    np.testing.assert_array_equal(plain[0], again[0])
    thick_image, thick_mask = augment_patch(np.random.default_rng(5), rng_image, mask,
                                            AugmentConfig(flip_axes=(), thick_slice_probability=1.0))
    np.testing.assert_array_equal(thick_mask, mask)
    assert not np.allclose(thick_image, rng_image)
    with pytest.raises(LesionsegError, match="augment.thick_slice_mm"):
        AugmentConfig(thick_slice_mm=(0.5, 3.0))


def test_brain_extraction_keeps_an_already_stripped_brain(samples_dir):
    flair = np.asarray(nib.load(samples_dir / "sample01" / "flair.nii.gz").dataobj, np.float32)
    np.testing.assert_array_equal(brain_mask(flair, (1.0, 1.0, 1.0)), flair > 0)


def test_in_plane_resolution_blurs_the_plane_only_above_one_voxel():
    from lesionseg.sampling.augment import thick_slices

    in_plane = np.ones((16, 16, 32, 1), np.float32)
    in_plane[::2] = 2.0  # stripes along axis 0 (in plane)
    fine = thick_slices(np.random.default_rng(1), in_plane, (6.0, 6.0), axis=2, in_plane=(0.5, 1.0))
    np.testing.assert_allclose(fine, in_plane, atol=1e-5)  # finer than the grid: nothing to see
    coarse = thick_slices(np.random.default_rng(1), in_plane, (6.0, 6.0), axis=2, in_plane=(2.0, 2.0))
    assert np.ptp(coarse[4:-4, 4:-4, 8:-8]) < 0.5 * np.ptp(in_plane)  # 2-voxel in-plane voxels blur them


def test_gamma_contrast_keeps_range_and_background_and_changes_contrast():
    from lesionseg.sampling.augment import gamma_contrast

    rng = np.random.default_rng(3)
    image = rng.uniform(-1.0, 3.0, (12, 12, 12, 2)).astype(np.float32)
    image[:3] = 0.0
    out = gamma_contrast(rng, image, (2.0, 2.0))
    assert (out[:3] == 0).all() and out.dtype == np.float32
    for c in range(2):
        inside = image[3:, ..., c]
        np.testing.assert_allclose([out[3:, ..., c].min(), out[3:, ..., c].max()], [inside.min(), inside.max()], rtol=1e-5)
    mid = (image[3:, ..., 0] > 0.8) & (image[3:, ..., 0] < 1.2)  # the middle of the range darkens with g = 2
    assert (out[3:, ..., 0][mid] < image[3:, ..., 0][mid]).all()
    np.testing.assert_allclose(gamma_contrast(rng, image, (1.0, 1.0)), image, atol=1e-5)


def test_bias_field_is_smooth_bounded_and_keeps_background():
    from lesionseg.sampling.augment import bias_field

    rng = np.random.default_rng(4)
    image = np.full((16, 16, 16, 1), 2.0, np.float32)
    image[:, :2] = 0.0
    image[0, 2, 0, 0] = 1.0  # the patch's lowest value: the field's zero
    out = bias_field(rng, image, 0.3)
    assert (out[:, :2] == 0).all() and out[0, 2, 0, 0] == 1.0
    above = image[:, 2:, :, 0] > 1.0  # the gain is measured from the field's zero
    gain = (out[:, 2:, :, 0][above] - 1.0) / (image[:, 2:, :, 0][above] - 1.0)
    assert np.exp(-0.3) - 1e-4 <= gain.min() and gain.max() <= np.exp(0.3) + 1e-4
    assert gain.max() - gain.min() > 0.05  # it varies ...
    full = (out[1:, 2:, :, 0] - 1.0) / (image[1:, 2:, :, 0] - 1.0)
    assert np.abs(np.diff(full, axis=0)).max() < 0.1  # ... smoothly
    np.testing.assert_allclose(bias_field(rng, image, 0.0), image)


def test_new_intensity_augmentations_are_off_by_default_and_validated():
    from lesionseg.config import AugmentConfig
    from lesionseg.sampling.augment import augment_patch

    image = np.random.default_rng(2).standard_normal((8, 8, 8, 1)).astype(np.float32)
    mask = (image[..., 0] > 1).astype(np.uint8)
    plain = augment_patch(np.random.default_rng(5), image, mask, AugmentConfig())
    off = augment_patch(np.random.default_rng(5), image, mask,
                        AugmentConfig(gamma_probability=0.0, bias_field_probability=0.0))
    np.testing.assert_array_equal(plain[0], off[0])  # zero probabilities draw nothing
    on_image, on_mask = augment_patch(np.random.default_rng(5), image, mask,
                                      AugmentConfig(gamma_probability=1.0, bias_field_probability=1.0))
    np.testing.assert_array_equal(on_mask, plain[1])
    assert not np.allclose(on_image, plain[0])
    with pytest.raises(LesionsegError, match="augment.gamma_range"):
        AugmentConfig(gamma_range=(0.0, 1.5))
    with pytest.raises(LesionsegError, match="augment.thick_slice_in_plane_mm"):
        AugmentConfig(thick_slice_in_plane_mm=(1.2, 0.5))


def test_a_head_on_a_zero_background_is_stripped_not_taken_for_a_brain():
    """Exact zeros around a head (scanner masking, a conversion) used to pass it as already stripped."""
    from lesionseg.data.preprocess import dark_band_share, looks_skull_stripped

    brain_only = generate_case("h", 3, (64, 64, 64), 5)
    head = with_head(brain_only, seed=3)
    from scipy import ndimage

    air = ndimage.distance_transform_edt(~np.pad(brain_only.flair > 0, 14)) > 10  # beyond the scalp
    flair = np.pad(np.where(air, 0.0, head.flair), 20)  # the air set to exact 0, a wide field of view
    assert np.mean(flair == 0) > 0.5
    truth = np.pad(brain_only.flair > 0, 34)
    assert not looks_skull_stripped(flair, (1.0, 1.0, 1.0)) and dark_band_share(flair, (1.0, 1.0, 1.0)) > 0.27
    mask = brain_mask(flair, (1.0, 1.0, 1.0))
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95, dice
    assert not (mask & (flair > 800) & ~truth).any()  # no scalp left

    # the same brain without its head is recognised as stripped, also as 7 mm slices
    stripped = brain_only.flair
    assert looks_skull_stripped(stripped, (1.0, 1.0, 1.0))
    thick = stripped[:, :, ::7]
    assert looks_skull_stripped(thick, (1.0, 1.0, 7.0))
    np.testing.assert_array_equal(brain_mask(stripped, (1.0, 1.0, 1.0)), stripped > 0)


def test_prepare_reads_stripped_or_not_on_the_exam_grid(samples_dir):
    """7 mm slices blur a stripped brain's edge on the 1 mm working grid; the decision is made before."""
    flair = np.asarray(nib.load(samples_dir / "sample01" / "flair.nii.gz").dataobj, np.float32)
    thick = flair[:, :, ::7]
    grid = Grid(thick.shape, np.diag([1.0, 1.0, 7.0, 1.0]), (1.0, 1.0, 7.0))
    cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0), brain_extraction=True)
    prepared = prepare(thick[..., None], None, grid, cfg)
    upsampled = resample(thick, grid, working_grid(grid, cfg), order=1)
    np.testing.assert_array_equal(prepared.image[..., 0] != 0, upsampled > 0)  # kept whole: already stripped


def test_thick_slice_axes_are_drawn_from_the_list_and_one_axis_keeps_the_random_stream():
    """``augment.thick_slice_axis = [2, 2, 0, 1]``: each thick patch blurred across one axis drawn from the
    list; a single axis (``2`` in older configs) is read as ``(2,)`` and draws nothing more."""
    from lesionseg.config import AugmentConfig
    from lesionseg.sampling.augment import augment_patch, thick_slices

    image = np.zeros((12, 12, 12, 1), np.float32)
    image[..., 0] = np.random.default_rng(0).standard_normal((12, 12, 12)) + 5.0
    mask = np.zeros((12, 12, 12), np.uint8)
    base = dict(flip_axes=(), intensity_scale=0.0, intensity_shift=0.0, thick_slice_probability=1.0,
                thick_slice_mm=(4.0, 4.0))
    assert AugmentConfig(**base, thick_slice_axis=2).thick_slice_axis == (2,)
    one, _ = augment_patch(np.random.default_rng(3), image, mask, AugmentConfig(**base, thick_slice_axis=(2,)))
    rng = np.random.default_rng(3)
    rng.random()  # the thick-slice probability draw
    np.testing.assert_array_equal(one, thick_slices(rng, image, (4.0, 4.0), 2, (1.0, 1.0)))

    def smooth_axis(patch: np.ndarray) -> int:  # the axis along which neighbours differ least
        return int(np.argmin([np.abs(np.diff(patch[..., 0], axis=a)).mean() for a in range(3)]))

    drawn = [smooth_axis(augment_patch(np.random.default_rng(s), image, mask,
                                       AugmentConfig(**base, thick_slice_axis=(2, 2, 0, 1)))[0]) for s in range(40)]
    counts = np.bincount(drawn, minlength=3)
    assert counts[2] > counts[0] > 0 and counts[1] > 0, counts
    with pytest.raises(LesionsegError, match="augment.thick_slice_axis"):
        AugmentConfig(thick_slice_axis=(3,))
    with pytest.raises(LesionsegError, match="augment.thick_slice_axis"):
        AugmentConfig(thick_slice_axis=())


def test_lesion_contrast_dims_the_lesion_towards_the_tissue_and_keeps_the_rest():
    from lesionseg.sampling.augment import lesion_contrast

    image = np.zeros((16, 16, 16, 1), np.float32)
    image[2:] = 0.2  # tissue, near the normalised tissue level 0
    image[:2] = 0.0  # background
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[6:10, 6:10, 6:10] = 1
    image[6:10, 6:10, 6:10] = 3.0  # a bright lesion
    out = lesion_contrast(np.random.default_rng(0), image, mask, (0.5, 0.5))
    np.testing.assert_allclose(out[6:10, 6:10, 6:10], 1.5)  # half its contrast, everywhere on the mask
    assert (out[:2] == 0).all() and out.dtype == np.float32
    np.testing.assert_allclose(out[2:4], image[2:4], atol=1e-3)  # two voxels and more from it: all but untouched
    rim = out[5, 7:9, 7:9, 0]  # the voxel next to the lesion: dimmed a little, no step
    assert (rim < 0.2).all() and (rim > 0.1).all()
    brighter = lesion_contrast(np.random.default_rng(0), image, mask, (1.5, 1.5))
    np.testing.assert_allclose(brighter[6:10, 6:10, 6:10], 4.5)
    assert lesion_contrast(np.random.default_rng(0), image, np.zeros_like(mask), (0.5, 0.5)) is image


def test_lesion_contrast_augmentation_is_off_by_default_keeps_the_mask_and_is_validated():
    from lesionseg.config import AugmentConfig
    from lesionseg.sampling.augment import augment_patch

    image = np.random.default_rng(2).standard_normal((8, 8, 8, 1)).astype(np.float32) + 1.0
    mask = (image[..., 0] > 2).astype(np.uint8)
    plain = augment_patch(np.random.default_rng(5), image, mask, AugmentConfig())
    off = augment_patch(np.random.default_rng(5), image, mask, AugmentConfig(lesion_contrast_probability=0.0))
    np.testing.assert_array_equal(plain[0], off[0])  # zero probability draws nothing
    on_image, on_mask = augment_patch(np.random.default_rng(5), image, mask,
                                      AugmentConfig(flip_axes=(), intensity_scale=0.0, intensity_shift=0.0,
                                                    lesion_contrast_probability=1.0,
                                                    lesion_contrast_range=(0.4, 0.6)))
    np.testing.assert_array_equal(on_mask, mask)
    lesion = mask > 0
    assert (on_image[lesion, 0] < 0.61 * image[lesion, 0]).all()
    with pytest.raises(LesionsegError, match="augment.lesion_contrast_range"):
        AugmentConfig(lesion_contrast_range=(0.0, 1.0))
    with pytest.raises(LesionsegError, match="augment.lesion_contrast_probability"):
        AugmentConfig(lesion_contrast_probability=1.5)
