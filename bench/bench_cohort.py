"""Cohort scale: ``lesionseg infer`` on N exams with each engine, and what 40,000 exams would cost.

    .venv/bin/python bench/bench_cohort.py [--n 24] [--engines local:1 local:2 dask:2 ray:2]
        [--model models/ms_flair_t1] [--data ../shared/data/ms_lesions] [--set infer.overlap=0]
        [--out runs/bench_cohort] [--json FILE]

The cohort is N exam folders, copies (symbolic links) of the shared MNI exams taken in turn, so every
configuration predicts the same N real 182×218×182 exams.  Each configuration is one ordinary
``lesionseg infer --force --engine E --set infer.workers=W`` process, timed from launch to exit, with
its process tree sampled every 0.2 s for memory.  Reported per configuration:

- ``exams_per_min``: N / wall time (launch, imports, cluster start, model loading and shutdown
  included — what a user waits for);
- ``model_s``: the mean per-exam time the workers themselves report in ``PRED/cohort.csv`` (read,
  predict, decide, write one exam);
- ``overhead_s``: engine overhead per exam, ``(W × wall − Σ model_s) / N``: all worker time that is
  not an exam's own work (start-up, model loads, scheduling, idle tail), spread over the exams;
- ``startup_s``: launch until the first exam's own work began (first finish − its ``model_s``);
- ``peak_worker_mib``: the largest peak resident memory of any process that predicted (the main
  process for ``local:1``, else a worker process); ``peak_total_mib``: the whole tree at its fullest;
- ``identical``: every ``_pred.nii.gz`` equal, voxel for voxel, to the first configuration's, and
  the largest probability difference.

The projection for 40,000 exams uses the measured core-seconds per exam of the best 2-worker
configuration on this 2-core machine (``wall × cores / N``) and assumes nodes scale linearly,
which the 1 → 2 worker step measures on one node.  Needs ``psutil`` (installed with ``ray``;
``pip install psutil`` otherwise) and the engines' extras (``.[cluster]``, ``ray``); a missing
engine is skipped with a line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECTED_EXAMS = 40_000


def make_cohort(data: Path, n: int, folder: Path) -> list[Path]:
    """N exam folders under ``folder``: symbolic links to the shared exams, taken in turn."""
    exams = sorted(p for p in data.iterdir() if p.is_dir() and (p / "flair.nii.gz").exists())
    if not exams:
        raise SystemExit(f"bench_cohort: no exam folder with flair.nii.gz in {data}")
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        src = exams[i % len(exams)].resolve()
        dst = folder / f"exam{i:03d}_{src.name}"
        if not dst.is_symlink():
            dst.symlink_to(src, target_is_directory=True)
        cases.append(dst)
    return cases


class TreeMemory:
    """Samples the resident memory of a process and its descendants until stopped."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.peak_by_pid: dict[int, float] = {}
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0.0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                total += rss
                self.peak_by_pid[proc.pid] = max(self.peak_by_pid.get(proc.pid, 0.0), rss)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.every)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_config(engine: str, workers: int, model: Path, cohort: Path, out: Path, overrides: list[str]) -> dict:
    """One ``lesionseg infer`` run over the cohort; its timings and memory."""
    cmd = [sys.executable, "-m", "lesionseg", "infer", "--model", str(model), "--input", str(cohort),
           "--out", str(out), "--force", "--engine", engine, "--set", f"infer.workers={workers}"]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    log_file = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as memory:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log_file.read_text().strip().splitlines()[-3:]
        raise SystemExit(f"bench_cohort: {engine}:{workers} exited {rc}; see {log_file}: {' | '.join(tail)}")
    with open(out / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    model_s = [float(r["seconds"]) for r in rows]
    n = len(rows)
    # the first exam's own work began at (its finish - its seconds); finishes are local time stamps
    first_start = None
    for r in rows:
        try:
            stamp = datetime.fromisoformat(r["finished"]).timestamp() - float(r["seconds"])
        except (KeyError, ValueError):
            continue
        first_start = stamp if first_start is None else min(first_start, stamp)
    launched = time.time() - (time.perf_counter() - t0)
    root_pid = proc.pid
    peaks = memory.peak_by_pid
    worker_peaks = [v for pid, v in peaks.items() if pid != root_pid]
    peak_worker = peaks.get(root_pid, 0.0) if workers == 1 and engine == "local" else max(worker_peaks or [0.0])
    return {
        "config": f"{engine}:{workers}",
        "engine": engine,
        "workers": workers,
        "exams": n,
        "wall_s": round(wall, 1),
        "exams_per_min": round(60.0 * n / wall, 3),
        "model_s": round(sum(model_s) / n, 2),
        "overhead_s": round((workers * wall - sum(model_s)) / n, 2),
        "startup_s": round(first_start - launched, 1) if first_start is not None else None,
        "peak_worker_mib": round(peak_worker),
        "peak_main_mib": round(peaks.get(root_pid, 0.0)),
        "peak_total_mib": round(memory.peak_total),
        "processes": len(peaks),
        "log": str(log_file.relative_to(REPO) if log_file.is_relative_to(REPO) else log_file),
    }


def compare_outputs(reference: Path, other: Path) -> tuple[bool, float]:
    """Whether every mask equals the reference's, and the largest probability difference."""
    import nibabel as nib
    import numpy as np

    same, worst = True, 0.0
    for ref in sorted(reference.glob("*_pred.nii.gz")):
        mine = other / ref.name
        if not mine.exists():
            return False, float("inf")
        same &= bool(np.array_equal(np.asarray(nib.load(ref).dataobj), np.asarray(nib.load(mine).dataobj)))
        prob = ref.name.replace("_pred.nii.gz", "_prob.nii.gz")
        a = np.asarray(nib.load(reference / prob).dataobj, dtype=np.float32)
        b = np.asarray(nib.load(other / prob).dataobj, dtype=np.float32)
        worst = max(worst, float(np.abs(a - b).max()))
    return same, worst


def engine_available(engine: str) -> bool:
    module = {"local": None, "dask": "distributed", "ray": "ray"}[engine]
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def projection(core_s_per_exam: float, cores_per_node: int, nodes: tuple[int, ...]) -> list[dict]:
    """Hours for 40,000 exams on K nodes at the measured core-seconds per exam (linear scaling)."""
    rows = []
    for k in nodes:
        hours = PROJECTED_EXAMS * core_s_per_exam / (k * cores_per_node) / 3600.0
        rows.append({"nodes": k, "cores_per_node": cores_per_node, "hours": round(hours, 1)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="exams in the cohort (default 24)")
    parser.add_argument("--engines", nargs="+", default=["local:1", "local:2", "dask:2", "ray:2"],
                        help="ENGINE:WORKERS configurations, in order (the first is the reference for outputs)")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "ms_flair_t1")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ms_lesions")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config overrides passed to every infer run (e.g. infer.overlap=0)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_cohort")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"bench_cohort: {args.data} not found (the shared exams); nothing measured")
        return 0
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("bench_cohort: needs psutil (pip install -e '.[bench]'); nothing measured")
        return 0

    cohort = args.out / "exams"
    make_cohort(args.data, args.n, cohort)
    results = []
    reference: Path | None = None
    for item in args.engines:
        engine, _, workers = item.partition(":")
        if not engine_available(engine):
            print(f"{item}: skipped ({engine} is not installed)")
            continue
        out = args.out / f"pred_{engine}_{workers or 1}"
        print(f"{item}: {args.n} exams ...", flush=True)
        row = run_config(engine, int(workers or 1), args.model, cohort, out, args.overrides)
        if reference is None:
            reference = out
            row["identical"], row["max_prob_diff"] = True, 0.0
        else:
            row["identical"], row["max_prob_diff"] = compare_outputs(reference, out)
        results.append(row)
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("config", "log")), flush=True)

    two = [r for r in results if r["workers"] == 2]
    summary: dict[str, object] = {"n": args.n, "overrides": args.overrides, "model": str(args.model),
                                  "cpus": os.cpu_count(), "configs": results}
    if two:
        best = max(two, key=lambda r: r["exams_per_min"])
        core_s = best["wall_s"] * (os.cpu_count() or 1) / best["exams"]
        summary["core_s_per_exam"] = round(core_s, 1)
        summary["projection"] = {
            "from": best["config"],
            "rows": projection(core_s, 2, (1, 10, 100)) + projection(core_s, 32, (1, 10, 50)),
        }
        one = next((r for r in results if r["config"] == "local:1"), None)
        if one:
            summary["speedup_1_to_2"] = round(best["exams_per_min"] / one["exams_per_min"], 2)
    print(json.dumps({k: v for k, v in summary.items() if k != "configs"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
