"""``pipelines/candidate_classifier.py``: candidate features, and a fold's classifier learnt on the other folds."""

from __future__ import annotations

import numpy as np
from conftest import load_pipeline


def _exam(false_contrast: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 20×20×8 exam: a bright true lesion and a false candidate of the given FLAIR contrast."""
    flair = np.full((20, 20, 8), 100.0, np.float32)
    prob = np.zeros(flair.shape, np.float32)
    truth = np.zeros(flair.shape, bool)
    truth[3:6, 3:6, 2:4] = True
    flair[3:6, 3:6, 2:4] = 200.0
    prob[3:6, 3:6, 2:4] = 0.97
    flair[12:15, 12:15, 4:6] = 100.0 * false_contrast
    prob[12:15, 12:15, 4:6] = 0.97
    return prob, flair, truth


def test_features_measure_size_confidence_and_contrast_against_the_ring():
    module = load_pipeline("candidate_classifier", "candidate_classifier")
    prob, flair, truth = _exam(1.0)
    prob[4, 4, 2] = 0.995
    labels, x = module.candidate_features(prob, flair, (0.9, 0.9, 7.0), 0.5)
    assert labels.max() == 2 and x.shape == (2, len(module.FEATURES))
    f = dict(zip(module.FEATURES, x[0]))
    assert np.isclose(np.exp(f["log_volume_mm3"]), 18 * 0.9 * 0.9 * 7.0)
    assert np.isclose(f["peak"], 0.995) and np.isclose(f["sure_fraction"], 1 / 18)
    assert np.isclose(f["log_ring_contrast"], np.log(2.0)) and f["slices"] == 2
    assert np.isclose(dict(zip(module.FEATURES, x[1]))["log_ring_contrast"], 0.0)


def test_each_fold_is_scored_with_a_classifier_fitted_on_the_other_folds(monkeypatch):
    module = load_pipeline("candidate_classifier", "candidate_classifier")
    folds = {"A": ["a"], "B": ["b"], "C": ["c"]}
    monkeypatch.setattr(module, "FOLDS", folds)
    exams = {}
    for case, contrast in (("a", 1.0), ("b", 1.0), ("c", 1.0)):
        prob, flair, truth = _exam(contrast)
        labels, x = module.candidate_features(prob, flair, (1.0, 1.0, 1.0), 0.5)
        exams[f"{case}@0"] = module.Candidates(case.upper(), labels, x, np.array([True, False]), truth, (1.0, 1.0, 1.0))
    table = module.cross_fold(exams).set_index("case")
    # bright against its ring: true; as bright as its ring: false — learnt on two exams, right on the third
    assert (table["TP"] == 1).all() and (table["FP"] == 0).all()
    # a fold whose exam breaks the rule cannot teach it to the others, and is scored by their rule
    flip = exams["c@0"]
    exams["c@0"] = module.Candidates("C", flip.labels, flip.features, np.array([False, True]), flip.truth, flip.zooms)
    exams["c@0"].truth = flip.labels == 2
    table = module.cross_fold(exams).set_index("case")
    assert table.loc["c@0", "TP"] == 0 and table.loc["c@0", "FP"] == 1
