"""The FLAIR-only fold models on thick exams that go through the clinical path (skull, brain extraction).

The shared exams are skull-stripped: their thick-slice versions keep exact zeros around the brain
and infer takes them as stripped already.  A clinical exam has a skull.  This check wraps each
shared FLAIR in a synthetic head (CSF 3 mm, skull 5 mm, bright scalp 3 mm, skin 2 mm, noise, on a
zero background), makes 7 mm thick slices of it, and predicts each held-out patient with its
leave-one-patient-out fold model, at that model's own tuned decision (``report``) and at 0.5
without a size filter (``report_untuned``) — the figures of README
*`models/ms_flair`: leave-one-patient-out on thick-slice exams* ("not what the clinical path sees")::

    python pipelines/clinical_path_check.py --folds runs/lopo_thick/ms_flair_3840 --out runs/clinical_path

(about 15 minutes on one core: six predictions through N4 and brain extraction).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ms_experiments import exclusive, untuned_predictions  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ms_lesions"
FOLDS = {"L07": ["lesjak_patient07"], "L19": ["lesjak_patient19"],
         "M14": ["mslesseg_P14_T1", "mslesseg_P14_T2", "mslesseg_P14_T3"], "M18": ["mslesseg_P18_T1"]}
#: (outer distance from the brain in mm, intensity as a multiple of the brain's median FLAIR)
LAYERS = ((3, 0.25), (8, 0.08), (11, 1.4), (13, 0.7))  # CSF, skull, scalp fat, skin
PAD = 16


def wrap_in_head(case_dir: Path, out_dir: Path, seed: int = 0,
                 layers: tuple[tuple[float, float], ...] = LAYERS) -> Path:
    """``out_dir/<case>/flair.nii.gz`` and ``lesion_mask.nii.gz``: the exam inside a synthetic head.

    ``layers``: (outer distance from the brain in mm, intensity as a multiple of the brain's median
    FLAIR) from the inside out; :data:`LAYERS` for this check.
    """
    flair = nib.load(case_dir / "flair.nii.gz")
    x = np.asarray(flair.dataobj, np.float32)
    brain = np.pad(x > 0, PAD)
    median = float(np.median(x[x > 0]))
    head = np.pad(x, PAD)
    dist = ndimage.distance_transform_edt(~brain)
    inner = 0.0
    for outer, level in layers:
        head[(dist > inner) & (dist <= outer)] = level * median
        inner = outer
    rng = np.random.default_rng(seed)
    head += rng.normal(0.0, 0.03 * median, head.shape).astype(np.float32) * (dist <= inner)
    affine = flair.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, float(PAD))
    target = out_dir / case_dir.name
    target.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.clip(head, 0, None).astype(np.float32), affine), target / "flair.nii.gz")
    mask = np.pad(np.asarray(nib.load(case_dir / "lesion_mask.nii.gz").dataobj), PAD).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, affine), target / "lesion_mask.nii.gz")
    return target


def run(*args: str) -> None:
    print("+ lesionseg", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lesionseg", *args], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=Path, default=Path("runs/lopo_thick/ms_flair_3840"),
                   help="leave-one-patient-out folder with one run per fold (L07, L19, M14, M18)")
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--out", type=Path, default=Path("runs/clinical_path"))
    p.add_argument("--slice-mm", default="7")
    p.add_argument("--gap-mm", default="0", help="gap between the thick slices (lesionseg thick-slices --gap-mm)")
    p.add_argument("--in-plane-mm", default="0.9", help="in-plane voxel size (lesionseg thick-slices --in-plane-mm)")
    p.add_argument("--axis", default="2", choices=("0", "1", "2"),
                   help="voxel axis across the slices (the shared exams are RAS: 2 axial, the default; 1 coronal; "
                        "0 sagittal)")
    p.add_argument("only", nargs="*", metavar="FOLD",
                   help=f"predict only these folds ({', '.join(FOLDS)}; default all), e.g. while the others still "
                        "train; the reports are written once every exam has its prediction")
    p.add_argument("--infer-set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to lesionseg infer as --set (repeatable), e.g. infer.tta_flips=[0]")
    args = p.parse_args()
    if set(args.only) - set(FOLDS):
        p.error(f"unknown fold(s) {', '.join(sorted(set(args.only) - set(FOLDS)))}: choose from {', '.join(FOLDS)}")
    # the thick slices need one fold's config (the folds differ only in their patients): the first that
    # has finished among those asked for, so that a subset can be predicted while the others train
    configs = [args.folds / f / "config.yaml" for f in (args.only or FOLDS)]
    config = next((c for c in configs if c.is_file()), None)
    if config is None:
        p.error(f"{args.folds}: no trained fold among {', '.join(args.only or FOLDS)} (no config.yaml)")
    thick, pred = args.out / "heads_thick", args.out / "pred"
    made_with = {"data": str(args.data.resolve()), "slice_mm": args.slice_mm, "gap_mm": args.gap_mm,
                 "in_plane_mm": args.in_plane_mm, "axis": args.axis}
    with exclusive(args.out / ".exams.lock"):  # folds predicted by parallel processes share the exams
        thick_exams(args.data, args.out, config, made_with)
    for fold, cases in FOLDS.items():
        if args.only and fold not in args.only:
            continue
        held_out = args.out / "folds" / fold
        held_out.mkdir(parents=True, exist_ok=True)
        for case in cases:
            link = held_out / case
            if not link.exists():
                link.symlink_to((thick / case).resolve(), target_is_directory=True)
        run("infer", "--model", str(args.folds / fold), "--input", str(held_out), "--out", str(pred),
            *[arg for kv in args.infer_set for arg in ("--set", kv)])
    with exclusive(args.out / ".reports.lock"):  # two folds finishing together: one report after the other
        reports(args.out)


def thick_exams(data: Path, out: Path, config: Path, made_with: dict[str, str]) -> Path:
    """``out/heads`` (the exams in a head) and ``out/heads_thick`` (their thick slices), made once.

    The thick exams are rebuilt only when they were made with other settings (``made_with``,
    stored beside them), so a process that predicts a fold never rebuilds the exams another
    process is predicting from; the caller holds :func:`exclusive` on ``out/.exams.lock``.
    """
    heads, thick = out / "heads", out / "heads_thick"
    stamp = thick / ".made_with.json"
    wanted = json.dumps(made_with, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted:
        print(f"{thick}: thick exams already made with these settings", flush=True)
        return thick
    stamp.unlink(missing_ok=True)  # an interrupted rebuild leaves no claim behind
    for cases in FOLDS.values():
        for case in cases:
            wrap_in_head(data / case, heads)
    run("thick-slices", "--config", str(config), "--data", str(heads), "--out", str(thick),
        "--slice-mm", made_with["slice_mm"], "--gap-mm", made_with["gap_mm"],
        "--in-plane-mm", made_with["in_plane_mm"], "--axis", made_with["axis"])
    stamp.write_text(wanted)
    return thick


def reports(out: Path) -> None:
    """``out/report`` and ``out/report_untuned`` once every exam has its prediction in ``out/pred``."""
    thick, pred = out / "heads_thick", out / "pred"
    waiting = [c for cases in FOLDS.values() for c in cases if not (pred / f"{c}_prob.nii.gz").is_file()]
    if waiting:
        print(f"no report yet: {', '.join(waiting)} not predicted (run the other folds)")
        return
    run("evaluate", "--pred", str(pred), "--truth", str(thick), "--out", str(out / "report"), "--allow-mixed")
    untuned = out / "pred_untuned"  # the same probability maps at 0.5, no size filter
    untuned_predictions(pred, untuned)
    run("evaluate", "--pred", str(untuned), "--truth", str(thick), "--out", str(out / "report_untuned"),
        "--allow-mixed")


if __name__ == "__main__":
    main()
