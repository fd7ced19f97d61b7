"""The train stage end to end on the sample cases (smoke config: seconds), resume, failures."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from lesionseg.cli import main
from lesionseg.config import load_config
from lesionseg.training.curves import HISTORY_COLUMNS, plot_curves, read_history, write_history
from lesionseg.errors import LesionsegError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "smoke.toml"
CASES = ("sample01", "sample02", "sample03", "sample07")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory, ) -> Path:
    """Four sample cases (sample07 has no lesion), to keep the runs short."""
    src = REPO / "data_samples"
    assert src.is_dir(), "data_samples/ is missing: run `lesionseg samples`"
    dst = tmp_path_factory.mktemp("data")
    for c in CASES:
        shutil.copytree(src / c, dst / c)
    return dst


@pytest.fixture(scope="module")
def smoke_run(data, tmp_path_factory) -> Path:
    """One uninterrupted smoke run through the command line (2 epochs)."""
    run = tmp_path_factory.mktemp("runs") / "full"
    assert main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(run)]) == 0
    return run


def test_train_cli_writes_the_run_folder(smoke_run):
    for name in ("model.keras", "config.yaml", "history.csv", "curves.png", "train.log", "split.csv"):
        assert (smoke_run / name).is_file(), name
    for name in ("lesions.csv", "cases.csv", "summary.csv"):
        assert (smoke_run / "validation" / name).is_file(), name
    assert (smoke_run / "checkpoint" / "state.json").is_file()
    # the resolved config reloads to the config that was trained
    assert load_config(smoke_run / "config.yaml") == load_config(SMOKE)
    # history: one row per epoch with the promised columns
    with open(smoke_run / "history.csv") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == HISTORY_COLUMNS
    rows = read_history(smoke_run / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["loss"]) and r["lr"] > 0
        assert 0.0 <= r["val_pred_fg"] <= 1.0 and 0.0 <= r["train_true_fg"] <= 1.0
        assert r["val_TP"] + r["val_FN"] > 0  # sample02 has lesions
    assert sum(r["best"] for r in rows) >= 1
    # validation reports of the best model, for sample02 only
    with open(smoke_run / "validation" / "cases.csv") as fh:
        assert [r["case"] for r in csv.DictReader(fh)] == ["sample02"]
    with open(smoke_run / "split.csv") as fh:
        sides = {r["case"]: r["side"] for r in csv.DictReader(fh)}
    assert sides == {"sample01": "train", "sample02": "val", "sample03": "train", "sample07": "train"}
    assert "epoch 2/2" in (smoke_run / "train.log").read_text()


def test_saved_model_emits_logits_and_predicts_volumes(smoke_run):
    from lesionseg.model.unet import assert_emits_logits, load_model

    model = load_model(smoke_run / "model.keras")
    assert_emits_logits(model, "sigmoid")
    out = np.asarray(model.predict_on_batch(np.zeros((1, 16, 16, 16, 2), np.float32)))
    assert out.shape == (1, 16, 16, 16, 1)


def test_saved_model_holds_the_network_alone_and_the_checkpoint_the_optimizer(smoke_run):
    """model.keras leaves Adam's variables out (a third of the file); resume reads them from checkpoint/."""
    import zipfile

    from lesionseg.model.unet import load_model

    with zipfile.ZipFile(smoke_run / "model.keras") as zf:
        config = json.loads(zf.read("config.json"))
        weights = zf.read("model.weights.h5")
    assert not config.get("compile_config")  # no optimizer, loss or metrics
    assert b"optimizer" not in weights
    model = load_model(smoke_run / "model.keras")
    with np.load(smoke_run / "checkpoint" / "last.npz") as ckpt:
        optimizer_values = sum(ckpt[k].size for k in ckpt.files if k.startswith("o"))
    assert optimizer_values >= 2 * sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_bfloat16_training_learns_and_saves_a_float32_model(data, tmp_path):
    """train.precision=bfloat16: mixed precision in the step, float32 weights and logits, float32 model saved."""
    import keras

    from lesionseg.model.unet import build_unet, float32_model, load_model, precision_policy

    run = tmp_path / "bf16"
    sets = ["--set", "train.precision=bfloat16", "--set", "train.epochs=2", "--set", "train.threads=1"]
    assert main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(run), *sets]) == 0
    log_text = (run / "train.log").read_text()
    assert "(mixed bfloat16)" in log_text
    from lesionseg.runtime import cpu_computes_bfloat16

    # no GPU in the tests: the warning is there exactly when this CPU emulates bfloat16
    assert ("emulates bfloat16" in log_text) == (cpu_computes_bfloat16() is False)
    rows = read_history(run / "history.csv")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    model = load_model(run / "model.keras")
    assert {layer.dtype_policy.compute_dtype for layer in model.layers} == {"float32"}
    out = np.asarray(model.predict_on_batch(np.zeros((1, 16, 16, 16, 2), np.float32)))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored

    # the float32 copy is the mixed model's weights exactly, and computes what it computes to bfloat16 rounding
    cfg = load_config(run / "config.yaml").model
    with precision_policy("bfloat16"):
        mixed = build_unet(cfg, 2, (16, 16, 16))
    mixed.set_weights(model.get_weights())
    assert {layer.dtype_policy.compute_dtype for layer in mixed.layers if layer.name != "logits"} >= {"bfloat16"}
    copy = float32_model(mixed)
    assert copy is not mixed and all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), model.get_weights()))
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16, 2)).astype(np.float32)
    exact, approx = (np.asarray(m.predict_on_batch(x)) for m in (copy, mixed))
    assert approx.dtype == np.float32
    assert np.abs(exact - approx).max() < 0.1 * max(1.0, np.abs(exact).max())
    assert float32_model(copy) is copy


def test_interrupt_and_resume_gives_the_same_history(data, tmp_path, monkeypatch):
    import functools

    import keras

    from lesionseg.training import train as train_mod

    # 3 epochs of 4 batches, interrupted after epoch 1: the resumed epochs 2 and 3 must be those of the
    # uninterrupted run bit for bit (same patches, batch order, weights, optimizer state); 4 batches so
    # that a batch order left to chance (fit's shuffle) differs between the two runs
    sets = ["--set", "train.epochs=3", "--set", "train.steps_per_epoch=4", "--set", "train.threads=1",
            "--set", "train.validate_every=3"]
    reference, run = tmp_path / "uninterrupted", tmp_path / "interrupted"
    assert main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(reference), *sets]) == 0
    original = train_mod.train

    class InterruptAfterEpoch1(keras.callbacks.Callback):
        """Called after the stage's own callbacks: epoch 1's history and checkpoint are written."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:  # 0-based: epoch 1
                raise KeyboardInterrupt  # Ctrl-C right after epoch 1 was checkpointed

    # the command line calls lesionseg.training.train.train: give it the extra callback
    monkeypatch.setattr(train_mod, "train", functools.partial(original, callbacks=[InterruptAfterEpoch1()]))
    assert main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(run), *sets]) == 130
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1]
    assert "--resume" in (run / "train.log").read_text()

    monkeypatch.setattr(train_mod, "train", original)
    assert main(["train", "--data", str(data), "--out", str(run), "--resume"]) == 0  # config from RUN
    # train.log, not caplog: the "lesionseg" logger does not propagate to the root logger
    assert "resuming after epoch 1" in (run / "train.log").read_text()

    full, resumed = read_history(reference / "history.csv"), read_history(run / "history.csv")
    assert [r["epoch"] for r in full] == [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(full, resumed):
        for key in ("loss", "lr", "train_dice", "train_true_fg", "val_dice", "val_lesion_f1", "val_TP", "val_FP"):
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), (a["epoch"], key, a[key], b[key])
    with np.load(reference / "checkpoint" / "last.npz") as x, np.load(run / "checkpoint" / "last.npz") as y:
        assert x.files == y.files
        assert all(np.array_equal(x[k], y[k]) for k in x.files)  # weights and optimizer state of epoch 3

    # a finished run has nothing left to resume
    assert main(["train", "--data", str(data), "--out", str(run), "--resume"]) == 0


def test_resume_without_checkpoint_is_a_one_line_error(data, tmp_path, capsys):
    assert main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(tmp_path / "none"), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR") and "nothing to resume" in err[0]


def test_nan_loss_stops_with_the_last_good_model(data, tmp_path, caplog, monkeypatch):
    import keras
    from keras import ops

    import lesionseg.model.losses
    from lesionseg.model.unet import load_model
    from lesionseg.training.train import TrainingStopped, train

    real_get_loss = lesionseg.model.losses.get_loss

    def poisoned_get_loss(name, head, **params):
        """The real loss, times NaN from the 6th call on (2 reference calls + 3 steps)."""
        base, calls = real_get_loss(name, head, **params), keras.Variable(0.0, trainable=False)

        def loss(y, z):
            calls.assign_add(1.0)
            return base(y, z) * ops.where(calls > 5, float("nan"), 1.0)

        return loss

    monkeypatch.setattr(lesionseg.model.losses, "get_loss", poisoned_get_loss)
    cfg = load_config(SMOKE, ["train.epochs=4"])
    with caplog.at_level(logging.WARNING, logger="lesionseg"):
        with pytest.raises(TrainingStopped, match="NaN"):
            train(cfg, data, tmp_path / "nan")
    assert "DIAGNOSTIC nan" in caplog.text and "last good" in caplog.text
    rows = read_history(tmp_path / "nan" / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and "nan" in rows[-1]["diagnostics"]
    # model.keras is epoch 1's model, finite; the checkpoint was not overwritten by NaN weights
    assert all(np.all(np.isfinite(w)) for w in load_model(tmp_path / "nan" / "model.keras").get_weights())
    assert '"epoch": 1' in (tmp_path / "nan" / "checkpoint" / "state.json").read_text()
    with np.load(tmp_path / "nan" / "checkpoint" / "last.npz") as ckpt:
        assert all(np.all(np.isfinite(ckpt[k])) for k in ckpt.files)


def test_huge_learning_rate_does_not_go_unnoticed(data, tmp_path, caplog):
    from lesionseg.training.train import TrainingStopped, train

    cfg = load_config(SMOKE, ["train.learning_rate=10", "train.epochs=4"])
    with caplog.at_level(logging.WARNING, logger="lesionseg"):
        try:
            train(cfg, data, tmp_path / "lr")
        except TrainingStopped:
            pass
    fired = {line.split("DIAGNOSTIC ")[1].split(":")[0] for line in caplog.text.splitlines() if "DIAGNOSTIC " in line}
    assert fired & {"everything", "collapse", "nan", "diverging", "oscillating"}, fired
    assert "learning rate" in caplog.text


MIRRORED = """
import functools, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.distribute.MirroredStrategy = functools.partial(tf.distribute.MirroredStrategy, devices=["/cpu:0", "/cpu:1"])
from lesionseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_mirrored_strategy_on_two_logical_cpus(data, tmp_path):
    """train.strategy=mirrored: 2 replicas share the global batch; losses keep their scale."""
    import subprocess
    import sys

    run = tmp_path / "mirrored"
    # with online hard-negative mining: the network predicts its training exams under the strategy too
    args = ["train", "--config", str(SMOKE), "--data", str(data), "--out", str(run), "--set", "train.strategy=mirrored",
            "--set", "patches.hard_fraction=0.3", "--set", "patches.hard_mining_every=1",
            "--set", "patches.hard_mining_start=1", "--set", "patches.hard_mining_probability=0.0"]
    proc = subprocess.run([sys.executable, "-c", MIRRORED, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on 2 replicas" in proc.stderr
    assert "hard negatives mined before epoch 2" in proc.stderr
    rows = read_history(run / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 < r["loss"] <= 1.0 for r in rows)  # a Dice loss: not summed over the 2 replicas
    assert (run / "model.keras").is_file() and (run / "validation" / "summary.csv").is_file()


@pytest.mark.shared
def test_one_epoch_on_a_real_exam_pair(shared_ms, tmp_path):
    """pipelines/ms_flair_t1.toml on two real exams (train P18, validate lesjak07), shrunk to seconds."""
    data = tmp_path / "pair"
    data.mkdir()
    for exam in ("lesjak_patient07", "mslesseg_P18_T1"):
        (data / exam).symlink_to(shared_ms / exam)
    run = tmp_path / "ms"
    tiny = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=2", "model.base_filters=4", "infer.overlap=0"]
    args = ["train", "--config", str(REPO / "pipelines" / "ms_flair_t1.toml"), "--data", str(data), "--out", str(run)]
    assert main(args + [a for t in tiny for a in ("--set", t)]) == 0
    (row,) = read_history(run / "history.csv")
    assert row["val_TP"] + row["val_FN"] > 0 and math.isfinite(row["loss"])
    with open(run / "split.csv") as fh:
        assert {r["case"]: r["side"] for r in csv.DictReader(fh)} == {"lesjak_patient07": "val", "mslesseg_P18_T1": "train"}


def test_bad_train_settings_are_config_errors(data, tmp_path):
    from lesionseg.training.distribution import make_strategy
    from lesionseg.training.distribution import check_replicas
    from lesionseg.training.train import train

    with pytest.raises(LesionsegError, match="train.strategy"):
        make_strategy("everywhere", "tensorflow")
    with pytest.raises(LesionsegError, match="TensorFlow backend"):
        make_strategy("mirrored", "jax")
    with pytest.raises(LesionsegError, match="divisible"):
        check_replicas(3, 2, "mirrored")
    with pytest.raises(LesionsegError, match="train.schedule"):
        train(load_config(SMOKE, ["train.schedule=linear"]), data, tmp_path / "x")
    with pytest.raises(LesionsegError, match="sample99"):
        train(load_config(SMOKE, ["train.val_cases=[sample99]"]), data, tmp_path / "y")


def test_learning_rate_schedules():
    from lesionseg.training.checkpoint import RunState
    from lesionseg.training.schedule import cosine_lr

    lrs = [cosine_lr(e, 5, 1e-3, 1e-5) for e in range(5)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    state = RunState(epoch=3, lr=5e-4, best_score=[0.5, 0.4], plateau_best=-math.inf)
    again = RunState.from_json(state.to_json())
    assert again == state


def test_reduce_on_plateau_and_early_stopping():
    from lesionseg.training.schedule import Schedule

    cfg = load_config(SMOKE, ["train.plateau_patience=2", "train.plateau_factor=0.5", "train.early_stopping_patience=4"])
    schedule = Schedule(cfg.train, epochs_per_update=cfg.train.validate_every)  # validated every epoch
    lrs, stops = [], []
    for epoch, f1 in enumerate([0.2, 0.5, 0.4, 0.5, 0.3], 1):  # best at epoch 2, then 3 epochs without gain
        stops.append(schedule.update(epoch, f1))
        lrs.append(schedule.lr_for_epoch(epoch))
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4])
    assert not any(stops)
    assert schedule.update(6, 0.45)  # 4 epochs without improvement


def test_history_round_trip_and_curves(tmp_path):
    rows = [
        {"epoch": 1, "loss": 0.9, "lr": 1e-3, "train_dice": 0.1, "val_lesion_f1": math.nan, "best": 0, "diagnostics": ""},
        {"epoch": 2, "loss": 0.7, "lr": 1e-3, "train_dice": 0.3, "val_lesion_f1": 0.5, "val_dice": 0.4, "best": 1, "diagnostics": "collapse"},
    ]
    write_history(rows, tmp_path / "history.csv")
    back = read_history(tmp_path / "history.csv")
    assert back[1]["val_lesion_f1"] == 0.5 and math.isnan(back[0]["val_lesion_f1"])
    assert back[1]["diagnostics"] == "collapse" and math.isnan(back[0]["val_dice"])
    png = plot_curves(back, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jit_compile_is_on_for_jax_and_off_for_torch_and_tensorflow_on_cpu():
    # JAX without jit runs the train step op by op (a GPU then idles); XLA slows Conv3D on CPU TensorFlow
    from lesionseg.training.distribution import jit_compile

    assert jit_compile("jax") is True and jit_compile("torch") is False
    assert jit_compile("tensorflow") in (False, "auto")
