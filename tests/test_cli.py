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
