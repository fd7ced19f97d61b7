"""Online hard-negative mining: the negatives come from where the network fires, are kept for a resume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from lesionseg.cli import main
from lesionseg.config import Config, DataConfig, ModelConfig, PatchConfig, load_config
from lesionseg.errors import LesionsegError
from lesionseg.inference.predictor import Predictor
from lesionseg.sampling.lesion_table import index_lesions
from lesionseg.training.mining import MINED_FILE, HardNegativeMiner, is_mining_epoch, mine_case

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "smoke.toml"


def bright_voxel_network(threshold: float) -> keras.Model:
    """A real (untrained) Keras network that fires where the single channel exceeds ``threshold``."""
    inputs = keras.Input((None, None, None, 1))
    logits = keras.layers.Conv3D(1, 1, dtype="float32", name="logits")(inputs)
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([np.full((1, 1, 1, 1, 1), 20.0, np.float32),
                                           np.array([-20.0 * threshold], np.float32)])
    return model


def test_mined_negatives_are_where_the_network_fires_in_the_brain_away_from_lesions():
    shape = (40, 40, 40)
    image = np.zeros((*shape, 1), np.float32)
    brain = np.zeros(shape, bool)
    brain[4:36, 4:36, 4:30] = True
    image[brain, 0] = 0.5
    mask = np.zeros(shape, np.uint8)
    mask[10:13, 10:13, 10:13] = 1
    image[10:13, 10:13, 10:13, 0] = 4.0  # the lesion: fired, true
    image[14, 11, 11, 0] = 3.0  # 2 voxels from the lesion: a border, not a false lesion
    image[30, 5:15, 20, 0] = 3.0  # a false rim: fired, false
    image[20, 20, 33, 0] = 3.0  # outside the brain: not a training negative
    case = SimpleNamespace(image=image, mask=mask, lesions=index_lesions(mask, 26, brain))
    config = Config(data=DataConfig(channels=("flair",)), patches=PatchConfig(size=(16, 16, 16)),
                    model=ModelConfig(head="sigmoid"))
    predictor = Predictor.from_model(bright_voxel_network(2.0), config)

    mined = mine_case(predictor, case, probability=0.5, margin=2)

    where = np.zeros(shape, bool)
    where.ravel()[mined] = True
    expected = np.zeros(shape, bool)
    expected[30, 5:15, 20] = True
    assert (where == expected).all()
    # a network that fires nowhere mines nothing
    assert mine_case(Predictor.from_model(bright_voxel_network(10.0), config), case, 0.5, 2).size == 0


def test_mining_schedule_and_config_checks():
    assert [e for e in range(8) if is_mining_epoch(e, start=1, every=2)] == [1, 3, 5, 7]
    assert not any(is_mining_epoch(e, start=0, every=0) for e in range(5))
    with pytest.raises(LesionsegError, match="hard_fraction"):
        PatchConfig(hard_mining_every=2)  # mined negatives need hard patches to be drawn
    with pytest.raises(LesionsegError, match="hard_mining_probability"):
        PatchConfig(hard_fraction=0.2, hard_mining_every=2, hard_mining_probability=1.5)
    with pytest.raises(LesionsegError, match="hard_mining_start"):
        PatchConfig(hard_fraction=0.2, hard_mining_every=2, hard_mining_start=0)


@pytest.mark.slow
def test_training_mines_keeps_and_restores_its_hard_negatives(tmp_path):
    data = tmp_path / "data"
    for c in ("sample01", "sample02", "sample03"):
        shutil.copytree(REPO / "data_samples" / c, data / c)
    run = tmp_path / "run"
    # probability 0: every brain voxel away from lesions fires, so the mined set is known exactly
    sets = ["--set", "patches.hard_fraction=0.5", "--set", "patches.hard_mining_every=1",
            "--set", "patches.hard_mining_start=1", "--set", "patches.hard_mining_probability=0.0",
            "--set", "train.threads=1"]
    assert main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(run), *sets]) == 0
    assert "hard negatives mined before epoch 2" in (run / "train.log").read_text()
    saved = np.load(run / "checkpoint" / MINED_FILE)
    assert int(saved["epoch"]) == 1  # 0-based: before the second epoch

    from lesionseg.sampling.feed import PatchSequence, load_cases

    config = load_config(run / "config.yaml")
    with open(run / "split.csv") as fh:
        train_ids = [row["case"] for row in csv.DictReader(fh) if row["side"] == "train"]
    assert train_ids == ["sample01", "sample03"]
    cases = load_cases(config, [data / c for c in train_ids])
    sequence = PatchSequence(cases, config.patches, config.augment, 2, 2, 0, augment=False)
    bright = [t.hard.copy() for t in sequence.sampler.tables]
    miner = HardNegativeMiner(sequence, config, run / "checkpoint")
    miner.restore(1)  # mined before epoch 1 of a run resumed at epoch 1: not held by that checkpoint
    assert all(np.array_equal(t.hard, b) for t, b in zip(sequence.sampler.tables, bright))
    miner.restore(2)
    for i, (table, case) in enumerate(zip(sequence.sampler.tables, cases)):
        assert np.array_equal(table.hard, saved[f"case{i}"])
        # every brain voxel more than 2 voxels from a lesion, and no lesion voxel
        assert not case.mask.ravel()[table.hard].any()
        assert table.hard.size > bright[i].size
    # the hard patches of the next epoch are drawn from the mined voxels
    hard_specs = [s for s in sequence.sampler.specs(0, 2, 64) if s.mode == "hard"]
    assert hard_specs
