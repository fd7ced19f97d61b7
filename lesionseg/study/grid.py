"""A study's plan: the ``STUDY.toml`` file, its folds and the grid of cells.

``STUDY.toml``::

    [study]
    base = "ms_flair_t1.toml"          # training config every cell starts from (relative to this file)
    variants = ["default", "tuned"]    # how each trained cell is decided and scored (VARIANTS)
    parallel = 2                       # cells side by side (each trains with cores / parallel threads)
    backend = ""                       # Keras backend of the training step ("" = the environment's)

    [study.grid]                       # every combination is one cell (x every fold)
    "loss.name" = ["dice", "bce"]
    "model.head" = ["sigmoid", "softmax"]
    "train.seed" = [0, 1]

    [study.set]                        # the same for every cell (e.g. a short budget)
    "train.epochs" = 8

    [study.folds]                      # optional; default: leave one patient (data.group_pattern) out
    L07 = ["lesjak_patient07"]

Every cell's configuration (base + ``[study.set]`` + its grid values) is
resolved and validated when the study is planned, before anything runs: a
wrong key or value is a one-line error naming the cell.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionseg.config import Config, config_from_dict, config_to_dict
from lesionseg.config.loading import apply_overrides, load_config
from lesionseg.data.split import group_key
from lesionseg.errors import LesionsegError

#: How a trained cell is decided and scored:
#: ``default`` threshold 0.5, no size filter, the config's window overlap;
#: ``tuned`` threshold and minimum size tuned on the fold's *training* cases;
#: ``no_overlap`` threshold 0.5, no size filter, windows that do not overlap (nothing averaged).
VARIANTS = ("default", "tuned", "no_overlap")

#: Short column names of the common grid keys in ``results.csv``.
ALIASES = {"loss.name": "loss", "model.head": "head", "train.seed": "seed"}


@dataclass(frozen=True)
class Fold:
    """Held-out cases of one fold; the fold trains on every other case of the data."""

    name: str
    test: tuple[str, ...]
    train: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One run of the study: grid values and a fold.

    Attributes
    ----------
    values : tuple of (str, Any)
        ``(section.key, value)`` pairs of the grid, in grid order.
    fold : Fold
        Training and held-out cases.
    config : Config
        The resolved configuration of the cell (validated).
    """

    values: tuple[tuple[str, Any], ...]
    fold: Fold
    config: Config = field(compare=False, repr=False)

    @property
    def cell_id(self) -> str:
        """A readable folder-safe name, unique in the grid, e.g. ``loss.name-dice_train.seed-0_fold-L07``."""
        parts = [f"{k}-{_slug(v)}" for k, v in self.values] + [f"fold-{_slug(self.fold.name)}"]
        return "_".join(parts)

    def row(self) -> dict[str, Any]:
        """The cell's grid columns of ``results.csv``."""
        return {**{column_name(k): _plain(v) for k, v in self.values}, "fold": self.fold.name}


@dataclass(frozen=True)
class Study:
    """A planned study: its file, settings and every cell."""

    path: Path
    variants: tuple[str, ...]
    parallel: int
    backend: str
    grid_keys: tuple[str, ...]
    folds: tuple[Fold, ...]
    cells: tuple[Cell, ...]


def column_name(key: str) -> str:
    """The ``results.csv`` column of a grid key (``loss.name`` → ``loss``)."""
    return ALIASES.get(key, key)


def _plain(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "", text) or "x"


def _as_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def read_study(path: Path) -> dict[str, Any]:
    """The ``[study]`` table of a study file (one-line errors for a missing or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise LesionsegError(f"{path}: study file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LesionsegError(f"{path}: not a valid TOML study file ({str(exc).splitlines()[0]})") from None
    study = raw.get("study")
    if not isinstance(study, dict):
        raise LesionsegError(f"{path}: needs a [study] table (base, grid, ...)")
    unknown = set(study) - {"base", "variants", "parallel", "backend", "grid", "set", "folds"}
    if unknown:
        raise LesionsegError(f"{path}: unknown [study] key(s): {', '.join(sorted(unknown))}")
    return study


def case_names(data_dir: Path) -> list[str]:
    """The case folders of ``data_dir`` (sorted)."""
    from lesionseg.data.io import list_cases

    return [d.name for d in list_cases(Path(data_dir))]


def make_folds(spec: dict[str, Any] | None, cases: Sequence[str], pattern: str | None, where: Path) -> tuple[Fold, ...]:
    """Folds from ``[study.folds]`` or, without it, one per patient (leave-one-group-out)."""
    cases = list(cases)
    if spec:
        held: dict[str, list[str]] = {}
        for name, test in spec.items():
            if isinstance(test, str):
                test = [test]
            if not isinstance(test, list) or not test:
                raise LesionsegError(f"{where}: [study.folds] {name} must be a list of case names")
            missing = [c for c in test if c not in cases]
            if missing:
                raise LesionsegError(f"{where}: [study.folds] {name}: no case {', '.join(missing)} in the data")
            held[str(name)] = list(test)
    else:
        held = {}
        for case in cases:
            held.setdefault(group_key(case, pattern), []).append(case)
    folds = []
    for name, test in held.items():
        train = tuple(c for c in cases if c not in test)
        if not train:
            raise LesionsegError(f"{where}: fold {name} leaves no case to train on")
        folds.append(Fold(name, tuple(test), train))
    if not folds:
        raise LesionsegError(f"{where}: no fold (the data has no case)")
    return tuple(folds)


def plan_study(path: Path, data_dir: Path) -> Study:
    """Read a study file and expand its grid over its folds; every cell's config is validated.

    Parameters
    ----------
    path : Path
        ``STUDY.toml``.
    data_dir : Path
        The labelled cases the folds split.

    Returns
    -------
    Study

    Raises
    ------
    LesionsegError
        A malformed study file, an unknown variant, a case named by a fold that the data lacks,
        or a cell whose configuration is invalid (named in the message).
    """
    path = Path(path)
    spec = read_study(path)
    if "base" not in spec:
        raise LesionsegError(f"{path}: [study] base (the training config every cell starts from) is missing")
    base_path = (path.parent / str(spec["base"])).resolve()
    fixed = [_as_override(k, v) for k, v in (spec.get("set") or {}).items()]
    base = config_to_dict(load_config(base_path, fixed))
    variants = tuple(spec.get("variants", ["default"]))
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise LesionsegError(f"{path}: [study] variants must be some of {', '.join(VARIANTS)}, got {list(variants)}")
    parallel = spec.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise LesionsegError(f"{path}: [study] parallel must be an integer >= 1, got {parallel!r}")
    backend = str(spec.get("backend", "") or "")
    if backend not in ("", "tensorflow", "torch", "jax"):
        raise LesionsegError(f"{path}: [study] backend must be tensorflow, torch or jax, got {backend!r}")
    if backend and importlib.util.find_spec(backend) is None:
        raise LesionsegError(f"{path}: [study] backend {backend!r} is not installed here "
                             f"(install it, or set backend = \"\" to train on the environment's backend)")
    grid = spec.get("grid") or {}
    for key, values in grid.items():
        if "." not in key or not isinstance(values, list) or not values:
            raise LesionsegError(f"{path}: [study.grid] {key!r} must be section.key = [values, ...]")
    folds = make_folds(spec.get("folds"), case_names(data_dir), config_from_dict(base).data.group_pattern, path)
    keys = tuple(grid)
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = tuple(zip(keys, combo))
        try:
            config = config_from_dict(apply_overrides(base, [_as_override(k, v) for k, v in values]))
        except LesionsegError as exc:
            raise LesionsegError(f"{path}: cell {dict(values)}: {exc}") from None
        cells.extend(Cell(values, fold, config) for fold in folds)
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        raise LesionsegError(f"{path}: two cells share a name; make the grid values distinct")
    return Study(path, variants, parallel, backend, keys, folds, tuple(cells))
