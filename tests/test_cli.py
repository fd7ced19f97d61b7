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
    """Every float option: nan/inf/words stop at the command line (one line, exit 1), never deep in a stage."""
    float_options = [("thick-slices", "--in-plane-mm"), ("thick-slices", "--slice-mm"), ("atlas", "--sigma-mm"),
                     ("atlas", "--coverage")]
    for command, option in float_options:
        required = {"thick-slices": ["--data", str(tmp_path), "--out", str(tmp_path / "o")],
                    "atlas": ["--model", str(tmp_path), "--masks", str(tmp_path)]}[command]
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([command, *required, option, value])
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"ERROR lesionseg {command}: argument {option}") and err.count("\n") == 1


def test_thick_slice_grid_refuses_non_finite_sizes():
    import numpy as np

    from lesionseg.data.io import Grid
    from lesionseg.data.simulate import thick_slice_grid
    from lesionseg.errors import LesionsegError

    grid = Grid(shape=(10, 10, 10), affine=np.eye(4), zooms=(1.0, 1.0, 1.0))
    with pytest.raises(LesionsegError, match="need slice_mm > 0"):
        thick_slice_grid(grid, slice_mm=7.0, in_plane_mm=float("nan"))


def test_compare_never_writes_into_a_report_it_reads(tmp_path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.csv").write_text("keep\n")
    for out, problem in ((report / "summary.csv", "inside the report folder"),
                         (report / "cmp.csv", "inside the report folder"),
                         (tmp_path / "cmp.html", "names the comparison CSV")):
        assert main(["compare", str(report), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1
    (tmp_path / "x.html").mkdir()  # the HTML page beside x.csv cannot be written
    assert main(["compare", str(report), "--out", str(tmp_path / "x.csv")]) == 1
    assert "x.html: is a folder" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    assert (report / "summary.csv").read_text() == "keep\n"


def test_infer_refuses_the_data_folder_of_a_single_case(samples_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(samples_dir, data)
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    for out in (data, data / "preds"):
        assert main(["infer", "--model", str(tmp_path / "no_run"), "--input", str(case), "--out", str(out)]) == 1
        assert "the data folder of the input case" in capsys.readouterr().err
    assert not (data / "preds").exists()
    assert main(["check", str(data)]) == 0
