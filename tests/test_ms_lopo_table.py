"""``pipelines/ms_experiments.py lopo-table``: per-exam table and detection by lesion volume from the fold reports."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from conftest import load_pipeline
from lesionseg.config import EvaluateConfig
from lesionseg.evaluation.lesions import evaluate_case
from lesionseg.evaluation.report import write_reports


def _ms_experiments():
    return load_pipeline("ms_experiments")


def test_lopo_table_writes_detection_by_lesion_volume(tmp_path):
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[1:3, 1:3, 1:2] = 1  # 4 mm³: missed
    truth[10:15, 10:15, 10:15] = 1  # 125 mm³: found
    pred = np.zeros_like(truth)
    pred[11:14, 11:14, 11:14] = 1
    pred[5:7, 15:17, 1:2] = 1  # a 4 mm³ false lesion
    cfg = EvaluateConfig()
    write_reports([evaluate_case(truth, pred, (1.0, 1.0, 1.0), cfg, "exam")], tmp_path / "lopo" / "recipe" / "report", cfg)

    ms = _ms_experiments()
    out = tmp_path / "tables"
    ms.cmd_lopo_table(argparse.Namespace(root=str(tmp_path / "lopo"), recipes=["recipe"], untuned=False, out=str(out),
                                        keep=False))

    table = pd.read_csv(out / "lopo_table.csv")
    assert table.TP.tolist() == [1, 1] and table.FP.tolist() == [1, 1]  # the exam and the pooled row
    sizes = pd.read_csv(out / "lopo_sizes.csv").iloc[0]
    assert sizes["found <10 mm³"] == "0/1" and sizes["false <10 mm³"] == 1
    assert sizes["found 100-1000 mm³"] == "1/1" and sizes["false 100-1000 mm³"] == 0
    assert "found <10 mm³" in (out / "lopo_sizes.md").read_text()


def test_lopo_table_keeps_the_committed_rows_of_recipes_whose_runs_are_gone(tmp_path):
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[10:15, 10:15, 10:15] = 1
    cfg = EvaluateConfig()
    for recipe, found in (("old", truth), ("new", np.zeros_like(truth))):
        write_reports([evaluate_case(truth, found, (1.0, 1.0, 1.0), cfg, "exam")],
                      tmp_path / "lopo" / recipe / "report", cfg)
    ms = _ms_experiments()
    out = tmp_path / "tables"

    def table(recipes, keep):
        ms.cmd_lopo_table(argparse.Namespace(root=str(tmp_path / "lopo"), recipes=recipes, untuned=False,
                                             out=str(out), keep=keep))
        return pd.read_csv(out / "lopo_table.csv"), pd.read_csv(out / "lopo_sizes.csv")

    table(["old"], keep=False)
    (tmp_path / "lopo" / "old" / "report" / "cases.csv").unlink()  # its run folder is gone
    rows, sizes = table(["new"], keep=True)
    assert rows.recipe.tolist() == ["old", "old", "new", "new"] and rows.TP.tolist() == [1, 1, 0, 0]
    assert sizes.recipe.tolist() == ["old", "new"]
    rows, _ = table(["new"], keep=True)  # recomputing a recipe replaces its rows, never doubles them
    assert rows.recipe.tolist() == ["old", "old", "new", "new"]
    rows, _ = table(["new"], keep=False)
    assert rows.recipe.tolist() == ["new", "new"]


def test_lopo_ensemble_of_builds_each_fold_from_the_same_fold_of_every_folder(tmp_path, monkeypatch):
    ms = _ms_experiments()
    commands, trained = [], []
    monkeypatch.setattr(ms, "run", lambda cmd, *a, **k: commands.append(cmd))
    monkeypatch.setattr(ms, "train_and_evaluate", lambda run_dir, patient, *a, **k: trained.append((run_dir, patient)))
    monkeypatch.setattr(ms, "pooled_reports", lambda *a, **k: None)
    out = tmp_path / "ens"
    (out / "L19").mkdir(parents=True)
    (out / "L19" / "model.keras").write_bytes(b"made before")  # an ensemble made already is kept
    ms.cmd_lopo(argparse.Namespace(
        patients=["L07", "L19"], config=str(ms.CONFIG), out=str(out), set=[], force=False, infer_set=[],
        eval_data=None, atlas=False, models_from=None, retune=False, extra_train=None, train_backend=None,
        ensemble_of=[str(tmp_path / "s0"), str(tmp_path / "s1")]))
    assert len(commands) == 1
    cmd = commands[0]
    assert cmd[cmd.index("ensemble") + 1:] == ["--runs", str(tmp_path / "s0" / "L07"), str(tmp_path / "s1" / "L07"),
                                               "--out", str(out / "L07")]
    assert [p for _, p in trained] == ["L07", "L19"]  # then tuned, predicted and scored like a trained fold


def test_pooled_reports_of_folds_finishing_together_do_not_mix(tmp_path, monkeypatch):
    """Two fold processes pooling at once: neither rebuilds the folders while the other evaluates them."""
    import threading
    import time

    ms = _ms_experiments()
    exams, out = tmp_path / "exams", tmp_path / "lopo"
    for fold, case in (("L07", "lesjak_patient07"), ("L19", "lesjak_patient19")):
        (exams / case).mkdir(parents=True)
        for pred in ("pred", "pred_untuned"):
            (out / fold / pred).mkdir(parents=True)
            (out / fold / pred / f"{case}_pred.nii.gz").write_bytes(b"")
    (out / "L07" / "report_untuned").mkdir()
    (out / "L07" / "report_untuned" / "summary.csv").write_text("done")

    def listing():
        return sorted(p.name for p in (out / "cases_all").iterdir()), sorted(p.name for p in (out / "pred").iterdir())

    second, changed = [], []

    def evaluate(cmd, *a, **k):
        before = listing()
        if not second:  # the L19 process finishes while the L07 one evaluates
            (out / "L19" / "report_untuned").mkdir()
            (out / "L19" / "report_untuned" / "summary.csv").write_text("done")
            second.append(threading.Thread(target=ms.pooled_reports, args=(out, ms.CONFIG, exams)))
            second[0].start()
            time.sleep(0.5)
        changed.append(listing() != before)

    monkeypatch.setattr(ms, "run", evaluate)
    ms.pooled_reports(out, ms.CONFIG, exams)
    second[0].join(timeout=30)
    assert len(changed) == 4 and not any(changed)
    assert listing() == (["lesjak_patient07", "lesjak_patient19"], ["lesjak_patient07_pred.nii.gz",
                                                                     "lesjak_patient19_pred.nii.gz"])
