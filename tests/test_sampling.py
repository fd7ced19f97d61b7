"""Lesion-aware patch sampling: labelling, corners, padding, weights, balance, determinism, targeting."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lesionseg.errors import LesionsegError
from lesionseg.data.io import read_mask
from lesionseg.data.labels import label_components
from lesionseg.sampling.extraction import PatchSpec, central_half, extract_patch, target_position_range
from lesionseg.sampling.lesion_table import index_lesions
from lesionseg.sampling.sampler import PatchSampler
from lesionseg.sampling.targeting import summarize_targeting, target_counts, targeted_lesions
from lesionseg.sampling.weights import balance_probabilities, coverage_matrix, lesion_probabilities


def dots_mask(shape, points, big=None):
    """Single-voxel lesions at ``points`` plus an optional big box lesion ``big`` = (slices)."""
    mask = np.zeros(shape, np.uint8)
    for p in points:
        mask[p] = 1
    if big is not None:
        mask[big] = 1
    return mask


def grid_points(n, shape, margin=3, step=7):
    """``n`` well separated voxels (no two within 26-connectivity)."""
    pts = [(i, j, k) for i in range(margin, shape[0] - margin, step)
           for j in range(margin, shape[1] - margin, step) for k in range(margin, shape[2] - margin, step)]
    assert len(pts) >= n
    return pts[:n]


# --- labelling ---------------------------------------------------------------------------------


def test_index_lesions_counts_and_volumes_of_known_lesions():
    shape = (30, 30, 30)
    mask = dots_mask(shape, grid_points(7, shape, margin=2, step=6), big=(slice(20, 25), slice(20, 24), slice(20, 23)))
    table = index_lesions(mask, 26)
    assert table.n_lesions == 8
    assert sorted(table.volumes.tolist()) == [1] * 7 + [5 * 4 * 3]
    assert table.voxels.size == mask.sum()
    # every lesion's voxel list is exactly that component
    labels, n = label_components(mask, 26)
    assert n == 8
    np.testing.assert_array_equal(table.labels(), labels)
    for lab in range(1, n + 1):
        own = table.voxels[table.offsets[lab - 1]:table.offsets[lab]]
        assert set(own.tolist()) == set(np.flatnonzero(labels == lab).tolist())


@pytest.mark.parametrize("connectivity, expected", [(6, 3), (18, 2), (26, 1)])
def test_connectivity_decides_what_is_one_lesion(connectivity, expected):
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1, 1, 1] = 1
    mask[2, 2, 1] = 1  # edge contact (18 and 26)
    mask[3, 3, 2] = 1  # corner contact with the previous voxel (26 only)
    assert index_lesions(mask, connectivity).n_lesions == expected


def test_empty_mask_and_foreground():
    mask = np.zeros((5, 6, 7), np.uint8)
    fg = np.zeros(mask.shape, bool)
    fg[1:3, 2:4, 3:5] = True
    t = index_lesions(mask, 26, fg)
    assert t.n_lesions == 0 and t.volumes.size == 0
    assert sorted(t.foreground.tolist()) == sorted(np.flatnonzero(fg).tolist())
    assert index_lesions(mask, 26, np.zeros(mask.shape, bool)).foreground is None


def test_bad_connectivity_is_a_user_error():
    with pytest.raises(LesionsegError, match="connectivity"):
        label_components(np.zeros((3, 3, 3)), 8)


# --- geometry ----------------------------------------------------------------------------------


def test_central_half_and_jitter_ranges():
    assert central_half((48, 48, 48)) == (slice(12, 36),) * 3
    lo, hi = target_position_range((48, 48, 48), 0.5)
    assert lo.tolist() == [12] * 3 and hi.tolist() == [35] * 3  # exactly the central half
    lo, hi = target_position_range((48, 47, 16), 0.0)
    assert lo.tolist() == hi.tolist() == [24, 23, 8]
    lo, hi = target_position_range((48, 48, 48), 1.0)
    assert lo.tolist() == [0] * 3 and hi.tolist() == [47] * 3


def test_extract_patch_inside_equals_slice():
    vol = np.random.default_rng(0).standard_normal((10, 11, 12, 2)).astype(np.float32)
    out = extract_patch(vol, (2, 3, 4), (4, 5, 6))
    np.testing.assert_array_equal(out, vol[2:6, 3:8, 4:10])
    out[...] = 0  # a copy, never a view
    assert vol[2, 3, 4, 0] != 0


def test_extract_patch_pads_at_borders_and_small_volumes():
    vol = np.arange(1, 3 * 4 * 5 + 1, dtype=np.float32).reshape(3, 4, 5)
    out = extract_patch(vol, (-2, -1, 3), (8, 8, 8))
    assert out.shape == (8, 8, 8)
    np.testing.assert_array_equal(out[2:5, 1:5, 0:2], vol[:, :, 3:5])
    assert out.sum() == vol[:, :, 3:5].sum()  # everything else is padding
    assert not extract_patch(vol, (10, 0, 0), (4, 4, 4)).any()  # entirely outside
    m = extract_patch((vol > 30).astype(np.uint8), (-1, -1, -1), (6, 6, 7))
    assert m.dtype == np.uint8 and m.sum() == (vol > 30).sum()


# --- lesion choice -----------------------------------------------------------------------------


def test_lesion_probabilities_alpha():
    v = np.array([1, 10, 100])
    np.testing.assert_allclose(lesion_probabilities(v, 0.0), [1 / 3] * 3)
    np.testing.assert_allclose(lesion_probabilities(v, 1.0), v / v.sum())
    assert lesion_probabilities(np.array([], np.int64), 1.0).size == 0


def test_alpha_zero_chooses_lesions_uniformly_alpha_one_by_voxels():
    shape = (40, 40, 40)
    big = (slice(25, 37), slice(25, 37), slice(25, 37))  # 1728 voxels
    mask = dots_mask(shape, grid_points(9, shape, margin=2, step=9)[:9], big=big)
    table = index_lesions(mask, 26)
    big_label = int(np.argmax(table.volumes)) + 1
    uniform = PatchSampler([table], (16, 16, 16), (1, 0, 0), alpha=0.0, balance=False)
    chosen = np.bincount([s.lesion for s in uniform.specs(3, 0, 3000)], minlength=11)[1:]
    assert chosen.sum() == 3000
    assert chosen.min() > 200 and chosen.max() < 400  # expected 300 each
    voxelwise = PatchSampler([table], (16, 16, 16), (1, 0, 0), alpha=1.0, balance=False)
    chosen = np.bincount([s.lesion for s in voxelwise.specs(3, 0, 3000)], minlength=11)[1:]
    assert chosen[big_label - 1] > 0.98 * 3000


def test_every_lesion_patch_targets_its_lesion_even_at_borders():
    shape = (12, 9, 14)  # smaller than the patch
    points = [(0, 0, 0), (11, 8, 13), (0, 8, 7), (6, 4, 0)]
    table = index_lesions(dots_mask(shape, points), 26)
    labels = table.labels()
    sampler = PatchSampler([table], (16, 16, 16), (1, 0, 0), jitter=0.5)
    for spec in sampler.specs(0, 0, 200):
        assert spec.mode == "lesion" and spec.size == (16, 16, 16)
        assert spec.lesion in targeted_lesions(labels, spec)
    corners = np.array([s.corner for s in sampler.specs(0, 0, 200)])
    assert (corners < 0).any()  # patches hang over the border instead of failing


def test_balance_on_hand_made_coverage():
    # lesion 1's patches always show lesion 2 (e.g. a satellite next to a big lesion)
    cover = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p = balance_probabilities(cover, np.ones(3), iterations=2000)
    np.testing.assert_allclose(p, [0.5, 0.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(balance_probabilities(np.eye(3), np.array([1.0, 2.0, 1.0])), [0.25, 0.5, 0.25])


def test_coverage_matrix_sees_neighbours():
    shape = (60, 30, 30)
    mask = dots_mask(shape, [(5, 15, 15), (8, 15, 15), (50, 15, 15)])
    table = index_lesions(mask, 26)
    cover = coverage_matrix(table, (16, 16, 16), 0.5, samples=64)
    np.testing.assert_allclose(np.diag(cover), 1.0)
    assert cover[0, 1] > 0.5 and cover[1, 0] > 0.5  # 3 voxels apart: usually seen together
    assert cover[0, 2] == 0 and cover[2, 0] == 0  # 45 voxels apart: never


def test_balance_evens_out_clustered_and_isolated_lesions():
    # 4 single-voxel lesions in a tight cluster (each patch shows them all) and 4 isolated ones
    shape = (80, 30, 30)
    cluster = [(10, 10, 10), (10, 12, 10), (12, 10, 12), (12, 12, 10)]
    isolated = [(40, 15, 15), (55, 5, 25), (70, 25, 5), (70, 5, 25)]
    table = index_lesions(dots_mask(shape, cluster + isolated), 26)
    assert table.n_lesions == 8
    labels = table.labels()
    cl = np.array([labels[p] for p in cluster]) - 1
    iso = np.array([labels[p] for p in isolated]) - 1

    def rates(balance):
        sampler = PatchSampler([table], (16, 16, 16), (1, 0, 0), alpha=0.0, jitter=0.5, balance=balance)
        counts = target_counts([labels], [table.n_lesions], sampler.specs(2, 0, 800))[0]
        return counts[cl].mean(), counts[iso].mean()

    plain_cluster, plain_iso = rates(False)
    assert plain_cluster > 2.5 * plain_iso  # chosen equally, but shown together
    bal_cluster, bal_iso = rates(True)
    assert 0.8 < bal_cluster / bal_iso < 1.25  # targeted equally often
    assert bal_iso > 1.3 * plain_iso


def test_balance_stops_choosing_a_big_lesion_its_satellites_already_show():
    shape = (100, 40, 40)
    mask = np.zeros(shape, np.uint8)
    mask[10:22, 14:26, 14:26] = 1
    sat = [(7, 20, 20), (25, 20, 20), (16, 11, 20), (16, 29, 20), (16, 20, 11), (16, 20, 29)]
    iso = [(60, 10, 10), (60, 30, 30), (75, 10, 30), (75, 30, 10), (90, 10, 10), (90, 30, 30)]
    mask = dots_mask(shape, sat + iso) | mask
    table = index_lesions(mask, 26)
    assert table.n_lesions == 13
    labels = table.labels()
    big = int(labels[16, 20, 20]) - 1
    iso_idx = np.array([labels[p] for p in iso]) - 1
    plain = PatchSampler([table], (16, 16, 16), (1, 0, 0), alpha=0.0, balance=False)
    balanced = PatchSampler([table], (16, 16, 16), (1, 0, 0), alpha=0.0, balance=True)
    assert plain.lesion_p[0][big] == pytest.approx(1 / 13)
    assert balanced.lesion_p[0][big] < 0.01
    assert np.all(balanced.lesion_p[0][iso_idx] > plain.lesion_p[0][iso_idx])
    counts = {}
    for name, sampler in (("plain", plain), ("balanced", balanced)):
        c = target_counts([labels], [table.n_lesions], sampler.specs(1, 0, 1300))[0]
        counts[name] = c[iso_idx].mean() / c[big]
    assert counts["balanced"] > 1.15 * counts["plain"]


# --- modes, fallback, determinism, errors ------------------------------------------------------


def test_modes_follow_fractions_and_foreground():
    shape = (30, 30, 30)
    fg = np.zeros(shape, bool)
    fg[10:20, 5:25, 12:18] = True
    table = index_lesions(dots_mask(shape, [(15, 15, 15)]), 26, fg)
    fg_only = PatchSampler([table], (8, 8, 8), (0, 1, 0))
    for s in fg_only.specs(0, 0, 300):
        centre = tuple(c + 4 for c in s.corner)
        assert s.mode == "foreground" and s.lesion == 0 and fg[centre]
    mixed = PatchSampler([table], (8, 8, 8), (2, 1, 1))
    modes = [s.mode for s in mixed.specs(0, 0, 2000)]
    assert 900 < modes.count("lesion") < 1100
    assert 400 < modes.count("random") < 600


def test_case_without_lesion_falls_back_with_a_log_line(caplog):
    empty = index_lesions(np.zeros((20, 20, 20), np.uint8), 26)
    full = index_lesions(dots_mask((20, 20, 20), [(5, 5, 5)]), 26)
    with caplog.at_level(logging.INFO, logger="lesionseg"):
        sampler = PatchSampler([empty, full], (8, 8, 8), (1, 0, 0), names=["blank", "sick"])
    assert any("blank" in r.message and "no lesion" in r.message for r in caplog.records)
    specs = sampler.specs(0, 0, 200)
    assert {s.mode for s in specs if s.case == 0} == {"foreground"}
    assert {s.mode for s in specs if s.case == 1} == {"lesion"}
    none = PatchSampler([empty], (8, 8, 8), (1, 0, 0))
    assert {s.mode for s in none.specs(0, 0, 20)} == {"foreground"}


def test_specs_are_deterministic_and_independent_of_order():
    shape = (30, 30, 30)
    table = index_lesions(dots_mask(shape, grid_points(6, shape)), 26)
    a = PatchSampler([table, table], (8, 8, 8), (0.5, 0.3, 0.2))
    b = PatchSampler([table, table], (8, 8, 8), (0.5, 0.3, 0.2))
    forward = a.specs(7, 2, 50)
    backward = [b.spec(7, 2, n) for n in reversed(range(50))][::-1]
    assert forward == backward
    assert a.specs(7, 2, 20, start=30) == forward[30:]
    assert a.specs(7, 3, 50) != forward  # a new epoch, new patches
    assert a.specs(8, 2, 50) != forward
    assert isinstance(forward[0], PatchSpec)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fractions=(-1, 1, 0)), "fraction"),
        (dict(fractions=(0, 0, 0)), "fraction"),
        (dict(jitter=1.5), "jitter"),
        (dict(size=(8, 0, 8)), "size"),
        (dict(size=(8, 8)), "size"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, match):
    table = index_lesions(np.zeros((5, 5, 5), np.uint8), 26)
    args = dict(size=(8, 8, 8), fractions=(1, 0, 0), jitter=0.5) | kwargs
    with pytest.raises(LesionsegError, match=match):
        PatchSampler([table], **args)


# --- measuring targeting -----------------------------------------------------------------------


def test_summarize_targeting_by_hand():
    s = summarize_targeting([np.array([3, 1, 4, 2]), np.array([5])], [np.array([4, 2, 4, 0]), np.array([0])])
    # case 1: smallest (volume 1) targeted 2 times, largest (volume 4) 4 times; case 2: one lesion, 0 times
    assert s.n_lesions == 5
    assert s.targeted_fraction == pytest.approx(3 / 5)
    assert s.small_mean == pytest.approx(1.0) and s.large_mean == pytest.approx(2.0)
    assert s.ratio == pytest.approx(0.5)
    assert s.case_ratio == pytest.approx(0.5)  # case 2's large quarter is never targeted: left out


def test_uniform_choice_targets_every_small_lesion_voxelwise_does_not():
    shape = (64, 64, 64)
    big = (slice(30, 60), slice(30, 60), slice(30, 60))  # 27000 voxels
    points = grid_points(20, (28, 64, 64), margin=2, step=8)
    table = index_lesions(dots_mask(shape, points, big), 26)
    labels = table.labels()
    volumes = [table.volumes]
    result = {}
    for alpha in (0.0, 1.0):
        sampler = PatchSampler([table], (16, 16, 16), (1, 0, 0), alpha=alpha, balance=False)
        counts = target_counts([labels], [table.n_lesions], sampler.specs(0, 0, 300))
        result[alpha] = summarize_targeting(volumes, counts)
    assert result[0.0].targeted_fraction == 1.0
    assert result[1.0].targeted_fraction < 0.5


@pytest.mark.shared
def test_shared_exams_targeting_criteria(shared_ms):
    """1000 lesion patches, alpha 0: >= 95 % of the 197 lesions targeted, small/large ratio >= 0.5."""
    tables = []
    for case in sorted(p for p in shared_ms.iterdir() if p.is_dir()):
        mask, _ = read_mask(case / "lesion_mask.nii.gz")
        tables.append(index_lesions(mask, 26))
    assert sum(t.n_lesions for t in tables) == 197
    labels = [t.labels() for t in tables]
    volumes = [t.volumes for t in tables]
    n_lesions = [t.n_lesions for t in tables]

    def measure(alpha, balance):
        sampler = PatchSampler(tables, (48, 48, 48), (1, 0, 0), alpha=alpha, jitter=0.5, balance=balance)
        return summarize_targeting(volumes, target_counts(labels, n_lesions, sampler.specs(0, 0, 1000)))

    uniform = measure(0.0, True)  # the defaults
    assert uniform.targeted_fraction >= 0.95
    assert uniform.ratio >= 0.5
    voxelwise = measure(1.0, False)  # the peers' behaviour
    assert voxelwise.targeted_fraction < uniform.targeted_fraction
    assert voxelwise.ratio < uniform.ratio
