"""Where the false lesions are: one row per predicted component of a clinical-path check.

For each exam of ``clinical_path_check.py``'s output (``OUT/pred/<case>_prob.nii.gz`` on the
thick grid, truth in ``OUT/heads_thick/<case>/lesion_mask.nii.gz``) the components of the 0.5
decision (26-connected) with: volume (mm³), peak and mean lesion probability, depth below the
brain's edge (mm; the shared exam's own brain, i.e. its non-zero region, moved onto the thick
grid) and whether the component touches a truth lesion (the ``any`` criterion's true positive)::

    python pipelines/fp_components.py runs/clinical_path/ms_flair_ratio_3840 > fp.csv
    python pipelines/fp_components.py runs/clinical_path/R --summary     # how rules on each feature split TP/FP
    python pipelines/fp_components.py runs/clinical_path/R --peak 0.6 0.7 0.8 0.9   # the peak rule, scored
    python pipelines/fp_components.py runs/clinical_path/R --tune-in-folds runs/lopo_thick/R   # cut chosen in folds

``--peak H``: the extent of the 0.5 decision, keeping only components whose peak probability reaches
H (hysteresis), written to ``R/pred_peak<H>/`` and scored by ``lesionseg evaluate`` into
``R/report_peak<H>/``.  H chosen by looking at these held-out reports is tuned on the test exams:
an exploration, not a figure of the recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ms_lesions"


def components(check_dir: Path, case: str, data: Path = SHARED, threshold: float = 0.5) -> list[dict[str, object]]:
    """The rows of one exam (see the module docstring)."""
    prob_img = nib.load(check_dir / "pred" / f"{case}_prob.nii.gz")
    prob = np.asarray(prob_img.dataobj, np.float32)
    truth = np.asarray(nib.load(check_dir / "heads_thick" / case / "lesion_mask.nii.gz").dataobj) > 0
    flair = nib.load(data / case / "flair.nii.gz")
    brain_1mm = nib.Nifti1Image((np.asarray(flair.dataobj) > 0).astype(np.float32), flair.affine)
    brain = np.asarray(resample_from_to(brain_1mm, (prob.shape, prob_img.affine), order=1).dataobj) > 0.5
    zooms = [float(z) for z in prob_img.header.get_zooms()[:3]]
    depth = ndimage.distance_transform_edt(brain, sampling=zooms)
    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3, 3)))
    voxel = float(np.prod(zooms))
    rows = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[box] == i
        p = prob[box][comp]
        d = depth[box][comp]
        rows.append({"case": case, "component": i, "volume_mm3": round(comp.sum() * voxel, 1),
                     "peak": round(float(p.max()), 3), "mean": round(float(p.mean()), 3),
                     "depth_max_mm": round(float(d.max()), 1), "depth_median_mm": round(float(np.median(d)), 1),
                     "tp": bool(truth[box][comp].any())})
    return rows


def peak_rule(check_dir: Path, high: float, threshold: float = 0.5) -> Path:
    """``check_dir/pred_peak<high>/``: the ``threshold`` decision's components whose peak reaches ``high``."""
    out = check_dir / f"pred_peak{high:g}"
    peak_masks(sorted((check_dir / "pred").glob("*_prob.nii.gz")), out, high, threshold)
    return out


def peak_masks(prob_paths: list[Path], out: Path, high: float, threshold: float = 0.5) -> None:
    """``out/<case>_pred.nii.gz`` for each ``<case>_prob.nii.gz``: the peak rule at ``high``."""
    from lesionseg.data.writing import write_like

    out.mkdir(parents=True, exist_ok=True)
    for path in prob_paths:
        img = nib.load(path)
        prob = np.asarray(img.dataobj, np.float32)
        labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3, 3)))
        keep = np.zeros(n + 1, bool)
        if n:
            keep[1:] = np.asarray(ndimage.maximum(prob, labels, index=np.arange(1, n + 1))) >= high
        write_like(out / path.name.replace("_prob", "_pred"), keep[labels].astype(np.uint8), img.affine, img.header,
                   np.uint8)


def evaluate(pred: Path, truth: Path, report: Path) -> "object":
    """``lesionseg evaluate`` of a prediction folder; its pooled summary row."""
    import subprocess

    import pandas as pd

    subprocess.run([sys.executable, "-m", "lesionseg", "-q", "evaluate", "--pred", str(pred), "--truth", str(truth),
                    "--out", str(report), "--allow-mixed"], check=True)
    return pd.read_csv(report / "summary.csv").iloc[0]


def tune_in_folds(check_dir: Path, lopo_dir: Path, grid: list[float]) -> "object":
    """The peak rule with its cut chosen inside each fold, then scored on the held-out clinical-path exams.

    Each fold's cut is the one with the best pooled lesion F1 (ties: the lower cut) on that fold's
    *training* exams, predicted by the fold model from ``LOPO/<fold>/pred_tune/`` (``lesionseg infer``
    on ``LOPO/<fold>/cases_tune``); the held-out exams never choose their own cut.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clinical_path_check import FOLDS

    held_out = check_dir / "pred_peak_infold"
    for fold, cases in FOLDS.items():
        train_probs = sorted((lopo_dir / fold / "pred_tune").glob("*_prob.nii.gz"))
        if not train_probs:
            sys.exit(f"{lopo_dir / fold / 'pred_tune'}: no *_prob.nii.gz (lesionseg infer the fold's cases_tune there)")
        scores = []
        for high in grid:
            pred = lopo_dir / fold / f"pred_tune_peak{high:g}"
            peak_masks(train_probs, pred, high)
            row = evaluate(pred, lopo_dir / fold / "cases_tune", lopo_dir / fold / f"report_tune_peak{high:g}")
            scores.append((float(row.lesion_f1), -high))
        best = -max(scores)[1]
        print(f"[{fold}] cut {best:g} on its training exams (lesion F1 "
              + ", ".join(f"{h:g}: {f:.3f}" for (f, _), h in zip(scores, grid)) + ")", flush=True)
        peak_masks([check_dir / "pred" / f"{c}_prob.nii.gz" for c in cases], held_out, best)
    return evaluate(held_out, check_dir / "heads_thick", check_dir / "report_peak_infold")


def summary(table: "object") -> str:
    """For rules 'keep a component only if feature ≥ cut': true and false lesions kept at each cut."""
    lines = ["feature | cut | TP kept | FP kept"]
    for feature, cuts in (("peak", (0.5, 0.6, 0.7, 0.8, 0.9)), ("volume_mm3", (0, 20, 50, 100, 200)),
                          ("depth_max_mm", (0, 2, 4, 6, 8, 10)), ("mean", (0.5, 0.55, 0.6, 0.65, 0.7))):
        for cut in cuts:
            kept = table[table[feature] >= cut]
            lines.append(f"{feature} | {cut} | {int(kept.tp.sum())} | {int((~kept.tp).sum())}")
    return "\n".join(lines)


def main() -> None:
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check_dir", type=Path, help="a clinical_path_check.py --out folder")
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--summary", action="store_true", help="print how a cut on each feature splits TP and FP")
    p.add_argument("--peak", type=float, nargs="+", metavar="H",
                   help="score the peak rule (0.5 extent, components whose peak reaches H) at each H")
    p.add_argument("--tune-in-folds", type=Path, metavar="LOPO_DIR",
                   help="choose the peak cut (grid: --peak, default 0.5-0.9) on each fold's training exams "
                   "(LOPO_DIR/<fold>/pred_tune), then score the held-out exams with it")
    args = p.parse_args()
    if args.tune_in_folds:
        row = tune_in_folds(args.check_dir, args.tune_in_folds, args.peak or [0.5, 0.6, 0.7, 0.8, 0.9])
        print(f"cut chosen in each fold: TP {row.TP} FP {row.FP} FN {row.FN} lesion F1 {row.lesion_f1:.3f} "
              f"Dice {row.dice_mean:.3f}")
        return
    if args.peak:
        for high in args.peak:
            pred = peak_rule(args.check_dir, high)
            row = evaluate(pred, args.check_dir / "heads_thick", args.check_dir / f"report_peak{high:g}")
            print(f"peak >= {high:g}: TP {row.TP} FP {row.FP} FN {row.FN} lesion F1 {row.lesion_f1:.3f} "
                  f"Dice {row.dice_mean:.3f}")
        return
    cases = sorted(f.name.removesuffix("_prob.nii.gz") for f in (args.check_dir / "pred").glob("*_prob.nii.gz"))
    if not cases:
        sys.exit(f"{args.check_dir / 'pred'}: no *_prob.nii.gz (run clinical_path_check.py first)")
    table = pd.DataFrame([r for c in cases for r in components(args.check_dir, c, args.data)])
    if args.summary:
        print(summary(table))
        print(table.groupby(["case", "tp"]).size().unstack(fill_value=0).to_string())
    else:
        table.to_csv(sys.stdout, index=False)


if __name__ == "__main__":
    main()
