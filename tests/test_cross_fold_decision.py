"""``pipelines/cross_fold_decision.py``: a held-out patient's decision is chosen on the other folds only."""

from __future__ import annotations

import numpy as np

from conftest import load_pipeline


def _exam(lesion_p: float, false_p: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A 24³ exam: one true lesion (27 voxels) predicted at ``lesion_p``, one false one at ``false_p``."""
    prob = np.zeros((24, 24, 24), np.float32)
    truth = np.zeros(prob.shape, bool)
    truth[4:7, 4:7, 4:7] = True
    prob[4:7, 4:7, 4:7] = lesion_p
    prob[15:18, 15:18, 15:18] = false_p
    return prob, truth, (1.0, 1.0, 1.0)


def test_each_fold_gets_the_decision_of_the_other_folds_never_its_own():
    module = load_pipeline("cross_fold_decision")
    # a1 and b1: confident true lesions, false ones at 0.975 -> on them only a cut of 0.98+ is perfect.
    # c1: its true lesion reaches only 0.96; its own best cut would keep it, the others' cut must not.
    exams = {"a1": _exam(0.999, 0.975), "b1": _exam(0.999, 0.975), "c1": _exam(0.96, 0.2)}
    folds = {"A": ["a1"], "B": ["b1"], "C": ["c1"]}
    table, decisions = module.cross_fold(exams, folds)
    assert decisions["C"]["threshold"] > 0.96  # chosen on a1 and b1
    chosen = table[table.decision.str.startswith("chosen")].set_index("case")
    untuned = table[table.decision.str.startswith("0.5")].set_index("case")
    assert chosen.loc["c1", "TP"] == 0 and untuned.loc["c1", "TP"] == 1  # c1 pays for the others' cut
    # A's decision comes from b1 and c1, where keeping c1's dim lesion pays more than dropping b1's false
    # one (F1 0.8 against 0.67): a cut below 0.96, which keeps a1's false lesion too
    assert decisions["A"]["threshold"] < 0.96 and chosen.loc["a1", "threshold"] == decisions["A"]["threshold"]
    assert chosen.loc["a1", "FP"] == 1 and chosen.loc["a1", "TP"] == 1
    # over all three: dropping two false lesions outweighs missing c1's (F1 0.8 against 0.75)
    assert decisions["all"]["threshold"] > 0.975
    summary = module.pooled(table).set_index("decision")
    assert summary.loc["0.5, no size filter", "TP"] == 3 and summary.loc["0.5, no size filter", "FP"] == 2


def _write_check(root, probs: dict, shift: float = 0.0) -> None:
    """A ``clinical_path_check.py`` output: ``pred/<case>_prob.nii.gz`` and ``heads_thick/<case>/lesion_mask``."""
    import nibabel as nib

    affine = np.diag([0.9, 0.9, 7.0, 1.0])
    affine[0, 3] = shift
    for case, prob in probs.items():
        (root / "pred").mkdir(parents=True, exist_ok=True)
        (root / "heads_thick" / case).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(prob, affine), root / "pred" / f"{case}_prob.nii.gz")
        nib.save(nib.Nifti1Image((prob > 0.5).astype(np.uint8), affine), root / "heads_thick" / case / "lesion_mask.nii.gz")


def test_several_checks_are_scored_as_their_ensemble_and_must_share_the_grid(tmp_path):
    import pytest

    module = load_pipeline("cross_fold_decision")
    cases = [c for fold in module.FOLDS.values() for c in fold]
    rng = np.random.default_rng(0)
    a = {c: rng.random((6, 5, 4), dtype=np.float32) for c in cases}
    b = {c: rng.random((6, 5, 4), dtype=np.float32) for c in cases}
    _write_check(tmp_path / "a", a)
    _write_check(tmp_path / "b", b)
    exams = module.load_exams(tmp_path / "a", tmp_path / "b")
    for c in cases:
        prob, truth, zooms = exams[c]
        np.testing.assert_allclose(prob, (a[c] + b[c]) / 2, rtol=1e-6)
        assert np.array_equal(truth, a[c] > 0.5)  # truth from the first folder
        assert zooms == pytest.approx((0.9, 0.9, 7.0))
    _write_check(tmp_path / "moved", b, shift=3.0)
    with pytest.raises(SystemExit, match="not on the grid"):
        module.load_exams(tmp_path / "a", tmp_path / "moved")
    (tmp_path / "b" / "pred" / f"{cases[-1]}_prob.nii.gz").unlink()
    with pytest.raises(SystemExit, match=f"{cases[-1]}_prob.nii.gz: missing"):
        module.load_exams(tmp_path / "a", tmp_path / "b")


def test_side_by_side_chooses_each_fold_on_every_networks_other_folds(tmp_path):
    module = load_pipeline("cross_fold_decision")
    cases = [c for fold in module.FOLDS.values() for c in fold]
    # network a: confident true lesions, false ones at 0.975; network b: the same but every false lesion at
    # 0.3 -> a alone would need a cut above 0.975, b alone is perfect at 0.5
    a = {c: _exam(0.999, 0.975)[0] for c in cases}
    b = {c: _exam(0.999, 0.3)[0] for c in cases}
    for name, maps in (("a", a), ("b", b)):
        for case, prob in maps.items():
            import nibabel as nib

            (tmp_path / name / "pred").mkdir(parents=True, exist_ok=True)
            (tmp_path / name / "heads_thick" / case).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(prob, np.eye(4)), tmp_path / name / "pred" / f"{case}_prob.nii.gz")
            nib.save(nib.Nifti1Image(_exam(1, 0)[1].astype(np.uint8), np.eye(4)),
                     tmp_path / name / "heads_thick" / case / "lesion_mask.nii.gz")
    table, decisions = module.side_by_side([tmp_path / "a", tmp_path / "b"], module.FOLDS)
    assert set(table.network) == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert sorted(set(table.case)) == sorted(cases)  # the network is a column, not part of the case
    assert all(d["threshold"] > 0.975 for d in decisions.values())  # a's false lesions decide for both
    summary = module.pooled(table).set_index(["decision", "network"])
    chosen = "chosen on the other folds' held-out exams"
    assert summary.loc[(chosen, str(tmp_path / "b")), "FP"] == 0 and summary.loc[(chosen, str(tmp_path / "a")), "FP"] == 0
    assert summary.loc[("0.5, no size filter", str(tmp_path / "a")), "FP"] == len(cases)
    assert summary.loc[(chosen, "all"), "TP"] == 2 * len(cases)


def test_a_fixed_decision_is_scored_on_every_exam_as_given():
    module = load_pipeline("cross_fold_decision")
    exams = {"a1": _exam(0.999, 0.975), "b1": _exam(0.96, 0.2)}
    fixed = {"threshold": 0.97, "min_lesion_mm3": 0.0, "min_peak": 0.0}
    table, _ = module.cross_fold(exams, {"A": ["a1"], "B": ["b1"]}, fixed=fixed)
    rows = table[table.decision == "fixed: 0.97, 0 mm3"].set_index("case")
    assert (rows.threshold == 0.97).all()
    assert (rows.loc["a1", "TP"], rows.loc["a1", "FP"]) == (1, 1)  # 0.975 passes 0.97
    assert (rows.loc["b1", "TP"], rows.loc["b1", "FP"]) == (0, 0)  # 0.96 does not


def test_a_screen_on_some_folds_reads_scores_and_decides_those_only(tmp_path, monkeypatch, capsys):
    import json
    import sys

    import pytest

    module = load_pipeline("cross_fold_decision")
    rng = np.random.default_rng(1)
    screened = {c: rng.random((6, 5, 4), dtype=np.float32) for fold in ("L19", "M14") for c in module.FOLDS[fold]}
    _write_check(tmp_path / "check", screened)
    monkeypatch.setattr(sys, "argv", ["cross_fold_decision.py", str(tmp_path / "check")])
    with pytest.raises(SystemExit, match="--folds"):  # the other folds' maps are not there
        module.main()
    out = tmp_path / "study"
    monkeypatch.setattr(sys, "argv", ["cross_fold_decision.py", str(tmp_path / "check"), "--folds", "L19", "M14",
                                      "--fixed", "0.9", "0", "--out", str(out)])
    module.main()
    assert set(json.loads((out / "decisions.json").read_text())) == {"L19", "M14", "all"}
    cases = __import__("pandas").read_csv(out / "cross_fold_cases.csv")
    assert set(cases.fold) == {"L19", "M14"} and set(cases.case) == set(screened)
    monkeypatch.setattr(sys, "argv", ["cross_fold_decision.py", str(tmp_path / "check"), "--folds", "L19"])
    with pytest.raises(SystemExit):  # one fold has no other fold to choose its decision on
        module.main()
    capsys.readouterr()


def test_committed_per_exam_tables_are_pooled_again_over_the_folds_asked(tmp_path, monkeypatch, capsys):
    import sys

    import pandas as pd
    import pytest

    module = load_pipeline("cross_fold_decision")
    counts = {"GT": 4, "TP": 3, "FN": 1, "FP": 1, "n_pred": 4, "TP_pred": 3, "lesion_f1": 0.75, "dice": 0.6}
    rows = [{"decision": "fixed: 0.99, 0 mm3", "case": case, "fold": fold, "threshold": 0.99, "min_lesion_mm3": 0.0,
             "min_peak": 0.0, **counts} for fold, cases in module.FOLDS.items() for case in cases]
    (tmp_path / "a").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "a" / "cross_fold_cases.csv", index=False)
    other = pd.DataFrame(rows).assign(TP=1, FN=3, dice=0.2)
    other.insert(1, "network", "runs/clinical_path/seed1")
    other.to_csv(tmp_path / "b.csv", index=False)
    table = module.cases_pooled([tmp_path / "a" / "cross_fold_cases.csv", tmp_path / "b.csv"], ["L19", "M14"])
    table = table.set_index("network")
    n = len(module.FOLDS["L19"]) + len(module.FOLDS["M14"])
    assert table.loc[str(tmp_path / "a"), "GT"] == 4 * n and table.loc[str(tmp_path / "a"), "TP"] == 3 * n
    assert table.loc["runs/clinical_path/seed1", "TP"] == n
    assert table.loc["runs/clinical_path/seed1", "dice_mean"] == pytest.approx(0.2)
    assert table.loc["all", "TP"] == 4 * n
    (tmp_path / "bad.csv").write_text("decision,case\nx,y\n")
    monkeypatch.setattr(sys, "argv", ["cross_fold_decision.py", "--cases", str(tmp_path / "bad.csv"), "--folds", "L19"])
    with pytest.raises(SystemExit, match="bad.csv: not a cross_fold_cases.csv"):
        module.main()
    capsys.readouterr()
