"""The ``lesionseg`` command line: parses arguments, calls a stage, maps errors.

Every subcommand takes ``--config FILE`` (TOML/YAML/JSON) and any number of
``--set section.key=value`` overrides.  A problem with the user's input is
printed as one line ``ERROR <file>: <problem>`` and exits 1, without a
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from lesionseg import __version__
from lesionseg.config import (
    Config,
    apply_overrides,
    check_training_config,
    config_from_dict,
    config_to_dict,
    load_config,
)
from lesionseg.config.loading import load_run_config
from lesionseg.data.bids import is_bids
from lesionseg.errors import LesionsegError
from lesionseg.logs import setup_logging
from lesionseg.paths import check_output_file, check_output_folder, inside, remove_stale_temporaries

log = logging.getLogger("lesionseg")

EPILOG = "Docs: README.md. Data layout: DATA/<case>/<channel>.nii.gz + lesion_mask.nii.gz."



def finite_float(text: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` are refused in the usage line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value

def _add_config_args(p: argparse.ArgumentParser, config_help: str = "stage config file") -> None:
    p.add_argument("--config", "-c", type=Path, help=f"{config_help} (.toml, .yaml or .json)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=5 (repeatable)",
    )


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate every case of a data folder",
        description="Validate every case: missing or unreadable files, not 3D, a singular affine, "
        "shapes or affines that differ between channels and mask, non-binary mask, NaN/Inf, constant "
        "images (errors); empty masks, volumes smaller than a patch, no orientation, and exams that "
        "look unprocessed (thick slices, skull) with what infer will do about them (warnings). Prints a "
        "table of cases and one line per problem; exits 1 if any error was found.",
    )
    p.add_argument("data", type=Path, help="data folder (DATA/<case>/<channel>.nii.gz)")
    p.add_argument("--channels", help="comma-separated channel names (default: from config)")
    p.add_argument("--no-mask", action="store_true", help="cases have no lesion mask (inference data)")
    _add_config_args(p)


def _add_patches(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "patches",
        help="sample lesion-aware patches into a patch bank",
        description="Sample patches (lesion-centred per connected component, brain, random) "
        "and write them with P/index.csv, so you can inspect what training will see.",
    )
    p.add_argument("--data", type=Path, required=True, help="data folder")
    p.add_argument("--out", type=Path, required=True, help="output folder P")
    _add_config_args(p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a 3D U-Net",
        description="Train a 3D U-Net on online lesion-aware patches; keep the model with the "
        "best validation lesion-wise F1 on whole volumes. Writes RUN/model.keras, "
        "RUN/config.yaml, RUN/history.csv, RUN/curves.png and validation reports.",
    )
    p.add_argument("--data", type=Path, required=True, help="data folder")
    p.add_argument("--out", type=Path, required=True, help="run folder RUN")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="RUN holds an earlier run: replace it, once the new run has succeeded")
    _add_config_args(p)


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="sliding-window inference on whole volumes",
        description="Predict every case with overlapping windows (probabilities averaged "
        "before the decision). Writes PRED/<case>_prob.nii.gz (float32) and "
        "PRED/<case>_pred.nii.gz (uint8) on the input grid, PRED/<case>_record.json, and "
        "PRED/cohort.csv (lesion count and volumes per exam, appended as exams finish).",
    )
    p.add_argument("--model", type=Path, required=True, help="run folder (with model.keras and config.yaml)")
    p.add_argument("--input", type=Path, required=True, help="data folder or one case folder")
    p.add_argument("--out", type=Path, required=True, help="output folder PRED")
    p.add_argument("--force", action="store_true",
                   help="predict every case again (default: keep the cases this model and these settings "
                   "already predicted into PRED)")
    p.add_argument("--keep-going", action="store_true",
                   help="an exam that cannot be read or predicted goes to PRED/failures.csv and the others go on "
                   "(exit 1 at the end when any failed); default: the first bad exam stops the run before any work")
    p.add_argument("--retry-failed", action="store_true",
                   help="predict only the exams listed in PRED/failures.csv (implies --keep-going)")
    p.add_argument("--engine", choices=("local", "dask", "ray"), default="local",
                   help="local: this process or a process pool (infer.workers); dask: a dask.distributed cluster; "
                   "ray: Ray actors")
    p.add_argument("--address", help="--engine dask/ray: the cluster to join (default: start a local one)")
    _add_config_args(p, "config whose [infer] section overrides the run's")


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="pick threshold and minimum lesion size for lesion F1",
        description="Predict validation cases once, then pick the (threshold, minimum lesion "
        "size) pair that maximises lesion-wise F1; stores it with the model.",
    )
    p.add_argument("--model", type=Path, required=True, help="run folder")
    p.add_argument("--data", type=Path, required=True, help="labelled cases to tune on")
    _add_config_args(p)


def _add_atlas(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "atlas",
        help="store a lesion atlas with a run: infer drops predicted lesions where no atlas patient had one",
        description="Average lesion masks of other patients on the exams' standard grid (e.g. MNI152 1 mm), "
        "smooth it and store it as RUN/lesion_atlas.nii.gz with a cut-off calibrated on the masks (leave one "
        "out: keep --coverage of an unseen patient's lesions). infer then drops predicted lesions lying wholly "
        "below the cut-off (infer.min_atlas overrides it; infer.tune_min_atlas makes tune tune it).",
    )
    p.add_argument("--model", type=Path, required=True, help="run folder that receives lesion_atlas.nii.gz")
    p.add_argument("--masks", type=Path, required=True, help="folder of lesion masks (*.nii.gz), all on one grid")
    p.add_argument("--exclude", nargs="*", default=[], metavar="TEXT",
                   help="leave out masks whose file name contains any of these (e.g. the evaluated patients)")
    p.add_argument("--sigma-mm", type=finite_float, default=2.0, help="Gaussian smoothing in mm (default 2)")
    p.add_argument("--coverage", type=finite_float, default=0.95,
                   help="calibrate the cut-off to keep this fraction of the lesions of a patient the atlas has "
                   "not seen (leave one mask out; default 0.95; 1 = no cut-off until one is set or tuned)")


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="make one run of several trained ones: infer averages their lesion probabilities",
        description="Copy trained runs (e.g. other seeds of one recipe) into one run folder whose models "
        "infer and tune average, lesion probability per window, before the decision. The runs must read "
        "exams alike (channels, normalisation, preprocessing, window, head); the first gives the config. "
        "A member's tuned decision is not carried over: tune the ensemble.",
    )
    p.add_argument("--runs", type=Path, nargs="+", required=True, metavar="RUN", help="trained run folders")
    p.add_argument("--out", type=Path, required=True, help="the ensemble's run folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run --out holds (once the new one is complete)")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="lesion-wise TP/FP/FN, Dice and CSV reports",
        description="Match predicted and truth lesions (3D connected components) and write "
        "REPORT/lesions.csv, REPORT/cases.csv, REPORT/sizes.csv (detection by lesion volume) and REPORT/summary.csv.",
    )
    p.add_argument("--pred", type=Path, required=True, help="folder of <case>_pred.nii.gz")
    p.add_argument("--truth", type=Path, required=True, help="data folder with the masks")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--overlays", action="store_true", help="also write PNG overlays per case")
    p.add_argument("--allow-mixed", action="store_true",
                   help="score a prediction folder whose cases come from different models or settings")
    _add_config_args(p)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="side-by-side table of several reports",
        description="One row per report folder: run, GT, TP, FP, FN, precision, recall, F1, "
        "Dice. Written as CSV and printed as a Markdown table.",
    )
    p.add_argument("reports", type=Path, nargs="+", help="report folders (with summary.csv)")
    p.add_argument("--out", type=Path, required=True, help="output CSV")


def _add_samples(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "samples",
        help="(re)generate the synthetic sample cases",
        description="Write the deterministic synthetic cases bundled in data_samples/: small "
        "two-channel (flair, t1) brains with bias field and noise, lesions of very different sizes "
        "(hyperintense on FLAIR, hypointense on T1), one lesion-free case and two LAS cases.",
    )
    p.add_argument("--out", type=Path, default=Path("data_samples"), help="output folder")
    p.add_argument("--head", action="store_true", help="inside a head: skull and scalp around the brain")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild REPORT/report.html (3D viewer, sortable lesion tables) from an evaluation report",
        description="Write REPORT/report.html again from REPORT's CSVs and its report_files/ (written by "
        "lesionseg evaluate): e.g. after installing NiiVue, or with a newer lesionseg.",
    )
    p.add_argument("report", type=Path, help="report folder written by lesionseg evaluate")


def _add_thick_slices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "thick-slices",
        help="make clinical thick-slice versions of exams (and their masks)",
        description="Write every case of DATA as a 2D clinical acquisition would show it: slices of "
        "--slice-mm (Gaussian slice profile) every --slice-mm + --gap-mm along --axis, --in-plane-mm "
        "voxels in plane; the lesion mask on the same grid (lesion where at least half the thick voxel was).",
    )
    p.add_argument("--data", type=Path, required=True, help="data folder")
    p.add_argument("--out", type=Path, required=True, help="output data folder")
    p.add_argument("--slice-mm", type=finite_float, default=7.0, help="slice thickness (default 7)")
    p.add_argument("--gap-mm", type=finite_float, default=0.0, help="gap between slices (default 0)")
    p.add_argument("--in-plane-mm", type=finite_float, default=0.9, help="in-plane voxel size (default 0.9)")
    p.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="voxel axis across slices (default 2)")
    _add_config_args(p)


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run a grid of training runs (loss x head x seed x fold, any key) into results.csv",
        description="Expand the grid of STUDY.toml over its folds, run each cell through train -> infer -> "
        "evaluate (cells side by side), append one row per cell and variant to OUT/results.csv. "
        "Finished cells are never redone: stop and start it again at will. --summarize writes the "
        "mean +- sd table and the TP-against-FP plot from results.csv.",
    )
    p.add_argument("--config", "-c", type=Path, help="study file STUDY.toml (see lesionseg/study/grid.py)")
    p.add_argument("--data", type=Path, help="labelled cases the folds split")
    p.add_argument("--out", type=Path, required=True, help="study folder (results.csv, cells/, folds/)")
    p.add_argument("--parallel", type=int, help="cells side by side (default: the study file's)")
    p.add_argument("--limit", type=int, help="run at most this many cells now")
    p.add_argument("--threads", type=int,
                   help="training threads per cell (default: cores / cells side by side); 1 leaves cores free")
    p.add_argument("--summarize", action="store_true", help="only write table.csv/.md and tp_fp.png")
    p.add_argument("--readme", type=Path,
                   help="also rewrite this Markdown file's block between '<!-- study-answer:begin OUT -->' and "
                   "'<!-- study-answer:end -->' with the table, plot and verdicts")


class _Parser(argparse.ArgumentParser):
    """argparse with the errors of the rest of the command line: one line, exit 1."""

    def error(self, message: str):  # type: ignore[override]
        print(f"ERROR {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(
        prog="lesionseg",
        description="Find small lesions in 3D NIfTI volumes: patches, train, infer, evaluate.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"lesionseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check(sub)
    _add_patches(sub)
    _add_train(sub)
    _add_infer(sub)
    _add_tune(sub)
    _add_atlas(sub)
    _add_ensemble(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_samples(sub)
    _add_study(sub)
    _add_thick_slices(sub)
    _add_report(sub)
    return parser


def _config(args: argparse.Namespace, base: Path | None = None) -> Config:
    path = getattr(args, "config", None) or base
    return load_config(path, getattr(args, "overrides", []))


def cmd_check(args: argparse.Namespace) -> int:
    from lesionseg.data.check import check_dataset

    cfg = _config(args)
    if args.channels is not None:  # --channels a,b: the checks of data.channels (distinct, named, not the mask)
        cfg = replace(cfg, data=replace(cfg.data, channels=tuple(c.strip() for c in args.channels.split(","))))
    channels = list(cfg.data.channels)
    report = check_dataset(
        args.data,
        channels,
        mask_name=None if args.no_mask else cfg.data.mask,
        mask_values=cfg.data.mask_values,
        affine_tolerance=cfg.data.affine_tolerance,
        patch_size=cfg.patches.size,
        preprocess=cfg.preprocess,
        trained_slice_axis=cfg.augment.thick_slice_axis if cfg.augment.thick_slice_probability > 0 else None,
    )
    print(report.table())
    for problem in report.problems:
        print(problem.line())
    n_err = sum(p.level == "ERROR" for p in report.problems)
    n_warn = len(report.problems) - n_err
    log.info("%d case(s) checked: %d error(s), %d warning(s)", len(report.cases), n_err, n_warn)
    return 0 if report.ok else 1


def cmd_patches(args: argparse.Namespace) -> int:
    config = _config(args)
    from lesionseg.data.check import require_readable
    from lesionseg.data.io import list_cases

    require_readable(list_cases(args.data), config.data, with_mask=True)  # before the backend loads
    from lesionseg.sampling.bank import write_patch_bank

    index = write_patch_bank(config, args.data, args.out)
    log.info("patch index: %s", index)
    return 0


def _check_config_outside_run(config: Path | None, out: Path) -> None:
    """A new run writes ``RUN/config.yaml`` (and the other run files): never over the user's own config."""
    from lesionseg.training.checkpoint import RUN_FILES

    if config is not None and any(Path(config).resolve() == (Path(out) / name).resolve() for name in RUN_FILES):
        raise LesionsegError(f"{config}: the run writes its own {Path(config).name} there (--out {out}); keep "
                             "your config outside the run folder")


def cmd_train(args: argparse.Namespace) -> int:
    if not args.resume:
        _check_config_outside_run(args.config, args.out)
    base = args.out / "config.yaml" if args.resume and not args.config else None
    config = _config(args, base)  # every section validated before the backend loads
    check_training_config(config)
    from lesionseg.training.train import train

    run_dir = train(config, args.data, args.out, resume=args.resume, overwrite=args.overwrite)
    log.info("run written to %s", run_dir)
    return 0


def _run_config(args: argparse.Namespace) -> Config:
    """The run's stored config with the [infer]/[evaluate] of --config and --set on top."""
    stored = args.model / "config.yaml"
    if not stored.is_file():
        raise LesionsegError(f"{stored}: missing; is {args.model} a lesionseg run folder?")
    raw = config_to_dict(load_run_config(stored))
    if args.config:
        user = config_to_dict(load_config(args.config))
        for section in ("infer", "evaluate"):
            raw[section] = user[section]
    return config_from_dict(apply_overrides(raw, args.overrides))


def cmd_infer(args: argparse.Namespace) -> int:
    config = _run_config(args)
    from lesionseg.inference.infer import run_inference

    if is_bids(args.input):
        return _infer_bids(args, config, run_inference)
    outputs = run_inference(args.model, config, args.input, args.out, force=args.force, keep_going=args.keep_going,
                            retry_failed=args.retry_failed, engine=args.engine, address=args.address)
    log.info("%d case(s) predicted into %s", len(outputs), args.out)
    return 0


def _infer_bids(args: argparse.Namespace, config: Config, run_inference) -> int:
    """A BIDS dataset in, a BIDS derivatives folder out (:mod:`lesionseg.data.bids`)."""
    if importlib.util.find_spec("bids") is None:
        raise LesionsegError(f"{args.input}: a BIDS dataset; reading it needs pybids (pip install -e '.[bids]')")
    from lesionseg.data.bids import WORK_DIR, bids_cases, publish, stage_cases

    cases = bids_cases(args.input, list(config.data.channels))
    staged = stage_cases(cases, args.out)
    work = args.out / WORK_DIR
    try:
        outputs = run_inference(args.model, config, staged, work, force=args.force, keep_going=args.keep_going,
                                retry_failed=args.retry_failed, engine=args.engine, address=args.address)
    finally:
        published = publish(cases, work, args.out, str(args.model))
        log.info("%d of %d BIDS case(s) in the derivatives folder %s", published, len(cases), args.out)
    log.info("%d case(s) predicted", len(outputs))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    config = _run_config(args)
    from lesionseg.inference.tune import tune_run

    tune_run(args.model, config, args.data)
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    from lesionseg.inference.atlas import build_atlas, calibrate_cut_off, write_atlas

    if not args.masks.is_dir():
        raise LesionsegError(f"{args.masks}: not a folder of lesion masks")
    if not (args.model / "config.yaml").is_file():
        raise LesionsegError(f"{args.model / 'config.yaml'}: missing; is {args.model} a lesionseg run folder?")
    if not args.sigma_mm >= 0:
        raise LesionsegError(f"atlas: --sigma-mm must be >= 0, got {args.sigma_mm}")
    if not 0 < args.coverage <= 1:
        raise LesionsegError(f"atlas: --coverage must be in (0, 1], got {args.coverage}")
    masks = sorted(m for m in args.masks.glob("*.nii*") if not any(x and x in m.name for x in args.exclude))
    if not masks:
        raise LesionsegError(f"{args.masks}: no *.nii/*.nii.gz mask left (after --exclude {' '.join(args.exclude)})")
    atlas = build_atlas(masks, args.sigma_mm)
    cut, n_lesions = calibrate_cut_off(masks, args.sigma_mm, args.coverage) if len(masks) > 1 else (0.0, 0)
    atlas = replace(atlas, min_atlas=cut)
    path = write_atlas(args.model, atlas, masks, args.sigma_mm,
                       {"coverage": args.coverage, "lesions": n_lesions, "method": "leave one mask out"})
    log.info("lesion atlas of %d mask(s) (%d left out), sigma %.3g mm: %s; cut-off %.4g keeps %.0f %% of the "
             "%d lesions of a left-out mask%s", len(masks), len(list(args.masks.glob("*.nii*"))) - len(masks),
             args.sigma_mm, path, cut, 100 * args.coverage, n_lesions,
             "" if cut > 0 else " (no cut-off: infer applies none until infer.min_atlas is set or tuned)")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from lesionseg.inference.ensemble import build_ensemble

    build_ensemble(args.runs, args.out, overwrite=args.overwrite)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.overlays:
        cfg = replace(cfg, evaluate=replace(cfg.evaluate, overlays=True))
    from lesionseg.evaluation.evaluate import evaluate_folder

    out = evaluate_folder(args.pred, args.truth, args.out, cfg, allow_mixed=args.allow_mixed)
    log.info("reports written to %s", out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lesionseg.evaluation.compare import compare_reports, to_markdown

    table = compare_reports(args.reports, args.out)
    print(to_markdown(table))
    log.info("comparison table: %s", args.out)
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    from lesionseg.data.synthetic import write_samples

    written = write_samples(args.out, head=args.head)
    log.info("%d sample case(s) in %s", len(written), args.out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    for name in ("summary.csv", "cases.csv", "lesions.csv"):
        if not (args.report / name).is_file():
            raise LesionsegError(f"{args.report / name}: missing; is {args.report} a report of lesionseg evaluate?")
    from lesionseg.evaluation.html_report import build_report

    log.info("report page: %s", build_report(args.report))
    return 0


def cmd_thick_slices(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from lesionseg.data.simulate import write_thick_slices

    written = write_thick_slices(args.data, args.out, list(cfg.data.channels), cfg.data.mask, args.slice_mm,
                                 args.in_plane_mm, args.gap_mm, args.axis)
    log.info("%d thick-slice case(s) in %s", len(written), args.out)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    if args.summarize:
        from lesionseg.study.summary import write_summary

        write_summary(args.out, args.readme)
        return 0
    if args.config is None or args.data is None:
        raise LesionsegError("study: --config STUDY.toml and --data DATA are needed to run (or --summarize)")
    if args.parallel is not None and args.parallel < 1:
        raise LesionsegError(f"study: --parallel must be >= 1, got {args.parallel}")
    if args.threads is not None and args.threads < 1:
        raise LesionsegError(f"study: --threads must be >= 1, got {args.threads}")
    if args.limit is not None and args.limit < 0:
        raise LesionsegError(f"study: --limit must be >= 0 (cells to run now), got {args.limit}")
    from lesionseg.study.runner import run_study
    from lesionseg.study.summary import write_summary

    if args.readme is not None:
        from lesionseg.study.readme_block import check_document

        check_document(args.readme, args.out)
    results = run_study(args.config, args.data, args.out, args.parallel, args.limit, args.threads)
    log.info("results: %s", results)
    if results.is_file():
        write_summary(args.out, args.readme)
    return 0


# Folders a command reads that its output may not lie in, and output sub-folders holding atomic writes.
_READS = {"patches": ("data",), "train": ("data",), "infer": ("input",), "evaluate": ("truth",), "study": ("data",),
          "thick-slices": ("data",)}
_WRITES_UNDER = {"train": ("checkpoint", "validation"), "evaluate": ("overlays",)}


def _inside_derivatives(out: Path, dataset: Path) -> bool:
    try:
        Path(out).resolve().relative_to((Path(dataset) / "derivatives").resolve())
    except ValueError:
        return False
    return True


def check_outputs(args: argparse.Namespace) -> None:
    """Every output of the command usable (not a file, not inside an input, writable), before any work.

    Also removes the temporaries that a killed earlier run of the command left in its output.
    """
    if args.command == "compare":
        _check_compare_outputs(args.out, args.reports)
        return
    if args.command in ("tune", "atlas"):  # write tuning.json / lesion_atlas.nii.gz into the run folder
        check_output_folder(args.model)
        return
    if args.command == "ensemble":
        check_output_folder(args.out, args.runs)
        return
    if args.command == "report":  # rewrites report.html in the report folder
        check_output_folder(args.report)
        return
    out = getattr(args, "out", None)
    if out is None:
        return
    reads = [getattr(args, name) for name in _READS.get(args.command, ())]
    if args.command == "infer" and is_bids(args.input) and _inside_derivatives(out, args.input):
        reads = []  # a BIDS dataset's derivatives/ is where its derived outputs belong (pybids skips it)
    check_output_folder(out, [r for r in reads if r is not None])
    if args.command == "infer":
        _check_not_in_data_folder_of_case(out, args.input)
    remove_stale_temporaries(out, *(out / sub for sub in _WRITES_UNDER.get(args.command, ())))


def _check_compare_outputs(out: Path, reports: list[Path]) -> None:
    """The comparison CSV and its HTML page beside it: writable, neither one inside a report it reads."""
    check_output_file(out)
    page = Path(out).with_suffix(".html")
    if page == Path(out):
        raise LesionsegError(f"{out}: --out names the comparison CSV (its HTML page is written beside it); "
                             f"use e.g. {Path(out).with_suffix('.csv')}")
    check_output_file(page)
    for report in reports:
        for path in (Path(out), page):
            if Path(report).is_dir() and inside(path, report):
                raise LesionsegError(f"{path}: inside the report folder {report}, which compare reads; "
                                     "choose another --out")


def _check_not_in_data_folder_of_case(out: Path, case_or_data: Path) -> None:
    """A single case given as input: predictions may not land in the data folder that holds it.

    Written into that folder's top, ``<case>_prob.nii.gz`` would turn the whole folder into one
    "case" hiding the others; written into a sub-folder of a folder of several cases, it adds a
    case that has no channels.
    """
    from lesionseg.data.io import NIFTI_SUFFIXES

    case = Path(case_or_data)
    if not case.is_dir() or not any(p.name.endswith(NIFTI_SUFFIXES) for p in case.iterdir() if p.is_file()):
        return  # a data folder: check_output_folder has refused an --out inside it already
    parent = case.resolve().parent
    siblings = [p for p in parent.iterdir() if p.is_dir()
                and any(q.name.endswith(NIFTI_SUFFIXES) for q in p.iterdir() if q.is_file())]
    if Path(out).resolve() == parent or (len(siblings) > 1 and inside(out, parent)):
        raise LesionsegError(f"{out}: output folder is (inside) {parent}, the data folder of the input case "
                             f"{case.name}; predictions there would become cases of it; choose another --out")


COMMANDS = {
    "check": cmd_check,
    "patches": cmd_patches,
    "train": cmd_train,
    "infer": cmd_infer,
    "tune": cmd_tune,
    "atlas": cmd_atlas,
    "ensemble": cmd_ensemble,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "samples": cmd_samples,
    "study": cmd_study,
    "thick-slices": cmd_thick_slices,
    "report": cmd_report,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Each subcommand validates its whole configuration first (in well under a second) and only
    then imports its stage, so the deep-learning backend (seconds to load) starts after the
    user's input is known to be sound.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any backend import
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    previous = _terminate_like_interrupt()
    try:
        check_outputs(args)
        return COMMANDS[args.command](args)
    except LesionsegError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 1
    except Terminated:
        print("ERROR terminated (SIGTERM); what was finished is kept, as after Ctrl-C", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("ERROR interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for users unless asked
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"ERROR unexpected {type(exc).__name__}: {first} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: the same clean-up (checkpoint kept, attempt removed)."""


def _terminate_like_interrupt():
    """Make SIGTERM (``kill``, a batch system's time limit) end a command as Ctrl-C does; the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    raise SystemExit(main())
