"""The GPU recipe script (pipelines/gpu.py): compact cache, device run, and the check back on this backend.

The device step runs here on the test's own backend with a tiny budget: what is tested is the path
(pack -> train on the cache -> reference windows -> run folder with the recipe's preprocessing
restored -> the same predictions), not a GPU.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, load_pipeline


@pytest.fixture(scope="module")
def gpu():
    return load_pipeline("gpu", "lesionseg_gpu_script")


def test_quantise_is_exact_for_integers_and_within_half_a_step_for_floats(gpu):
    integers = np.arange(-300, 300, dtype=np.float32).reshape(6, 10, 10)
    q, slope = gpu.quantise(integers)
    assert slope == 1.0 and q.dtype == np.int16 and np.array_equal(q.astype(np.float32), integers)
    floats = np.random.default_rng(0).normal(50, 30, (8, 8, 8)).astype(np.float32)
    q, slope = gpu.quantise(floats)
    assert q.dtype == np.int16 and np.abs(q * slope - floats).max() <= slope / 2 + 1e-6
    assert slope <= np.abs(floats).max() / 32000


def test_written_channel_reads_back_through_nibabel(gpu, tmp_path):
    floats = np.random.default_rng(1).normal(0, 5, (6, 7, 8)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    gpu.write_scaled(tmp_path / "x.nii.gz", floats, affine)
    img = nib.load(tmp_path / "x.nii.gz")
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(img.affine, affine)
    assert np.abs(img.get_fdata() - floats).max() <= float(img.dataobj.slope) / 2 + 1e-6


@pytest.mark.slow
def test_pack_device_finish_gives_a_run_that_predicts_the_same(gpu, samples_dir, tmp_path):
    pack, fetched, run = tmp_path / "pack", tmp_path / "out", tmp_path / "run"
    gpu.main(["pack", "--config", str(REPO / "pipelines" / "smoke.toml"), "--data", str(samples_dir), "--out",
              str(pack), "--set", "preprocess.brain_extraction=true"])
    cases = sorted(p.name for p in samples_dir.iterdir())
    assert sorted(p.name for p in (pack / "data").iterdir()) == cases
    flair = nib.load(pack / "data" / cases[0] / "flair.nii.gz")
    assert flair.get_data_dtype() == np.int16
    np.testing.assert_allclose(flair.affine, nib.load(samples_dir / cases[0] / "flair.nii.gz").affine, atol=1e-6)
    recipe = (pack / "recipe.yaml").read_text()
    assert "brain_extraction: false" in recipe  # the cache is prepared already
    assert json.loads((pack / "pack.json").read_text())["restore"]["preprocess"]["brain_extraction"] is True

    gpu.main(["device", "--pack", str(pack), "--out", str(fetched), "--run", str(tmp_path / "device_run"),
              "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2", "--set", "train.threads=1"])
    assert {"model.keras", "config.yaml", "history.csv", "reference.npz"} <= {p.name for p in fetched.iterdir()}
    gpu.main(["finish", "--pack", str(pack), "--from", str(fetched), "--to", str(run)])
    assert "brain_extraction: true" in (run / "config.yaml").read_text()  # infer repeats the recipe's steps

    reference = dict(np.load(fetched / "reference.npz"))  # a model that predicts otherwise is refused
    reference["prob"] = reference["prob"] + 0.01
    np.savez(fetched / "reference.npz", **reference)
    with pytest.raises(SystemExit, match="differ"):
        gpu.main(["finish", "--pack", str(pack), "--from", str(fetched), "--to", str(tmp_path / "run2")])


def test_merge_study_adds_only_new_cells(gpu, tmp_path):
    columns = ["cell", "variant", "loss", "TP"]

    def write(path, rows):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            w.writerows(rows)

    local, device = tmp_path / "results.csv", tmp_path / "device"
    device.mkdir()
    write(local, [["a", "default", "dice", "3"]])
    write(device / "results.csv", [["a", "default", "dice", "4"], ["b", "default", "bce", "5"]])
    gpu.main(["merge-study", "--from", str(device), "--into", str(local)])
    with open(local, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["cell"], r["TP"]) for r in rows] == [("a", "3"), ("b", "5")]


@pytest.mark.slow
def test_device_study_runs_only_the_cells_missing_from_the_committed_results(gpu, samples_dir, tmp_path):
    from test_study import write_study

    (tmp_path / "study").mkdir()
    study = write_study(tmp_path / "study" / "study.toml", '"loss.name" = ["dice", "bce"]')
    pack = tmp_path / "pack"
    gpu.main(["pack", "--config", str(REPO / "pipelines" / "smoke.toml"), "--data", str(samples_dir), "--out",
              str(pack)])
    first = tmp_path / "out1"
    gpu.main(["device-study", "--study", str(study), "--pack", str(pack), "--out", str(first), "--run",
              str(tmp_path / "run1"), "--parallel", "1", "--limit", "1"])
    with open(first / "results.csv", newline="") as fh:
        assert [r["loss"] for r in csv.DictReader(fh)] == ["dice"]
    (first / "results.csv").replace(study.parent / "results.csv")  # as committed beside the study file
    second = tmp_path / "out2"
    gpu.main(["device-study", "--study", str(study), "--pack", str(pack), "--out", str(second), "--run",
              str(tmp_path / "run2"), "--parallel", "1"])
    assert not (tmp_path / "run2" / "cells" / "loss.name-dice_fold-A").exists()  # not run again
    gpu.main(["merge-study", "--from", str(second), "--into", str(study.parent / "results.csv")])
    with open(study.parent / "results.csv", newline="") as fh:
        assert sorted(r["loss"] for r in csv.DictReader(fh)) == ["bce", "dice"]
