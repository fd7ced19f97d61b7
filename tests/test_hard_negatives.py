"""Hard-negative patches: drawn where a model fires away from lesions; nothing changes when they are off."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lesionseg.config import Config, DataConfig, PatchConfig
from lesionseg.errors import LesionsegError
from lesionseg.sampling.extraction import central_half
from lesionseg.sampling.feed import prepare_case
from lesionseg.sampling.hard_negatives import hard_negative_voxels
from lesionseg.sampling.lesion_table import index_lesions
from lesionseg.sampling.sampler import PatchSampler


def scene():
    """A bright false rim (row of voxels) far from the lesion, a bright lesion, a bright voxel beside it."""
    shape = (40, 40, 40)
    channel = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    channel[30, 5:15, 30] = 3.0  # the false rim
    mask[10:13, 10:13, 10:13] = 1
    channel[10:13, 10:13, 10:13] = 4.0  # the lesion itself
    channel[14, 11, 11] = 3.0  # 2 voxels from the lesion: a border, not a false lesion
    return channel, mask


def test_hard_negatives_are_bright_voxels_away_from_lesions():
    channel, mask = scene()
    hard = hard_negative_voxels(channel, mask, threshold=2.0, margin=2)
    where = np.zeros(channel.shape, bool)
    where.ravel()[hard] = True
    expected = np.zeros(channel.shape, bool)
    expected[30, 5:15, 30] = True
    assert (where == expected).all()
    # margin 0 keeps the voxel beside the lesion; lesion voxels never count
    near = hard_negative_voxels(channel, mask, threshold=2.0, margin=0)
    assert np.ravel_multi_index((14, 11, 11), channel.shape) in near
    assert not mask.ravel()[near].any()
    brain = np.zeros(channel.shape, bool)
    brain[:, :10] = True
    assert hard_negative_voxels(channel, mask, 2.0, 2, brain).size == 5  # the rim's part inside the brain


def test_hard_patches_hold_a_hard_voxel_in_their_central_half():
    channel, mask = scene()
    table = index_lesions(mask, 26)
    table = replace(table, hard=hard_negative_voxels(channel, mask, 2.0, 2))
    sampler = PatchSampler([table], (8, 8, 8), (1, 0, 0, 1))
    specs = sampler.specs(0, 0, 400)
    hard = [s for s in specs if s.mode == "hard"]
    assert 150 < len(hard) < 250
    rim = np.zeros(channel.shape, bool)
    rim[30, 5:15, 30] = True
    for s in hard:
        assert s.lesion == 0
        box = tuple(slice(max(0, c + h.start), c + h.stop) for c, h in zip(s.corner, central_half(s.size)))
        assert rim[box].any(), s


def test_zero_hard_fraction_draws_exactly_as_before():
    channel, mask = scene()
    plain = index_lesions(mask, 26, channel > -1)
    with_hard = replace(plain, hard=hard_negative_voxels(channel, mask, 2.0, 2))
    old = PatchSampler([plain], (8, 8, 8), (0.5, 0.3, 0.2)).specs(3, 1, 200)
    new = PatchSampler([with_hard], (8, 8, 8), (0.5, 0.3, 0.2, 0.0)).specs(3, 1, 200)
    assert old == new


def test_case_without_hard_negatives_falls_back_to_foreground():
    table = index_lesions(np.zeros((20, 20, 20), np.uint8), 26)
    specs = PatchSampler([table], (8, 8, 8), (0, 0, 0, 1)).specs(0, 0, 20)
    assert {s.mode for s in specs} == {"foreground"}


def test_hard_config_is_checked():
    with pytest.raises(LesionsegError, match="patches.hard_fraction"):
        PatchConfig(hard_fraction=-0.1)
    with pytest.raises(LesionsegError, match="patches.hard_margin"):
        PatchConfig(hard_margin=1.5)
    with pytest.raises(LesionsegError, match="patches.hard_channel: must be one of data.channels"):
        Config(data=DataConfig(channels=("t1",)), patches=PatchConfig(hard_fraction=0.2))
    Config(data=DataConfig(channels=("t1",)))  # off: the channel is not needed


def test_prepared_case_lists_hard_negatives(samples_dir):
    config = Config(data=DataConfig(channels=("flair", "t1")), patches=PatchConfig(hard_fraction=0.2))
    case = prepare_case(config, sorted(samples_dir.iterdir())[0])
    hard = case.lesions.hard
    assert hard is not None and hard.size > 0
    assert not case.mask.ravel()[hard].any()
    assert (case.image[..., 0].ravel()[hard] >= 2.0).all()
    off = prepare_case(Config(data=DataConfig(channels=("flair", "t1"))), sorted(samples_dir.iterdir())[0])
    assert off.lesions.hard is None
