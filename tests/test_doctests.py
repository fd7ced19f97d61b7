"""Every ``>>>`` example in the package runs: one test per module that has any.

The modules are found by walking the package (``lesionseg.__main__`` is skipped:
importing it would run the CLI), so a doctest added to any module is picked up
without editing this file.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import lesionseg

SKIP = {"lesionseg.__main__"}


def _unimportable(name: str) -> None:
    raise ImportError(f"{name}: cannot import (walk_packages would skip it silently)")


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(lesionseg.__path__, prefix="lesionseg.", onerror=_unimportable):
        if info.name in SKIP:
            continue
        spec = importlib.util.find_spec(info.name)
        origin = getattr(spec, "origin", None)
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as f:
                if ">>>" in f.read():
                    names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_modules_found():
    assert len(MODULES) >= 5, MODULES  # the walk itself works


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctest(s) failed"
    assert result.attempted > 0, f"{name} contains '>>>' but no doctest ran"
