"""Benchmark: lesion-wise evaluation of the 30 real Lesjak masks, lesionseg vs panoptica.

Each of the 30 consensus masks in ``../shared/data/lesjak_masks``
(182×218×182, 17–392 lesions) is paired with a prediction made from it by one
perturbation (cycling through: lesions removed, lesions added, eroded,
dilated, shifted; fixed seed).  Arrays are loaded before timing.

- lesionseg: :func:`lesionseg.evaluation.lesions.evaluate_case` for every criterion
  (``any``, ``anima``, ``iou``, ``brats``): total seconds for the 30 cases and
  per case (median, max), best of ``--repeat`` runs.
- panoptica (when installed): ``Panoptica_Evaluator`` on semantic input, cc3d
  connected components (26-connectivity), ``NaiveThresholdMatching`` at
  IoU ≥ 0.5, instance metric IoU only, global Dice: the same cases, its time,
  and its TP/FP/FN against lesionseg's ``iou`` criterion case by case.
  panoptica pins numpy < 2.3, pandas < 3 and cc3d < 4, so it may live in
  another environment: ``--panoptica-python /path/to/python`` runs that side
  in that interpreter (it needs numpy, scipy, pandas, cc3d, nibabel and
  pyyaml; lesionseg is imported from this checkout).

Targets: all 30 cases in < 3 s (``any``), ≥ 5× panoptica.

Run: ``.venv/bin/python bench/bench_evaluate.py [--panoptica-python PY]``
(about a minute on 2 cores, most of it loading and perturbing the masks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "lesjak_masks"
KINDS = ("removed", "added", "eroded", "dilated", "shifted")
TARGET_TOTAL_S = 3.0
TARGET_SPEEDUP = 5.0


def load_cases(data: Path, n_cases: int, seed: int = 0):
    """(name, truth bool (D,H,W), prediction bool, zooms, kind) for the first n masks."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    s6, s18, s26 = (ndimage.generate_binary_structure(3, r) for r in (1, 2, 3))
    rng = np.random.default_rng(seed)
    cases = []
    for i, path in enumerate(sorted(data.glob("*_lesion_mask.nii*"))[:n_cases]):
        img = nib.load(str(path))
        truth = np.asarray(img.dataobj) > 0
        kind = KINDS[i % len(KINDS)]
        if kind == "removed":
            labels, n = ndimage.label(truth, s26)
            drop = rng.choice(np.arange(1, n + 1), size=max(1, n // 3), replace=False)
            pred = truth & ~np.isin(labels, drop)
        elif kind == "added":
            pred = truth.copy()
            for _ in range(20):
                size = rng.integers(1, 5, size=3)
                corner = [int(rng.integers(30, s - 30)) for s in truth.shape]
                pred[tuple(slice(c, c + int(w)) for c, w in zip(corner, size, strict=True))] = True
        elif kind == "eroded":
            pred = ndimage.binary_erosion(truth, s6)
        elif kind == "dilated":
            pred = ndimage.binary_dilation(truth, s18)
        else:
            pred = np.roll(truth, (2, -1, 1), axis=(0, 1, 2))
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        cases.append((path.name.split("_lesion_mask")[0], truth, pred, zooms, kind))
    return cases


def time_lesionseg(cases, criterion: str, repeat: int) -> dict:
    from lesionseg.config import EvaluateConfig
    from lesionseg.evaluation.lesions import evaluate_case

    cfg = EvaluateConfig(criterion=criterion)
    best = None
    for _ in range(repeat):
        per_case, counts = [], []
        for name, truth, pred, zooms, _ in cases:
            t0 = time.perf_counter()
            ev = evaluate_case(truth, pred, zooms, cfg, name)
            per_case.append(time.perf_counter() - t0)
            counts.append((ev.GT, ev.TP, ev.FP, ev.FN, ev.n_pred))
        if best is None or sum(per_case) < sum(best[0]):
            best = (per_case, counts)
    return {"per_case": best[0], "counts": best[1]}


def time_panoptica(cases, repeat: int) -> dict:
    """panoptica's time and counts; lesionseg's ``iou`` counts from this same process."""
    import numpy as np
    import panoptica
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        NaiveThresholdMatching,
        Panoptica_Evaluator,
    )
    from panoptica.metrics import Metric

    for name in ("disable_citation_reminder",):
        if hasattr(panoptica, name):
            getattr(panoptica, name)()
    evaluator = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=NaiveThresholdMatching(matching_metric=Metric.IOU, matching_threshold=0.5),
        instance_metrics=[Metric.IOU],
        global_metrics=[Metric.DSC],
    )
    best = None
    for _ in range(repeat):
        per_case, counts = [], []
        for _name, truth, pred, _zooms, _ in cases:
            p, t = pred.astype(np.uint8), truth.astype(np.uint8)
            t0 = time.perf_counter()
            result = evaluator.evaluate(p, t, verbose=False)["ungrouped"]
            per_case.append(time.perf_counter() - t0)
            counts.append((int(result.n_ref_instances), int(result.tp), int(result.fp), int(result.fn),
                           int(result.n_pred_instances)))  # fmt: skip
        if best is None or sum(per_case) < sum(best[0]):
            best = (per_case, counts)
    # lesionseg's iou criterion in this same interpreter: counts to compare, and its time
    same_process = time_lesionseg(cases, "iou", repeat)
    from importlib.metadata import version

    return {"per_case": best[0], "counts": best[1], "lesionseg_iou_counts": same_process["counts"],
            "lesionseg_iou_per_case": same_process["per_case"], "version": version("panoptica")}  # fmt: skip


def _stats(per_case: list[float]) -> str:
    import numpy as np

    a = np.asarray(per_case)
    return f"total {a.sum():6.3f} s | per case median {np.median(a) * 1e3:6.1f} ms, max {a.max() * 1e3:6.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of *_lesion_mask.nii.gz")
    parser.add_argument("--cases", type=int, default=30, help="number of masks")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    parser.add_argument("--panoptica-python", help="interpreter with panoptica installed (if not this one)")
    parser.add_argument("--no-panoptica", action="store_true", help="skip the panoptica comparison")
    parser.add_argument("--worker", choices=["panoptica"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()

    if not args.data.is_dir():
        print(f"SKIP: {args.data} not found (the shared Lesjak masks)")
        return 0
    t0 = time.perf_counter()
    cases = load_cases(args.data, args.cases)
    load_s = time.perf_counter() - t0

    if args.worker == "panoptica":
        print(json.dumps(time_panoptica(cases, args.repeat)))
        return 0

    print(f"{len(cases)} masks loaded and perturbed in {load_s:.1f} s (not timed below)")
    results: dict[str, dict] = {}
    for criterion in ("any", "anima", "iou", "brats"):
        results[criterion] = time_lesionseg(cases, criterion, args.repeat)
        print(f"lesionseg {criterion:6s}: {_stats(results[criterion]['per_case'])}")
    gts = [c[0] for c in results["any"]["counts"]]
    print(f"truth lesions per mask: {min(gts)}..{max(gts)} (26-connectivity), {sum(gts)} in all")

    total_any = sum(results["any"]["per_case"])
    verdict = "PASS" if total_any < TARGET_TOTAL_S else "FAIL"
    print(f"target: all {len(cases)} cases < {TARGET_TOTAL_S:.0f} s (any): {total_any:.3f} s -> {verdict}")

    pan = None
    if not args.no_panoptica:
        try:
            import panoptica  # noqa: F401

            pan = time_panoptica(cases, args.repeat)
        except ImportError:
            if args.panoptica_python:
                cmd = [args.panoptica_python, __file__, "--worker", "panoptica", "--data", str(args.data),
                       "--cases", str(args.cases), "--repeat", str(args.repeat)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(f"panoptica worker failed:\n{done.stderr[-2000:]}")
                else:
                    pan = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                print("panoptica not installed here (pip install panoptica, or --panoptica-python PY): skipped")
    if pan is not None:
        pan_total = sum(pan["per_case"])
        ours_total = sum(results["iou"]["per_case"])
        same = sum(tuple(a) == tuple(b) for a, b in zip(pan["lesionseg_iou_counts"], pan["counts"], strict=True))
        print(f"panoptica {pan['version']} (iou >= 0.5): {_stats(pan['per_case'])}")
        same_total = sum(pan["lesionseg_iou_per_case"])
        print(f"lesionseg iou in panoptica's interpreter: {_stats(pan['lesionseg_iou_per_case'])}")
        speedup = pan_total / max(ours_total, same_total)
        verdict = "PASS" if speedup >= TARGET_SPEEDUP else "FAIL"
        print(f"lesionseg iou vs panoptica: {pan_total / ours_total:.1f}x faster here, "
              f"{pan_total / same_total:.1f}x in one interpreter (target >= {TARGET_SPEEDUP:.0f}x) -> {verdict}")
        print(f"counts (GT, TP, FP, FN, n_pred) identical in {same}/{len(cases)} cases")
        for name_case, a, b in zip(cases, pan["lesionseg_iou_counts"], pan["counts"], strict=True):
            if tuple(a) != tuple(b):
                print(f"  {name_case[0]} ({name_case[4]}): lesionseg {tuple(a)} panoptica {tuple(b)}")
        results["panoptica"] = pan
    if args.json:
        args.json.write_text(json.dumps({"load_s": load_s, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
