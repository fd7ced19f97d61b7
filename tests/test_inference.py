"""Sliding-window inference with hand-made predictors whose stitched result is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lesionseg.model.heads import lesion_probability_numpy
from lesionseg.inference.postprocess import decide, remove_small_components
from lesionseg.inference.sliding_window import gaussian_weights, predict_volume, window_starts
from lesionseg.inference.window_options import (
    WindowOptions,
    flip_combinations,
    foreground_box,
    predict_windows,
)


def identity(batch: np.ndarray) -> np.ndarray:
    return batch.copy()


# ---------------------------------------------------------------- window starts


@pytest.mark.parametrize("size", [1, 5, 16, 17, 33, 182, 218])
@pytest.mark.parametrize("patch", [1, 4, 7, 16, 48])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_window_starts_cover_the_axis_with_the_last_flush(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(size - patch, 0)
    assert starts == sorted(set(starts))
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered[:size].all()
    if len(starts) > 1:
        steps = np.diff(starts)
        # never a step longer than the requested one (rounding: at most 1 voxel)
        assert steps.max() <= patch * (1 - overlap) + 1
        # and no more windows than needed
        assert len(starts) == min(math.ceil((size - patch) / (patch * (1 - overlap)) - 1e-9) + 1, size - patch + 1)


def test_window_counts_of_a_real_exam():
    n = [len(window_starts(s, 48, 0.5)) for s in (182, 218, 182)]
    assert n == [7, 9, 7] and math.prod(n) == 441


def test_no_overlap_tiles_exactly():
    assert window_starts(12, 4, 0.0) == [0, 4, 8]


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_overlap_outside_range_is_an_error(overlap):
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, overlap)
    with pytest.raises(ValueError, match="overlap"):
        predict_volume(np.zeros((8, 8, 8, 1), np.float32), identity, (4, 4, 4), overlap=overlap)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("patch", [(8, 8, 8), (9, 6, 5), (48, 48, 48)])
def test_gaussian_weights_positive_symmetric_and_cached(patch):
    w = gaussian_weights(patch)
    assert w.shape == patch and w.dtype == np.float32
    assert (w > 0).all() and np.isclose(w.max(), 1.0)
    for axis in range(3):
        np.testing.assert_allclose(w, np.flip(w, axis), rtol=1e-6)
    assert gaussian_weights(list(patch)) is w  # computed once
    assert not w.flags.writeable


def test_gaussian_sigma_is_an_eighth_of_the_patch():
    w = gaussian_weights((16, 16, 16)).astype(np.float64)
    sigma, centre = 16 / 8, 7.5
    row = w[7, 7, :]
    x = np.arange(16)
    expected = np.exp(-0.5 * ((x - centre) / sigma) ** 2)
    np.testing.assert_allclose(row / row.max(), expected / expected.max(), rtol=1e-5)


# ---------------------------------------------------------------- identity predictor


SHAPES = [(13, 17, 11), (8, 6, 5), (5, 9, 3), (20, 7, 16), (3, 2, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_identity_uniform_returns_the_input_exactly(shape, overlap):
    rng = np.random.default_rng(0)
    image = rng.integers(-50, 50, size=(*shape, 2)).astype(np.float32)
    out = predict_volume(image, identity, (8, 6, 5), overlap=overlap, blend="uniform", batch_size=3)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_identity_gaussian_returns_the_input(shape, overlap):
    rng = np.random.default_rng(1)
    image = rng.standard_normal((*shape, 3)).astype(np.float32)
    out = predict_volume(image, identity, (8, 6, 5), overlap=overlap, blend="gaussian", batch_size=4)
    assert out.shape == image.shape and out.dtype == np.float32
    # float32 rounding of Σ x·w / Σ w only: a few ulp
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-6)


def test_batches_are_bounded_and_cover_every_window():
    calls = []

    def spy(batch):
        calls.append(batch.shape)
        return batch[..., :1] * 0 + 1

    out = predict_volume(np.ones((20, 20, 20, 2), np.float32), spy, (8, 8, 8), overlap=0.5, batch_size=5)
    n_windows = len(window_starts(20, 8, 0.5)) ** 3
    assert len(calls) == math.ceil(n_windows / 5)
    assert all(s[0] <= 5 and s[1:] == (8, 8, 8, 2) for s in calls)
    assert sum(s[0] for s in calls) == n_windows
    assert out.shape == (20, 20, 20, 1)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_wrong_predictor_output_is_an_error():
    with pytest.raises(ValueError, match="predict_fn returned shape"):
        predict_volume(np.zeros((8, 8, 8, 1), np.float32), lambda b: b[:, :4], (8, 8, 8))


def test_unknown_blend_is_an_error():
    with pytest.raises(ValueError, match="blend"):
        predict_volume(np.zeros((8, 8, 8, 1), np.float32), identity, (8, 8, 8), blend="cosine")


# ---------------------------------------------------------------- constant per window


def _coordinate_image(shape):
    """Channel 0 = 1 + linear voxel index, so a predictor can tell which window it sees."""
    return (1.0 + np.arange(np.prod(shape), dtype=np.float32)).reshape(*shape, 1)


def _constant_of(batch):
    """Each window's constant: a value determined by its first-corner voxel."""
    first = batch[:, 0, 0, 0, 0].astype(np.float64)
    return np.sin(first) + 2.0


def constant_per_window(batch):
    c = _constant_of(batch).astype(np.float32)
    return np.broadcast_to(c[:, None, None, None, None], (*batch.shape[:4], 1)).copy()


def test_uniform_blend_by_hand_on_one_axis():
    # axis 0: windows at 0, 2, 4 (patch 4, overlap 0.5); the other axes one window each
    image = _coordinate_image((8, 4, 4))
    out = predict_volume(image, constant_per_window, (4, 4, 4), overlap=0.5, blend="uniform")
    c0, c1, c2 = (np.sin(1.0 + s * 16) + 2.0 for s in (0, 2, 4))
    expected = np.array([c0, c0, (c0 + c1) / 2, (c0 + c1) / 2, (c1 + c2) / 2, (c1 + c2) / 2, c2, c2])
    np.testing.assert_allclose(out[:, 0, 0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[..., 0], np.broadcast_to(expected[:, None, None], (8, 4, 4)), rtol=1e-6)


def test_gaussian_blend_by_hand_on_one_axis():
    image = _coordinate_image((8, 4, 4))
    out = predict_volume(image, constant_per_window, (4, 4, 4), overlap=0.5, blend="gaussian")
    c0, c1, c2 = (np.sin(1.0 + s * 16) + 2.0 for s in (0, 2, 4))
    g = np.exp(-0.5 * ((np.arange(4) - 1.5) / 0.5) ** 2)  # σ = 4 / 8
    expected = np.array(
        [
            c0,  # borders: one window only, whatever its weight
            c0,
            (c0 * g[2] + c1 * g[0]) / (g[2] + g[0]),
            (c0 * g[3] + c1 * g[1]) / (g[3] + g[1]),
            (c1 * g[2] + c2 * g[0]) / (g[2] + g[0]),
            (c1 * g[3] + c2 * g[1]) / (g[3] + g[1]),
            c2,
            c2,
        ]
    )
    for j, k in [(0, 0), (1, 2), (3, 3)]:
        np.testing.assert_allclose(out[:, j, k, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("blend", ["uniform", "gaussian"])
@pytest.mark.parametrize("shape,patch,overlap", [((13, 11, 9), (6, 5, 4), 0.5), ((7, 12, 5), (8, 5, 5), 0.3)])
def test_constant_per_window_matches_a_naive_weighted_average(blend, shape, patch, overlap):
    image = _coordinate_image(shape)
    out = predict_volume(image, constant_per_window, patch, overlap=overlap, blend=blend, batch_size=2)
    padded = [max(s, p) for s, p in zip(shape, patch)]
    w = np.ones(patch) if blend == "uniform" else gaussian_weights(patch).astype(np.float64)
    num = np.zeros(padded)
    den = np.zeros(padded)
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch)]
    for i, j, k in itertools.product(*starts):
        c = np.sin(1.0 + np.ravel_multi_index((i, j, k), shape)) + 2.0
        sl = np.s_[i : i + patch[0], j : j + patch[1], k : k + patch[2]]
        num[sl] += c * w
        den[sl] += w
    expected = (num / den)[: shape[0], : shape[1], : shape[2]]
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-5)


# ---------------------------------------------------------------- test-time flips


def test_flip_combinations():
    assert flip_combinations(()) == [()]
    assert flip_combinations((2, 0)) == [(), (0,), (2,), (0, 2)]
    assert len(flip_combinations((0, 1, 2))) == 8
    with pytest.raises(ValueError):
        flip_combinations((3,))


def test_tta_of_an_identity_is_the_input():
    image = np.random.default_rng(2).standard_normal((11, 9, 10, 1)).astype(np.float32)
    out = predict_windows(image, identity, WindowOptions((6, 6, 6), 0.5, "gaussian", 4, tta_flips=(0, 1, 2)))
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-5)


def test_tta_averages_flipped_probabilities():
    # a predictor biased along window axis 0: p = ramp(i) / (d - 1); flipping axis 0
    # and flipping back gives 1 - ramp, so the average is 0.5 everywhere
    def biased(batch):
        d = batch.shape[1]
        ramp = (np.arange(d, dtype=np.float32) / (d - 1))[None, :, None, None, None]
        return np.broadcast_to(ramp, (*batch.shape[:4], 1)).copy()

    image = np.zeros((10, 8, 8, 1), np.float32)
    plain = predict_windows(image, biased, WindowOptions((6, 6, 6), 0.5, "uniform", 4, tta_flips=()))
    assert plain.std() > 0.1
    flipped = predict_windows(image, biased, WindowOptions((6, 6, 6), 0.5, "uniform", 4, tta_flips=(0,)))
    np.testing.assert_allclose(flipped, 0.5, rtol=1e-6)
    other = predict_windows(image, biased, WindowOptions((6, 6, 6), 0.5, "uniform", 4, tta_flips=(1,)))
    np.testing.assert_allclose(other, plain, rtol=1e-6)


# ---------------------------------------------------------------- decision


def test_decide_is_strictly_above_the_threshold():
    prob = np.array([0.0, 0.3, 0.5, 0.50001, 1.0], np.float32).reshape(5, 1, 1)
    np.testing.assert_array_equal(decide(prob, 0.5).ravel(), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(decide(prob, 0.3).ravel(), [0, 0, 1, 1, 1])
    assert decide(prob, 0.5).dtype == np.uint8
    with pytest.raises(ValueError):
        decide(prob, 1.5)


def test_threshold_half_equals_softmax_argmax():
    logits = np.random.default_rng(3).normal(0, 3, size=(4000, 2)).astype(np.float32)
    prob = lesion_probability_numpy(logits, "softmax")[..., 0]
    np.testing.assert_array_equal(decide(prob, 0.5), np.argmax(logits, axis=-1).astype(np.uint8))


# ---------------------------------------------------------------- small components


def _blobs():
    m = np.zeros((12, 12, 12), np.uint8)
    m[1, 1, 1] = 1  # 1 voxel
    m[4:6, 4:6, 4:6] = 1  # 8 voxels
    m[8:11, 8:11, 8:11] = 1  # 27 voxels
    m[1, 8, 8] = m[2, 9, 9] = 1  # two voxels touching at a corner only
    return m


def test_remove_small_components_by_volume_in_mm3():
    m = _blobs()
    zooms = (1.0, 1.0, 2.0)  # 2 mm³ per voxel: volumes 2, 16, 54 and the corner pair
    out = remove_small_components(m, 16.0, zooms, connectivity=26)
    assert out.dtype == np.uint8
    expected = m.copy()
    expected[1, 1, 1] = 0
    expected[1, 8, 8] = expected[2, 9, 9] = 0  # 4 mm³ as one 26-component
    np.testing.assert_array_equal(out, expected)  # the 16 mm³ one is kept (not smaller)
    out = remove_small_components(m, 16.5, zooms)
    assert out[4:6, 4:6, 4:6].sum() == 0 and out[8:11, 8:11, 8:11].all()


def test_connectivity_decides_what_a_component_is():
    m = _blobs()
    kept26 = remove_small_components(m, 4.0, (1, 1, 2), connectivity=26)
    kept6 = remove_small_components(m, 4.0, (1, 1, 2), connectivity=6)
    assert kept26[1, 8, 8] == 1 and kept26[2, 9, 9] == 1  # one 2-voxel lesion = 4 mm³
    assert kept6[1, 8, 8] == 0 and kept6[2, 9, 9] == 0  # two 1-voxel lesions = 2 mm³ each
    with pytest.raises(ValueError):
        remove_small_components(m, 4.0, (1, 1, 1), connectivity=8)


def test_no_minimum_keeps_everything():
    m = _blobs() * 3
    out = remove_small_components(m, 0.0, (1, 1, 1))
    np.testing.assert_array_equal(out, (m > 0).astype(np.uint8))


# ---------------------------------------------------------------- foreground crop


def _brain_in_a_box() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = np.zeros((40, 44, 36, 2), np.float32)
    image[9:30, 12:35, 5:20] = rng.standard_normal((21, 23, 15, 2)).astype(np.float32) + 0.1
    image[9:30, 12:35, 5:20][rng.random((21, 23, 15)) < 0.2] = 0  # zeros inside the brain stay inside
    return image


def test_foreground_box_is_the_non_zero_bounding_box_with_margin():
    image = _brain_in_a_box()
    assert foreground_box(image) == (slice(9, 30), slice(12, 35), slice(5, 20))
    assert foreground_box(image, margin=6) == (slice(3, 36), slice(6, 41), slice(0, 26))
    assert foreground_box(np.zeros((4, 4, 4, 1), np.float32)) is None


def test_cropped_identity_returns_the_input_and_runs_fewer_windows():
    image = _brain_in_a_box()
    seen = []

    def spy(batch):
        seen.append(len(batch))
        return batch.copy()

    crop = WindowOptions((8, 8, 8), overlap=0.5, blend="uniform", batch_size=4, crop_to_foreground=True)
    out = predict_windows(image, spy, crop)
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-6)  # zeros outside the box: the identity too
    cropped = sum(seen)
    seen.clear()
    predict_volume(image, spy, (8, 8, 8), overlap=0.5, blend="uniform", batch_size=4)
    assert cropped < sum(seen) / 2


def test_cropped_prediction_is_zero_outside_the_box_and_matches_inside():
    image = _brain_in_a_box()

    def lesion_everywhere(batch):
        return np.ones((*batch.shape[:4], 1), np.float32)

    crop = WindowOptions((8, 8, 8), overlap=0.5, crop_to_foreground=True, margin=2)
    out = predict_windows(image, lesion_everywhere, crop)
    box = foreground_box(image, 2)
    np.testing.assert_allclose(out[box], 1.0, rtol=1e-6)
    outside = np.ones(image.shape[:3], bool)
    outside[box] = False
    assert outside.any() and not out[outside].any()


def test_cropping_an_image_without_zeros_is_the_whole_prediction():
    image = np.random.default_rng(4).standard_normal((17, 13, 11, 1)).astype(np.float32) + 10
    a = predict_windows(image, identity, WindowOptions((8, 6, 5), overlap=0.5, crop_to_foreground=True))
    b = predict_volume(image, identity, (8, 6, 5), overlap=0.5)
    np.testing.assert_array_equal(a, b)


def test_an_all_zero_image_predicts_nothing_without_running_the_model():
    def fail(batch):
        raise AssertionError("the model should not run on an empty image")

    crop = WindowOptions((8, 8, 8), crop_to_foreground=True)
    out = predict_windows(np.zeros((12, 12, 12, 2), np.float32), fail, crop)
    assert out.shape == (12, 12, 12, 1) and not out.any()
