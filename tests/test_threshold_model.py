"""The threshold baseline: a run folder with no weights, tuned and used for inference like any model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionseg.cli import main
from lesionseg.config import Config, DataConfig, ModelConfig, load_config
from lesionseg.data.normalize import normalize_channel
from lesionseg.errors import LesionsegError
from lesionseg.inference.postprocess import remove_small_components
from lesionseg.model.threshold import ThresholdModel, threshold_intensity

BASELINE = Path(__file__).resolve().parents[1] / "pipelines" / "threshold_baseline.toml"


def test_threshold_config_is_checked_at_load():
    with pytest.raises(LesionsegError, match="model.head"):
        ModelConfig(kind="threshold", head="softmax")
    with pytest.raises(LesionsegError, match="model.threshold_scale"):
        ModelConfig(kind="threshold", threshold_scale=0.0)
    with pytest.raises(LesionsegError, match="model.kind"):
        ModelConfig(kind="forest")
    with pytest.raises(LesionsegError, match="model.threshold_channel: must be one of data.channels"):
        Config(data=DataConfig(channels=("t1", "t2")), model=ModelConfig(kind="threshold"))
    Config(data=DataConfig(channels=("t1", "t2")))  # a U-Net ignores threshold_channel


def test_threshold_model_logits_pick_the_named_channel():
    config = Config(data=DataConfig(channels=("t1", "flair")), model=ModelConfig(kind="threshold",
                                                                                   threshold_center=1.0,
                                                                                   threshold_scale=2.0))
    model = ThresholdModel.from_config(config)
    x = np.zeros((1, 3, 1, 1, 2), np.float32)
    x[0, :, 0, 0, 0] = 9.0  # T1: ignored
    x[0, :, 0, 0, 1] = [-1.0, 1.0, 5.0]
    assert model.predict_on_batch(x)[0, :, 0, 0, 0].tolist() == [-1.0, 0.0, 2.0]
    assert threshold_intensity(model, 0.5) == 1.0
    assert math.isclose(threshold_intensity(model, 1 / (1 + math.exp(-2.0))), 5.0)


def test_train_tune_infer_threshold_baseline(samples_dir, tmp_path):
    """Train writes config + split only; tune picks a pair; infer's mask is the thresholded FLAIR z-score."""
    run = tmp_path / "baseline"
    assert main(["train", "--config", str(BASELINE), "--data", str(samples_dir), "--out", str(run)]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "split.csv"]
    assert load_config(run / "config.yaml").model.kind == "threshold"

    assert main(["tune", "--model", str(run), "--data", str(samples_dir)]) == 0
    tuned = json.loads((run / "tuning.json").read_text())
    assert 0 < tuned["lesion_f1"] <= 1

    pred = tmp_path / "pred"
    assert main(["infer", "--model", str(run), "--input", str(samples_dir), "--out", str(pred)]) == 0
    case = sorted(samples_dir.iterdir())[0]
    flair = nib.load(case / "flair.nii.gz")
    z = normalize_channel(np.asarray(flair.dataobj, np.float32), "zscore", (0.0, 100.0))
    model = ThresholdModel.from_config(load_config(run / "config.yaml"))
    cut = threshold_intensity(model, tuned["threshold"])
    expected = remove_small_components((z > cut) & (z != 0), tuned["min_lesion_mm3"], flair.header.get_zooms()[:3])
    got = nib.load(pred / f"{case.name}_pred.nii.gz")
    assert got.shape == flair.shape and np.allclose(got.affine, flair.affine)
    # voxels exactly at the cut may round either way in float32
    differ = np.asarray(got.dataobj).astype(bool) != expected.astype(bool)
    assert differ.sum() <= 2, int(differ.sum())
    assert expected.sum() > 0

    # a rerun keeps the finished cases: the baseline's config is its model file in the record
    record = json.loads((pred / f"{case.name}_record.json").read_text())
    assert record["model_sha256"]
    before = (pred / f"{case.name}_pred.nii.gz").stat().st_mtime_ns
    assert main(["infer", "--model", str(run), "--input", str(samples_dir), "--out", str(pred)]) == 0
    assert (pred / f"{case.name}_pred.nii.gz").stat().st_mtime_ns == before


def test_threshold_run_replaces_an_earlier_run_only_with_overwrite(samples_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"an earlier U-Net")
    (run / "tuning.json").write_text("{}")
    args = ["train", "--config", str(BASELINE), "--data", str(samples_dir), "--out", str(run)]
    assert main(args) == 1
    assert "holds an earlier run" in capsys.readouterr().err
    assert (run / "model.keras").read_bytes() == b"an earlier U-Net"
    assert main([*args, "--overwrite"]) == 0
    assert not (run / "model.keras").exists() and not (run / "tuning.json").exists()
    assert load_config(run / "config.yaml").model.kind == "threshold"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left
    shutil.rmtree(run)
