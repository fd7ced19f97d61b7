"""Ensembles: several trained runs predicting as one, probabilities averaged before the decision."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_case

from lesionseg.cli import main
from lesionseg.config import Config, DataConfig, InferConfig, ModelConfig, PatchConfig, TrainConfig, save_config
from lesionseg.inference.ensemble import ENSEMBLE_FILE, member_files
from lesionseg.inference.predictor import Predictor

keras = pytest.importorskip("keras")


def linear_run(run: Path, weights: tuple[float, float], bias: float, seed: int = 0,
               normalization: str | None = None) -> Path:
    """A run whose 'network' is one 1x1x1 convolution: logit = w0·flair + w1·t1 + bias."""
    inp = keras.Input((None, None, None, 2))
    model = keras.Model(inp, keras.layers.Conv3D(1, 1, name="logits")(inp))
    model.get_layer("logits").set_weights(
        [np.array(weights, np.float32).reshape(1, 1, 1, 2, 1), np.array([bias], np.float32)])
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    data = DataConfig(channels=("flair", "t1"))
    if normalization is not None:
        data = DataConfig(channels=("flair", "t1"), normalization=normalization)
    save_config(Config(data=data, patches=PatchConfig(size=(8, 8, 8)), model=ModelConfig(depth=2, base_filters=4),
                       infer=InferConfig(overlap=0.5), train=TrainConfig(seed=seed)), run / "config.yaml")
    return run


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = linear_run(tmp_path / "seed0", (2.0, -1.0), -1.0, seed=0)
    b = linear_run(tmp_path / "seed1", (0.5, -2.0), 0.5, seed=1)
    return a, b


def test_ensemble_probability_is_the_mean_of_its_members(two_runs, tmp_path):
    a, b = two_runs
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "ens")]) == 0
    ens = tmp_path / "ens"
    assert [p.relative_to(ens).as_posix() for p in member_files(ens)] == ["model.keras", "members/member_1.keras"]
    assert not (ens / "split.csv").exists()  # the members' splits are not known to be one
    record = json.loads((ens / ENSEMBLE_FILE).read_text())
    assert [m["seed"] for m in record["members"]] == [0, 1]
    assert record["differences"]["train.seed"] == [0, 1]
    image = np.random.default_rng(0).normal(size=(12, 14, 10, 2)).astype(np.float32)
    p_a = Predictor.from_run(a).probability(image)
    p_b = Predictor.from_run(b).probability(image)
    p_ens = Predictor.from_run(ens).probability(image)
    assert not np.allclose(p_a, p_b, atol=0.05)  # the members disagree, so the mean is not either one
    np.testing.assert_allclose(p_ens, (p_a + p_b) / 2, atol=1e-5)


def test_infer_on_an_ensemble_writes_the_mean_probability_and_records_it(two_runs, tmp_path):
    a, b = two_runs
    data = tmp_path / "data"
    make_case(data, "c1", shape=(14, 16, 12), lesions=((7, 8, 6, 2),))
    ens = tmp_path / "ens"
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(ens)]) == 0
    probs = {}
    for run in (a, b, ens):
        out = tmp_path / f"pred_{run.name}"
        assert main(["infer", "--model", str(run), "--input", str(data), "--out", str(out)]) == 0
        probs[run.name] = np.asarray(nib.load(out / "c1_prob.nii.gz").dataobj, np.float32)
    np.testing.assert_allclose(probs["ens"], (probs["seed0"] + probs["seed1"]) / 2, atol=2e-3)
    pred = np.asarray(nib.load(tmp_path / "pred_ens" / "c1_pred.nii.gz").dataobj)
    np.testing.assert_array_equal(pred, (probs["ens"] > 0.5).astype(pred.dtype))
    record = json.loads((tmp_path / "pred_ens" / "c1_record.json").read_text())
    from lesionseg.provenance import file_sha256
    assert record["model_sha256"] == file_sha256(ens / ENSEMBLE_FILE)


def test_members_that_read_exams_differently_are_refused(tmp_path, capsys):
    a = linear_run(tmp_path / "a", (2.0, -1.0), -1.0, normalization="zscore")
    b = linear_run(tmp_path / "b", (2.0, -1.0), -1.0, normalization="robust")
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "ens")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.normalization differs" in err and str(b / "config.yaml") in err
    assert not (tmp_path / "ens").exists()


@pytest.mark.parametrize("runs", [["a"], ["a", "a"], ["a", "missing"]])
def test_too_few_repeated_or_untrained_runs_are_refused(tmp_path, capsys, runs):
    linear_run(tmp_path / "a", (2.0, -1.0), -1.0)
    assert main(["ensemble", "--runs", *[str(tmp_path / r) for r in runs], "--out", str(tmp_path / "ens")]) == 1
    assert capsys.readouterr().err.startswith("ERROR ")
    assert not (tmp_path / "ens").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_member_whose_model_cannot_load_is_refused_before_anything_is_written(two_runs, tmp_path, capsys, damage):
    a, b = two_runs
    model = b / "model.keras"
    model.write_bytes(b"" if damage == "empty" else model.read_bytes()[:100])
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "ens")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR {model}: cannot load model") and err.count("\n") == 1
    assert not (tmp_path / "ens").exists()


def test_a_changed_member_stops_infer_before_any_output(two_runs, tmp_path, capsys):
    a, b = two_runs
    data = tmp_path / "data"
    make_case(data, "c1", shape=(14, 16, 12))
    ens = tmp_path / "ens"
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(ens)]) == 0
    (ens / "members" / "member_1.keras").write_bytes((a / "model.keras").read_bytes())
    assert main(["infer", "--model", str(ens), "--input", str(data), "--out", str(tmp_path / "pred")]) == 1
    err = capsys.readouterr().err
    assert "member_1.keras: changed since the ensemble was made" in err
    assert not list(tmp_path.glob("pred/*.nii.gz"))


def test_an_earlier_run_is_kept_unless_overwrite_and_then_replaced_whole(two_runs, tmp_path, capsys):
    a, b = two_runs
    ens = tmp_path / "ens"
    linear_run(ens, (1.0, 1.0), 0.0)
    (ens / "tuning.json").write_text(json.dumps({"threshold": 0.9, "min_lesion_mm3": 10.0}))
    (ens / "notes.txt").write_text("mine")
    before = (ens / "model.keras").read_bytes()
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(ens)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (ens / "model.keras").read_bytes() == before
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(ens), "--overwrite"]) == 0
    assert (ens / "model.keras").read_bytes() == (a / "model.keras").read_bytes()
    assert not (ens / "tuning.json").exists()  # a tuned decision belongs to the model it was tuned for
    assert (ens / "notes.txt").read_text() == "mine"  # files of other tools stay
    assert not list(tmp_path.glob(".ens*"))


def test_replacing_an_ensemble_run_removes_its_members(two_runs, tmp_path):
    from lesionseg.training.checkpoint import replace_run

    a, b = two_runs
    ens = tmp_path / "ens"
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(ens)]) == 0
    new = linear_run(tmp_path / "new", (1.0, 0.0), 0.0)
    replace_run(new, ens)  # what train --overwrite does once the new run has succeeded
    assert member_files(ens) == [ens / "model.keras"]
    assert not (ens / ENSEMBLE_FILE).exists()
    Predictor.from_run(ens)  # a plain run again


def test_the_members_common_split_goes_with_the_ensemble_and_a_new_folder_says_nothing_replaced(two_runs, tmp_path,
                                                                                                caplog):
    a, b = two_runs
    for run in (a, b):
        (run / "split.csv").write_text("case,role\nc1,train\n")
        (run / "history.csv").write_text(f"epoch,loss\n1,{run.name}\n")
    with caplog.at_level("INFO"):
        assert main(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "ens")]) == 0
    assert (tmp_path / "ens" / "split.csv").read_text() == "case,role\nc1,train\n"
    assert (tmp_path / "ens" / "history.csv").read_text().endswith("seed0\n")
    assert (tmp_path / "ens" / "members" / "member_1.history.csv").read_text().endswith("seed1\n")
    assert "ensemble of 2 models" in caplog.text and "replaced" not in caplog.text


def test_members_trained_on_other_exams_leave_a_split_naming_who_trained_on_what(two_runs, tmp_path):
    a, b = two_runs  # e.g. two fold models of a cross-validation
    (a / "split.csv").write_text("case,group,side\nc1,p1,train\nc2,p2,train\nc3,p3,val\n")
    (b / "split.csv").write_text("case,group,side\nc1,p1,train\nc3,p3,train\nc2,p2,val\n")
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "ens")]) == 0
    lines = (tmp_path / "ens" / "split.csv").read_text().splitlines()
    assert lines == ["case,group,side,trained_by", "c1,p1,train,model.keras members/member_1.keras",
                     "c2,p2,train,model.keras", "c3,p3,train,members/member_1.keras"]
    record = json.loads((tmp_path / "ens" / ENSEMBLE_FILE).read_text())
    assert record["training_exams"].startswith("differ between members")
    (b / "split.csv").write_text("name,role\nc1,train\n")  # not a lesionseg split: named, nothing written
    assert main(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "ens2")]) == 1
    assert not (tmp_path / "ens2").exists() or not any((tmp_path / "ens2").iterdir())
