"""Benchmark of the training input pipeline and of lesion targeting (run by hand / `make bench`).

1. Throughput: patches/s cut from cached, normalised volumes (single process),
   sampler only, sampler + extraction, and the full PatchSequence with
   augmentation.  Uses the 6 shared MS exams when ../shared/data is there
   (and reports their cache memory), else synthetic 182x218x182 volumes.
   Target: >= 100 patches/s at 48³ with augmentation (training consumes about
   5 patches/s on 2 CPU cores).
2. Targeting on the shared exams (skipped when absent): a patch *targets* a
   lesion when a voxel of that lesion lies in its central half (the middle
   24³ of a 48³ patch).  1000 patches, lesion fraction 1, alpha 0 and 1, with
   and without coverage balancing: share of the 197 lesions targeted at least
   once, and mean targeting count of the smallest quarter of lesions (per
   exam) over that of the largest quarter (pooled, and averaged per exam).
   Criteria for alpha 0: >= 95 % targeted, ratio >= 0.5.

Usage: python bench/bench_sampling.py [--seconds 5] [--seeds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesionseg.config import AugmentConfig, Config, PatchConfig  # noqa: E402
from lesionseg.data.io import Grid, read_mask  # noqa: E402
from lesionseg.logs import setup_logging  # noqa: E402
from lesionseg.sampling.lesion_table import index_lesions  # noqa: E402
from lesionseg.sampling.sampler import PatchSampler  # noqa: E402
from lesionseg.sampling.targeting import summarize_targeting, target_counts  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "ms_lesions"


def synthetic_cases(n: int = 6, shape=(182, 218, 182), channels: int = 2):
    """Brain-sized volumes with a few blob lesions (when the shared data is absent)."""
    import nibabel as nib

    from lesionseg.sampling.feed import PreparedCase

    rng = np.random.default_rng(0)
    grid = np.indices(shape, sparse=True)
    centre = np.array(shape) / 2
    brain = sum(((g - c) / (0.4 * s)) ** 2 for g, c, s in zip(grid, centre, shape)) <= 1
    cases = []
    for i in range(n):
        mask = np.zeros(shape, np.uint8)
        for _ in range(30):
            c = rng.integers(np.array(shape) // 4, 3 * np.array(shape) // 4)
            r = rng.uniform(0.5, 6)
            lo, hi = np.maximum(c - 7, 0), c + 7
            sub = np.indices(hi - lo).reshape(3, -1).T + lo
            inside = ((sub - c) ** 2).sum(1) <= r * r
            mask[tuple(sub[inside].T)] = 1
        image = (rng.standard_normal((*shape, channels), dtype=np.float32)) * brain[..., None]
        cases.append(
            PreparedCase(f"synthetic{i}", image, mask, Grid(shape, np.eye(4), (1.0, 1.0, 1.0)),
                         nib.Nifti1Header(), index_lesions(mask, 26, brain), ("flair", "t1"))
        )
    return cases


def rate(fn, seconds: float) -> float:
    """Calls of ``fn(i)`` per second over about ``seconds``."""
    fn(0)  # warm up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(n)
        n += 1
    return n / (time.perf_counter() - start)


def bench_throughput(cases, seconds: float) -> None:
    from lesionseg.sampling.feed import PatchSequence, cut_patch

    patch_cfg = PatchConfig()  # 48³, lesion 0.5 / foreground 0.4 / random 0.1, alpha 0, balanced
    aug = AugmentConfig(flip_axes=(0, 1, 2), intensity_scale=0.1, intensity_shift=0.1, noise_std=0.05, rotate90=True)
    memory = sum(c.nbytes for c in cases) / 2**20
    print(f"cache: {len(cases)} case(s), {cases[0].image.shape[-1]} channel(s), {memory:.0f} MB in memory")
    t = time.perf_counter()
    seq = PatchSequence(cases, patch_cfg, aug, batch_size=2, steps_per_epoch=10**6, seed=0, augment=True)
    print(f"sampler set-up (coverage balancing): {time.perf_counter() - t:.2f} s")
    plain = PatchSequence(cases, patch_cfg, aug, batch_size=2, steps_per_epoch=10**6, seed=0, augment=False)
    default = PatchSequence(cases, patch_cfg, AugmentConfig(), batch_size=2, steps_per_epoch=10**6, seed=0)
    tenth = PatchSequence(cases, patch_cfg, replace(aug, noise_probability=0.1), batch_size=2,
                          steps_per_epoch=10**6, seed=0)
    sampler = seq.sampler
    spec_rate = rate(lambda n: sampler.spec(0, 0, n), seconds)
    cut_rate = rate(lambda n: cut_patch(cases[(s := sampler.spec(0, 0, n)).case], s), seconds)
    plain_rate = 2 * rate(lambda n: plain[n], seconds)
    default_rate = 2 * rate(lambda n: default[n], seconds)
    tenth_rate = 2 * rate(lambda n: tenth[n], seconds)
    aug_rate = 2 * rate(lambda n: seq[n], seconds)
    print(f"positions only:                     {spec_rate:8.0f} patches/s")
    print(f"positions + extraction:             {cut_rate:8.0f} patches/s")
    print(f"PatchSequence, no augmentation:     {plain_rate:8.0f} patches/s (batches of 2)")
    print(f"PatchSequence, default augmentation:{default_rate:8.0f} patches/s (flips, intensity scale/shift)")
    print(f"PatchSequence, + rot90, noise p=0.1:{tenth_rate:8.0f} patches/s (noise on 10 % of patches, nnU-Net)")
    print(f"PatchSequence, + rot90, noise p=1:  {aug_rate:8.0f} patches/s (a normal draw per voxel of every patch)")
    verdict = "OK" if min(tenth_rate, default_rate) >= 100 else "TOO SLOW"
    print(f"target >= 100 patches/s at 48³ with augmentation (20x the ~5 patches/s training uses): {verdict}")


def bench_targeting(n_seeds: int) -> None:
    tables = []
    for case in sorted(p for p in SHARED.iterdir() if p.is_dir()):
        mask, _ = read_mask(case / "lesion_mask.nii.gz")
        tables.append(index_lesions(mask, 26))
    labels = [t.labels() for t in tables]
    volumes = [t.volumes for t in tables]
    n_lesions = [t.n_lesions for t in tables]
    print(f"\ntargeting: {len(tables)} exams, {sum(n_lesions)} lesions (26-conn.), 1000 lesion patches of 48³, "
          f"jitter 0.5; seed 0, then mean [min] over seeds 0..{n_seeds - 1}")
    print(f"{'alpha':>5} {'balance':>7} | {'targeted':>8} {'ratio':>6} {'per-exam':>8} | "
          f"{'mean targeted':>13} {'mean ratio':>15} {'mean per-exam':>15}")
    for alpha, balance in ((0.0, True), (0.0, False), (1.0, False), (1.0, True)):
        sampler = PatchSampler(tables, (48, 48, 48), (1, 0, 0), alpha=alpha, jitter=0.5, balance=balance)
        runs = []
        for seed in range(n_seeds):
            s = summarize_targeting(volumes, target_counts(labels, n_lesions, sampler.specs(seed, 0, 1000)))
            runs.append((s.targeted_fraction, s.ratio, s.case_ratio))
        r = np.array(runs)
        first, mean, low = r[0], r.mean(0), r.min(0)
        print(f"{alpha:5.1f} {str(balance):>7} | {first[0]:8.1%} {first[1]:6.2f} {first[2]:8.2f} | "
              f"{mean[0]:6.1%} [{low[0]:5.1%}] {mean[1]:6.2f} [{low[1]:5.2f}] {mean[2]:6.2f} [{low[2]:5.2f}]")
    print("criteria (alpha 0): targeted >= 95 %, ratio >= 0.5; issue author's voxel-proportional "
          "sampler: 87 %, 0.17")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per throughput measurement")
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the targeting statistics")
    args = parser.parse_args()
    setup_logging(quiet=True)
    if SHARED.is_dir():
        from lesionseg.sampling.feed import load_cases

        t = time.perf_counter()
        cfg = Config()
        cases = load_cases(cfg, sorted(p for p in SHARED.iterdir() if p.is_dir()))
        print(f"loaded the 6 shared exams (flair + t1) in {time.perf_counter() - t:.1f} s")
    else:
        print("../shared/data absent: synthetic volumes; targeting skipped")
        cases = synthetic_cases()
    bench_throughput(cases, args.seconds)
    if SHARED.is_dir():
        bench_targeting(args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
