"""Real lesion masks (../shared/data/lesjak_masks) against perturbed predictions.

Every count of :func:`lesionseg.evaluation.lesions.evaluate_case` is checked against a
simple independent implementation written here with ``scipy.ndimage.label``
and loops over lesions (never over voxels).  Skipped when the data is absent.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lesionseg.config import EvaluateConfig
from lesionseg.evaluation.lesions import evaluate_case

pytestmark = pytest.mark.shared

MASKS = ["patient01", "patient05", "patient11", "patient17", "patient23", "patient29"]
STRUCTURE = {c: ndimage.generate_binary_structure(3, r) for c, r in ((6, 1), (18, 2), (26, 3))}


def perturb(truth: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A prediction made from the truth: lesions removed, added, eroded, dilated or shifted."""
    truth = truth.astype(bool)
    if kind == "removed":
        labels, n = ndimage.label(truth, STRUCTURE[26])
        drop = rng.choice(np.arange(1, n + 1), size=max(1, n // 3), replace=False)
        return truth & ~np.isin(labels, drop)
    if kind == "added":
        pred = truth.copy()
        for _ in range(15):
            size = rng.integers(1, 4, size=3)
            corner = [int(rng.integers(40, s - 40)) for s in truth.shape]
            pred[tuple(slice(c, c + int(w)) for c, w in zip(corner, size, strict=True))] = True
        return pred
    if kind == "eroded":
        return ndimage.binary_erosion(truth, STRUCTURE[6])
    if kind == "dilated":
        return ndimage.binary_dilation(truth, STRUCTURE[18])
    if kind == "shifted":
        return np.roll(truth, (2, -1, 1), axis=(0, 1, 2))
    raise ValueError(kind)


def crop(truth: np.ndarray, pred: np.ndarray, margin: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union (+ margin): the references run faster."""
    box = ndimage.find_objects((truth | pred).astype(np.uint8))[0]
    box = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in box)
    return truth[box], pred[box]


def reference_labels(mask: np.ndarray, connectivity: int, min_voxels: int = 1) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask, STRUCTURE[connectivity])
    if min_voxels > 1 and n:
        keep = np.bincount(labels.ravel()) >= min_voxels
        keep[0] = False
        labels, n = ndimage.label(keep[labels], STRUCTURE[connectivity])
    return labels, n


def reference_overlaps(tl: np.ndarray, nt: int, pl: np.ndarray) -> list[dict[int, int]]:
    """For each truth lesion i (index i - 1): {pred label: shared voxels}, one lesion at a time."""
    result = []
    for i, box in enumerate(ndimage.find_objects(tl, max_label=nt), start=1):
        under = pl[box][tl[box] == i]
        ids, counts = np.unique(under[under > 0], return_counts=True)
        result.append(dict(zip(ids.tolist(), counts.tolist(), strict=True)))
    return result


def reference_any(truth, pred, connectivity=26, min_voxels=1):
    tl, nt = reference_labels(truth, connectivity, min_voxels)
    pl, npred = reference_labels(pred, connectivity, min_voxels)
    overlaps = reference_overlaps(tl, nt, pl)
    tp = sum(1 for o in overlaps if o)
    tp_pred = len({p for o in overlaps for p in o})
    return {"GT": nt, "TP": tp, "FN": nt - tp, "n_pred": npred, "TP_pred": tp_pred, "FP": npred - tp_pred}


def reference_iou(truth, pred, threshold=0.5):
    tl, nt = reference_labels(truth, 26)
    pl, npred = reference_labels(pred, 26)
    size_t = np.bincount(tl.ravel(), minlength=nt + 1)
    size_p = np.bincount(pl.ravel(), minlength=npred + 1)
    matched_t, matched_p = set(), set()
    for i, o in enumerate(reference_overlaps(tl, nt, pl), start=1):
        for p, n in o.items():
            if n / (size_t[i] + size_p[p] - n) >= threshold:
                assert i not in matched_t and p not in matched_p  # IoU >= 0.5 pairs are unique here
                matched_t.add(i)
                matched_p.add(p)
    tp = len(matched_t)
    return {"GT": nt, "TP": tp, "FN": nt - tp, "n_pred": npred, "TP_pred": tp, "FP": npred - tp}


def reference_anima(truth, pred, connectivity, min_voxels, alpha=0.1, beta=0.7, gamma=0.65):
    """animaSegPerfAnalyzer's loops, one lesion at a time."""
    tl, nt = reference_labels(truth, connectivity, min_voxels)
    pl, npred = reference_labels(pred, connectivity, min_voxels)

    def detected(own, n_own, other, n_other):
        size_own = np.bincount(own.ravel(), minlength=n_own + 1)
        size_other = np.bincount(other.ravel(), minlength=n_other + 1)
        # voxels of each other-side lesion lying on this side's background
        outside = np.bincount(other[own == 0].ravel(), minlength=n_other + 1)
        count = 0
        for i, o in enumerate(reference_overlaps(own, n_own, other), start=1):
            covered = sum(o.values())
            if not covered / size_own[i] > alpha:
                continue
            ok, total = True, 0.0
            for j, n in sorted(o.items(), key=lambda item: (-item[1], item[0])):
                if outside[j] / size_other[j] > beta:
                    ok = False
                    break
                total += n / covered
                if total > gamma:
                    break
            count += ok
        return count

    tp = detected(tl, nt, pl, npred)
    tp_pred = detected(pl, npred, tl, nt)
    return {"GT": nt, "TP": tp, "FN": nt - tp, "n_pred": npred, "TP_pred": tp_pred, "FP": npred - tp_pred}


def reference_brats(truth, pred, dilation=1):
    """BraTS-2023 lesion-wise Dice, one (merged) truth lesion at a time."""
    tl, _ = reference_labels(truth, 26)
    blobs, nb = ndimage.label(ndimage.binary_dilation(truth, STRUCTURE[18], iterations=dilation), STRUCTURE[26])
    pl, npred = reference_labels(pred, 26)
    size_p = np.bincount(pl.ravel(), minlength=npred + 1)
    touched, dice_sum, tp = set(), 0.0, 0
    for b, box in enumerate(ndimage.find_objects(blobs), start=1):
        lesion = (blobs[box] == b) & (tl[box] > 0)
        touching = set(np.unique(pl[box][blobs[box] == b]).tolist()) - {0}
        touched |= touching
        tp += bool(touching)
        inter = int(np.count_nonzero(np.isin(pl[box], list(touching)) & lesion)) if touching else 0
        union = sum(int(size_p[p]) for p in touching)
        dice_sum += 2 * inter / (int(lesion.sum()) + union)
    fp = npred - len(touched)
    return {"GT": nb, "TP": tp, "FN": nb - tp, "n_pred": npred, "TP_pred": len(touched), "FP": fp}, (
        1.0 if nb + fp == 0 else dice_sum / (nb + fp)
    )


@pytest.fixture(scope="module")
def masks(request):
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "lesjak_masks"
    if not folder.is_dir():
        pytest.skip("../shared/data/lesjak_masks not available")
    out = {}
    for name in MASKS:
        img = nib.load(str(folder / f"{name}_lesion_mask.nii.gz"))
        out[name] = (np.asarray(img.dataobj) > 0, tuple(float(z) for z in img.header.get_zooms()[:3]))
    return out


def counts(ev) -> dict[str, int]:
    return {k: getattr(ev, k) for k in ("GT", "TP", "FN", "n_pred", "TP_pred", "FP")}


KINDS = ["removed", "added", "eroded", "dilated", "shifted"]


@pytest.mark.parametrize("kind", KINDS)
def test_any_counts_agree_with_ndimage(masks, kind):
    rng = np.random.default_rng(7)
    for name, (truth, zooms) in masks.items():
        pred = perturb(truth, kind, rng)
        ev = evaluate_case(truth, pred, zooms, EvaluateConfig(), name)
        t, p = crop(truth, pred)
        assert counts(ev) == reference_any(t, p), name
        inter = np.count_nonzero(t & p)
        assert ev.dice == pytest.approx(2 * inter / (t.sum() + p.sum()))
        # 6-connectivity with a 3 mm³ minimum size (1 mm voxels: 3 voxels)
        cfg = EvaluateConfig(connectivity=6, min_lesion_mm3=3.0)
        ev = evaluate_case(truth, pred, zooms, cfg, name)
        assert counts(ev) == reference_any(t, p, connectivity=6, min_voxels=3), name
        rows = ev.lesions
        assert (rows.volume_vox >= 3).all() and len(rows) == ev.GT + ev.n_pred


@pytest.mark.parametrize("kind", KINDS)
def test_iou_and_anima_counts_agree(masks, kind):
    rng = np.random.default_rng(11)
    for name in MASKS[:3]:
        truth, zooms = masks[name]
        pred = perturb(truth, kind, rng)
        t, p = crop(truth, pred)
        ev = evaluate_case(truth, pred, zooms, EvaluateConfig(criterion="iou"), name)
        assert counts(ev) == reference_iou(t, p), name
        ev = evaluate_case(truth, pred, zooms, EvaluateConfig(criterion="anima", connectivity=6), name)
        assert ev.min_lesion_vox == 4
        assert counts(ev) == reference_anima(t, p, 6, 4), name


@pytest.mark.parametrize("kind", ["removed", "shifted"])
def test_brats_agrees(masks, kind):
    rng = np.random.default_rng(3)
    name = MASKS[1]
    truth, zooms = masks[name]
    pred = perturb(truth, kind, rng)
    ev = evaluate_case(truth, pred, zooms, EvaluateConfig(criterion="brats"), name)
    expected, lesion_dice = reference_brats(*crop(truth, pred))
    assert counts(ev) == expected
    assert ev.lesion_dice == pytest.approx(lesion_dice)
    assert not math.isnan(ev.lesion_dice)
