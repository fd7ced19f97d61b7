"""Cohort outputs of ``lesionseg infer``: one row per exam as exams finish, and the exams that failed.

``PRED/cohort.csv``: ``case, lesions, volume_ml, n_small, n_medium, n_large, volume_small_ml,
volume_medium_ml, volume_large_ml, model, model_sha256, config_sha256, seconds, finished`` — lesions
are the connected components of the written mask (``infer.connectivity``), small < 10 mm³,
medium 10–100 mm³, large ≥ 100 mm³.  A row is appended the moment an exam's outputs are complete,
so the file is usable while a long run goes on; at the end of a run it is rewritten with one row per
exam (the latest), in case order.

``PRED/failures.csv`` (``lesionseg infer --keep-going``): ``case, file, reason`` for every exam
that could not be predicted in the latest run; ``--retry-failed`` predicts just those again.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionseg.data.labels import label_components
from lesionseg.data.writing import atomic_path
from lesionseg.provenance import Source, read_cohort_row

COHORT_FILE = "cohort.csv"
FAILURES_FILE = "failures.csv"
COHORT_COLUMNS = ["case", "lesions", "volume_ml", "n_small", "n_medium", "n_large", "volume_small_ml",
                  "volume_medium_ml", "volume_large_ml", "model", "model_sha256", "config_sha256", "seconds", "finished"]
FAILURE_COLUMNS = ["case", "file", "reason"]
#: Lesion size classes (mm³): small below the first, large from the second.
SIZE_CLASSES_MM3 = (10.0, 100.0)


@dataclass(frozen=True)
class Failure:
    """An exam that could not be predicted: its id, the file at fault, and the one-line reason."""

    case: str
    file: str
    reason: str


def cohort_row(case_id: str, pred: np.ndarray, zooms: Iterable[float], connectivity: int, source: Source,
               seconds: float) -> dict[str, object]:
    """The ``cohort.csv`` row of one predicted exam."""
    voxel_mm3 = float(np.prod([float(z) for z in zooms]))
    labels, n = label_components(np.asarray(pred) != 0, connectivity)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64) * voxel_mm3
    small, large = SIZE_CLASSES_MM3
    classes = (sizes < small, (sizes >= small) & (sizes < large), sizes >= large)
    return {
        "case": case_id,
        "lesions": int(n),
        "volume_ml": round(float(sizes.sum()) / 1000.0, 4),
        "n_small": int(classes[0].sum()), "n_medium": int(classes[1].sum()), "n_large": int(classes[2].sum()),
        "volume_small_ml": round(float(sizes[classes[0]].sum()) / 1000.0, 4),
        "volume_medium_ml": round(float(sizes[classes[1]].sum()) / 1000.0, 4),
        "volume_large_ml": round(float(sizes[classes[2]].sum()) / 1000.0, 4),
        "model": source.model, "model_sha256": source.model_sha256, "config_sha256": source.config_sha256,
        "seconds": round(float(seconds), 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def append_cohort_row(out_dir: Path, row: dict[str, object]) -> None:
    """Append one exam's row to ``PRED/cohort.csv`` (header first when the file is new), flushed."""
    path = Path(out_dir) / COHORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COHORT_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()


def compact_cohort(out_dir: Path, case_order: list[str], complete: Iterable[str] = ()) -> None:
    """Rewrite ``cohort.csv`` with one row per exam (its latest), in ``case_order`` (others after).

    An exam in ``complete`` (its outputs and record are in ``out_dir``) whose row is missing — a run
    killed after the exam's record and before its row — gets the row kept in its record back.
    """
    path = Path(out_dir) / COHORT_FILE
    rows: list[dict[str, object]] = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("case") and len(r) == len(COHORT_COLUMNS)]
    latest: dict[str, dict[str, object]] = {}
    for r in rows:
        latest[str(r["case"])] = r
    for case_id in complete:
        if case_id not in latest:
            kept = read_cohort_row(out_dir, case_id)
            if kept is not None and set(kept) == set(COHORT_COLUMNS):
                latest[case_id] = kept
    if not latest:
        return
    order = {c: i for i, c in enumerate(case_order)}
    ordered = sorted(latest.values(), key=lambda r: (order.get(str(r["case"]), len(order)), str(r["case"])))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COHORT_COLUMNS)
            writer.writeheader()
            writer.writerows(ordered)


def write_failures(out_dir: Path, failures: list[Failure]) -> Path | None:
    """``PRED/failures.csv`` of the latest run (removed when nothing failed); its path or None."""
    path = Path(out_dir) / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(FAILURE_COLUMNS)
            for f in failures:
                writer.writerow([f.case, f.file, f.reason])
    return path


def read_failed_cases(out_dir: Path) -> list[str]:
    """The case ids listed in ``PRED/failures.csv`` (empty when there is none)."""
    path = Path(out_dir) / FAILURES_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [r["case"] for r in csv.DictReader(fh) if r.get("case")]
