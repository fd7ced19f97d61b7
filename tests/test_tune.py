"""Threshold / minimum-size tuning on hand-made probability maps, and `lesionseg tune` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import linear_flair_t1_run, make_case

from lesionseg.cli import main
from lesionseg.config import EvaluateConfig, InferConfig
from lesionseg.errors import LesionsegError
from lesionseg.inference.tune import TABLE_COLUMNS, candidate_box, tune_threshold_and_size


def ball(shape, centre, r):
    g = np.indices(shape)
    return (sum((g[a] - centre[a]) ** 2 for a in range(3)) <= r * r).astype(np.uint8)


def scene(seed: int = 0):
    """Truth: 3 balls.  Prob: 0.7 on them, 0.9 on isolated single voxels, 0.35 on a big false blob."""
    shape = (40, 40, 40)
    truth = ball(shape, (8, 8, 8), 3) | ball(shape, (30, 10, 12), 2) | ball(shape, (12, 30, 28), 3)
    prob = np.where(truth > 0, 0.7, 0.05).astype(np.float32)
    prob[ball(shape, (30, 30, 30), 5) > 0] = 0.35
    rng = np.random.default_rng(seed)
    singles = []
    while len(singles) < 4:
        v = tuple(int(x) for x in rng.integers(1, 39, 3))
        nb = tuple(slice(c - 1, c + 2) for c in v)
        if prob[nb].max() <= 0.05:  # isolated
            prob[v] = 0.9
            singles.append(v)
    return prob, truth, singles


def any_counts(truth, pred):
    """Independent 'any' counts with cc3d: (GT, TP, n_pred, TP_pred)."""
    lt = cc3d.connected_components(truth.astype(np.uint8), connectivity=26)
    lp = cc3d.connected_components(pred.astype(np.uint8), connectivity=26)
    gt, n_pred = int(lt.max()), int(lp.max())
    tp = len(set(np.unique(lt[(lt > 0) & (pred > 0)]).tolist()))
    tp_pred = len(set(np.unique(lp[(lp > 0) & (truth > 0)]).tolist()))
    return gt, tp, n_pred, tp_pred


def test_the_pair_that_removes_both_kinds_of_false_positive_wins():
    prob, truth, _ = scene()
    res = tune_threshold_and_size([prob], [truth], [(1.0, 1.0, 1.0)], [0.3, 0.5, 0.8], [0.0, 2.0, 3.0, 500.0])
    assert (res.threshold, res.min_lesion_mm3) == (0.5, 2.0)  # 3.0 ties: the smaller size wins
    assert res.lesion_f1 == 1.0 and res.dice == 1.0
    assert list(res.table.columns) == list(TABLE_COLUMNS) and len(res.table) == 12


def test_table_counts_are_pooled_over_cases():
    cases = [scene(0), scene(1)]
    probs = [c[0] for c in cases]
    truths = [c[1] for c in cases]
    zooms = [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    res = tune_threshold_and_size(probs, truths, zooms, [0.3, 0.5], [0.0, 2.0])
    for t in (0.3, 0.5):
        row = res.table[(res.table.threshold == t) & (res.table.min_lesion_mm3 == 0.0)].iloc[0]
        counts = np.sum([any_counts(tr, (p > t)) for p, tr in zip(probs, truths)], axis=0)
        gt, tp, n_pred, tp_pred = (int(c) for c in counts)
        assert (row.GT, row.TP, row.n_pred, row.TP_pred) == (gt, tp, n_pred, tp_pred)
        precision, recall = tp_pred / n_pred, tp / gt
        assert math.isclose(row.lesion_f1, 2 * precision * recall / (precision + recall))
    # by hand: at 0.3 each case has 3 truth lesions, the big blob and 4 singles
    row = res.table[(res.table.threshold == 0.3) & (res.table.min_lesion_mm3 == 0.0)].iloc[0]
    assert (row.GT, row.TP, row.FP, row.n_pred) == (6, 6, 10, 16)


def test_higher_dice_breaks_an_f1_tie():
    shape = (24, 24, 24)
    truth = ball(shape, (12, 12, 12), 5)
    prob = np.where(truth > 0, 0.45, 0.0).astype(np.float32)
    prob[ball(shape, (12, 12, 12), 3) > 0] = 0.9  # core sure, rim unsure: both thresholds detect it
    res = tune_threshold_and_size([prob], [truth], [(1.0, 1.0, 1.0)], [0.4, 0.5], [0.0])
    assert res.table.lesion_f1.tolist() == [1.0, 1.0]
    assert res.threshold == 0.4 and res.dice == 1.0  # not 0.5, although closer to the default


def test_size_is_in_mm3_with_anisotropic_voxels():
    prob, truth, _ = scene()
    # each single voxel is 3 mm³ here: a 2 mm³ minimum keeps them, 3.5 removes them
    res = tune_threshold_and_size([prob], [truth], [(1.0, 1.0, 3.0)], [0.5], [2.0, 3.5])
    f1 = dict(zip(res.table.min_lesion_mm3, res.table.lesion_f1))
    assert f1[2.0] < 1.0 and f1[3.5] == 1.0
    assert res.min_lesion_mm3 == 3.5


def test_criterion_comes_from_the_evaluate_config():
    prob, truth, _ = scene()
    anima = EvaluateConfig(criterion="anima", min_lesion_mm3=0.0)
    res = tune_threshold_and_size([prob], [truth], [(1.0, 1.0, 1.0)], [0.5], [0.0], anima)
    assert len(res.table) == 1 and res.table.GT.iloc[0] == 3


def test_bad_inputs():
    prob, truth, _ = scene()
    with pytest.raises(ValueError):
        tune_threshold_and_size([prob], [], [(1, 1, 1)], [0.5], [0.0])
    with pytest.raises(LesionsegError, match="tune_thresholds"):
        tune_threshold_and_size([prob], [truth], [(1, 1, 1)], [1.5], [0.0])
    with pytest.raises(LesionsegError, match="tune_min_sizes"):
        tune_threshold_and_size([prob], [truth], [(1, 1, 1)], [0.5], [])


def test_candidate_box_holds_everything_that_matters():
    prob, truth, singles = scene()
    box = candidate_box(prob, truth, 0.3, margin=2)
    inside = np.zeros(prob.shape, bool)
    inside[box] = True
    assert ((prob > 0.3) | (truth > 0))[~inside].sum() == 0
    assert candidate_box(np.zeros((5, 5, 5)), np.zeros((5, 5, 5)), 0.5) == (slice(0, 1),) * 3


# ---------------------------------------------------------------- lesionseg tune


@pytest.fixture
def tiny_run(tmp_path) -> tuple[Path, Path]:
    run = linear_flair_t1_run(
        tmp_path / "run", InferConfig(tune_thresholds=(0.3, 0.5, 0.7, 0.9), tune_min_sizes_mm3=(0.0, 4.0, 20.0))
    )
    data = tmp_path / "data"
    make_case(data, "c1", shape=(20, 18, 16), lesions=((6, 6, 6, 2), (14, 12, 10, 3)), seed=3)
    make_case(data, "c2", shape=(16, 16, 16), lesions=((8, 8, 8, 3),), seed=4)
    return run, data


def test_tune_cli_stores_the_pair_and_infer_uses_it(tiny_run, tmp_path):
    run, data = tiny_run
    assert main(["-q", "tune", "--model", str(run), "--data", str(data)]) == 0
    stored = json.loads((run / "tuning.json").read_text())
    assert set(stored) == {"threshold", "min_lesion_mm3", "min_atlas", "lesion_f1", "dice", "cases"}
    assert stored["cases"] == ["c1", "c2"]
    assert stored["threshold"] in (0.3, 0.5, 0.7, 0.9) and stored["min_lesion_mm3"] in (0.0, 4.0, 20.0)
    assert stored["min_atlas"] is None  # no atlas with the run: no cut-off tuned
    table = (run / "tuning.csv").read_text().splitlines()
    assert len(table) == 1 + 12
    f1 = table[0].split(",").index("lesion_f1")
    best_f1 = max(float(line.split(",")[f1]) for line in table[1:] if line.split(",")[f1])
    assert math.isclose(stored["lesion_f1"], best_f1, rel_tol=1e-5)

    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir)]) == 0
    prob = np.asanyarray(nib.load(str(pred_dir / "c2_prob.nii.gz")).dataobj)
    pred = np.asanyarray(nib.load(str(pred_dir / "c2_pred.nii.gz")).dataobj)
    expected = (prob > stored["threshold"]).astype(np.uint8)
    if stored["min_lesion_mm3"] > 0:
        labels = cc3d.connected_components(expected, connectivity=26)
        sizes = np.bincount(labels.ravel())
        expected = ((sizes >= stored["min_lesion_mm3"]) & (np.arange(len(sizes)) > 0))[labels].astype(np.uint8)
    np.testing.assert_array_equal(pred, expected)


def test_a_decision_on_the_edge_of_its_grid_is_reported(tiny_run, capsys):
    run, data = tiny_run
    # two thresholds: whichever wins is an edge of the grid
    sets = ["--set", "infer.tune_thresholds=[0.3,0.5]", "--set", "infer.tune_min_sizes_mm3=[0,4,20]"]
    assert main(["tune", "--model", str(run), "--data", str(data), *sets]) == 0
    stored = json.loads((run / "tuning.json").read_text())
    err = capsys.readouterr().err
    assert f"threshold {stored['threshold']:g} is" in err and "at the edge of its grid" in err
    assert ("minimum size 20 mm³ is" in err) == (stored["min_lesion_mm3"] == 20.0)


def test_tune_needs_masks(tiny_run, monkeypatch, capsys):
    """A missing mask is one line naming it, before any case is predicted."""
    from lesionseg.inference import tune

    run, data = tiny_run
    (data / "c2" / "lesion_mask.nii.gz").unlink()

    def no_prediction(*args, **kwargs):
        raise AssertionError("a model was loaded before the masks were checked")

    monkeypatch.setattr(tune.Predictor, "from_run", no_prediction)
    assert main(["-q", "tune", "--model", str(run), "--data", str(data)]) == 1
    assert capsys.readouterr().err.strip() == "ERROR c2/lesion_mask.nii.gz: missing mask"
    assert not (run / "tuning.json").exists()


def test_tuning_never_picks_one_merged_blob_over_real_detections():
    """A low threshold merging everything into one blob touches every lesion (F1 = 1 under ``any``)."""
    from lesionseg.inference.tune import tune_threshold_and_size

    truth = np.zeros((40, 40, 40), np.uint8)
    for c in (8, 20, 32):
        truth[c - 1 : c + 2, 18:21, 18:21] = 1
    prob = np.zeros(truth.shape, np.float32)
    prob[2:38, 2:38, 2:38] = 0.25  # a huge faint region around every lesion
    prob[7:10, 18:21, 18:21] = 0.9
    prob[19:22, 18:21, 18:21] = 0.9
    result = tune_threshold_and_size([prob], [truth], [(1.0, 1.0, 1.0)], [0.2, 0.5], [0.0])
    blob = result.table[result.table.threshold == 0.2].iloc[0]
    assert blob.lesion_f1 == 1.0 and bool(blob.over_segmented)
    assert result.threshold == 0.5
    assert result.lesion_f1 == pytest.approx(0.8)


def test_infer_predicts_again_after_the_model_is_tuned_again(tiny_run, tmp_path):
    """The config and model are unchanged; only tuning.json is: the kept prediction would be stale."""
    run, data = tiny_run
    pred_dir = tmp_path / "pred"
    (run / "tuning.json").write_text(json.dumps({"threshold": 0.3, "min_lesion_mm3": 0.0}))
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir)]) == 0
    before = np.asarray(nib.load(str(pred_dir / "c2_pred.nii.gz")).dataobj).sum()
    (run / "tuning.json").write_text(json.dumps({"threshold": 0.9, "min_lesion_mm3": 0.0}))
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir)]) == 0
    prob = np.asarray(nib.load(str(pred_dir / "c2_prob.nii.gz")).dataobj)
    pred = np.asarray(nib.load(str(pred_dir / "c2_pred.nii.gz")).dataobj)
    np.testing.assert_array_equal(pred, (prob > 0.9).astype(np.uint8))
    assert pred.sum() < before
    assert json.loads((pred_dir / "c2_record.json").read_text())["threshold"] == 0.9


def test_a_new_decision_reuses_the_stored_probability_maps(tiny_run, tmp_path, monkeypatch):
    """Same model, same probability settings, new threshold / size: decided again without the network."""
    from lesionseg.inference import infer

    run, data = tiny_run
    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir),
                 "--set", "infer.threshold=0.3"]) == 0
    prob_before = (pred_dir / "c2_prob.nii.gz").read_bytes()

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran although only the decision changed")

    with monkeypatch.context() as m:
        m.setattr(infer.Predictor, "from_run", no_network)
        assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir),
                     "--set", "infer.threshold=0.6", "--set", "infer.min_lesion_mm3=2"]) == 0
    prob = np.asarray(nib.load(str(pred_dir / "c2_prob.nii.gz")).dataobj)
    pred = np.asarray(nib.load(str(pred_dir / "c2_pred.nii.gz")).dataobj)
    labels = cc3d.connected_components((prob > 0.6).astype(np.uint8), connectivity=26)
    sizes = np.bincount(labels.ravel())
    expected = ((labels > 0) & (sizes[labels] >= 2)).astype(np.uint8)
    np.testing.assert_array_equal(pred, expected)
    assert (pred_dir / "c2_prob.nii.gz").read_bytes() == prob_before  # the map itself untouched
    record = json.loads((pred_dir / "c2_record.json").read_text())
    assert (record["threshold"], record["min_lesion_mm3"]) == (0.6, 2.0)
    cohort = pd.read_csv(pred_dir / "cohort.csv")
    assert sorted(cohort.case) == sorted(p.name for p in data.iterdir() if p.is_dir())
    assert cohort.set_index("case").loc["c2", "lesions"] == int((np.unique(labels[expected > 0]) > 0).sum())

    # another overlap makes another probability map: the network runs again
    calls = []
    real = infer.Predictor.from_run
    monkeypatch.setattr(infer.Predictor, "from_run", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir),
                 "--set", "infer.threshold=0.6", "--set", "infer.overlap=0"]) == 0
    assert calls
