"""The decision chosen on the *other* patients' held-out predictions (cross-fold), then scored.

A fold model tuned on its own training exams is more confident there than on a new patient, so
the decision it picks does not transfer (README, *`tissue_ratio` on the clinical path*).  Here
each held-out patient's decision is chosen on the probability maps the other folds' models made
of *their* held-out patients — predictions as uncertain as a new patient's — and never on the
patient it is applied to.  The same search over every patient gives the decision a model
trained on all of them would store.  Reads a ``clinical_path_check.py`` folder (``pred/`` lesion
probabilities on each exam's thick grid, ``heads_thick/`` truth)::

    python pipelines/cross_fold_decision.py runs/clinical_path/R --out studies/clinical_path/R_cross_fold
    python pipelines/cross_fold_decision.py runs/clinical_path/R --peaks 0.5 0.7 0.8 0.9 0.95   # with a peak rule
    python pipelines/cross_fold_decision.py runs/clinical_path/R --thresholds 0.5 0.9 0.99 0.995 0.999   # another grid
    python pipelines/cross_fold_decision.py runs/clinical_path/R_5mm --fixed 0.99 20   # and a given decision
    python pipelines/cross_fold_decision.py runs/clinical_path/R runs/clinical_path/R_s1 --out ...  # their ensemble
    python pipelines/cross_fold_decision.py runs/clinical_path/R runs/clinical_path/R_s1 --side-by-side --out ...
    python pipelines/cross_fold_decision.py runs/clinical_path/R --folds L19 M14 --fixed 0.99 0   # a screen on two folds
    python pipelines/cross_fold_decision.py --cases studies/.../cross_fold_cases.csv --folds L19 M14   # a study, re-pooled

Several folders: each exam's maps are averaged, which is what the ensemble of the folders' fold models
(``lesionseg ensemble``) predicts — it averages the members' probabilities on the 1 mm working grid and
resamples that linearly to the exam's grid, so the order does not matter (largest difference 3e-7 on a
P14 exam).  The folders must hold the same exams on the same grid (the same ``clinical_path_check.py``
heads): their truth is read from the first.  ``--side-by-side``: each folder's networks stay apart
(seeds of one recipe, say); a fold's decision is chosen on every folder's maps of the other folds
and applied to each folder's maps of its own, so the decision depends less on one seed's luck;
results per folder (``network``) and over all of them.  ``--folds``: only these folds are read and scored
(a screen run on some folds); each one's decision is chosen on the *other listed* folds.  ``--cases``:
no maps, the per-exam rows of committed studies (``cross_fold_cases.csv``) pooled again over ``--folds``,
so that a screen is compared with a recipe's stored figures on the same exams.

Decisions searched: threshold × minimum lesion size (mm³) × (with ``--peaks``) the peak a
component's probability must reach to be kept (its extent stays the threshold's), ranked as
``lesionseg tune`` ranks them (pooled lesion F1, then mean Dice; over-segmenting settings last).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lesionseg.config import EvaluateConfig, InferConfig
from lesionseg.data.labels import component_sizes
from lesionseg.evaluation.lesions import evaluate_case
from lesionseg.evaluation.scoring import CaseCounts, pool_counts
from lesionseg.inference.atlas import component_atlas_max
from lesionseg.inference.postprocess import decide
from lesionseg.inference.tune import tune_threshold_and_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical_path_check import FOLDS  # noqa: E402

#: the grid of ``lesionseg tune`` (``infer.tune_thresholds`` / ``infer.tune_min_sizes_mm3`` defaults), fixed
#: before any cross-fold result was seen
THRESHOLDS = InferConfig().tune_thresholds
MIN_SIZES = InferConfig().tune_min_sizes_mm3
UNTUNED = {"threshold": 0.5, "min_lesion_mm3": 0.0, "min_peak": 0.0}


def load_exams(*check_dirs: Path, folds: dict[str, list[str]] | None = None
               ) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    """Per exam of ``folds`` (default: every fold): lesion probability (the mean over ``check_dirs``),
    truth, voxel size (the thick grid)."""
    exams = {}
    for cases in (FOLDS if folds is None else folds).values():
        for case in cases:
            paths = [d / "pred" / f"{case}_prob.nii.gz" for d in check_dirs] + [
                check_dirs[0] / "heads_thick" / case / "lesion_mask.nii.gz"]
            missing = [str(path) for path in paths if not path.is_file()]
            if missing:
                raise SystemExit(f"{missing[0]}: missing (run clinical_path_check.py for every fold first, "
                                 "or name the folds it predicted with --folds)")
            imgs = [nib.load(path) for path in paths[:-1]]
            for d, img in zip(check_dirs[1:], imgs[1:]):
                if img.shape != imgs[0].shape or not np.allclose(img.affine, imgs[0].affine, atol=1e-5):
                    raise SystemExit(f"{d / 'pred' / f'{case}_prob.nii.gz'}: not on the grid of "
                                     f"{check_dirs[0] / 'pred' / f'{case}_prob.nii.gz'}; average checks of the same heads")
            prob = np.mean([np.asarray(img.dataobj, np.float32) for img in imgs], axis=0, dtype=np.float32)
            truth = nib.load(paths[-1])
            exams[case] = (prob, np.asarray(truth.dataobj) > 0,
                           tuple(float(z) for z in imgs[0].header.get_zooms()[:3]))
    return exams


def choose(exams: dict, cases: list[str], peaks: tuple[float, ...], thresholds: tuple[float, ...] = THRESHOLDS
           ) -> dict[str, float]:
    """The best (threshold, min size, peak) on these exams."""
    probs = [exams[c][0] for c in cases]
    result = tune_threshold_and_size(probs, [exams[c][1] for c in cases], [exams[c][2] for c in cases],
                                     thresholds, MIN_SIZES, atlases=probs if len(peaks) > 1 else None,
                                     min_atlas=peaks)
    return {"threshold": result.threshold, "min_lesion_mm3": result.min_lesion_mm3,
            "min_peak": result.min_atlas if result.min_atlas is not None else 0.0,
            "f1_where_chosen": round(result.lesion_f1, 4)}


def apply(prob: np.ndarray, truth: np.ndarray, zoom: tuple[float, ...], decision: dict[str, float]) -> CaseCounts:
    """The decision's counts on one exam."""
    labels, sizes = component_sizes(decide(prob, decision["threshold"]), 26)
    peaks = component_atlas_max(labels, sizes.size, prob)
    keep = (sizes * float(np.prod(zoom)) >= decision["min_lesion_mm3"] * (1 - 1e-9)) & (peaks >= decision["min_peak"])
    keep[0] = False
    return CaseCounts.of(evaluate_case(truth.astype(np.uint8), keep[labels].astype(np.uint8), zoom, EvaluateConfig()))


def cross_fold(exams: dict, folds: dict[str, list[str]], peaks: tuple[float, ...] = (0.0,),
               thresholds: tuple[float, ...] = THRESHOLDS, fixed: dict[str, float] | None = None
               ) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Per exam, its counts at 0.5 and at the decision chosen on the other folds' exams; the decisions.

    ``exams``: case -> (probability, truth, voxel size); ``folds``: fold -> its held-out cases.  The
    decision of fold F is chosen on every case of the other folds and applied to F's cases only;
    ``decisions["all"]`` is chosen on every case (what a model trained on all folds would store).
    ``fixed`` (threshold, min_lesion_mm3 and min_peak): a decision scored as it is on every case too, e.g.
    a shipped model's on exams unlike those it was chosen on.
    """
    rows, decisions = [], {}
    for fold, held_out in folds.items():
        others = [c for f, cases in folds.items() if f != fold for c in cases]
        decisions[fold] = choose(exams, others, peaks, thresholds)
        rules = [("0.5, no size filter", UNTUNED), ("chosen on the other folds' held-out exams", decisions[fold])]
        if fixed is not None:
            rules.append((f"fixed: {fixed['threshold']:g}, {fixed['min_lesion_mm3']:g} mm3", fixed))
        for case in held_out:
            for rule, decision in rules:
                counts = apply(*exams[case], decision)
                rows.append({"decision": rule, "case": case, "fold": fold, **{k: decision[k] for k in
                             ("threshold", "min_lesion_mm3", "min_peak")}, **counts.__dict__})
    decisions["all"] = choose(exams, [c for cases in folds.values() for c in cases], peaks, thresholds)
    return pd.DataFrame(rows), decisions


def side_by_side(check_dirs: list[Path], folds: dict[str, list[str]], peaks: tuple[float, ...] = (0.0,),
                 thresholds: tuple[float, ...] = THRESHOLDS, fixed: dict[str, float] | None = None
                 ) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """:func:`cross_fold` over every folder's maps, each a separate exam; ``network`` names the folder."""
    exams, keyed_folds = {}, {fold: [] for fold in folds}
    for i, check_dir in enumerate(check_dirs):
        for case, exam in load_exams(check_dir, folds=folds).items():
            exams[f"{case}@{i}"] = exam
        for fold, cases in folds.items():
            keyed_folds[fold] += [f"{case}@{i}" for case in cases]
    table, decisions = cross_fold(exams, keyed_folds, peaks, thresholds, fixed)
    parts = table["case"].str.rsplit("@", n=1)
    table.insert(1, "network", [str(check_dirs[int(part[1])]) for part in parts])
    table["case"] = [part[0] for part in parts]
    return table, decisions


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """One row per decision rule (and per ``network``, when the table has one, then over all of them):
    counts summed over the exams, lesion precision/recall/F1, mean Dice."""
    groups = list(table.groupby("decision", sort=False))
    if "network" in table:
        groups = [((rule, network), g) for (rule, network), g in table.groupby(["decision", "network"], sort=False)] + [
            ((rule, "all"), g) for rule, g in groups]
    out = []
    for rule, group in groups:
        p = pool_counts([CaseCounts(**{k: r[k] for k in CaseCounts.__dataclass_fields__}) for _, r in group.iterrows()])
        network = {"network": rule[1]} if isinstance(rule, tuple) else {}
        rule = rule[0] if isinstance(rule, tuple) else rule
        out.append({"decision": rule, **network, "GT": p.GT, "TP": p.TP, "FP": p.FP, "FN": p.FN,
                    "lesion_precision": round(p.lesion_precision, 3), "lesion_recall": round(p.lesion_recall, 3),
                    "lesion_f1": round(p.lesion_f1, 3), "dice_mean": round(p.dice_mean, 3)})
    return pd.DataFrame(out)


def cases_pooled(tables: list[Path], folds: list[str]) -> pd.DataFrame:
    """The per-exam rows of ``cross_fold_cases.csv`` files (a ``network`` column each: the file's folder
    where the table has none), kept for ``folds`` and pooled per decision and network."""
    parts = []
    for path in tables:
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: not readable as a cross_fold_cases.csv ({exc})") from None
        needed = {"decision", "fold", *CaseCounts.__dataclass_fields__}
        if not needed <= set(table.columns):
            raise SystemExit(f"{path}: not a cross_fold_cases.csv (no column {sorted(needed - set(table.columns))[0]})")
        if "network" not in table:
            table.insert(1, "network", str(path.parent))
        parts.append(table[table["fold"].isin(folds)])
    return pooled(pd.concat(parts, ignore_index=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check_dirs", type=Path, nargs="*", metavar="CHECK_DIR",
                   help="a clinical_path_check.py --out folder with every fold predicted; several: their ensemble")
    p.add_argument("--peaks", type=float, nargs="+", default=[0.0], metavar="H",
                   help="peak cut-offs to search too (0: none; default: no peak rule)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS), metavar="T",
                   help="thresholds searched (default: lesionseg tune's grid, 0.1-0.99)")
    p.add_argument("--fixed", type=float, nargs=2, metavar=("THRESHOLD", "MIN_MM3"),
                   help="also score this decision on every exam (e.g. the shipped model's)")
    p.add_argument("--side-by-side", action="store_true",
                   help="several folders: keep their networks apart (not averaged); decisions chosen on all their maps")
    p.add_argument("--folds", nargs="+", choices=list(FOLDS), metavar="FOLD",
                   help=f"only these folds (of {', '.join(FOLDS)}); each chosen on the other listed ones")
    p.add_argument("--cases", type=Path, nargs="+", metavar="CSV",
                   help="no maps: pool these studies' cross_fold_cases.csv rows over --folds")
    p.add_argument("--out", type=Path, help="folder for cross_fold.csv, cross_fold_cases.csv, decisions.json")
    args = p.parse_args()
    folds = {fold: FOLDS[fold] for fold in (args.folds or FOLDS)}
    if args.cases:
        if args.check_dirs:
            p.error("--cases pools committed tables: give no CHECK_DIR with it")
        summary = cases_pooled(args.cases, list(folds))
        print(summary.to_string(index=False))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            summary.to_csv(args.out / "cross_fold.csv", index=False)
            print(f"written to {args.out}")
        return
    if not args.check_dirs:
        p.error("give a CHECK_DIR (a clinical_path_check.py --out folder) or --cases")
    if len(folds) < 2:
        p.error("--folds: at least two folds (each one's decision is chosen on the others)")
    peaks = tuple(sorted(set(args.peaks) | {0.0}))
    fixed = ({"threshold": args.fixed[0], "min_lesion_mm3": args.fixed[1], "min_peak": 0.0}
             if args.fixed else None)
    if args.fixed and not (0 < args.fixed[0] < 1 and args.fixed[1] >= 0):
        p.error(f"--fixed {args.fixed[0]:g} {args.fixed[1]:g}: a threshold in (0, 1) and a size >= 0")
    if args.side_by_side:
        table, decisions = side_by_side(args.check_dirs, folds, peaks, tuple(args.thresholds), fixed)
    else:
        table, decisions = cross_fold(load_exams(*args.check_dirs, folds=folds), folds, peaks, tuple(args.thresholds),
                                      fixed)
    summary = pooled(table)
    print(summary.to_string(index=False))
    print(json.dumps(decisions, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "cross_fold_cases.csv", index=False)
        summary.to_csv(args.out / "cross_fold.csv", index=False)
        (args.out / "decisions.json").write_text(json.dumps(decisions, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
