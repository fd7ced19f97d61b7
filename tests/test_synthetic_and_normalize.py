"""Sample-data generator (deterministic, realistic contrasts) and intensity normalisation."""

from __future__ import annotations

import cc3d
import nibabel as nib
import numpy as np
import pytest

from lesionseg.cli import main
from lesionseg.data.normalize import normalize_channel, normalize_image, saturated_fraction
from lesionseg.data.synthetic import SAMPLE_CASES, generate_case, write_samples


def test_generator_is_deterministic_and_lesions_span_sizes():
    a = generate_case("x", 7, (48, 48, 48), 6)
    b = generate_case("x", 7, (48, 48, 48), 6)
    np.testing.assert_array_equal(a.flair, b.flair)
    np.testing.assert_array_equal(a.mask, b.mask)
    labels, n = cc3d.connected_components(a.mask, connectivity=26, return_N=True)
    assert n == 6
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() <= 20 and sizes.max() >= 200  # small and large lesions together
    lesion = a.mask.astype(bool)
    wm_like = (a.flair > 0) & ~lesion
    assert a.flair[lesion].mean() > 1.4 * np.median(a.flair[wm_like])  # hyperintense on FLAIR
    assert a.t1[lesion].mean() < np.median(a.t1[wm_like])  # hypointense on T1


def test_lesion_free_case_and_orientation():
    c = generate_case("x", 3, (40, 40, 40), 0, "LAS")
    assert c.mask.sum() == 0
    assert nib.aff2axcodes(c.affine) == ("L", "A", "S")


def test_bundled_samples_match_generator(samples_dir, tmp_path):
    assert sorted(p.name for p in samples_dir.iterdir() if p.is_dir()) == [c[0] for c in SAMPLE_CASES]
    write_samples(tmp_path, SAMPLE_CASES[:2])
    for case_id, *_ in SAMPLE_CASES[:2]:
        for name in ("flair", "t1", "lesion_mask"):
            new = nib.load(str(tmp_path / case_id / f"{name}.nii.gz"))
            old = nib.load(str(samples_dir / case_id / f"{name}.nii.gz"))
            np.testing.assert_array_equal(np.asarray(new.dataobj), np.asarray(old.dataobj))
            assert np.array_equal(new.affine, old.affine)


def test_samples_command(tmp_path):
    assert main(["samples", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("*/lesion_mask.nii.gz"))) == len(SAMPLE_CASES)


def test_zscore_inside_brain_background_zero():
    rng = np.random.default_rng(0)
    x = np.zeros((20, 20, 20), np.float32)
    x[4:16, 4:16, 4:16] = rng.normal(500, 50, (12, 12, 12))
    y = normalize_channel(x, "zscore", (0.0, 100.0))
    inside = y[4:16, 4:16, 4:16]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3
    assert (y[x == 0] == 0).all()


def test_percentile_clipping_and_minmax():
    x = np.ones((10, 10, 10), np.float32)
    x[:5] = 2.0
    x[0, 0, 0] = 1e6  # outlier
    y = normalize_channel(x, "minmax", (1.0, 99.0))
    assert y.max() == pytest.approx(1.0) and y.min() == pytest.approx(0.0)
    assert np.isfinite(normalize_channel(np.full((4, 4, 4), 3.0, np.float32), "zscore")).all()


def test_normalize_image_per_channel():
    rng = np.random.default_rng(1)
    img = np.stack([rng.normal(10, 2, (8, 8, 8)), rng.normal(1000, 300, (8, 8, 8))], -1).astype(np.float32)
    out = normalize_image(img, "zscore", (0, 100))
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1, 2).std(0), [1, 1], rtol=1e-3)


def _brain_with_bright_lesions(n_lesion: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    flair = np.zeros((40, 40, 40), np.float32)
    flair[5:35, 5:35, 5:35] = rng.normal(100, 10, (30, 30, 30))
    mask = np.zeros(flair.shape, np.uint8)
    idx = np.argwhere(flair > 0)[rng.choice(27000, n_lesion, replace=False)]
    mask[tuple(idx.T)] = 1
    flair[mask > 0] = rng.normal(200, 5, n_lesion)  # lesions: the brightest voxels of the brain
    return flair, mask


def test_clipping_at_99_5_flattens_the_lesions_of_a_low_load_exam():
    flair, mask = _brain_with_bright_lesions(30)  # 0.1 % of the brain, inside the clipped top 0.5 %
    low, high = saturated_fraction(flair, mask, (0.5, 99.5))
    assert low == 0.0 and high == 1.0
    assert len(np.unique(normalize_channel(flair, "zscore", (0.5, 99.5))[mask > 0])) == 1
    assert saturated_fraction(flair, mask, (0.0, 100.0)) == (0.0, 0.0)
    assert len(np.unique(normalize_channel(flair, "zscore", (0.0, 100.0))[mask > 0])) == 30


def test_high_lesion_load_is_not_flattened():
    flair, mask = _brain_with_bright_lesions(2700)  # 10 % of the brain
    assert saturated_fraction(flair, mask, (0.5, 99.5))[1] < 0.1
    assert saturated_fraction(flair, np.zeros_like(mask)) == (0.0, 0.0)


def test_training_warns_when_clipping_flattens_lesions(tmp_path, caplog):
    import logging

    from conftest import write_nifti

    from lesionseg.config import load_config
    from lesionseg.sampling.feed import prepare_case

    flair, mask = _brain_with_bright_lesions(30)
    for name, arr in (("flair", flair), ("t1", 200 - flair * (flair > 0)), ("lesion_mask", mask)):
        write_nifti(tmp_path / "c1" / f"{name}.nii.gz", arr)
    config = load_config(None, ["data.clip_percentiles=[0.5,99.5]"])
    with caplog.at_level(logging.WARNING, logger="lesionseg"):
        prepare_case(config, tmp_path / "c1")
    assert "c1: 100 % of the lesion voxels of flair sit at the upper clip value" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lesionseg"):
        prepare_case(load_config(None, ["data.clip_percentiles=[0,100]"]), tmp_path / "c1")
    assert "clip value" not in caplog.text


def test_robust_normalisation_is_stable_across_lesion_loads():
    """Median/IQR: adding 3 % bright lesion moves normal tissue's value far less than a z-score does."""
    rng = np.random.default_rng(0)
    brain = rng.normal(100.0, 10.0, size=(40, 40, 40)).astype(np.float32)
    loaded = brain.copy()
    lesion = rng.random(brain.shape) < 0.03
    loaded[lesion] = 200.0  # 10 SD above the tissue
    tissue = ~lesion
    shift = {}
    for method in ("zscore", "robust"):
        clean = normalize_channel(brain, method, (0.0, 100.0))
        dirty = normalize_channel(loaded, method, (0.0, 100.0))
        shift[method] = float(np.abs(clean[tissue] - dirty[tissue]).mean())
    assert shift["robust"] < 0.1 < shift["zscore"], shift
    robust = normalize_channel(brain, "robust", (0.0, 100.0))
    assert abs(float(np.median(robust))) < 0.01  # centred on the median
    assert abs(float(np.percentile(robust, 75) - np.percentile(robust, 25)) - 1.349) < 0.01  # IQR/1.349 = 1 SD
    background = brain.copy()
    background[:5] = 0
    assert (normalize_channel(background, "robust")[:5] == 0).all()  # outside the brain stays 0


def test_tissue_normalisation_ignores_a_partial_volume_rim():
    """A dim rim (thick slices resampled to 1 mm) moves robust statistics, not the tissue ones."""
    from lesionseg.data.normalize import tissue_mask

    rng = np.random.default_rng(1)
    crisp = np.zeros((40, 40, 40), np.float32)
    crisp[8:32, 8:32, 8:32] = rng.normal(100.0, 10.0, size=(24, 24, 24))  # white and grey matter
    crisp[8:32, 8:32, 8:12] = rng.normal(30.0, 5.0, size=(24, 24, 4))  # CSF, dark on FLAIR
    crisp[18:22, 18:22, 18:22] = 180.0  # a lesion
    blurred = crisp.copy()
    rim = np.zeros(crisp.shape, bool)
    rim[2:38, 2:38, 2:38] = True
    rim[8:32, 8:32, 8:32] = False
    blurred[rim] = rng.uniform(5.0, 50.0, int(rim.sum()))  # partial volume of brain and background
    lesion = np.zeros(crisp.shape, bool)
    lesion[18:22, 18:22, 18:22] = True
    value = {m: (float(normalize_channel(crisp, m, (0.0, 100.0))[lesion].mean()),
                 float(normalize_channel(blurred, m, (0.0, 100.0))[lesion].mean())) for m in ("robust", "tissue")}
    moved = {m: abs(a - b) / a for m, (a, b) in value.items()}
    assert moved["tissue"] < 0.02 and moved["robust"] > 0.05, value
    region = tissue_mask(blurred, blurred != 0)
    assert not (region & rim).any() and region[8:32, 8:32, 12:32].mean() > 0.95 and not region[8:32, 8:32, 8:12].any()
    flat = np.full((6, 6, 6), 3.0, np.float32)
    assert tissue_mask(flat, flat != 0).all()  # one intensity: the whole foreground
    assert (normalize_channel(blurred, "tissue")[blurred == 0] == 0).all()


def test_tissue_ratio_commutes_with_thick_slice_blur_and_tissue_does_not():
    """Normalising a blurred exam = blurring the normalised exam, as the thick-slice augmentation assumes."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    z = np.arange(48)
    grey = (np.sin(z / 2.0)[:, None, None] > 0) & np.ones((48, 48, 48), bool)  # 1 mm grey / white bands
    brain = np.where(grey, 80.0, 100.0).astype(np.float32) + rng.normal(0, 2.0, (48, 48, 48)).astype(np.float32)
    brain[:, :, :14] = 20.0 + rng.normal(0, 2.0, (48, 48, 14)).astype(np.float32)  # CSF: what Otsu leaves out
    brain[20:24, 20:24, 24:28] = 160.0  # a lesion

    def blur(x):  # 7 mm slices along the first axis
        return ndimage.uniform_filter1d(x, 7, axis=0, mode="nearest")

    inner = (slice(8, 40), slice(8, 40), slice(18, 40))  # tissue away from the CSF border
    for method, agree in (("tissue_ratio", True), ("tissue", False)):
        a = normalize_channel(blur(brain), method, (0.0, 100.0))[inner]
        b = blur(normalize_channel(brain, method, (0.0, 100.0)))[inner]
        scale = float(np.percentile(a, 99) / np.percentile(b, 99))
        assert (abs(scale - 1.0) < 0.1) == agree, (method, scale)
