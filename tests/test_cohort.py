"""Cohort runs: failure isolation (--keep-going, failures.csv, --retry-failed), cohort.csv, kill -9 and rerun."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionseg.cli import main
from lesionseg.data.labels import label_components

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "pipelines" / "threshold_baseline.toml"


@pytest.fixture
def cohort(samples_dir, tmp_path):
    """data_samples plus one exam whose FLAIR is truncated; a threshold model to predict them."""
    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    broken = data / "broken"
    shutil.copytree(samples_dir / "sample01", broken)
    raw = (broken / "flair.nii.gz").read_bytes()
    (broken / "flair.nii.gz").write_bytes(raw[: len(raw) // 3])
    run = tmp_path / "run"
    assert main(["train", "--config", str(BASELINE), "--data", str(samples_dir), "--out", str(run)]) == 0
    return data, run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_keep_going_predicts_every_good_exam_and_lists_the_bad_one(cohort, samples_dir, tmp_path, capsys):
    data, run = cohort
    pred = tmp_path / "pred"
    args = ["infer", "--model", str(run), "--input", str(data), "--out", str(pred)]
    assert main(args) == 1  # default: the bad exam stops the run before any work
    assert "broken/flair.nii.gz" in capsys.readouterr().err
    assert not pred.exists() or not any(pred.glob("*_pred.nii.gz"))

    assert main([*args, "--keep-going"]) == 1
    err = capsys.readouterr().err
    assert "1 of 9 case(s) failed" in err and "--retry-failed" in err
    failures = _rows(pred / "failures.csv")
    assert [f["case"] for f in failures] == ["broken"] and "flair.nii.gz" in failures[0]["file"]
    good = sorted(p.name for p in samples_dir.iterdir())
    assert sorted(p.name[: -len("_pred.nii.gz")] for p in pred.glob("*_pred.nii.gz")) == good
    rows = _rows(pred / "cohort.csv")
    assert [r["case"] for r in rows] == good
    for r in rows:  # the counts are those of the written masks
        img = nib.load(pred / f"{r['case']}_pred.nii.gz")
        mask = np.asarray(img.dataobj)
        assert int(r["lesions"]) == label_components(mask, 26)[1]
        assert abs(float(r["volume_ml"]) - mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000) < 1e-3
        assert int(r["n_small"]) + int(r["n_medium"]) + int(r["n_large"]) == int(r["lesions"])

    stamps = {p.name: p.stat().st_mtime_ns for p in pred.glob("*_pred.nii.gz")}
    assert main([*args, "--keep-going"]) == 1  # a rerun skips every finished exam
    assert {p.name: p.stat().st_mtime_ns for p in pred.glob("*_pred.nii.gz")} == stamps

    shutil.copyfile(samples_dir / "sample01" / "flair.nii.gz", data / "broken" / "flair.nii.gz")  # repaired
    assert main([*args, "--retry-failed"]) == 0
    assert (pred / "broken_pred.nii.gz").is_file() and not (pred / "failures.csv").exists()
    assert {p.name: p.stat().st_mtime_ns for p in pred.glob("sample*_pred.nii.gz")} == stamps
    assert len(_rows(pred / "cohort.csv")) == 9


def test_a_row_lost_between_record_and_cohort_csv_comes_back_on_rerun(cohort, samples_dir, tmp_path):
    """A kill after an exam's record is written and before its cohort.csv row: the rerun keeps the exam
    (it is complete) and restores its row from the record, so cohort.csv lists every finished exam."""
    _, run = cohort
    pred = tmp_path / "pred"
    args = ["infer", "--model", str(run), "--input", str(samples_dir), "--out", str(pred)]
    assert main(args) == 0
    full = _rows(pred / "cohort.csv")
    with open(pred / "cohort.csv", "w", newline="") as fh:  # as the killed run left it: sample02's row missing
        writer = csv.DictWriter(fh, fieldnames=list(full[0]))
        writer.writeheader()
        writer.writerows([r for r in full if r["case"] != "sample02"])
    stamp = (pred / "sample02_pred.nii.gz").stat().st_mtime_ns
    assert main(args) == 0
    assert (pred / "sample02_pred.nii.gz").stat().st_mtime_ns == stamp  # kept, not predicted again
    assert _rows(pred / "cohort.csv") == full


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_clean_runs_outputs(samples_dir, tmp_path):
    run = tmp_path / "unet"
    assert main(["train", "--config", str(REPO / "pipelines" / "smoke.toml"), "--data", str(samples_dir),
                 "--out", str(run)]) == 0
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(["infer", "--model", str(run), "--input", str(samples_dir), "--out", str(clean)]) == 0
    cmd = [sys.executable, "-m", "lesionseg", "infer", "--model", str(run), "--input", str(samples_dir),
           "--out", str(killed)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(killed.glob("*_record.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(killed.glob("*_record.json")))
    assert 0 < finished < 8, finished  # killed mid-run
    assert main(["infer", "--model", str(run), "--input", str(samples_dir), "--out", str(killed)]) == 0
    assert not [p for p in killed.iterdir() if ".tmp-" in p.name]
    for path in sorted(clean.glob("*.nii.gz")):
        a, b = nib.load(path), nib.load(killed / path.name)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
    assert [r["case"] for r in _rows(killed / "cohort.csv")] == [r["case"] for r in _rows(clean / "cohort.csv")]


@pytest.mark.slow
def test_dask_engine_gives_the_local_engines_outputs(cohort, samples_dir, tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install -e '.[cluster]')")
    data, run = cohort
    local, dask = tmp_path / "local", tmp_path / "dask"
    base = ["infer", "--model", str(run), "--input", str(data), "--keep-going"]
    assert main([*base, "--out", str(local)]) == 1  # the broken exam fails on both engines
    assert main([*base, "--out", str(dask), "--engine", "dask", "--set", "infer.workers=2"]) == 1
    assert _rows(dask / "failures.csv") == _rows(local / "failures.csv")
    for path in sorted(local.glob("*.nii.gz")):
        a, b = nib.load(path), nib.load(dask / path.name)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "finished")} for r in rows]  # noqa: E731
    assert strip(_rows(dask / "cohort.csv")) == strip(_rows(local / "cohort.csv"))


@pytest.mark.slow
def test_ray_engine_gives_the_local_engines_outputs(cohort, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (an optional engine: pip install ray)")
    data, run = cohort
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    base = ["infer", "--model", str(run), "--input", str(data), "--keep-going"]
    assert main([*base, "--out", str(local)]) == 1
    assert main([*base, "--out", str(ray_out), "--engine", "ray", "--set", "infer.workers=2"]) == 1
    assert _rows(ray_out / "failures.csv") == _rows(local / "failures.csv")
    for path in sorted(local.glob("*.nii.gz")):
        a, b = nib.load(path), nib.load(ray_out / path.name)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_execution_settings_do_not_change_the_config_hash():
    from dataclasses import replace

    from lesionseg.config import Config
    from lesionseg.provenance import config_sha256

    base = Config()
    more_workers = replace(base, infer=replace(base.infer, workers=4), train=replace(base.train, threads=1))
    other_overlap = replace(base, infer=replace(base.infer, overlap=0.25))
    assert config_sha256(more_workers) == config_sha256(base) != config_sha256(other_overlap)
