"""A second stage that keeps or drops each candidate lesion, learnt across folds (an exploration).

The decision the recipe ships is one threshold (0.99): it keeps what the network is sure of and
loses every lesion it is less sure of, true or false.  Here each candidate — a 26-connected
component of the probability map above ``--candidates T`` on the exam's thick grid — gets eight
features a second stage could use at inference (from the map and the input FLAIR only):

``log_volume_mm3``, ``peak`` and ``mean`` probability, ``sure_fraction`` (share of its voxels above
0.99), ``log_sure_mm3``, ``log_ring_contrast`` (its mean FLAIR over the median of a 2-voxel ring of
non-candidate voxels around it), ``slices`` (how many slices it spans) and ``log_exam_contrast``
(its mean FLAIR over the median of the exam's non-zero voxels).

A logistic regression (L2, standardised features; scipy, no new dependency) learns true against
false candidates, with the same discipline as ``cross_fold_decision.py``: the held-out patient's
classifier and its cut on the classifier's probability are fitted on the candidates of the *other*
folds' held-out maps, every network of ``--side-by-side`` folders, and scored on its own::

    python pipelines/candidate_classifier.py runs/clinical_path/R runs/clinical_path/R_s1 --candidates 0.5 0.9 0.98 0.99

One row per candidate threshold: TP / FP / FN over every network's exams, lesion F1, mean Dice.  The
candidate threshold itself is not chosen across folds: reading the best one off these rows is tuning
on the test exams (check a choice on a network that was not looked at).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, optimize

from lesionseg.config import EvaluateConfig
from lesionseg.evaluation.lesions import evaluate_case
from lesionseg.evaluation.scoring import CaseCounts, pool_counts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical_path_check import FOLDS  # noqa: E402

FEATURES = ("log_volume_mm3", "peak", "mean", "sure_fraction", "log_sure_mm3", "log_ring_contrast", "slices",
            "log_exam_contrast")
CUTS = tuple(np.round(np.linspace(0.05, 0.95, 19), 2))
RING = np.ones((5, 5, 3), bool)  # 2 voxels in plane, 1 slice through


@dataclass
class Candidates:
    """One exam's candidates: their labels, features (n × 8) and whether each touches a true lesion."""

    fold: str
    labels: np.ndarray
    features: np.ndarray
    true: np.ndarray
    truth: np.ndarray
    zooms: tuple[float, float, float]


def candidate_features(prob: np.ndarray, flair: np.ndarray, zooms: tuple[float, ...], threshold: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The components of ``prob > threshold`` (26-connected) and their features (see the module docstring)."""
    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3, 3)))
    voxel = float(np.prod(zooms))
    brain = flair[flair > 0]
    exam_median = float(np.median(brain)) if brain.size else 1.0
    rows = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        grown = tuple(slice(max(b.start - 3, 0), b.stop + 3) for b in box)
        own = labels[grown] == i
        p, f = prob[grown][own], flair[grown]
        ring = ndimage.binary_dilation(own, RING) & (labels[grown] == 0)
        inside = float(f[own].mean())
        around = float(np.median(f[ring])) if ring.any() else inside
        sure = int((p > 0.99).sum())
        rows.append([np.log(own.sum() * voxel), p.max(), p.mean(), sure / p.size, np.log1p(sure * voxel),
                     np.log(max(inside, 1e-3) / max(around, 1e-3)), own.any(axis=(0, 1)).sum(),
                     np.log(max(inside, 1e-3) / max(exam_median, 1e-3))])
    return labels, np.asarray(rows, np.float64).reshape(n, len(FEATURES))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0):
    """An L2-regularised logistic regression on standardised ``x``; returns ``x -> P(true)``."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        grad = z.T @ (1 / (1 + np.exp(-s)) - y) + 2 * l2 * np.r_[w[:-1], 0.0]
        return float((np.logaddexp(0, s) - y * s).sum() + l2 * (w[:-1] ** 2).sum()), grad

    w = optimize.minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return lambda x2: 1 / (1 + np.exp(-(np.c_[(x2 - mu) / sd, np.ones(len(x2))] @ w)))


def keep_counts(exam: Candidates, score, cut: float) -> CaseCounts:
    """The exam's counts when only candidates scored at ``cut`` or above are kept."""
    keep = np.zeros(exam.features.shape[0] + 1, bool)
    if exam.features.shape[0]:
        keep[1:] = score(exam.features) >= cut
    mask = keep[exam.labels].astype(np.uint8)
    return CaseCounts.of(evaluate_case(exam.truth.astype(np.uint8), mask, exam.zooms, EvaluateConfig()))


def load(check_dirs: list[Path], threshold: float) -> dict[str, Candidates]:
    """Every network's held-out exams as candidates, keyed ``<case>@<network index>``."""
    exams = {}
    for i, check_dir in enumerate(check_dirs):
        for fold, cases in FOLDS.items():
            for case in cases:
                img = nib.load(check_dir / "pred" / f"{case}_prob.nii.gz")
                prob = np.asarray(img.dataobj, np.float32)
                heads = check_dir / "heads_thick" / case
                truth = np.asarray(nib.load(heads / "lesion_mask.nii.gz").dataobj) > 0
                flair = np.asarray(nib.load(heads / "flair.nii.gz").dataobj, np.float32)
                zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
                labels, features = candidate_features(prob, flair, zooms, threshold)
                true = np.asarray(ndimage.maximum(truth, labels, np.arange(1, features.shape[0] + 1)), bool)
                exams[f"{case}@{i}"] = Candidates(fold, labels, features, true.reshape(-1), truth, zooms)
    return exams


def cross_fold(exams: dict[str, Candidates]) -> pd.DataFrame:
    """Per exam, its counts with the classifier and cut fitted on the other folds' exams."""
    rows = []
    for fold in FOLDS:
        train = [e for e in exams.values() if e.fold != fold]
        score = fit_logistic(np.concatenate([e.features for e in train]), np.concatenate([e.true for e in train]))
        cut = max(CUTS, key=lambda c: pool_counts([keep_counts(e, score, c) for e in train]).lesion_f1)
        for key, exam in exams.items():
            if exam.fold == fold:
                rows.append({"case": key, "fold": fold, "cut": cut, **keep_counts(exam, score, cut).__dict__})
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check_dirs", type=Path, nargs="+", help="clinical_path_check.py --out folders (networks side by side)")
    p.add_argument("--candidates", type=float, nargs="+", default=[0.5, 0.9, 0.98, 0.99], metavar="T")
    p.add_argument("--out", type=Path, help="CSV of one row per candidate threshold")
    args = p.parse_args()
    summary = []
    for threshold in args.candidates:
        table = cross_fold(load(args.check_dirs, threshold))
        pooled = pool_counts([CaseCounts(**{k: r[k] for k in CaseCounts.__dataclass_fields__}) for _, r in table.iterrows()])
        summary.append({"candidates_above": threshold, "cuts": " ".join(f"{f}:{c:g}" for f, c in
                                                                        table.groupby("fold")["cut"].first().items()),
                        "GT": pooled.GT, "TP": pooled.TP, "FP": pooled.FP, "FN": pooled.FN,
                        "lesion_f1": round(pooled.lesion_f1, 3), "dice_mean": round(pooled.dice_mean, 3)})
        print(pd.DataFrame(summary[-1:]).to_string(index=False, header=len(summary) == 1), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(summary).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
