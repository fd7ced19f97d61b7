"""Training input pipeline: cached cases, PatchSequence for Keras, augmentation."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from conftest import make_case

from lesionseg.sampling.augment import augment_patch, intensity_jitter, random_rot90
from lesionseg.config import AugmentConfig, Config, PatchConfig
from lesionseg.sampling.feed import PatchSequence, PreparedCase, cut_patch, load_cases
from lesionseg.errors import DataError, LesionsegError

PATCH = PatchConfig(size=(8, 8, 8), lesion_fraction=0.6, foreground_fraction=0.3, random_fraction=0.1)
AUG = AugmentConfig(flip_axes=(0, 1, 2), intensity_scale=0.1, intensity_shift=0.1, noise_std=0.05, rotate90=True)


@pytest.fixture
def cases(tmp_path) -> list[PreparedCase]:
    make_case(tmp_path, "a", lesions=((6, 6, 6, 2), (14, 15, 12, 1)), seed=1)
    make_case(tmp_path, "b", shape=(6, 7, 5), lesions=((3, 3, 2, 1),), seed=2)  # smaller than a patch
    make_case(tmp_path, "c", lesions=(), seed=3)
    cfg = Config(patches=PATCH)
    return load_cases(cfg, [tmp_path / "a", tmp_path / "b", tmp_path / "c"])


def sequence(cases, **kw) -> PatchSequence:
    args = dict(patch_cfg=PATCH, augment_cfg=AUG, batch_size=3, steps_per_epoch=4, seed=5, augment=True) | kw
    return PatchSequence(cases, **args)


# --- load_cases --------------------------------------------------------------------------------


def test_load_cases_caches_normalised_images_and_lesions(cases, caplog):
    a, b, c = cases
    assert [x.case_id for x in cases] == ["a", "b", "c"]
    assert a.image.shape == (20, 22, 18, 2) and a.image.dtype == np.float32
    assert a.mask.shape == (20, 22, 18) and a.mask.dtype == np.uint8
    assert a.grid.shape == (20, 22, 18) and a.header is not None
    for ch in range(2):  # z-scored inside the non-zero region
        assert abs(float(a.image[..., ch].mean())) < 0.1
        assert 0.8 < float(a.image[..., ch].std()) < 1.2
    assert (a.n_lesions, b.n_lesions, c.n_lesions) == (2, 1, 0)
    assert a.lesions.volumes.sum() == a.mask.sum()
    assert a.nbytes >= a.image.nbytes + a.mask.nbytes


def test_load_cases_logs_each_case_and_memory(tmp_path, caplog):
    make_case(tmp_path, "x")
    with caplog.at_level(logging.INFO, logger="lesionseg"):
        load_cases(Config(), [tmp_path / "x"])
    text = "\n".join(r.message for r in caplog.records)
    assert "x: 20x22x18 x 2 channel(s), 1 lesion(s)" in text
    assert "1 case(s) cached" in text and "MB" in text


def test_load_cases_missing_mask_names_the_file(tmp_path):
    folder = make_case(tmp_path, "nomask")
    (folder / "lesion_mask.nii.gz").unlink()
    with pytest.raises(DataError, match="nomask/lesion_mask.nii.gz"):
        load_cases(Config(), [folder])


# --- PatchSequence -----------------------------------------------------------------------------


def test_batches_have_the_keras_shapes(cases):
    seq = sequence(cases)
    assert len(seq) == 4
    x, y = seq[0]
    assert x.shape == (3, 8, 8, 8, 2) and x.dtype == np.float32
    assert y.shape == (3, 8, 8, 8, 1) and y.dtype == np.float32
    assert set(np.unique(y).tolist()) <= {0.0, 1.0}
    with pytest.raises(IndexError):
        seq[4]


def test_patches_come_from_the_cached_volumes(cases):
    seq = sequence(cases, augment=False)
    x, y = seq[1]
    for i in range(3):
        spec = seq.spec(3 + i)
        image, mask = cut_patch(cases[spec.case], spec)
        np.testing.assert_array_equal(x[i], image)
        np.testing.assert_array_equal(y[i, ..., 0], mask)
        if spec.mode == "lesion":
            assert mask.any()


def test_same_seed_same_batches_whatever_the_order_or_workers(cases):
    first = [sequence(cases)[i] for i in range(4)]
    again = sequence(cases)
    backwards = {i: again[i] for i in reversed(range(4))}
    with ThreadPoolExecutor(2) as pool:  # as Keras's workers do
        threaded = list(pool.map(sequence(cases).__getitem__, range(4)))
    for i in range(4):
        for got in (backwards[i], threaded[i]):
            np.testing.assert_array_equal(got[0], first[i][0])
            np.testing.assert_array_equal(got[1], first[i][1])


def test_patch_n_does_not_depend_on_batch_size(cases):
    by3 = sequence(cases, batch_size=3, steps_per_epoch=2)
    by2 = sequence(cases, batch_size=2, steps_per_epoch=3)
    x3 = np.concatenate([by3[i][0] for i in range(2)])
    x2 = np.concatenate([by2[i][0] for i in range(3)])
    np.testing.assert_array_equal(x3, x2)


def test_each_epoch_draws_new_patches_and_set_epoch_resumes(cases):
    seq = sequence(cases)
    e0 = seq[0][0]
    seq.on_epoch_end()
    assert seq.epoch == 1
    e1 = seq[0][0]
    assert not np.array_equal(e0, e1)
    other = sequence(cases)
    other.set_epoch(1)
    np.testing.assert_array_equal(other[0][0], e1)
    other.set_epoch(0)
    np.testing.assert_array_equal(other[0][0], e0)
    assert sequence(cases, seed=6)[0][0].tolist() != e0.tolist()


def test_sequence_rejects_bad_arguments(cases):
    with pytest.raises(ValueError):
        sequence(cases, batch_size=0)
    with pytest.raises(ValueError):
        sequence(cases, seed=-1)
    with pytest.raises(LesionsegError, match="flip_axes"):
        sequence(cases, augment_cfg=replace(AUG, flip_axes=(3,)))


@pytest.mark.parametrize("workers", [1, 2])
def test_feeds_keras_fit_with_keras_epoch_numbers(cases, workers):
    import keras

    served = []

    class Recording(PatchSequence):
        def __getitem__(self, index):
            served.append(self.epoch)
            return super().__getitem__(index)

    seq = Recording(cases, PATCH, AUG, batch_size=2, steps_per_epoch=2, seed=0, workers=workers)
    in_epoch = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            served.clear()

        def on_epoch_end(self, epoch, logs=None):
            in_epoch.append((epoch, sorted(set(served))))

    inputs = keras.Input((8, 8, 8, 2))
    model = keras.Model(inputs, keras.layers.Conv3D(1, 1)(inputs))
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    history = model.fit(seq, epochs=4, initial_epoch=2, verbose=0, callbacks=[seq.epoch_callback(), Watch()])
    assert len(history.history["loss"]) == 2
    assert in_epoch == [(2, [2]), (3, [3])]  # every batch of epoch e drawn with sampling epoch e


# --- augmentation ------------------------------------------------------------------------------


def structured_patch():
    """A patch whose channel 0 encodes the mask, with a zero background corner."""
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:4, 1:6, 5:7] = 1
    image = np.stack([1.0 + 3.0 * mask, rng.uniform(0.5, 1.0, mask.shape)], axis=-1).astype(np.float32)
    image[:2, :2, :2] = 0  # outside the brain
    return image, mask


def test_augmentation_keeps_image_and_mask_aligned():
    image, mask = structured_patch()
    seen = set()
    for seed in range(20):
        out_img, out_mask = augment_patch(np.random.default_rng(seed), image, mask, AUG)
        assert out_img.shape == image.shape and out_img.dtype == np.float32
        assert out_mask.dtype == np.uint8 and set(np.unique(out_mask).tolist()) <= {0, 1}
        assert out_mask.sum() == mask.sum()
        assert out_img.flags.c_contiguous and out_mask.flags.c_contiguous
        np.testing.assert_array_equal(out_img[..., 0] > 2.5, out_mask == 1)  # lesion voxels moved together
        assert np.count_nonzero(np.all(out_img == 0, axis=-1)) == 8  # background stays exactly 0
        seen.add(out_mask.tobytes())
    assert len(seen) > 5  # flips and rotations do change the patch


def test_augmentation_is_deterministic_given_the_generator():
    image, mask = structured_patch()
    a = augment_patch(np.random.default_rng(3), image, mask, AUG)
    b = augment_patch(np.random.default_rng(3), image, mask, AUG)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_intensity_jitter_bounds():
    image = np.ones((4, 4, 4, 3), np.float32)
    out = intensity_jitter(np.random.default_rng(0), image, scale=0.1, shift=0.2)
    for c in range(3):
        values = np.unique(out[..., c])
        assert values.size == 1 and 0.7 <= values[0] <= 1.3  # one (a, b) per channel
    assert not np.allclose(out[..., 0], out[..., 1])
    same = intensity_jitter(np.random.default_rng(0), image, scale=0.0, shift=0.0)
    np.testing.assert_array_equal(same, image)


def test_noise_only_inside_and_only_on_its_share_of_patches():
    image, mask = structured_patch()
    quiet = AugmentConfig(flip_axes=(), intensity_scale=0.0, intensity_shift=0.0, noise_std=0.1)
    never = replace(quiet, noise_probability=0.0)
    for seed in range(5):
        np.testing.assert_array_equal(augment_patch(np.random.default_rng(seed), image, mask, never)[0], image)
    noisy = augment_patch(np.random.default_rng(0), image, mask, quiet)[0]
    diff = noisy - image
    assert 0.07 < diff[image != 0].std() < 0.13
    assert not noisy[:2, :2, :2].any()
    half = replace(quiet, noise_probability=0.5)
    changed = [not np.array_equal(augment_patch(np.random.default_rng(s), image, mask, half)[0], image)
               for s in range(40)]
    assert 10 < sum(changed) < 30


def test_rot90_keeps_the_shape_of_non_square_patches():
    image = np.zeros((4, 6, 5, 1), np.float32)
    mask = np.zeros((4, 6, 5), np.uint8)
    for seed in range(10):
        out, m = random_rot90(np.random.default_rng(seed), image, mask)
        assert out.shape == image.shape and m.shape == mask.shape


def test_bad_augment_settings_are_user_errors():
    with pytest.raises(LesionsegError, match="intensity_scale"):
        AugmentConfig(intensity_scale=1.5)
    with pytest.raises(LesionsegError, match="noise_std"):
        AugmentConfig(noise_std=-1)
    with pytest.raises(LesionsegError, match="noise_probability"):
        AugmentConfig(noise_probability=2)
