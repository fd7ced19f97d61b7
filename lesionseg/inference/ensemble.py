"""Several trained models that predict as one: lesion probabilities averaged before the decision.

Models trained with other seeds (or on other folds) paint false lesions in different places and
the true ones in the same: averaging their lesion probabilities keeps what they agree on.  An
ensemble is an ordinary run folder, so ``infer``, ``tune`` and ``evaluate`` take it as they take
any run::

    RUN/model.keras            first member (the run folder of any trained model has it)
    RUN/members/<name>.keras   further members, averaged with it
    RUN/ensemble.json          the members' sources and SHA-256 (checked when the run is loaded)
    RUN/config.yaml            the first member's configuration (history.csv, curves.png: its training)
    RUN/members/<name>.history.csv   each further member's training history
    RUN/split.csv              the exams the members trained on, when they all trained on the same

:func:`build_ensemble` (``lesionseg ensemble --runs A B ... --out RUN``) makes one from trained
runs whose inputs agree: the same channels, normalisation, preprocessing, window and head (how an
exam becomes the network's input and its output a probability); depth, width, loss, seed and
training data may differ.  The tuned decision of a member is not carried over (it belongs to
that model); ``lesionseg tune`` tunes the ensemble's own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from lesionseg.config import Config, config_to_dict
from lesionseg.config.loading import load_run_config
from lesionseg.errors import LesionsegError
from lesionseg.provenance import file_sha256
from lesionseg.training.checkpoint import check_model_file

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"
ENSEMBLE_FILE = "ensemble.json"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"


def member_files(run_dir: str | Path) -> list[Path]:
    """The model files a run predicts with: ``model.keras``, then ``members/*.keras`` by name."""
    run_dir = Path(run_dir)
    extra = sorted((run_dir / MEMBERS_DIR).glob("*.keras")) if (run_dir / MEMBERS_DIR).is_dir() else []
    return [run_dir / MODEL_FILE, *extra]


def is_ensemble(run_dir: str | Path) -> bool:
    """Whether the run folder holds more than one model."""
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()


def input_signature(config: Config) -> dict[str, object]:
    """What makes an exam the network's input and its output a probability; members must share it."""
    return {
        "data": asdict(config.data),
        "preprocess": asdict(config.preprocess),
        "patches.size": config.patches.size,
        "model.head": config.model.head,
        "model.kind": config.model.kind,
    }


def check_members(run_dir: str | Path) -> list[Path]:
    """The run's model files, checked against ``ensemble.json`` when it has one.

    Raises
    ------
    LesionsegError
        A member listed in ``ensemble.json`` is missing, an unlisted one is present, or a member's
        SHA-256 differs from the one recorded (the file was replaced after the ensemble was made).
    """
    run_dir = Path(run_dir)
    files = member_files(run_dir)
    path = run_dir / ENSEMBLE_FILE
    if not path.is_file():
        if len(files) > 1:
            raise LesionsegError(f"{run_dir / MEMBERS_DIR}: members without {ENSEMBLE_FILE}; "
                                 "remake the ensemble with lesionseg ensemble")
        return files
    try:
        recorded = {m["file"]: m["sha256"] for m in json.loads(path.read_text())["members"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise LesionsegError(f"{path}: not a valid ensemble file ({exc})") from None
    present = {f.relative_to(run_dir).as_posix() for f in files if f.is_file()}
    if present != set(recorded):
        missing, extra = sorted(set(recorded) - present), sorted(present - set(recorded))
        raise LesionsegError(f"{path}: members differ from the files in {run_dir} "
                             f"(missing: {', '.join(missing) or 'none'}; unlisted: {', '.join(extra) or 'none'})")
    for f in files:
        rel = f.relative_to(run_dir).as_posix()
        if file_sha256(f) != recorded[rel]:
            raise LesionsegError(f"{f}: changed since the ensemble was made (SHA-256 differs from {path})")
    return files


def _member_config(run: Path) -> Config:
    if not (run / MODEL_FILE).is_file():
        raise LesionsegError(f"{run / MODEL_FILE}: missing; ensemble members are trained run folders")
    check_model_file(run / MODEL_FILE)
    if not (run / CONFIG_FILE).is_file():
        raise LesionsegError(f"{run / CONFIG_FILE}: missing; is {run} a lesionseg run folder?")
    if is_ensemble(run):
        raise LesionsegError(f"{run}: is an ensemble already; list its member runs instead")
    config = load_run_config(run / CONFIG_FILE)
    if config.model.kind == "threshold":
        raise LesionsegError(f"{run}: the threshold baseline has no network to average")
    return config


def check_compatible(runs: Sequence[str | Path]) -> list[Config]:
    """Each run's config, after checking every run is trained and shares the first one's inputs.

    Raises
    ------
    LesionsegError
        Fewer than two runs, a run listed twice, a run without a model, or a run whose channels,
        normalisation, preprocessing, window or head differ from the first's (the first key that
        differs is named).
    """
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise LesionsegError("ensemble: give at least two trained runs (--runs A B ...)")
    if len({r.resolve() for r in runs}) != len(runs):
        raise LesionsegError("ensemble: a run is listed twice")
    configs = [_member_config(r) for r in runs]
    first = input_signature(configs[0])
    for run, config in zip(runs[1:], configs[1:]):
        other = input_signature(config)
        for key in first:
            if first[key] != other[key]:
                detail = key
                if isinstance(first[key], dict):
                    detail = next(f"{key}.{k}" for k in first[key] if first[key][k] != other[key].get(k))
                raise LesionsegError(f"{run / CONFIG_FILE}: {detail} differs from {runs[0] / CONFIG_FILE}; "
                                     "ensemble members must prepare and read exams alike")
    return configs


def build_ensemble(runs: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Make the ensemble run folder ``out`` from trained runs (see the module docstring).

    The folder is assembled beside ``out`` and then put in its place (an earlier run there is
    replaced only once the new one is complete, as ``train`` does).

    Parameters
    ----------
    runs : sequence of path
        Trained run folders; the first gives the configuration.
    out : path
        The ensemble's run folder.
    overwrite : bool
        Replace a run ``out`` already holds (else that is an error, before anything is copied).

    Returns
    -------
    Path
        ``out``.
    """
    from lesionseg.training.checkpoint import holds_run, remove_path, replace_run

    runs, out = [Path(r) for r in runs], Path(out)
    configs = check_compatible(runs)
    if any(r.resolve() == out.resolve() for r in runs):
        raise LesionsegError(f"{out}: is one of the member runs; choose another --out")
    if holds_run(out) and not overwrite:
        raise LesionsegError(f"{out}: holds an earlier run ({', '.join(holds_run(out))}); "
                             "--overwrite replaces it once the ensemble is complete")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.ensemble-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / MEMBERS_DIR).mkdir(parents=True)
    try:
        targets = [tmp / MODEL_FILE] + [tmp / MEMBERS_DIR / f"member_{i}.keras" for i in range(1, len(runs))]
        members = []
        for run, config, target in zip(runs, configs, targets):
            shutil.copy2(run / MODEL_FILE, target)
            if (run / HISTORY_FILE).is_file():  # each model's training curve beside it
                shutil.copy2(run / HISTORY_FILE, target.with_suffix(".history.csv") if target.parent != tmp
                             else tmp / HISTORY_FILE)
            members.append({"file": target.relative_to(tmp).as_posix(), "source": str(run),
                            "sha256": file_sha256(target), "seed": config.train.seed})
        shutil.copy2(runs[0] / CONFIG_FILE, tmp / CONFIG_FILE)
        if (runs[0] / CURVES_FILE).is_file():
            shutil.copy2(runs[0] / CURVES_FILE, tmp / CURVES_FILE)
        splits = [r / SPLIT_FILE for r in runs]
        training_exams = "not recorded (a member has no split.csv)"
        if all(f.is_file() for f in splits) and len({f.read_bytes() for f in splits}) == 1:
            shutil.copy2(splits[0], tmp / SPLIT_FILE)  # every member trained on the same exams: say which
            training_exams = f"the same for every member ({SPLIT_FILE})"
        elif all(f.is_file() for f in splits):  # e.g. the fold models of a cross-validation
            _write_combined_split(splits, [m["file"] for m in members], tmp / SPLIT_FILE)
            training_exams = f"differ between members ({SPLIT_FILE}: the members that trained on each exam)"
        record = {"members": members, "average": "lesion probability, per window, before the decision",
                  "config_from": str(runs[0]),
                  "differences": _differences(configs),
                  "training_exams": training_exams}
        (tmp / ENSEMBLE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        if holds_run(out) or (out / ENSEMBLE_FILE).exists():
            replace_run(tmp, out)  # the earlier run moves aside first, then goes
        else:
            for item in tmp.iterdir():
                remove_path(out / item.name)
                os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("ensemble of %d models: %s (probabilities averaged before the decision; "
             "tune it with lesionseg tune --model %s)", len(runs), out, out)
    return out


def _write_combined_split(splits: Sequence[Path], files: Sequence[str], path: Path) -> None:
    """``split.csv`` of members trained on different exams: case, group, side, trained_by.

    ``side`` is ``train`` where at least one member trained on the exam (else what the members
    say, e.g. ``val``); ``trained_by`` names those members' files, space-separated.  A split that
    is not a lesionseg ``split.csv`` (no case/side columns) is an error naming it.
    """
    import csv

    rows: dict[str, dict[str, object]] = {}
    for split, file in zip(splits, files):
        with open(split, newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"case", "side"} <= set(reader.fieldnames or ()):
                raise LesionsegError(f"{split}: not a split.csv of lesionseg (needs case and side columns)")
            for line in reader:
                row = rows.setdefault(line["case"], {"group": line.get("group", ""), "sides": set(), "by": []})
                row["sides"].add(line["side"])
                if line["side"] == "train":
                    row["by"].append(file)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "group", "side", "trained_by"])
        for case in sorted(rows):
            row = rows[case]
            side = "train" if row["by"] else "/".join(sorted(row["sides"]))
            w.writerow([case, row["group"], side, " ".join(row["by"])])


def _differences(configs: Sequence[Config]) -> dict[str, list[object]]:
    """Config keys whose values differ between members (e.g. ``train.seed``), for the record."""
    flat = []
    for config in configs:
        raw = config_to_dict(config)
        flat.append({f"{s}.{k}": v for s, keys in raw.items() if isinstance(keys, dict) for k, v in keys.items()})
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1}
