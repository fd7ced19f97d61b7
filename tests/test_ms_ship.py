"""``pipelines/ms_experiments.py ship``: a model goes to models/ with its own report, never an earlier one's."""

from __future__ import annotations

import argparse

from conftest import load_pipeline


def _ms_experiments():
    return load_pipeline("ms_experiments")


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_model_trained_on_every_exam_ships_its_fit_report_and_drops_the_earlier_models_files(tmp_path):
    ms = _ms_experiments()
    run, dst = tmp_path / "run", tmp_path / "models" / "m"
    for name in ("model.keras", "config.yaml", "tuning.json", "split.csv"):
        _write(run / name, f"new {name}")
    _write(run / "fit_report" / "cases.csv", "case,GT\na,1\n")
    _write(run / "fit_report" / "summary.csv", "cases,GT\n1,1\n")
    # what an earlier model left there: its held-out report and an atlas this run does not have
    _write(dst / "validation" / "cases.csv", "case,GT\nold,9\n")
    _write(dst / "lesion_atlas.json", "{}")
    _write(dst / "MODEL_CARD.md", "card")

    ms.cmd_ship(argparse.Namespace(run=str(run), to=str(dst)))

    assert (dst / "model.keras").read_text() == "new model.keras"
    assert (dst / "fit" / "cases.csv").read_text() == "case,GT\na,1\n"
    assert not (dst / "validation").exists()
    assert not (dst / "lesion_atlas.json").exists()
    assert (dst / "MODEL_CARD.md").read_text() == "card"  # the card is written by hand, never replaced


def test_a_fold_model_ships_its_held_out_report_as_validation(tmp_path):
    ms = _ms_experiments()
    run, dst = tmp_path / "run", tmp_path / "m"
    _write(run / "model.keras")
    _write(run / "report" / "cases.csv", "case,GT\nheld,3\n")
    _write(run / "report" / "summary.csv", "cases,GT\n1,3\n")
    _write(dst / "fit" / "cases.csv", "case,GT\nold,9\n")

    ms.cmd_ship(argparse.Namespace(run=str(run), to=str(dst)))

    assert (dst / "validation" / "cases.csv").read_text() == "case,GT\nheld,3\n"
    assert not (dst / "fit").exists()


def test_an_ensemble_ships_with_its_members_and_a_single_model_drops_earlier_members(tmp_path):
    ms = _ms_experiments()
    ens, single, dst = tmp_path / "ens", tmp_path / "single", tmp_path / "models" / "m"
    for name in ("model.keras", "config.yaml", "ensemble.json", "members/member_1.keras"):
        _write(ens / name, f"ens {name}")
    ms.cmd_ship(argparse.Namespace(run=str(ens), to=str(dst)))
    assert (dst / "members" / "member_1.keras").read_text() == "ens members/member_1.keras"
    assert (dst / "ensemble.json").read_text() == "ens ensemble.json"
    for name in ("model.keras", "config.yaml"):
        _write(single / name, f"single {name}")
    ms.cmd_ship(argparse.Namespace(run=str(single), to=str(dst)))
    assert not (dst / "members").exists() and not (dst / "ensemble.json").exists()
    assert (dst / "model.keras").read_text() == "single model.keras"
