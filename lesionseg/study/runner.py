"""Run a study: every cell through the ordinary train → infer → evaluate path, restartable.

``lesionseg study --config STUDY.toml --data DATA --out STUDY_DIR`` lays out::

    STUDY_DIR/results.csv                  one row per cell and variant, appended as cells finish
    STUDY_DIR/study.toml                   a copy of the study file it ran
    STUDY_DIR/folds/<fold>/{train,test}/   links to the fold's cases
    STUDY_DIR/cells/<cell>/cell_config.yaml, run/, pred_<variant>/, report_<variant>/, cell.log

Each step is the ``lesionseg`` command a user would type, in its own process (so cells run side by
side and a backend's state never leaks between them).  A cell whose rows are in ``results.csv`` is
never run again; an interrupted cell starts again where it stopped (training resumes from its last
checkpoint, a finished training is kept), so the runner can be stopped and restarted over days.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from lesionseg.config import save_config
from lesionseg.data import io
from lesionseg.errors import LesionsegError
from lesionseg.study.grid import Cell, Fold, Study, plan_study

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
COUNT_COLUMNS = ["GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1", "dice",
                 "pred_volume_ml", "truth_volume_ml", "blank_exams", "diagnostics", "train_seconds", "cell_seconds"]
#: ``lesionseg infer`` settings of each variant (``tuned`` also runs ``lesionseg tune`` first).
VARIANT_SETTINGS = {
    "default": ["infer.threshold=0.5", "infer.min_lesion_mm3=0"],
    "tuned": ["infer.threshold=null", "infer.min_lesion_mm3=null"],
    "no_overlap": ["infer.threshold=0.5", "infer.min_lesion_mm3=0", "infer.overlap=0"],
}
TRAINED_MARK = "trained"


class CellFailed(Exception):
    """A step of a cell exited non-zero (its log says why)."""


def last_error(log_file: Path) -> str:
    """The last ``ERROR ...`` line a step wrote to a cell's log (without the prefix), or ``""``."""
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.split("ERROR", 1)[1].strip() for line in lines if "ERROR" in line]
    return errors[-1] if errors else ""


def result_columns(study: Study) -> list[str]:
    """The header of ``results.csv``: cell, variant, loss, head, seed, the other grid keys, fold, counts."""
    extra = [c for c in (k for k in study.grid_keys) if c not in ("loss.name", "model.head", "train.seed")]
    return ["cell", "variant", "loss", "head", "seed", *extra, "fold", *COUNT_COLUMNS]


def finished(results: Path, columns: list[str]) -> set[tuple[str, str]]:
    """(cell, variant) pairs already in ``results.csv`` (a header from another grid is an error)."""
    if not results.is_file() or results.stat().st_size == 0:
        return set()
    with open(results, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if header != columns:
            raise LesionsegError(
                f"{results}: written by a study with other columns ({', '.join(header[:8])}, ...); "
                "use another --out for a different grid"
            )
        return {(row[0], row[1]) for row in reader if len(row) == len(columns)}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lesionseg", *args]


def link_fold(out: Path, fold: Fold, data_dir: Path) -> tuple[Path, Path]:
    """``OUT/folds/<fold>/train`` and ``.../test``: folders of links to the fold's cases."""
    paths = []
    for side, cases in (("train", fold.train), ("test", fold.test)):
        target = out / "folds" / fold.name / side
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for case in cases:
            (target / case).symlink_to((data_dir / case).resolve(), target_is_directory=True)
        paths.append(target)
    return paths[0], paths[1]


class CellRunner:
    """Runs the steps of one cell, each a ``lesionseg`` command logged to ``cell.log``."""

    def __init__(self, cell: Cell, cell_dir: Path, fold_dirs: tuple[Path, Path], backend: str, threads: int) -> None:
        self.cell, self.dir = cell, cell_dir
        self.train_dir, self.test_dir = fold_dirs
        self.backend, self.threads = backend, threads
        self.run_dir = cell_dir / "run"
        self.config_file = cell_dir / "cell_config.yaml"

    def step(self, args: list[str], backend: str = "") -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if backend:
            env["KERAS_BACKEND"] = backend
        with open(self.dir / "cell.log", "a") as sink:
            sink.write(f"\n$ lesionseg {' '.join(args)}\n")
            sink.flush()
            proc = subprocess.run(_command(*args), stdout=sink, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            reason = last_error(self.dir / "cell.log")
            raise CellFailed(f"`lesionseg {args[0]}` exited {proc.returncode}{': ' + reason if reason else ''} "
                             f"(see {self.dir / 'cell.log'})")

    def train(self) -> float:
        """Train (or resume, or keep a finished training); seconds spent now."""
        if (self.dir / TRAINED_MARK).is_file():
            return float((self.dir / TRAINED_MARK).read_text() or 0)
        t0 = time.perf_counter()
        config = self.cell.config
        config = replace(config, train=replace(config.train, threads=self.threads),
                         infer=replace(config.infer, workers=1))
        save_config(config, self.config_file)
        mode = ["--resume"] if (self.run_dir / "checkpoint").is_dir() else ["--overwrite"]
        self.step(["train", "--config", str(self.config_file), "--data", str(self.train_dir),
                   "--out", str(self.run_dir), *mode], self.backend)
        seconds = time.perf_counter() - t0
        (self.dir / TRAINED_MARK).write_text(f"{seconds:.1f}")
        return seconds

    def score(self, variant: str) -> dict[str, Any]:
        """Decide and evaluate the held-out cases one way; the variant's counts."""
        if variant == "tuned":
            self.step(["tune", "--model", str(self.run_dir), "--data", str(self.train_dir)])
        pred, report = self.dir / f"pred_{variant}", self.dir / f"report_{variant}"
        sets = [x for s in VARIANT_SETTINGS[variant] for x in ("--set", s)]
        self.step(["infer", "--model", str(self.run_dir), "--input", str(self.test_dir), "--out", str(pred),
                   "--force", *sets])
        self.step(["evaluate", "--pred", str(pred), "--truth", str(self.test_dir), "--out", str(report),
                   "--config", str(self.config_file)])
        return read_counts(report)


def read_counts(report: Path) -> dict[str, Any]:
    """Pooled counts, mean Dice, volumes and blank predictions of one evaluation report."""
    summary = pd.read_csv(report / "summary.csv").iloc[0]
    cases = pd.read_csv(report / "cases.csv")
    return {
        **{k: summary[k] for k in ("GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1")},
        "dice": summary["dice_mean"],
        "pred_volume_ml": float(cases.pred_volume_mm3.sum()) / 1000.0,
        "truth_volume_ml": float(cases.gt_volume_mm3.sum()) / 1000.0,
        "blank_exams": int((cases.pred_volume_mm3 == 0).sum()),
    }


def diagnostics_of(run_dir: Path) -> str:
    """The training diagnostics that fired (``blank``, ``everywhere``, ...), from ``train.log``."""
    path = run_dir / "train.log"
    if not path.is_file():
        return ""
    names = re.findall(r"DIAGNOSTIC (\w+)", path.read_text(errors="replace"))
    return ";".join(dict.fromkeys(names))


def run_cell(cell: Cell, study: Study, out: Path, fold_dirs: tuple[Path, Path], threads: int,
             todo: list[str]) -> list[dict[str, Any]]:
    """Train one cell and score it every way in ``todo``; its ``results.csv`` rows."""
    t0 = time.perf_counter()
    cell_dir = out / "cells" / cell.cell_id
    cell_dir.mkdir(parents=True, exist_ok=True)
    runner = CellRunner(cell, cell_dir, fold_dirs, study.backend, threads)
    train_seconds = runner.train()
    rows = []
    for variant in todo:
        counts = runner.score(variant)
        rows.append({"cell": cell.cell_id, "variant": variant, **cell_row(cell), **counts,
                     "diagnostics": diagnostics_of(runner.run_dir), "train_seconds": round(train_seconds, 1)})
    for row in rows:
        row["cell_seconds"] = round(time.perf_counter() - t0, 1)
    return rows


def cell_row(cell: Cell) -> dict[str, Any]:
    """loss, head, seed (from the cell's config) and the cell's grid columns."""
    c = cell.config
    return {"loss": c.loss.name, "head": c.model.head, "seed": c.train.seed, **cell.row()}


def check_data(data_dir: Path, cells: Sequence[Cell]) -> None:
    """Read every case as the pending cells will (channels and mask), before any cell starts.

    A bad exam would otherwise fail every cell that trains on it, each only in its own log.
    """
    from lesionseg.data.check import require_readable

    cases = io.list_cases(data_dir)
    seen = set()
    for cell in cells:
        data = cell.config.data
        key = (tuple(data.channels), data.mask, data.mask_values, data.affine_tolerance)
        if key not in seen:
            seen.add(key)
            log.info("checking the %d case(s) of %s (%s) before any cell starts", len(cases), data_dir,
                     ", ".join(data.channels))
            require_readable(cases, data, with_mask=True)


def remaining_seconds(durations: Sequence[float], cells_left: int, workers: int) -> float:
    """Wall time left: the cells still to finish at the mean duration so far, ``workers`` at a time."""
    if not durations or cells_left <= 0:
        return 0.0
    return sum(durations) / len(durations) * cells_left / max(1, min(workers, cells_left))


def run_study(study_file: Path, data_dir: Path, out: Path, parallel: int | None = None,
              limit: int | None = None, threads: int | None = None) -> Path:
    """The ``lesionseg study`` command: run every unfinished cell, append its rows to ``results.csv``.

    Parameters
    ----------
    study_file : Path
        ``STUDY.toml`` (:mod:`lesionseg.study.grid`).
    data_dir : Path
        Labelled cases.
    out : Path
        ``STUDY_DIR``.
    parallel : int or None
        Cells side by side (default: the study's ``parallel``).
    limit : int or None
        Run at most this many cells now (the rest on a later start).
    threads : int or None
        Training threads per cell (default: the machine's cores / ``parallel``); 1 leaves the other
        cores to other work.

    Returns
    -------
    Path
        ``STUDY_DIR/results.csv``.

    Raises
    ------
    LesionsegError
        A bad study file or grid (before anything runs), or cells that failed (after the others ran).
    """
    study = plan_study(study_file, data_dir)
    out, data_dir = Path(out), Path(data_dir)
    columns = result_columns(study)
    results = out / RESULTS_FILE
    done = finished(results, columns)
    out.mkdir(parents=True, exist_ok=True)
    if Path(study_file).resolve() != (out / "study.toml").resolve():  # the study may live in its own folder
        shutil.copyfile(study_file, out / "study.toml")
    todo = {c.cell_id: [v for v in study.variants if (c.cell_id, v) not in done] for c in study.cells}
    pending = [c for c in study.cells if todo[c.cell_id]]
    if limit is not None:
        pending = pending[:limit]
    workers = max(1, parallel or study.parallel)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    log.info("study %s: %d cell(s) x %d variant(s); %d finished, %d to run now, %d side by side (%d thread(s) each)",
             study.path, len(study.cells), len(study.variants), len(study.cells) - len([c for c in study.cells
                                                                                         if todo[c.cell_id]]),
             len(pending), workers, threads)
    if not pending:
        return results
    check_data(data_dir, pending)
    fold_dirs = {f.name: link_fold(out, f, data_dir) for f in study.folds}
    if not results.is_file() or results.stat().st_size == 0:
        with open(results, "w", newline="") as fh:
            csv.writer(fh).writerow(columns)
    lock, failed, durations = threading.Lock(), [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures: dict[Future, Cell] = {
            pool.submit(run_cell, c, study, out, fold_dirs[c.fold.name], threads, todo[c.cell_id]): c
            for c in pending
        }
        remaining = set(futures)
        finished_now = 0
        while remaining:
            ready, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in ready:
                cell = futures[future]
                finished_now += 1
                try:
                    rows = future.result()
                except (CellFailed, LesionsegError, OSError) as exc:
                    failed.append(cell.cell_id)
                    log.error("[%d/%d] %s failed: %s", finished_now, len(pending), cell.cell_id, exc)
                    continue
                with lock, open(results, "a", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=columns)
                    for row in rows:
                        writer.writerow({k: row.get(k, "") for k in columns})
                first = rows[0]
                durations.append(float(first["cell_seconds"]))
                eta = remaining_seconds(durations, len(pending) - finished_now, workers)
                log.info("[%d/%d] %s: TP %s FP %s FN %s, lesion F1 %.3f, Dice %.3f (%s) in %.0f s; ETA %.0f min",
                         finished_now, len(pending), cell.cell_id, first["TP"], first["FP"], first["FN"],
                         first["lesion_f1"], first["dice"], first["variant"], first["cell_seconds"], eta / 60)
    if failed:
        raise LesionsegError(f"{len(failed)} cell(s) failed ({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}); "
                             "a new start retries them")
    return results
