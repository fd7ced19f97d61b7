"""Reading, coercing, overriding and saving configurations.

A configuration file (TOML, YAML or JSON) has one table per stage; its values
are coerced to the types of the section dataclasses (lists to tuples, YAML
strings like ``1e-4`` to floats), ``--set section.key=value`` overrides are
applied on top, and the resolved configuration is saved as YAML next to every
output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import yaml

from lesionseg.config.sections import Config
from lesionseg.data.writing import atomic_path
from lesionseg.errors import LesionsegError

_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def load_run_config(path: str | Path) -> Config:
    """A run's stored ``config.yaml``: complete as ``train`` wrote it, every error naming the file.

    A stored config without its ``data`` or ``model`` section would silently take the defaults
    (other channels, another normalisation) and predict with settings the model was not trained on.
    """
    path = Path(path)
    raw = _read_file(path)
    missing = [name for name in ("data", "model") if not isinstance(raw.get(name), dict) or not raw[name]]
    if missing:
        raise LesionsegError(f"{path}: no {' and no '.join(f'[{m}]' for m in missing)} section; a run's config "
                             "is the complete one train wrote (restore it, or train again)")
    try:
        return config_from_dict(raw)
    except LesionsegError as exc:
        raise LesionsegError(f"{path}: {exc}") from None


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LesionsegError(f"{path}: config file not found")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise LesionsegError(f"{path}: config must be .toml, .yaml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LesionsegError(f"{path}: not a text file (a config is UTF-8 TOML, YAML or JSON)") from None
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raw = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise LesionsegError(f"{path}: not a valid config file ({first})") from None
    if not isinstance(raw, dict):
        raise LesionsegError(
            f"{path}: a config is a table of sections ([data], [train], ...), got a {type(raw).__name__}"
        )
    return raw


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a parsed value to the dataclass field's type (lists to tuples)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if hint is type(None) or (args and type(None) in args):
            return None
        raise LesionsegError(f"config {where}: null is not allowed")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise LesionsegError(f"config {where}: expected a table, got {value!r}")
        return dict(value)
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise LesionsegError(f"config {where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and not math.isfinite(value):
            raise LesionsegError(f"config {where}: expected an integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise LesionsegError(f"config {where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LesionsegError(f"config {where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (bool, list, tuple, dict)):
            raise LesionsegError(f"config {where}: expected a text value, got {value!r}")
        return str(value)
    return value


def _build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise LesionsegError(
            f"config [{section}]: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dictionaries (unknown keys are errors)."""
    hints = typing.get_type_hints(Config)
    unknown = set(raw) - set(hints)
    if unknown:
        raise LesionsegError(
            f"config: unknown section(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(hints)}"
        )
    sections = {}
    for name, cls in hints.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise LesionsegError(f"config [{name}]: expected a table")
        sections[name] = _build_section(cls, values, name)
    return Config(**sections)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value`` into its parts (value parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise LesionsegError(f"--set {text!r}: expected section.key=value")
    dotted, raw_value = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as text, also inside tables such as loss.params
    return section, key, value


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dictionaries (tuples as lists) of a configuration."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {
        name: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, name)).items()}
        for name in typing.get_type_hints(Config)
    }


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a configuration file and apply command-line overrides.

    Parameters
    ----------
    path : str or Path or None
        A ``.toml``, ``.yaml``/``.yml`` or ``.json`` file; ``None`` for defaults.
    overrides : list of str
        ``section.key=value`` strings applied after the file, in order.

    Returns
    -------
    Config
        The resolved configuration, every section validated (types, ranges, choices and the
        patch size against the model depth), also the sections the calling command uses later.

    Raises
    ------
    LesionsegError
        On a missing or malformed file, an unknown key or a wrong type.
    """
    raw: dict[str, Any] = _read_file(Path(path)) if path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of the nested ``raw`` configuration with ``section.key=value`` overrides applied in order.

    The one override path of every command (``--set``); ``section.key.sub=value`` sets one
    entry of a table such as ``loss.params``.
    """
    raw = {k: {**v} if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if raw.get(section) is None:
            raw[section] = {}
        table = raw[section]
        if not isinstance(table, dict):
            raise LesionsegError(f"--set {text}: [{section}] of the config is {table!r}, not a table of keys")
        if "." in key:  # e.g. loss.params.delta=0.6
            key, sub = key.split(".", 1)
            inner = table.get(key)
            if inner is not None and not isinstance(inner, dict):
                raise LesionsegError(f"--set {text}: {section}.{key} is a single value ({inner!r}), not a table")
            table[key] = {**(inner or {}), sub: value}
        else:
            table[key] = value
    return raw


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically) and return its path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
