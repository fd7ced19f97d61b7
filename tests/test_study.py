"""The study runner on a tiny grid: plan, run side by side, restart without redoing, summarise."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lesionseg.cli import main
from lesionseg.errors import LesionsegError
from lesionseg.study.grid import plan_study

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "smoke.toml"


def write_study(path: Path, grid: str, extra: str = "") -> Path:
    path.write_text(
        f"""[study]
base = "{SMOKE}"
variants = ["default"]
parallel = 2

[study.set]
"train.epochs" = 1
"train.steps_per_epoch" = 1
"train.val_fraction" = 0.0
"train.val_cases" = []

[study.grid]
{grid}

[study.folds]
A = ["sample01", "sample02"]
{extra}
"""
    )
    return path


def test_plan_expands_the_grid_and_checks_every_cell(samples_dir, tmp_path):
    study = plan_study(write_study(tmp_path / "s.toml", '"loss.name" = ["dice", "bce"]\n"train.seed" = [0, 1]'),
                       samples_dir)
    assert len(study.cells) == 4
    assert {c.config.loss.name for c in study.cells} == {"dice", "bce"}
    assert {c.config.train.seed for c in study.cells} == {0, 1}
    assert all(c.config.train.epochs == 1 for c in study.cells)
    cell = study.cells[0]
    assert cell.fold.test == ("sample01", "sample02") and "sample01" not in cell.fold.train
    assert cell.cell_id == "loss.name-dice_train.seed-0_fold-A"
    with pytest.raises(LesionsegError, match=r"cell \{'loss.name': 'dise'\}"):
        plan_study(write_study(tmp_path / "bad.toml", '"loss.name" = ["dise"]'), samples_dir)
    with pytest.raises(LesionsegError, match="no case nobody"):
        plan_study(write_study(tmp_path / "f.toml", '"loss.name" = ["dice"]', 'B = ["nobody"]'), samples_dir)


def test_default_folds_leave_one_patient_out(samples_dir, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nbase = "{SMOKE}"\n[study.grid]\n"loss.name" = ["dice"]\n')
    study = plan_study(path, samples_dir)
    assert len(study.folds) == len(list(samples_dir.iterdir()))  # no group pattern: one case per patient
    assert all(len(f.test) == 1 for f in study.folds)


def test_interrupted_study_finishes_without_redoing_cells(samples_dir, tmp_path):
    """Kill the runner once the first cell's row is written; a new start runs only the rest."""
    study = write_study(tmp_path / "s.toml", '"loss.name" = ["dice", "bce", "focal"]')
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "lesionseg", "study", "--config", str(study), "--data", str(samples_dir),
           "--out", str(out), "--parallel", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    results = out / "results.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = pd.read_csv(results)
    assert len(first) == 1, first
    done_cell = first.cell.iloc[0]
    model = out / "cells" / done_cell / "run" / "model.keras"
    stamp = model.stat().st_mtime_ns

    assert main(["study", "--config", str(study), "--data", str(samples_dir), "--out", str(out),
                 "--threads", "3"]) == 0
    table = pd.read_csv(results)
    assert sorted(table.cell) == sorted(f"loss.name-{n}_fold-A" for n in ("dice", "bce", "focal"))
    assert model.stat().st_mtime_ns == stamp  # the finished cell was not trained again
    for cell in set(table.cell) - {done_cell}:  # --threads reached the cells of the second start
        assert "threads: 3" in (out / "cells" / cell / "run" / "config.yaml").read_text()
    assert {"loss", "head", "seed", "fold", "GT", "TP", "FP", "FN", "lesion_f1", "dice",
            "pred_volume_ml", "truth_volume_ml"} <= set(table.columns)
    assert (table.GT == table.TP + table.FN).all()
    assert (out / "table.md").is_file() and (out / "tp_fp.png").stat().st_size > 0

    # every cell's loss split into its per-class terms on the held-out exams (summed: the loss)
    terms = pd.read_csv(out / "terms.csv").set_index("loss")
    assert sorted(terms.index) == ["bce", "dice", "focal"]
    assert terms.loc["dice", ["ce_background", "ce_lesion", "region_background"]].isna().all()
    assert terms.loc["bce", ["ce_background", "ce_lesion"]].notna().all()
    parts = terms[["ce_background", "ce_lesion", "region_background", "region_lesion"]].fillna(0.0).sum(axis=1)
    assert parts.to_numpy() == pytest.approx(terms.total.to_numpy(), rel=1e-5)
    assert (terms.soft_fp_ml >= 0).all() and (out / "terms_table.md").is_file()
    assert "## 1. Does softmax give more false lesions" in (out / "verdicts.md").read_text()
    terms_stamp = (out / "terms.csv").stat().st_mtime_ns

    # a third start finds nothing to do
    assert main(["study", "--config", str(study), "--data", str(samples_dir), "--out", str(out)]) == 0
    assert len(pd.read_csv(results)) == 3
    assert (out / "terms.csv").stat().st_mtime_ns == terms_stamp  # nothing recomputed


def test_exam_terms_are_the_loss_split_by_class():
    """Probabilities fed back through a loss: known cross-entropy terms, soft error masses, either head."""
    from lesionseg.model.losses import get_loss
    from lesionseg.study.terms import exam_terms

    truth = np.zeros(1000, np.uint8)
    truth[:100] = 1
    prob = np.full(1000, 0.5, np.float32)
    prob[:100] = 0.9  # lesion found at 0.9; background at 0.5 everywhere: 450 voxels' worth of false mass
    for head in ("sigmoid", "softmax"):
        got = exam_terms(prob, truth, get_loss("bce", head), voxel_ml=0.001)
        assert got["ce_background"] == pytest.approx(0.9 * np.log(2), rel=1e-5)
        assert got["ce_lesion"] == pytest.approx(0.1 * -np.log(0.9), rel=1e-4)
        assert got["total"] == pytest.approx(got["ce_background"] + got["ce_lesion"])
        assert got["soft_fp_ml"] == pytest.approx(0.45) and got["soft_fn_ml"] == pytest.approx(0.01, rel=1e-4)
    dice = exam_terms(prob, truth, get_loss("dice", "sigmoid"), voxel_ml=0.001)
    assert set(dice) == {"region_lesion", "total", "soft_fp_ml", "soft_fn_ml"}
    assert dice["region_lesion"] == pytest.approx(1 - 2 * 90 / (2 * 90 + 10 + 450), rel=1e-4)
    with pytest.raises(LesionsegError, match="probabilities for"):
        exam_terms(prob, truth[:10], get_loss("dice", "sigmoid"), voxel_ml=0.001)


def test_summary_pools_seeds_and_folds(tmp_path):
    from lesionseg.study.summary import summarize

    rows = []
    for head, fps in (("sigmoid", (2, 4)), ("softmax", (10, 30))):
        for seed, fp in enumerate(fps):
            rows.append({"cell": f"{head}{seed}", "variant": "default", "loss": "dice", "head": head, "seed": seed,
                         "fold": "A", "GT": 10, "TP": 6, "FP": fp, "FN": 4, "lesion_precision": 6 / (6 + fp),
                         "lesion_recall": 0.6, "lesion_f1": 0.5, "dice": 0.5, "pred_volume_ml": 1.0,
                         "truth_volume_ml": 1.0, "blank_exams": 0, "diagnostics": "", "train_seconds": 1,
                         "cell_seconds": 2})
    table = summarize(pd.DataFrame(rows))
    assert list(table["head"]) == ["sigmoid", "softmax"]
    assert list(table.runs) == [2, 2]
    assert table.FP_mean.tolist() == [3.0, 20.0]
    assert table.FP.iloc[1].startswith("20 ± 14")
    assert list(table.over_segmented_runs) == [0, 0]


def test_summary_counts_over_segmented_runs(tmp_path):
    # a blob over the brain "finds" every lesion under the any criterion: F1 1.0 at Dice 0.03
    from lesionseg.study.summary import summarize

    base = {"variant": "tuned", "loss": "dice", "head": "sigmoid", "fold": "L19", "GT": 87, "FN": 0, "FP": 0,
            "TP": 87, "lesion_precision": 1.0, "lesion_recall": 1.0, "lesion_f1": 1.0, "dice": 0.034,
            "truth_volume_ml": 49.8, "blank_exams": 0, "diagnostics": "", "train_seconds": 1, "cell_seconds": 2}
    rows = [{**base, "cell": "a", "seed": 0, "pred_volume_ml": 2871.5},
            {**base, "cell": "b", "seed": 1, "pred_volume_ml": 498.0},  # exactly 10x: not over
            {**base, "cell": "c", "seed": 2, "pred_volume_ml": 55.0}]
    table = summarize(pd.DataFrame(rows))
    assert list(table.over_segmented_runs) == [1]


def test_study_errors_are_one_line(samples_dir, tmp_path, capsys):
    assert main(["study", "--config", str(tmp_path / "none.toml"), "--data", str(samples_dir),
                 "--out", str(tmp_path / "o")]) == 1
    assert "study file not found" in capsys.readouterr().err
    assert main(["study", "--summarize", "--out", str(tmp_path / "empty")]) == 1
    assert "no study results" in capsys.readouterr().err
    assert main(["study", "--config", str(tmp_path / "none.toml"), "--data", str(samples_dir),
                 "--out", str(tmp_path / "o"), "--threads", "0"]) == 1
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert main(["study", "--config", str(tmp_path / "none.toml"), "--data", str(samples_dir),
                 "--out", str(tmp_path / "o"), "--limit", "-1"]) == 1
    assert "--limit must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("content, problem", [("", "empty file"),
                                              ("cell,variant,loss\nx,default,dice\n", "no column head, seed"),
                                              ("\x00\xff\xfe", "")])
def test_summary_of_a_damaged_results_table_is_one_line_and_writes_nothing(tmp_path, capsys, content, problem):
    study = tmp_path / "s"
    study.mkdir()
    (study / "results.csv").write_bytes(content.encode("latin-1"))
    assert main(["study", "--summarize", "--out", str(study)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR {study / 'results.csv'}: ") and problem in err and err.count("\n") == 1
    assert sorted(p.name for p in study.iterdir()) == ["results.csv"]


def test_a_bad_exam_stops_the_study_before_any_cell(samples_dir, tmp_path, capsys):
    import shutil

    import nibabel as nib

    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    flair = data / "sample03" / "flair.nii.gz"
    img = nib.load(flair)
    bad = np.asarray(img.dataobj, np.float32)
    bad[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(bad, img.affine), flair)
    study = write_study(tmp_path / "s.toml", '"loss.name" = ["dice"]')
    assert main(["study", "--config", str(study), "--data", str(data), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "sample03/flair.nii.gz: contains NaN/Inf" in err.strip().splitlines()[-1]
    assert not (tmp_path / "o" / "cells").exists() and not (tmp_path / "o" / "results.csv").exists()


def test_a_failed_cell_says_why_in_the_runner_log(tmp_path):
    from lesionseg.study.runner import last_error

    log = tmp_path / "cell.log"
    log.write_text("$ lesionseg train ...\n01:02:03 INFO    epoch 1\nERROR data/c1/flair.nii.gz: truncated\n")
    assert last_error(log) == "data/c1/flair.nii.gz: truncated"
    assert last_error(tmp_path / "missing.log") == ""


def test_a_study_file_inside_its_own_output_folder(samples_dir, tmp_path):
    """studies/loss_study/study.toml runs into studies/loss_study (the file is not copied onto itself)."""
    out = tmp_path / "study"
    out.mkdir()
    study = write_study(out / "study.toml", '"loss.name" = ["dice"]')
    assert main(["study", "--config", str(study), "--data", str(samples_dir), "--out", str(out), "--limit", "0"]) == 0
    assert study.read_text().startswith("[study]")


def synthetic_results() -> pd.DataFrame:
    """Two losses x two heads x three folds x three variants, with known effects."""
    rows = []
    for loss, fp_gap in (("focal", 50), ("dice", None)):
        for k, fold in enumerate(("L07", "L19", "M18")):
            for head in ("sigmoid", "softmax"):
                fp = 100 + 10 * k
                if head == "softmax":
                    fp += fp_gap if fp_gap is not None else (-30, 25, 5)[k]
                tp = 20 if loss == "focal" else 10 + k
                blank = loss == "dice" and head == "softmax" and fold == "M18"
                for variant, dfp in (("default", 0), ("no_overlap", 7), ("tuned", -60)):
                    f_tp, f_fp = (0, 0) if blank else (tp, max(fp + dfp, 0))
                    f1 = 2 * f_tp / (2 * f_tp + f_fp + 30 - f_tp) if f_tp else 0.0
                    rows.append({"cell": f"{loss}-{head}-{fold}", "variant": variant, "loss": loss, "head": head,
                                 "seed": 0, "fold": fold, "GT": 30, "TP": f_tp, "FP": f_fp, "FN": 30 - f_tp,
                                 "lesion_f1": f1, "diagnostics": "collapse" if blank else ""})
    return pd.DataFrame(rows)


def test_verdicts_pair_runs_and_say_when_the_spread_decides(tmp_path):
    from lesionseg.study.verdicts import paired_difference, write_verdicts

    results = synthetic_results()
    default = results[results.variant == "default"]
    heads = paired_difference(default, "FP", "head", "softmax", "sigmoid").set_index("loss")
    assert heads.loc["focal", "mean"] == 50 and heads.loc["focal", "pairs"] == 3 and heads.loc["focal", "clear"]
    assert not heads.loc["dice", "clear"]  # -30, +25, blank: signs disagree
    overlap = paired_difference(results, "FP", "variant", "default", "no_overlap", within=("loss", "head"))
    assert (overlap[overlap.loss == "focal"]["mean"] == -7).all()

    terms = pd.DataFrame([{"cell": "x", "loss": "focal", "head": h, "seed": 0, "fold": f,
                           "ce_background": 0.1 + (0.05 if h == "softmax" else 0) + 0.01 * i}
                          for i, f in enumerate(("L07", "L19", "M18")) for h in ("sigmoid", "softmax")])
    text = write_verdicts(tmp_path, results, terms).read_text()
    assert "`focal`: FP softmax − sigmoid = +50 ± 0 over 3 pair(s); softmax higher in 3: **softmax higher, consistently**" in text
    assert "ce_background +0.05 (clear)" in text
    assert "`dice`: FP softmax − sigmoid" in text and "within the spread (no verdict)" in text
    assert "`dice` × softmax: 1 of 3 run(s) predicted nothing; the collapse diagnostic fired in 1 (missed 0" in text
    assert "FP default − no_overlap = -7 ± 0 over 3 pair(s); default higher in 0: **default lower, consistently**" in text
    assert "best mean lesion F1 (tuned): `focal × " in text


def test_summary_rewrites_only_the_readme_block(tmp_path, capsys):
    """--readme fills the marked block from results.csv (table, plot, verdicts) and leaves the rest byte for byte."""
    study = tmp_path / "studies" / "s"
    study.mkdir(parents=True)
    results = synthetic_results()
    for col, value in (("lesion_precision", 0.5), ("lesion_recall", 0.5), ("dice", 0.4), ("pred_volume_ml", 1.0),
                       ("truth_volume_ml", 1.0), ("blank_exams", 0), ("train_seconds", 1), ("cell_seconds", 2)):
        results[col] = value
    results.to_csv(study / "results.csv", index=False)
    (study / "study.toml").write_text('[study]\n[study.grid]\n"loss.name" = ["focal", "dice", "tversky"]\n'
                                      '"model.head" = ["sigmoid", "softmax"]\n'
                                      '[study.folds]\nL07 = ["a"]\nL19 = ["b"]\nM18 = ["c"]\n')
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nText before.\n", "\nText after, kept.\n"
    readme.write_text(before + "<!-- study-answer:begin studies/s -->\nstale table\n<!-- study-answer:end -->" + after)

    assert main(["study", "--summarize", "--out", str(study), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before + "<!-- study-answer:begin studies/s -->") and text.endswith(
        "<!-- study-answer:end -->" + after)
    assert "stale table" not in text
    assert "](studies/s/tp_fp.png)" in text and "from the 12 run(s)" in text
    assert re.search(r"\| focal +\| softmax +\| +3 \| +0 \|", text)  # loss x head row of the default decision
    assert "tuned" not in text.split("![")[0].split("| loss")[1]  # only the default rows in the table
    assert "**softmax higher, consistently**" in text  # claim 1, computed from the rows
    assert "`dice` × softmax: 1 of 3 run(s) predicted nothing" in text  # claim 2
    assert ("**12 of the 18 cells** of [`study.toml`](studies/s/study.toml) have run; still to run (cells): "
            "tversky × sigmoid (3), tversky × softmax (3).") in text  # progress, from the study's own grid
    assert "consistently more with 1 (`focal`), no verdict with 1 (`dice`)" in text  # claim 1 over all losses
    assert "FP default − no_overlap consistently lower in 3, consistently higher in 0, no verdict in 1 of 4" in text
    first = text
    assert main(["study", "--summarize", "--out", str(study), "--readme", str(readme)]) == 0
    assert readme.read_text() == first  # rerunning on the same rows changes nothing

    other = tmp_path / "OTHER.md"
    other.write_text("no markers here\n")
    assert main(["study", "--summarize", "--out", str(study), "--readme", str(other)]) == 1
    err = capsys.readouterr().err
    assert "OTHER.md: no line '<!-- study-answer:begin studies/s -->'" in err and "Traceback" not in err
    assert other.read_text() == "no markers here\n"


def test_eta_counts_the_cells_running_side_by_side():
    """Two cells side by side finish the grid in half the serial time (the log's ETA said 244 min for 122)."""
    from lesionseg.study.runner import remaining_seconds

    assert remaining_seconds([700.0, 740.0], 20, 2) == 720.0 * 10
    assert remaining_seconds([600.0], 1, 2) == 600.0  # one cell left runs alone
    assert remaining_seconds([], 5, 2) == 0.0 and remaining_seconds([600.0], 0, 2) == 0.0


def test_ranking_leaves_out_arms_with_too_few_runs():
    """An arm of two runs once topped the ranking and left every other arm 'without a verdict'."""
    from lesionseg.study.verdicts import ranking

    results = synthetic_results()
    lucky = results[(results.loss == "focal") & (results["head"] == "sigmoid") & (results.fold != "M18")].copy()
    lucky["loss"], lucky["lesion_f1"] = "lucky", 0.99
    lines = ranking(pd.concat([results, lucky], ignore_index=True))
    assert lines[0].startswith("- best mean lesion F1 (tuned): `focal × ") and "over 3 run(s)" in lines[0]
    assert lines[-1] == "- not ranked yet (fewer than 3 runs): `lucky × sigmoid`"
