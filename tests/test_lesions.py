"""Lesion matching: a table of scenarios with hand-computed answers, per criterion.

Volumes are tiny; lesions are drawn as lists of voxels so every count below can
be checked by eye.  NaN means "undefined" (zero denominator).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesionseg.config import EvaluateConfig
from lesionseg.errors import LesionsegError
from lesionseg.data.labels import label_lesions
from lesionseg.evaluation.criteria import dilate18, min_lesion_voxels
from lesionseg.evaluation.lesions import STATUS_FN, STATUS_FP, STATUS_TP, evaluate_case, lesion_status_map
from lesionseg.evaluation.scoring import harmonic_f1

NAN = math.nan
SHAPE = (16, 12, 24)
ISO = (1.0, 1.0, 1.0)


def vol(*groups, shape=SHAPE) -> np.ndarray:
    """A uint8 mask from voxel groups: each group an (i, j, k) tuple or a list of them."""
    m = np.zeros(shape, np.uint8)
    for g in groups:
        for v in g if isinstance(g, list) else [g]:
            m[v] = 1
    return m


def bar(k0: int, k1: int, i: int = 5, j: int = 5) -> list[tuple[int, int, int]]:
    """Voxels (i, j, k) for k0 <= k <= k1: a 1-voxel-wide bar along k."""
    return [(i, j, k) for k in range(k0, k1 + 1)]


def block(i0, i1, j0, j1, k0, k1) -> list[tuple[int, int, int]]:
    """All voxels of an inclusive box."""
    return [(i, j, k) for i in range(i0, i1 + 1) for j in range(j0, j1 + 1) for k in range(k0, k1 + 1)]


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def check(ev, **expected) -> None:
    for key, value in expected.items():
        got = getattr(ev, key)
        assert same(float(got), float(value)), f"{key}: got {got}, expected {value}"


# ---------------------------------------------------------------------------- any (default)

A = bar(2, 4)  # 3 voxels
B = bar(10, 12)  # 3 voxels, far from A
C = block(12, 13, 8, 9, 18, 19)  # 8 voxels, far from both
# two voxels touching only at a corner, two touching only along an edge
CORNER = [(3, 3, 3), (4, 4, 4)]
EDGE = [(8, 3, 3), (9, 4, 3)]

ANY_SCENARIOS = {
    # name: (truth, pred, GT, TP, FN, FP, n_pred, precision, recall, f1, dice)
    "both empty": ([], [], 0, 0, 0, 0, 0, NAN, NAN, NAN, NAN),
    "only a false positive": ([], [C], 0, 0, 0, 1, 1, 0.0, NAN, 0.0, 0.0),
    "missed lesion, blank prediction": ([A], [], 1, 0, 1, 0, 0, NAN, 0.0, 0.0, 0.0),
    "exact hit": ([A], [A], 1, 1, 0, 0, 1, 1.0, 1.0, 1.0, 1.0),
    "one voxel is enough": ([A], [(5, 5, 3)], 1, 1, 0, 0, 1, 1.0, 1.0, 1.0, 2 * 1 / (3 + 1)),
    "missed + extra": ([A, B], [A, C], 2, 1, 1, 1, 2, 0.5, 0.5, 0.5, 2 * 3 / (6 + 11)),
    # one truth bar hit by two separate predictions: counted once, both predictions TP
    "split": ([bar(2, 8)], [bar(2, 3), bar(7, 8)], 1, 1, 0, 0, 2, 1.0, 1.0, 1.0, 2 * 4 / (7 + 4)),
    # one prediction covering two truth lesions detects both
    "merge": ([bar(2, 4), bar(6, 8)], [bar(2, 8)], 2, 2, 0, 0, 1, 1.0, 1.0, 1.0, 2 * 6 / (6 + 7)),
}


@pytest.mark.parametrize("name", list(ANY_SCENARIOS))
def test_any_scenarios(name):
    truth, pred, gt, tp, fn, fp, n_pred, prec, rec, f1, dice = ANY_SCENARIOS[name]
    ev = evaluate_case(vol(*truth), vol(*pred), ISO, EvaluateConfig(), case_id="c1")
    check(ev, GT=gt, TP=tp, FN=fn, FP=fp, n_pred=n_pred, lesion_precision=prec,
          lesion_recall=rec, lesion_f1=f1, dice=dice)  # fmt: skip
    assert ev.GT == ev.TP + ev.FN and ev.n_pred == ev.TP_pred + ev.FP
    rows = ev.lesions
    assert (rows["source"] == "truth").sum() == gt and (rows["source"] == "pred").sum() == n_pred
    truth_rows, pred_rows = rows[rows.source == "truth"], rows[rows.source == "pred"]
    assert (truth_rows.status == "TP").sum() == tp and (truth_rows.status == "FN").sum() == fn
    assert (pred_rows.status == "FP").sum() == fp and set(pred_rows.status) <= {"TP", "FP"}
    assert (rows.case == "c1").all()


# The same scenarios under every criterion: (GT, TP, FN, FP, n_pred, TP_pred), hand-computed.
# min_lesion_mm3 = 0 unless stated (anima's 3 mm³ default is tested on its own below).
CROSS = {
    # name: (truth, pred, connectivity, zooms, min_mm3, {criterion: counts})
    "empty": ([], [], 26, ISO, 0.0, dict.fromkeys(("any", "anima", "iou", "brats"), (0, 0, 0, 0, 0, 0))),
    "missed": ([A], [], 26, ISO, 0.0, dict.fromkeys(("any", "anima", "iou", "brats"), (1, 0, 1, 0, 0, 0))),
    "extra": ([], [C], 26, ISO, 0.0, dict.fromkeys(("any", "anima", "iou", "brats"), (0, 0, 0, 1, 1, 0))),
    "hit": ([A], [A], 26, ISO, 0.0, dict.fromkeys(("any", "anima", "iou", "brats"), (1, 1, 0, 0, 1, 1))),
    # truth: 7-voxel bar; predictions: 2 voxels at each end.  anima: 4/7 covered > alpha, both
    # predictions inside truth; truth 3/7 outside the predictions <= beta.  iou: 2/7 < 0.5.
    "split": ([bar(2, 8)], [bar(2, 3), bar(7, 8)], 26, ISO, 0.0, {
        "any": (1, 1, 0, 0, 2, 2), "anima": (1, 1, 0, 0, 2, 2),
        "iou": (1, 0, 1, 2, 2, 0), "brats": (1, 1, 0, 0, 2, 2)}),
    # two 3-voxel truth bars one voxel apart, one 7-voxel prediction over both.  anima: the
    # prediction lies 1/7 outside truth.  iou: 3/7 < 0.5.  brats: the dilated bars touch, so
    # they are one lesion.
    "merge": ([bar(2, 4), bar(6, 8)], [bar(2, 8)], 26, ISO, 0.0, {
        "any": (2, 2, 0, 0, 1, 1), "anima": (2, 2, 0, 0, 1, 1),
        "iou": (2, 0, 2, 1, 1, 0), "brats": (1, 1, 0, 0, 1, 1)}),
    # two truth voxels touching at a corner, the prediction is the first one
    "corner, 26": ([CORNER], [CORNER[0]], 26, ISO, 0.0, {
        "any": (1, 1, 0, 0, 1, 1), "anima": (1, 1, 0, 0, 1, 1),  # 1/2 covered; truth 1/2 outside
        "iou": (1, 1, 0, 0, 1, 1), "brats": (1, 1, 0, 0, 1, 1)}),  # IoU exactly 0.5
    "corner, 6": ([CORNER], [CORNER[0]], 6, ISO, 0.0, {
        "any": (2, 1, 1, 0, 1, 1), "anima": (2, 1, 1, 0, 1, 1),
        "iou": (2, 1, 1, 0, 1, 1), "brats": (1, 1, 0, 0, 1, 1)}),  # dilation merges them again
    # 2- and 3-voxel lesions, 1 mm³ voxels, minimum 3 mm³: anima drops <= 3 mm³ (min 4 voxels)
    "size boundary": ([bar(0, 1), bar(6, 8)], [bar(0, 1), bar(6, 8)], 26, ISO, 3.0, {
        "any": (1, 1, 0, 0, 1, 1), "anima": (0, 0, 0, 0, 0, 0),
        "iou": (1, 1, 0, 0, 1, 1), "brats": (1, 1, 0, 0, 1, 1)}),
    # 0.5 mm³ voxels: 6 voxels = 3.0 mm³ kept, 5 voxels = 2.5 mm³ dropped; anima: min 7 voxels
    "anisotropic": ([bar(0, 5), bar(10, 14, i=2)], [bar(0, 5), bar(10, 14, i=2)], 26, (0.5, 0.5, 2.0), 3.0, {
        "any": (1, 1, 0, 0, 1, 1), "anima": (0, 0, 0, 0, 0, 0),
        "iou": (1, 1, 0, 0, 1, 1), "brats": (1, 1, 0, 0, 1, 1)}),
}  # fmt: skip


@pytest.mark.parametrize("criterion", ["any", "anima", "iou", "brats"])
@pytest.mark.parametrize("name", list(CROSS))
def test_every_criterion_on_the_scenarios(name, criterion):
    truth, pred, connectivity, zooms, min_mm3, expected = CROSS[name]
    cfg = EvaluateConfig(criterion=criterion, connectivity=connectivity, min_lesion_mm3=min_mm3)
    ev = evaluate_case(vol(*truth), vol(*pred), zooms, cfg)
    assert (ev.GT, ev.TP, ev.FN, ev.FP, ev.n_pred, ev.TP_pred) == expected[criterion]
    rows = ev.lesions
    assert (rows.source == "truth").sum() == ev.GT and (rows.source == "pred").sum() == ev.n_pred
    assert ((rows.source == "truth") & (rows.status == "TP")).sum() == ev.TP
    assert ((rows.source == "pred") & (rows.status == "FP")).sum() == ev.FP


def test_split_and_merge_flags():
    ev = evaluate_case(vol(bar(2, 8)), vol(bar(2, 3), bar(7, 8)), ISO)
    r = ev.lesions.set_index(["source", "lesion_id"])
    assert r.loc[("truth", 1), "split"] and not r.loc[("truth", 1), "merge"]
    assert r.loc[("pred", 1), "split"] and r.loc[("pred", 2), "split"]
    assert r.loc[("truth", 1), "matched_ids"] == "1;2"
    assert r.loc[("truth", 1), "overlap_vox"] == 4

    ev = evaluate_case(vol(bar(2, 4), bar(6, 8)), vol(bar(2, 8)), ISO)
    r = ev.lesions.set_index(["source", "lesion_id"])
    assert r.loc[("pred", 1), "merge"] and not r.loc[("pred", 1), "split"]
    assert r.loc[("truth", 1), "merge"] and r.loc[("truth", 2), "merge"]
    assert r.loc[("pred", 1), "matched_ids"] == "1;2"
    assert r.loc[("pred", 1), "overlap_vox"] == 6


@pytest.mark.parametrize(
    "connectivity, gt, tp",
    # the prediction is the first voxel of each pair: it detects the whole pair only
    # where the pair is one lesion
    [(26, 2, 2), (18, 3, 2), (6, 4, 2)],
)
def test_diagonal_contact_depends_on_connectivity(connectivity, gt, tp):
    truth = vol(CORNER, EDGE)
    pred = vol((3, 3, 3), (8, 3, 3))
    ev = evaluate_case(truth, pred, ISO, EvaluateConfig(connectivity=connectivity))
    assert (ev.GT, ev.TP, ev.FN, ev.n_pred) == (gt, tp, gt - tp, 2)
    assert ev.connectivity == connectivity


@pytest.mark.parametrize(
    "criterion, min_mm3, kept",
    [
        # generic rule: lesions smaller than min are dropped (3 voxels = 3 mm³ is kept)
        ("any", 3.0, {2: False, 3: True, 4: True}),
        ("any", 2.5, {2: False, 3: True, 4: True}),
        ("any", 0.0, {2: True, 3: True, 4: True}),
        # anima rule: lesions of at most min are dropped (3 mm³ dropped, 4 kept)
        ("anima", 3.0, {2: False, 3: False, 4: True}),
        ("anima", None, {2: False, 3: False, 4: True}),  # anima's default is 3 mm³
        ("any", None, {2: True, 3: True, 4: True}),  # any's default keeps all
    ],
)
def test_size_filter_at_the_boundary(criterion, min_mm3, kept):
    lesions = {2: bar(0, 1), 3: bar(5, 7), 4: bar(11, 14)}
    truth = vol(*lesions.values())
    cfg = EvaluateConfig(criterion=criterion, min_lesion_mm3=min_mm3)
    ev = evaluate_case(truth, truth, ISO, cfg)
    assert ev.GT == sum(kept.values()) == ev.n_pred == ev.TP
    assert sorted(ev.lesions[ev.lesions.source == "truth"].volume_vox) == sorted(v for v, k in kept.items() if k)
    # the voxel Dice is computed on the masks as given
    assert ev.dice == 1.0 and ev.gt_volume_mm3 == 9.0


def test_size_filter_applies_to_predictions_too():
    truth = vol(bar(2, 6))
    pred = vol(bar(2, 6), (12, 2, 20), (12, 2, 21))  # a 2-voxel false positive
    ev = evaluate_case(truth, pred, ISO, EvaluateConfig(min_lesion_mm3=3))
    assert (ev.n_pred, ev.FP) == (1, 0)
    ev = evaluate_case(truth, pred, ISO, EvaluateConfig(min_lesion_mm3=0))
    assert (ev.n_pred, ev.FP) == (2, 1)


def test_anisotropic_voxels_mm3():
    zooms = (0.5, 0.5, 2.0)  # 0.5 mm³ per voxel
    six, five = bar(0, 5), bar(10, 14, i=2)  # 3.0 mm³ and 2.5 mm³
    truth = vol(six, five)
    ev = evaluate_case(truth, truth, zooms, EvaluateConfig(min_lesion_mm3=3.0))
    assert ev.min_lesion_vox == 6 and ev.GT == 1
    row = ev.lesions[ev.lesions.source == "truth"].iloc[0]
    assert row.volume_vox == 6 and row.volume_mm3 == pytest.approx(3.0)
    assert ev.gt_volume_mm3 == pytest.approx(11 * 0.5) and ev.voxel_volume_mm3 == 0.5
    # anima: floor(3 / 0.5) + 1 = 7 voxels, so the 6-voxel lesion goes too
    ev = evaluate_case(truth, truth, zooms, EvaluateConfig(criterion="anima"))
    assert ev.min_lesion_vox == 7 and ev.GT == 0
    assert min_lesion_voxels(3.0, 0.5, "anima") == 7 and min_lesion_voxels(3.0, 0.5) == 6


def test_lesion_statistics_in_volume_coordinates():
    truth = vol(block(3, 5, 7, 7, 2, 3), shape=(20, 20, 20))
    pred = vol((15, 15, 15), shape=(20, 20, 20))  # widens the evaluated region
    ev = evaluate_case(truth, pred, (1.0, 2.0, 3.0))
    row = ev.lesions[ev.lesions.source == "truth"].iloc[0]
    assert (row.centroid_i, row.centroid_j, row.centroid_k) == (4.0, 7.0, 2.5)
    assert (row.bbox_i0, row.bbox_i1, row.bbox_j0, row.bbox_j1, row.bbox_k0, row.bbox_k1) == (3, 6, 7, 8, 2, 4)
    assert row.volume_vox == 6 and row.volume_mm3 == pytest.approx(36.0)
    prow = ev.lesions[ev.lesions.source == "pred"].iloc[0]
    assert (prow.centroid_i, prow.bbox_i0, prow.bbox_i1) == (15.0, 15, 16)


@pytest.mark.parametrize("connectivity, min_voxels", [(26, 1), (6, 3)])
def test_statistics_match_cc3d_statistics(connectivity, min_voxels):
    import cc3d

    m = np.random.default_rng(5).random((30, 25, 20)) > 0.85
    les = label_lesions(m, connectivity, min_voxels)
    ref = cc3d.statistics(les.labels, no_slice_conversion=True)
    assert les.n == les.labels.max() and les.n > 50
    assert (les.volume_vox == ref["voxel_counts"][1:]).all() and les.volume_vox.min() >= min_voxels
    assert np.allclose(les.centroid, ref["centroids"][1:])
    bbox = ref["bounding_boxes"][1:].astype(np.int64)
    bbox[:, 1::2] += 1
    assert (les.bbox == bbox).all()
    assert (les.voxels == np.flatnonzero(les.labels)).all()


def test_fortran_order_input_gives_the_same_answer():
    truth, pred = vol(bar(2, 8), B), vol(bar(2, 3), bar(7, 8), C)
    a = evaluate_case(truth, pred, ISO)
    b = evaluate_case(np.asfortranarray(truth), np.asfortranarray(pred), ISO)
    assert a == b
    assert a.lesions.equals(b.lesions)


def test_labels_do_not_wrap_above_255():
    m = np.zeros((40, 40, 40), np.uint8)
    m[::2, ::2, ::2] = 1  # 8000 isolated voxels
    les = label_lesions(m, connectivity=26)
    assert les.n == 8000 and les.labels.dtype == np.uint32 and les.labels.max() == 8000
    ev = evaluate_case(m, m, ISO)
    assert (ev.GT, ev.TP, ev.n_pred) == (8000, 8000, 8000)


def test_boolean_and_float_masks_are_accepted():
    truth = vol(A, B)
    pred = vol(A)
    ref = evaluate_case(truth, pred, ISO)
    ev = evaluate_case(truth.astype(bool), pred.astype(np.float32), ISO)
    assert (ev.GT, ev.TP, ev.FN, ev.n_pred, ev.dice) == (ref.GT, ref.TP, ref.FN, ref.n_pred, ref.dice)


# ---------------------------------------------------------------------------- anima


def anima(**kw) -> EvaluateConfig:
    return EvaluateConfig(criterion="anima", min_lesion_mm3=kw.pop("min_lesion_mm3", 0.0), **kw)


def test_anima_alpha_strictly_more_than_ten_percent():
    truth = vol(bar(0, 9))  # 10 voxels
    ev = evaluate_case(truth, vol((5, 5, 0)), ISO, anima())  # 10 %: not more than alpha
    assert (ev.GT, ev.TP, ev.FN) == (1, 0, 1)
    # roles swapped: the prediction is all truth (> alpha), but the truth lesion lies
    # 90 % outside the prediction (> beta): the prediction is a false positive
    assert (ev.n_pred, ev.TP_pred, ev.FP) == (1, 0, 1)
    ev = evaluate_case(truth, vol(bar(0, 1)), ISO, anima())  # 20 %
    assert (ev.TP, ev.FN, ev.TP_pred) == (1, 0, 0)  # truth 80 % outside: still > beta
    ev = evaluate_case(truth, vol(bar(0, 3)), ISO, anima())  # 40 %, truth 60 % outside
    assert (ev.TP, ev.FN, ev.TP_pred, ev.FP) == (1, 0, 1, 0)


def test_anima_beta_prediction_mostly_outside_truth():
    truth = vol(bar(0, 9))  # 10 voxels
    # prediction: 5 voxels inside truth and 20 outside (80 % outside > beta = 70 %)
    pred = vol(bar(0, 4), block(6, 9, 5, 5, 0, 4))
    ev = evaluate_case(truth, pred, ISO, anima())
    assert (ev.GT, ev.TP, ev.FN) == (1, 0, 1)
    # roles swapped: 5/25 = 20 % of the prediction is truth (> alpha) and the truth
    # lesion lies 50 % outside the prediction (<= beta): the prediction is TP
    assert (ev.n_pred, ev.TP_pred, ev.FP) == (1, 1, 0)
    assert ev.lesion_recall == 0.0 and ev.lesion_precision == 1.0 and ev.lesion_f1 == 0.0
    # with beta = 0.85 the truth lesion is detected
    assert evaluate_case(truth, pred, ISO, anima(anima_beta=0.85)).TP == 1


@pytest.mark.parametrize(
    "a_len, detected, tp_pred",
    [
        # A inside truth (a_len voxels), B: 19 - a_len voxels inside + 30 outside (> beta)
        # B is examined when the overlap gathered before it (A) is <= gamma = 65 % of 19
        (12, False, 2),  # 12/19 = 0.63 <= 0.65: B examined, 81 % outside: missed
        (14, True, 2),  # 14/19 = 0.74 > 0.65: B not examined: detected
    ],
)
def test_anima_gamma_limits_the_components_examined(a_len, detected, tp_pred):
    truth = vol(bar(0, 19))  # 20 voxels
    a = bar(0, a_len - 1)
    b_inside = bar(a_len + 1, 19)  # a one-voxel gap keeps A and B apart
    b_outside = block(6, 11, 5, 5, 15, 19)  # 30 voxels hanging off B's end
    assert len(a) + len(b_inside) == 19 and len(b_outside) == 30
    ev = evaluate_case(truth, vol(a, b_inside, b_outside), ISO, anima())
    assert ev.n_pred == 2
    assert ev.TP == int(detected)
    truth_row = ev.lesions[ev.lesions.source == "truth"].iloc[0]
    assert truth_row.status == ("TP" if detected else "FN")
    assert truth_row.matched_ids == ("1" if detected else "")
    # pred side: A's and B's truth shares (1 and (19 - a_len)/(49 - a_len)) exceed alpha,
    # and the truth lesion lies 1/20 outside the predicted mask (<= beta): both TP
    assert (ev.TP_pred, ev.FP) == (tp_pred, 2 - tp_pred)


def test_anima_default_minimum_size_and_empty_cases():
    three, four = bar(0, 2), bar(10, 13)
    ev = evaluate_case(vol(three, four), vol(three, four), ISO, EvaluateConfig(criterion="anima"))
    assert ev.min_lesion_mm3 == 3.0 and ev.min_lesion_vox == 4 and (ev.GT, ev.TP, ev.n_pred) == (1, 1, 1)
    ev = evaluate_case(vol(), vol(four), ISO, anima())
    assert (ev.GT, ev.n_pred, ev.FP) == (0, 1, 1) and ev.pred_volume_mm3 == 4.0
    assert math.isnan(ev.lesion_recall) and ev.lesion_precision == 0.0


# ---------------------------------------------------------------------------- iou


def iou_cfg(threshold: float = 0.5) -> EvaluateConfig:
    return EvaluateConfig(criterion="iou", iou_threshold=threshold)


IOU_SCENARIOS = {
    # name: (truth, pred, TP, FN, FP, rq, sq, pq)
    "both empty": ([], [], 0, 0, 0, NAN, NAN, NAN),
    "missed": ([bar(0, 3)], [], 0, 1, 0, 0.0, NAN, 0.0),
    "iou exactly 0.5 counts": ([bar(0, 3)], [bar(0, 1)], 1, 0, 0, 1.0, 0.5, 0.5),
    "iou 0.4 does not": ([bar(0, 4)], [bar(0, 1)], 0, 1, 1, 0.0, NAN, 0.0),
    # truth 6 voxels; A = 4 of them (IoU 2/3), B = 1 (IoU 1/6): B is a false positive
    "split": ([bar(0, 5)], [bar(0, 3), (5, 5, 5)], 1, 0, 1, 1 / 1.5, 2 / 3, (2 / 3) / 1.5),
    # one prediction over both truth lesions: IoU 3/7 each, no match
    "merge, no match": ([bar(0, 2), bar(4, 6)], [bar(0, 6)], 0, 2, 1, 0.0, NAN, 0.0),
    # prediction over the first and one voxel of the second: IoU 3/5 and 1/7
    "merge, one match": ([bar(0, 2), bar(4, 6)], [bar(0, 4)], 1, 1, 0, 1 / 1.5, 0.6, 0.6 / 1.5),
}


@pytest.mark.parametrize("name", list(IOU_SCENARIOS))
def test_iou_scenarios(name):
    truth, pred, tp, fn, fp, rq, sq, pq = IOU_SCENARIOS[name]
    ev = evaluate_case(vol(*truth), vol(*pred), ISO, iou_cfg())
    check(ev, TP=tp, FN=fn, FP=fp, TP_pred=tp, rq=rq, sq=sq, pq=pq)
    assert same(ev.lesion_f1, rq)  # RQ is the F1 of one-to-one matching


def test_iou_matching_is_one_to_one():
    # at threshold 0.25 both A (IoU 0.5) and B (IoU 0.25) qualify for the same truth
    truth, pred = vol(bar(0, 3)), vol(bar(0, 1), (5, 5, 3))
    ev = evaluate_case(truth, pred, ISO, iou_cfg(0.25))
    assert (ev.TP, ev.FN, ev.FP, ev.n_pred) == (1, 0, 1, 2)
    rows = ev.lesions.set_index(["source", "lesion_id"])
    assert rows.loc[("truth", 1), "matched_ids"] == "1" and rows.loc[("truth", 1), "iou"] == 0.5
    assert rows.loc[("pred", 2), "status"] == "FP" and math.isnan(rows.loc[("pred", 2), "iou"])


def test_iou_hungarian_maximises_total_iou():
    # T1 = 10-voxel bar; T2 = 2 voxels beside it.  P1 covers 5 voxels of T1, a bridge
    # voxel and T2 (8 voxels); P2 covers 3 other voxels of T1.
    # IoU: T1-P1 = 5/13 = 0.385, T1-P2 = 3/10 = 0.3, T2-P1 = 2/8 = 0.25.
    # Greedy (best pair first) would match T1-P1 only; Hungarian matches T1-P2 and T2-P1.
    t1, t2 = bar(0, 9), [(7, 5, 0), (7, 5, 1)]
    p1, p2 = bar(0, 4) + [(6, 5, 0)] + t2, bar(7, 9)
    ev = evaluate_case(vol(t1, t2), vol(p1, p2), ISO, iou_cfg(0.25))
    assert (ev.GT, ev.n_pred, ev.TP, ev.FN, ev.FP) == (2, 2, 2, 0, 0)
    assert ev.sq == pytest.approx((0.3 + 0.25) / 2)
    truth_rows = ev.lesions[ev.lesions.source == "truth"].sort_values("volume_vox")
    assert truth_rows.iou.tolist() == pytest.approx([0.25, 0.3])


# ---------------------------------------------------------------------------- brats


def brats(**kw) -> EvaluateConfig:
    return EvaluateConfig(criterion="brats", **kw)


@pytest.mark.parametrize(
    "gap_end, dilation, gt",
    [
        (5, 1, 1),  # voxels at k=2 and k=5: dilated blobs touch -> one lesion
        (6, 1, 2),  # k=2 and k=6: the blobs stay apart
        (5, 0, 2),  # no dilation: the components as they are
        (8, 3, 1),  # k=2 and k=8 with 3 iterations: merged
    ],
)
def test_brats_merges_truth_lesions_within_one_dilated_blob(gap_end, dilation, gt):
    truth = vol((5, 5, 2), (5, 5, gap_end))
    ev = evaluate_case(truth, truth, ISO, brats(brats_dilation=dilation))
    assert ev.GT == gt and ev.TP == gt and ev.lesion_dice == pytest.approx(1.0)


def test_brats_lesion_dice_hand_computed():
    truth = vol(bar(0, 3))  # 4 voxels
    p1 = bar(0, 1)  # 2 voxels inside
    p2 = (5, 5, 5)  # outside truth but within the dilated blob? no: k=5 is 2 away
    p2_touch = (5, 5, 4)  # face neighbour of the last truth voxel: inside the dilated blob
    far = (12, 10, 20)
    ev = evaluate_case(truth, vol(p1, p2_touch, far), ISO, brats())
    # the lesion's prediction = p1 + p2_touch (3 voxels): Dice = 2*2 / (4 + 3) = 4/7
    # one false positive: lesion-wise Dice = (4/7) / (1 + 1)
    assert (ev.GT, ev.TP, ev.FN, ev.n_pred, ev.TP_pred, ev.FP) == (1, 1, 0, 3, 2, 1)
    assert ev.lesion_dice == pytest.approx(2 / 7)
    row = ev.lesions[ev.lesions.source == "truth"].iloc[0]
    assert row.lesion_dice == pytest.approx(4 / 7) and row.matched_ids == "1;2"
    # k=5 is two voxels away: a false positive, not part of the lesion's prediction
    ev = evaluate_case(truth, vol(p1, p2), ISO, brats())
    assert (ev.TP_pred, ev.FP) == (1, 1) and ev.lesion_dice == pytest.approx((2 * 2 / 6) / 2)


@pytest.mark.parametrize(
    "truth, pred, lesion_dice",
    [
        ([], [], 1.0),  # 0/0 -> 1 (BraTS convention)
        ([], [bar(0, 1)], 0.0),  # only false positives
        ([bar(0, 3)], [], 0.0),  # missed: Dice 0 over one lesion
    ],
)
def test_brats_empty_cases(truth, pred, lesion_dice):
    ev = evaluate_case(vol(*truth), vol(*pred), ISO, brats())
    assert ev.lesion_dice == lesion_dice


# ---------------------------------------------------------------------------- misc


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_dilate18_matches_scipy(iterations):
    from scipy import ndimage

    m = np.random.default_rng(iterations).random((14, 17, 12)) > 0.97
    m[0, 0, 0] = m[-1, -1, -1] = True  # touches the borders
    expected = ndimage.binary_dilation(m, ndimage.generate_binary_structure(3, 2), iterations=iterations)
    assert (dilate18(m, iterations) == expected).all()
    assert (dilate18(m, 0) == m).all()


def test_status_map_colours_lesions_by_status():
    truth = vol(A, B)
    pred = vol((5, 5, 3), C)
    status, ev = lesion_status_map(truth, pred, ISO)
    assert (ev.TP, ev.FN, ev.FP) == (1, 1, 1)
    assert status.shape == truth.shape and status.dtype == np.uint8
    assert (status[tuple(np.array(A).T)] == STATUS_TP).all()
    assert (status[tuple(np.array(B).T)] == STATUS_FN).all()
    assert (status[tuple(np.array(C).T)] == STATUS_FP).all()
    assert np.count_nonzero(status) == len(A) + len(B) + len(C)


def test_harmonic_f1_rules():
    assert math.isnan(harmonic_f1(NAN, NAN))
    assert harmonic_f1(NAN, 0.0) == 0.0 and harmonic_f1(0.0, NAN) == 0.0
    assert harmonic_f1(0.0, 0.0) == 0.0
    assert harmonic_f1(0.5, 1.0) == pytest.approx(2 / 3)


def test_invalid_settings_are_one_line_errors():
    m = vol(A)
    with pytest.raises(LesionsegError, match="evaluate.criterion"):
        evaluate_case(m, m, ISO, EvaluateConfig(criterion="dice"))
    with pytest.raises(LesionsegError, match="evaluate.connectivity"):
        evaluate_case(m, m, ISO, EvaluateConfig(connectivity=8))
    with pytest.raises(ValueError, match="one shape"):
        evaluate_case(m, m[:-1], ISO)
