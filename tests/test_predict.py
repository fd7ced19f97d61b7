"""The infer stage: predict_fn, decision precedence, and `lesionseg infer` end to end on real NIfTI files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_case

from lesionseg.cli import main
from lesionseg.config import Config, DataConfig, InferConfig, ModelConfig, PatchConfig, save_config
from lesionseg.errors import LesionsegError
from lesionseg.data.normalize import normalize_image
from lesionseg.inference.postprocess import StoredTuning, postprocess, read_tuning, resolve_decision
from lesionseg.inference.predictor import Predictor, make_predict_fn
from lesionseg.inference.window_options import WindowOptions

keras = pytest.importorskip("keras")

W = np.array([2.0, -1.0], np.float32)  # logit = 2·flair - t1 - 0.5
B = -0.5


def tiny_model(head: str = "sigmoid"):
    """A pointwise 'network' emitting logits: windows cannot change its output."""
    k = 1 if head == "sigmoid" else 2
    inp = keras.Input((None, None, None, 2))
    out = keras.layers.Conv3D(k, 1, name="logits")(inp)
    model = keras.Model(inp, out)
    kernel = np.zeros((1, 1, 1, 2, k), np.float32)
    bias = np.zeros((k,), np.float32)
    kernel[0, 0, 0, :, k - 1] = W  # softmax: background logit 0, lesion logit z
    bias[k - 1] = B
    model.get_layer("logits").set_weights([kernel, bias])
    return model


def expected_prob(image_normalised: np.ndarray) -> np.ndarray:
    z = image_normalised @ W + B
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)


LAS = np.array([[-1.2, 0, 0, 30.0], [0, 1.0, 0, -20.5], [0, 0, 1.5, 7.25], [0, 0, 0, 1]])
RAS = np.array([[1.0, 0, 0, -10.0], [0, 1.1, 0, -12.0], [0, 0, 0.9, 3.0], [0, 0, 0, 1]])


def run_config(**infer) -> Config:
    return Config(
        data=DataConfig(channels=("flair", "t1"), normalization="zscore"),
        patches=PatchConfig(size=(8, 8, 8)),
        model=ModelConfig(depth=2, base_filters=4),
        infer=InferConfig(overlap=0.5, batch_size=4, **infer),
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    tiny_model("sigmoid").save(run / "model.keras")
    save_config(run_config(), run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    make_case(data, "caseA", shape=(20, 22, 18), affine=LAS, lesions=((10, 10, 9, 3),), seed=1)
    make_case(data, "caseB", shape=(9, 13, 7), affine=RAS, lesions=((4, 6, 3, 2),), seed=2)
    return data


# ---------------------------------------------------------------- the predictor


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_make_predict_fn_gives_lesion_probabilities(head):
    fn = make_predict_fn(tiny_model(head), head)
    batch = np.random.default_rng(0).standard_normal((3, 8, 8, 8, 2)).astype(np.float32)
    out = fn(batch)
    assert out.shape == (3, 8, 8, 8, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], expected_prob(batch), rtol=1e-5, atol=1e-6)


def test_wrong_head_is_an_error():
    fn = make_predict_fn(tiny_model("sigmoid"), "softmax")
    with pytest.raises(LesionsegError, match="head"):
        fn(np.zeros((1, 8, 8, 8, 2), np.float32))


@pytest.mark.parametrize("tta", [(), (0, 2)])
def test_predict_probability_of_a_pointwise_model_is_pointwise(tta):
    image = np.random.default_rng(1).standard_normal((13, 10, 9, 2)).astype(np.float32)
    cfg = InferConfig(overlap=0.5, batch_size=3, tta_flips=tta)
    config = Config(patches=PatchConfig(size=(8, 8, 8)), model=ModelConfig(head="sigmoid"), infer=cfg)
    prob = Predictor.from_model(tiny_model(), config).probability(image)
    assert prob.shape == (13, 10, 9) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, expected_prob(image), rtol=1e-5, atol=1e-6)


def test_window_options_come_from_the_config_once():
    cfg = Config(
        patches=PatchConfig(size=(8, 8, 4)),
        infer=InferConfig(overlap=0.25, blend="uniform", batch_size=3, tta_flips=(0, 2), crop_to_foreground=False),
    )
    assert WindowOptions.from_config(cfg) == WindowOptions((8, 8, 4), 0.25, "uniform", 3, (0, 2), False)
    assert Predictor.from_model(tiny_model(), cfg).window == WindowOptions.from_config(cfg)


# ---------------------------------------------------------------- decision settings


def test_decision_precedence_config_then_tuned_then_defaults():
    tuned = StoredTuning(threshold=0.3, min_lesion_mm3=5.0)
    assert resolve_decision(InferConfig(), None) == (0.5, 0.0)
    assert resolve_decision(InferConfig(), tuned) == (0.3, 5.0)
    assert resolve_decision(InferConfig(threshold=0.7), tuned) == (0.7, 5.0)
    assert resolve_decision(InferConfig(min_lesion_mm3=0.0), tuned) == (0.3, 0.0)
    with pytest.raises(LesionsegError, match="threshold"):
        resolve_decision(InferConfig(threshold=2.0))


def test_postprocess_thresholds_then_drops_small_components():
    prob = np.zeros((12, 12, 12), np.float32)
    prob[2:5, 2:5, 2:5] = 0.6  # 27 voxels
    prob[8, 8, 8] = 0.9  # 1 voxel
    prob[8:10, 1:3, 1:3] = 0.4  # 8 voxels, below 0.5
    zooms = (1.0, 1.0, 2.0)
    out = postprocess(prob, InferConfig(), zooms)
    assert out.dtype == np.uint8 and out.sum() == 28
    out = postprocess(prob, InferConfig(), zooms, StoredTuning(threshold=0.3, min_lesion_mm3=10.0))
    assert out.sum() == 27 + 8 and out[8, 8, 8] == 0  # 2 mm³ dropped, 16 mm³ kept
    out = postprocess(prob, InferConfig(threshold=0.7), zooms, StoredTuning(0.3, 10.0))
    assert out.sum() == 0  # only the single voxel passes 0.7, and it is too small


def test_read_tuning(tmp_path):
    assert read_tuning(tmp_path) is None
    (tmp_path / "tuning.json").write_text(json.dumps({"threshold": 0.35, "min_lesion_mm3": 4}))
    assert read_tuning(tmp_path) == StoredTuning(0.35, 4.0)
    (tmp_path / "tuning.json").write_text("{not json")
    with pytest.raises(LesionsegError, match="tuning.json"):
        read_tuning(tmp_path)


# ---------------------------------------------------------------- lesionseg infer


def _check_outputs(pred_dir: Path, case_dir: Path, config: Config) -> None:
    ref = nib.load(str(case_dir / "flair.nii.gz"))
    prob_img = nib.load(str(pred_dir / f"{case_dir.name}_prob.nii.gz"))
    pred_img = nib.load(str(pred_dir / f"{case_dir.name}_pred.nii.gz"))
    for img, dtype in ((prob_img, np.float32), (pred_img, np.uint8)):
        assert img.shape == ref.shape
        assert img.get_data_dtype() == dtype
        assert np.array_equal(img.affine, ref.affine)  # bit for bit
        assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(ref.affine)
    prob = np.asanyarray(prob_img.dataobj)
    pred = np.asanyarray(pred_img.dataobj)
    assert prob.dtype == np.float32 and pred.dtype == np.uint8
    # normalised exactly as training, then the pointwise model
    raw = np.stack([nib.load(str(case_dir / f"{c}.nii.gz")).get_fdata(dtype=np.float32) for c in ("flair", "t1")], -1)
    image = normalize_image(raw, config.data.normalization, config.data.clip_percentiles)
    np.testing.assert_allclose(prob, expected_prob(image), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred, (prob > 0.5).astype(np.uint8))
    assert 0 < pred.sum() < pred.size


def test_infer_cli_writes_both_outputs_on_the_input_grid(run_dir, data_dir, tmp_path):
    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run_dir), "--input", str(data_dir), "--out", str(pred_dir)]) == 0
    assert sorted(p.name for p in pred_dir.iterdir()) == [
        "caseA_pred.nii.gz",
        "caseA_prob.nii.gz",
        "caseA_record.json",
        "caseB_pred.nii.gz",
        "caseB_prob.nii.gz",
        "caseB_record.json",
        "cohort.csv",
    ]
    assert nib.aff2axcodes(LAS) == ("L", "A", "S")
    for case in ("caseA", "caseB"):
        _check_outputs(pred_dir, data_dir / case, run_config())


def test_infer_one_case_folder_with_overrides(run_dir, data_dir, tmp_path):
    pred_dir = tmp_path / "pred"
    code = main(
        [
            "-q",
            "infer",
            "--model",
            str(run_dir),
            "--input",
            str(data_dir / "caseA"),
            "--out",
            str(pred_dir),
            "--set",
            "infer.threshold=0.9",
            "--set",
            "infer.blend=uniform",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in pred_dir.iterdir()) == [
        "caseA_pred.nii.gz", "caseA_prob.nii.gz", "caseA_record.json", "cohort.csv"]
    record = json.loads((pred_dir / "caseA_record.json").read_text())
    assert record["case"] == "caseA" and record["threshold"] == 0.9 and record["model"] == str(run_dir)
    assert len(record["model_sha256"]) == 64 and len(record["config_sha256"]) == 64
    prob = np.asanyarray(nib.load(str(pred_dir / "caseA_prob.nii.gz")).dataobj)
    pred = np.asanyarray(nib.load(str(pred_dir / "caseA_pred.nii.gz")).dataobj)
    np.testing.assert_array_equal(pred, (prob > 0.9).astype(np.uint8))


def test_tuned_settings_stored_with_the_run_are_used(run_dir, data_dir, tmp_path):
    run = tmp_path / "tuned_run"
    run.mkdir()
    for name in ("model.keras", "config.yaml"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    (run / "tuning.json").write_text(json.dumps({"threshold": 0.2, "min_lesion_mm3": 1e6}))
    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(data_dir), "--out", str(pred_dir)]) == 0
    pred = np.asanyarray(nib.load(str(pred_dir / "caseB_pred.nii.gz")).dataobj)
    assert pred.sum() == 0  # every component is below the tuned 1e6 mm³


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "lesionseg", *args], capture_output=True, text=True, env=env, timeout=300)


def test_missing_channel_is_one_line_and_writes_nothing(run_dir, data_dir, tmp_path):
    data = tmp_path / "data"
    for case in ("caseA", "caseB"):
        (data / case).mkdir(parents=True)
        for f in (data_dir / case).iterdir():
            (data / case / f.name).write_bytes(f.read_bytes())
    (data / "caseB" / "t1.nii.gz").unlink()
    pred_dir = tmp_path / "pred"
    res = _cli("infer", "--model", str(run_dir), "--input", str(data), "--out", str(pred_dir))
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("ERROR caseB/t1.nii.gz: missing channel 't1'")
    assert "Traceback" not in res.stderr
    assert not pred_dir.exists() or not any(pred_dir.iterdir())  # not even caseA


def test_missing_model_is_one_line(data_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(run_config(), run / "config.yaml")
    res = _cli("infer", "--model", str(run), "--input", str(data_dir), "--out", str(tmp_path / "pred"))
    assert res.returncode == 1
    assert res.stderr.strip().startswith("ERROR ") and "model.keras" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pred").exists()


def test_model_channels_must_match_the_config(run_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((run_dir / "model.keras").read_bytes())
    save_config(replace(run_config(), data=DataConfig(channels=("flair",))), run / "config.yaml")
    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(data_dir), "--out", str(pred_dir)]) == 1
    assert not pred_dir.exists() or not any(pred_dir.iterdir())


@pytest.mark.slow
def test_parallel_workers_give_the_same_outputs(run_dir, data_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["-q", "infer", "--model", str(run_dir), "--input", str(data_dir), "--out", str(one)]) == 0
    args = ["-q", "infer", "--model", str(run_dir), "--input", str(data_dir), "--out", str(two)]
    assert main([*args, "--set", "infer.workers=2"]) == 0
    for case in ("caseA", "caseB"):
        for kind in ("prob", "pred"):
            a = nib.load(str(one / f"{case}_{kind}.nii.gz"))
            b = nib.load(str(two / f"{case}_{kind}.nii.gz"))
            assert np.array_equal(a.affine, b.affine)
            np.testing.assert_allclose(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj), rtol=1e-6, atol=1e-6)


def test_infer_with_a_real_unet_model_file(data_dir, tmp_path):
    """build_unet's saved model loads through model.load_model and predicts on the input grid."""
    from lesionseg.model.unet import build_unet

    cfg = run_config()
    model = build_unet(ModelConfig(depth=2, base_filters=2), 2, cfg.patches.size)
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    save_config(replace(cfg, model=ModelConfig(depth=2, base_filters=2)), run / "config.yaml")
    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(data_dir), "--out", str(pred_dir)]) == 0
    for case in ("caseA", "caseB"):
        ref = nib.load(str(data_dir / case / "flair.nii.gz"))
        prob = nib.load(str(pred_dir / f"{case}_prob.nii.gz"))
        assert prob.shape == ref.shape and np.array_equal(prob.affine, ref.affine)
        p = np.asanyarray(prob.dataobj)
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1


@pytest.mark.shared
@pytest.mark.slow
def test_infer_one_real_exam_keeps_its_grid(shared_ms, run_dir, tmp_path):
    """A real 182×218×182 MNI exam as a single case folder: outputs on its exact grid."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((run_dir / "model.keras").read_bytes())
    save_config(replace(run_config(), patches=PatchConfig(size=(48, 48, 48))), run / "config.yaml")
    case = shared_ms / "mslesseg_P18_T1"
    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(case), "--out", str(pred_dir)]) == 0
    ref = nib.load(str(case / "flair.nii.gz"))
    for kind, dtype in (("prob", np.float32), ("pred", np.uint8)):
        img = nib.load(str(pred_dir / f"{case.name}_{kind}.nii.gz"))
        assert img.shape == ref.shape == (182, 218, 182)
        assert np.array_equal(img.affine, ref.affine) and img.get_data_dtype() == dtype


@pytest.mark.parametrize(
    "setting,match",
    [
        ("infer.overlap=1.0", "infer.overlap"),
        ("infer.blend=cosine", "infer.blend"),
        ("infer.tta_flips=[3]", "infer.tta_flips"),
        ("infer.connectivity=8", "infer.connectivity"),
        ("infer.threshold=1.5", "infer.threshold"),
    ],
)
def test_bad_infer_settings_are_one_line_errors(run_dir, data_dir, tmp_path, capsys, setting, match):
    pred_dir = tmp_path / "pred"
    code = main(["-q", "infer", "--model", str(run_dir), "--input", str(data_dir), "--out", str(pred_dir), "--set", setting])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ERROR config " + match)
    assert not pred_dir.exists()


def test_a_rerun_keeps_what_this_model_already_predicted(run_dir, data_dir, tmp_path):
    """Same model and settings: finished cases are kept; a case without its record, other settings
    or --force predict again."""
    pred_dir = tmp_path / "pred"
    argv = ["-q", "infer", "--model", str(run_dir), "--input", str(data_dir), "--out", str(pred_dir)]
    assert main(argv) == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in pred_dir.iterdir()}
    (pred_dir / "caseB_record.json").unlink()  # as if killed before caseB's record was written
    assert main(argv) == 0
    now = {p.name: p.stat().st_mtime_ns for p in pred_dir.iterdir()}
    assert all(now[n] == stamp[n] for n in stamp if n.startswith("caseA"))  # kept
    assert now["caseB_pred.nii.gz"] != stamp["caseB_pred.nii.gz"] and "caseB_record.json" in now
    assert main([*argv, "--set", "infer.threshold=0.7"]) == 0  # other settings: both again
    again = {p.name: p.stat().st_mtime_ns for p in pred_dir.iterdir()}
    assert again["caseA_pred.nii.gz"] != now["caseA_pred.nii.gz"]
    assert json.loads((pred_dir / "caseA_record.json").read_text())["threshold"] == 0.7
    assert main([*argv, "--set", "infer.threshold=0.7", "--force"]) == 0
    forced = {p.name: p.stat().st_mtime_ns for p in pred_dir.iterdir()}
    assert forced["caseA_pred.nii.gz"] != again["caseA_pred.nii.gz"]
