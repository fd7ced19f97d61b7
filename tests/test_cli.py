"""Command-line basics: help for every subcommand, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lesionseg.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"lesionseg {command}" in out and len(out) > 200


def test_bad_config_value_is_one_line(tmp_path, capsys):
    code = main(["check", str(tmp_path), "--set", "train.epochs=lots"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("ERROR config train.epochs: expected an integer") and err.count("\n") == 1


def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lesionseg", "check", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("data folder not found")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "seven"])
def test_numeric_options_refuse_what_is_not_a_finite_number(value, tmp_path, capsys):
    """Every float option: nan/inf/words stop in the usage line (exit 2), never deep in a stage."""
    float_options = [("thick-slices", "--in-plane-mm"), ("thick-slices", "--slice-mm"), ("atlas", "--sigma-mm"),
                     ("atlas", "--coverage")]
    for command, option in float_options:
        required = {"thick-slices": ["--data", str(tmp_path), "--out", str(tmp_path / "o")],
                    "atlas": ["--model", str(tmp_path), "--masks", str(tmp_path)]}[command]
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([command, *required, option, value])
        assert exc.value.code == 2
        assert f"argument {option}" in capsys.readouterr().err


def test_thick_slice_grid_refuses_non_finite_sizes():
    import numpy as np

    from lesionseg.data.io import Grid
    from lesionseg.data.simulate import thick_slice_grid
    from lesionseg.errors import LesionsegError

    grid = Grid(shape=(10, 10, 10), affine=np.eye(4), zooms=(1.0, 1.0, 1.0))
    with pytest.raises(LesionsegError, match="need slice_mm > 0"):
        thick_slice_grid(grid, slice_mm=7.0, in_plane_mm=float("nan"))
