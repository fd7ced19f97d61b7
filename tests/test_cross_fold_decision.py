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
