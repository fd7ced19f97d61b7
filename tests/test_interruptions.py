"""Interrupted and failed commands never take what was there before: user files, earlier banks, earlier runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_case

from lesionseg.cli import main
from lesionseg.config import load_config, save_config

keras = pytest.importorskip("keras")

SMOKE = REPO / "pipelines" / "smoke.toml"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for n, name in enumerate(("caseA", "caseB", "caseC")):
        make_case(tmp_path / "data", name, shape=(16, 18, 14), lesions=((8, 9, 7, 2),), seed=n)
    return tmp_path / "data"


class _StopAtFirstBatch(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):  # noqa: ARG002
        raise KeyboardInterrupt


def test_a_new_run_that_fails_keeps_the_files_that_were_in_its_folder(data, tmp_path):
    """Ctrl-C before the first checkpoint removes what the run wrote, not the user's own files."""
    from lesionseg.training.train import train

    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.md").write_text("my notes\n")
    (out / "split.csv").write_text("case,role\nmine,train\n")  # a name the run also writes, there before it
    config = load_config(SMOKE, ["train.val_cases=[caseC]", "train.threads=1"])
    with pytest.raises(KeyboardInterrupt):
        train(config, data, out, callbacks=[_StopAtFirstBatch()])
    assert sorted(p.name for p in out.iterdir()) == ["notes.md", "split.csv"]
    assert (out / "notes.md").read_text() == "my notes\n"


def test_an_interrupted_overwrite_says_the_earlier_run_is_unchanged(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", "--config", str(SMOKE), "--data", str(data), "--out", str(run),
                 "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1", "--set", "train.val_cases=[caseC]"]) == 0
    before = (run / "model.keras").read_bytes()
    from lesionseg.training.train import train

    config = load_config(SMOKE, ["train.val_cases=[caseC]", "train.threads=1"])
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        train(config, data, run, overwrite=True, callbacks=[_StopAtFirstBatch()])
    assert (run / "model.keras").read_bytes() == before
    assert not (tmp_path / ".run.attempt").exists()
    said = capsys.readouterr().err
    assert f"the earlier run in {run} is unchanged" in said and "--resume" not in said


def test_sigterm_ends_train_like_ctrl_c_and_the_run_resumes(data, tmp_path):
    """kill (a batch system's time limit) keeps the checkpoint and says how to resume; exit 143."""
    run = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lesionseg", "train", "--config", str(SMOKE), "--data", str(data), "--out", str(run),
         "--set", "train.epochs=500", "--set", "train.steps_per_epoch=2", "--set", "train.val_cases=[caseC]",
         "--set", "train.threads=1"], stderr=subprocess.PIPE, text=True, env=env)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.is_file(), "no checkpoint within 120 s"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("ERROR terminated (SIGTERM)")
    assert "--resume" in err and state.is_file()
    assert main(["-q", "train", "--data", str(data), "--out", str(run), "--resume", "--set", "train.epochs=2"]) == 0
    assert (run / "model.keras").is_file()


def test_patches_rerun_keeps_the_user_files_and_replaces_only_its_own(data, tmp_path):
    bank = tmp_path / "bank"
    args = ["-q", "patches", "--config", str(SMOKE), "--data", str(data), "--out", str(bank)]
    assert main([*args, "--set", "patches.n_patches=12"]) == 0
    (bank / "patches" / "mine.npz").write_bytes(b"user data")
    (bank / "notes.md").write_text("mine\n")
    old_index = (bank / "index.csv").read_text()
    assert main([*args, "--set", "patches.n_patches=20", "--set", "patches.seed=1"]) == 0
    assert (bank / "patches" / "mine.npz").read_bytes() == b"user data"
    assert (bank / "notes.md").read_text() == "mine\n"
    index = (bank / "index.csv").read_text()
    assert index != old_index and len(index.splitlines()) == 21
    named = {line.split(",")[-2] for line in index.splitlines()[1:]}
    assert all((bank / f).is_file() for f in named)
    with np.load(bank / sorted(named)[0]) as npz:
        assert npz["image"].shape[0] >= 1
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_patches_interrupted_leave_the_earlier_bank_whole(data, tmp_path, monkeypatch):
    from lesionseg.sampling import bank as bank_module

    bank = tmp_path / "bank"
    args = ["-q", "patches", "--config", str(SMOKE), "--data", str(data), "--out", str(bank)]
    assert main([*args, "--set", "patches.n_patches=12"]) == 0
    before = {p.relative_to(bank): p.read_bytes() for p in bank.rglob("*") if p.is_file()}
    real = bank_module.cut_patch
    calls = {"n": 0}

    def cut_then_stop(*a, **k):
        calls["n"] += 1
        if calls["n"] > 15:  # past the first case of the new bank
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bank_module, "cut_patch", cut_then_stop)
    assert main([*args, "--set", "patches.n_patches=40", "--set", "patches.seed=1"]) == 130
    assert {p.relative_to(bank): p.read_bytes() for p in bank.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_a_users_config_inside_the_run_folder_is_never_overwritten(data, tmp_path, capsys):
    out = tmp_path / "exp"
    save_config(load_config(SMOKE), out / "config.yaml")
    text = (out / "config.yaml").read_text()
    assert main(["train", "--config", str(out / "config.yaml"), "--data", str(data), "--out", str(out)]) == 1
    assert "the run writes its own config.yaml there" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == text
