"""Which model wrote a prediction: a small record beside each case's outputs.

``lesionseg infer`` writes ``PRED/<case>_record.json`` after the case's ``_prob`` and ``_pred``
files (atomically, last, so a record means the case is complete)::

    {"case": "sample01", "model": "runs/samples", "model_sha256": "…", "config_sha256": "…",
     "probability_sha256": "…", "threshold": 0.5, "min_lesion_mm3": 0.0, "min_atlas": 0.0,
     "lesionseg": "0.1.0", "written": "2026-…Z", "seconds": 3.2}

``probability_sha256`` hashes the settings the probability map depends on (the config without the
decision: :data:`DECISION_KEYS`); with the same model, a new decision (a new ``tune``, another
``--set infer.threshold``) is applied to the stored ``_prob`` map instead of predicting again.

``lesionseg evaluate`` reads them and refuses a folder whose predictions come from more than
one (model, config) pair unless told otherwise (``--allow-mixed``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lesionseg import __version__
from lesionseg.config import Config, config_to_dict
from lesionseg.data.writing import atomic_path
from lesionseg.errors import LesionsegError

RECORD_SUFFIX = "_record.json"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Settings that say how a run is executed, not what it computes: left out of the config hash, so a
#: rerun with more workers or another thread count keeps the exams already predicted.
EXECUTION_KEYS = {"infer": ("workers",), "train": ("threads",)}


#: Settings that decide a lesion mask from the probability map, and the evaluation's: they do not
#: change the probability map, so a stored one is reused when only they changed.
DECISION_KEYS = {"infer": ("threshold", "min_lesion_mm3", "min_atlas", "connectivity", "tune_thresholds",
                           "tune_min_sizes_mm3", "tune_min_atlas"), "evaluate": None}


def _hash_without(config: Config, *leave_out: dict[str, tuple[str, ...] | None]) -> str:
    raw = config_to_dict(config)
    for keys_of in leave_out:
        for section, keys in keys_of.items():
            if keys is None:
                raw.pop(section, None)
                continue
            for key in keys:
                raw.get(section, {}).pop(key, None)
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def config_sha256(config: Config) -> str:
    """SHA-256 of the resolved configuration (canonical JSON) without :data:`EXECUTION_KEYS`: same settings, same hash."""
    return _hash_without(config, EXECUTION_KEYS)


def probability_sha256(config: Config) -> str:
    """SHA-256 of what a probability map depends on: the configuration without execution and decision keys."""
    return _hash_without(config, EXECUTION_KEYS, DECISION_KEYS)


@dataclass(frozen=True)
class Source:
    """What produced a prediction: the model file's and the resolved config's hashes."""

    model: str
    model_sha256: str
    config_sha256: str

    @classmethod
    def of_run(cls, run_dir: Path, model_file: Path, config: Config) -> Source:
        return cls(str(run_dir), file_sha256(model_file), config_sha256(config))

    def short(self) -> str:
        return f"{self.model} (model {self.model_sha256[:8]}, config {self.config_sha256[:8]})"


def write_record(out_dir: Path, case_id: str, source: Source, threshold: float, min_mm3: float,
                 seconds: float, cohort: dict[str, object] | None = None, min_atlas: float = 0.0,
                 probability: str | None = None) -> Path:
    """Write ``<case>_record.json`` atomically; call it after the case's two images are written.

    ``probability`` is :func:`probability_sha256` of the config that made the ``_prob`` map.

    ``cohort`` is the case's ``cohort.csv`` row, kept in the record so that a run killed between the
    record and the row can restore the row (:func:`read_cohort_row`).
    """
    record = {
        "case": case_id,
        "model": source.model,
        "model_sha256": source.model_sha256,
        "config_sha256": source.config_sha256,
        "probability_sha256": probability,
        "threshold": threshold,
        "min_lesion_mm3": min_mm3,
        "min_atlas": min_atlas,
        "lesionseg": __version__,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
    }
    if cohort is not None:
        record["cohort"] = cohort
    path = Path(out_dir) / f"{case_id}{RECORD_SUFFIX}"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_source(pred_dir: Path, case_id: str) -> Source | None:
    """The source recorded for a case's prediction; ``None`` when it has no record (another tool)."""
    path = Path(pred_dir) / f"{case_id}{RECORD_SUFFIX}"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return Source(str(raw["model"]), str(raw["model_sha256"]), str(raw["config_sha256"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise LesionsegError(f"{path}: not a valid prediction record ({exc})") from None


def reusable_probability(pred_dir: Path, case_id: str, source: Source, probability: str) -> Path | None:
    """A case's stored ``_prob`` map when it was made by the same model file and probability settings.

    ``None`` without the map, a readable record, or a recorded ``probability_sha256`` (records
    written before it existed): the case is then predicted again.
    """
    prob = Path(pred_dir) / f"{case_id}_prob.nii.gz"
    path = Path(pred_dir) / f"{case_id}{RECORD_SUFFIX}"
    if not (prob.is_file() and path.is_file()):
        return None
    try:
        raw = json.loads(path.read_text())
        same = raw["model_sha256"] == source.model_sha256 and raw.get("probability_sha256") == probability
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return prob if same else None


def read_cohort_row(pred_dir: Path, case_id: str) -> dict[str, object] | None:
    """The ``cohort.csv`` row kept in a case's record; ``None`` without a record or a row in it."""
    path = Path(pred_dir) / f"{case_id}{RECORD_SUFFIX}"
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text()).get("cohort")
    except (ValueError, AttributeError):
        return None
    return row if isinstance(row, dict) else None


def is_complete(pred_dir: Path, case_id: str, source: Source,
                decision: tuple[float, float, float] | None = None) -> bool:
    """True when the case's two images and its record are in ``pred_dir`` and the record names ``source``.

    With ``decision`` = (threshold, min_lesion_mm3, min_atlas), the record must also hold that
    decision: a model tuned again since (``tuning.json``) predicts the case again.
    """
    pred_dir = Path(pred_dir)
    images = all((pred_dir / f"{case_id}_{kind}.nii.gz").is_file() for kind in ("prob", "pred"))
    if not images or read_source(pred_dir, case_id) != source:
        return False
    return decision is None or read_decision(pred_dir, case_id) == tuple(float(x) for x in decision)


def read_decision(pred_dir: Path, case_id: str) -> tuple[float, float, float] | None:
    """(threshold, min_lesion_mm3, min_atlas) of a case's record; ``None`` without a readable one."""
    path = Path(pred_dir) / f"{case_id}{RECORD_SUFFIX}"
    try:
        raw = json.loads(path.read_text())
        return (float(raw["threshold"]), float(raw["min_lesion_mm3"]), float(raw.get("min_atlas", 0.0)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_single_source(pred_dir: Path, case_ids: Iterable[str]) -> None:
    """Raise unless every prediction of ``case_ids`` comes from one source (or none has a record).

    A folder where one model's predictions were partly overwritten by another's would
    otherwise be scored as one run.
    """
    groups: dict[Source | None, list[str]] = {}
    for case_id in case_ids:
        groups.setdefault(read_source(pred_dir, case_id), []).append(case_id)
    if len(groups) <= 1:
        return
    parts = []
    for source, cases in groups.items():
        who = source.short() if source else "no record (not written by lesionseg infer)"
        parts.append(f"{len(cases)} from {who}: {', '.join(cases[:3])}{', ...' if len(cases) > 3 else ''}")
    raise LesionsegError(
        f"{pred_dir}: predictions of {len(groups)} different sources ({'; '.join(parts)}); "
        "re-run infer into an empty folder, or pass --allow-mixed"
    )
