"""Where the false lesions are: one row per predicted component of a clinical-path check.

For each exam of ``clinical_path_check.py``'s output (``OUT/pred/<case>_prob.nii.gz`` on the
thick grid, truth in ``OUT/heads_thick/<case>/lesion_mask.nii.gz``) the components of the 0.5
decision (26-connected) with: volume (mm³), peak and mean lesion probability, depth below the
brain's edge (mm; the shared exam's own brain, i.e. its non-zero region, moved onto the thick
grid) and whether the component touches a truth lesion (the ``any`` criterion's true positive)::

    python pipelines/fp_components.py runs/clinical_path/ms_flair_ratio_3840 > fp.csv
    python pipelines/fp_components.py runs/clinical_path/R --summary     # how rules on each feature split TP/FP
    python pipelines/fp_components.py runs/clinical_path/R --peak 0.6 0.7 0.8 0.9   # the peak rule, scored

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
    from lesionseg.data.writing import write_like

    out = check_dir / f"pred_peak{high:g}"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((check_dir / "pred").glob("*_prob.nii.gz")):
        img = nib.load(path)
        prob = np.asarray(img.dataobj, np.float32)
        labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3, 3)))
        keep = np.zeros(n + 1, bool)
        if n:
            keep[1:] = np.asarray(ndimage.maximum(prob, labels, index=np.arange(1, n + 1))) >= high
        write_like(out / path.name.replace("_prob", "_pred"), keep[labels].astype(np.uint8), img.affine, img.header,
                   np.uint8)
    return out


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
    args = p.parse_args()
    if args.peak:
        import subprocess

        for high in args.peak:
            pred = peak_rule(args.check_dir, high)
            report = args.check_dir / f"report_peak{high:g}"
            subprocess.run([sys.executable, "-m", "lesionseg", "-q", "evaluate", "--pred", str(pred), "--truth",
                            str(args.check_dir / "heads_thick"), "--out", str(report), "--allow-mixed"], check=True)
            row = pd.read_csv(report / "summary.csv").iloc[0]
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
