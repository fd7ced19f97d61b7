"""Real-data experiments on ../shared/data/ms_lesions: the cross-validated model and the loss study.

Every step goes through the ``lesionseg`` command line, exactly as a user would run it::

    python pipelines/ms_experiments.py fold A          # train, tune, infer, evaluate fold A -> runs/ms/foldA
    python pipelines/ms_experiments.py fold B          # the other fold -> runs/ms/foldB
    python pipelines/ms_experiments.py study           # one run per loss on fold A -> runs/ms_study/<loss>
    python pipelines/ms_experiments.py study --tune    # + each loss at its tuned decision -> runs/ms_study_tuned
    python pipelines/ms_experiments.py tables          # per-exam and loss tables (Markdown + CSV)
    python pipelines/ms_experiments.py ship --run runs/ms_t1_all   # the run of `make train-ms` -> models/ms_flair_t1
    python pipelines/ms_experiments.py verify          # the shipped model predicts the figures it ships with
    python pipelines/ms_experiments.py lopo            # leave-one-patient-out: 4 folds -> runs/lopo/<recipe>
    python pipelines/ms_experiments.py lopo --config pipelines/OTHER.toml   # the same for another recipe
    python pipelines/ms_experiments.py lopo --config pipelines/OTHER.toml --atlas   # + the lesion-atlas filter, tuned
    python pipelines/ms_experiments.py lopo --atlas --models-from runs/lopo/R --out runs/lopo/R_atlas  # same nets
    python pipelines/ms_experiments.py lopo --ensemble-of runs/lopo/R runs/lopo/R_s1 --out runs/lopo/R_ens  # seeds averaged
    python pipelines/ms_experiments.py lopo-table      # every recipe's per-exam + pooled table -> runs/lopo/

The 6 exams are 4 patients (the three ``mslesseg_P14_*`` exams are one patient), so the split is by
patient.  Two folds, each holding out one patient of each source; every exam is validated exactly once:

    fold A: validate lesjak_patient07 + mslesseg_P18_T1 (40 lesions), train on the other 4 exams
    fold B: validate lesjak_patient19 + mslesseg_P14_T1/T2/T3, train on the other 2 exams

Leave-one-patient-out (``lopo``): one fold per patient (L07, L19, M14 = the three P14 exams, M18); the
model is trained on the other three patients, its threshold and minimum lesion size are tuned on those
*training* exams (never on the exam being scored), then it predicts the held-out patient.  The held-out
predictions of the four folds are evaluated together: per exam and pooled, tuned and untuned.

Per fold (``fold A|B``): ``lesionseg train`` on the training exams for a fixed budget (no validation during training,
the last epoch is kept: no model selection on the figures we publish), ``lesionseg tune`` (threshold and
minimum lesion size for lesion F1) on the held-out exams, ``lesionseg infer`` + ``lesionseg evaluate``
on them.  Because the tuning sees the held-out exams, the report at the untuned decision (threshold 0.5,
no size filter) is written as well (``report_untuned``).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lesionseg, also when run from another worktree
DATA = ROOT.parent / "shared" / "data" / "ms_lesions"
CONFIG = ROOT / "pipelines" / "ms_flair_t1.toml"
LESIONSEG = [sys.executable, "-m", "lesionseg"]
# Lesion atlas (``--atlas``): the Lesjak masks of the other patients; the shared exams' own two Lesjak
# patients are always left out, so no fold's atlas has seen the exam it scores (patient26 is not there).
ATLAS_MASKS = ROOT.parent / "shared" / "data" / "lesjak_masks"
ATLAS_EXCLUDE = ["patient07", "patient19"]

# Leave-one-patient-out: patient -> its exams.
PATIENTS = {
    "L07": ("lesjak_patient07",),
    "L19": ("lesjak_patient19",),
    "M14": ("mslesseg_P14_T1", "mslesseg_P14_T2", "mslesseg_P14_T3"),
    "M18": ("mslesseg_P18_T1",),
}

FOLDS = {
    "A": ("lesjak_patient07", "mslesseg_P18_T1"),
    "B": ("lesjak_patient19", "mslesseg_P14_T1", "mslesseg_P14_T2", "mslesseg_P14_T3"),
}

# The loss study: same network, patches and budget; only the loss (and for two of them the head) changes.
STUDY = {
    "dice": [],
    "bce": [],
    "focal": [],
    "tversky": [],
    "focal_tversky": [],
    "combo": [],
    "symmetric_unified_focal": [],
    "asymmetric_unified_focal": [],
    "dice_softmax": ["model.head=softmax"],
    "asymmetric_unified_focal_softmax": ["model.head=softmax"],
}
STUDY_BUDGET = ["train.epochs=10", "train.steps_per_epoch=25"]


def run(cmd: list[str], log: Path | None = None, backend: str | None = None) -> None:
    """Run one command (under Keras backend ``backend``, default: the environment's), echoing it; stop on failure."""
    shown = " ".join(cmd[2:] if cmd[:2] == LESIONSEG[:2] else cmd)
    print("+", f"KERAS_BACKEND={backend} {shown}" if backend else shown, flush=True)
    t0 = time.time()
    env = {**os.environ, "KERAS_BACKEND": backend} if backend else None
    with open(log, "a") if log else open(os.devnull, "w") as sink:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=sink if log else None, stderr=subprocess.STDOUT if log else None,
                              env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}) after {time.time() - t0:.0f} s: {' '.join(cmd)}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def case_folder(target: Path, cases: list[str], source: Path = DATA, extra: Path | None = None) -> Path:
    """A folder of links to the chosen exams of ``source`` (lesionseg reads every case of a folder).

    ``extra``: a folder of derived exams named ``<case>_<anything>``; those of the chosen exams are
    linked too (e.g. ``pipelines/clinical_training_set.py``'s ``<case>_clin1``), so a derived exam
    always stays on its patient's side of a split.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for case in cases:
        if not (source / case).is_dir():
            sys.exit(f"{source / case}: missing (make it with lesionseg thick-slices, or leave out --eval-data)")
        (target / case).symlink_to((source / case).resolve(), target_is_directory=True)
    for derived in derived_cases(extra, cases) if extra else []:
        (target / derived.name).symlink_to(derived.resolve(), target_is_directory=True)
    return target


def derived_cases(folder: Path, cases: list[str]) -> list[Path]:
    """The case folders of ``folder`` named ``<case>_<suffix>`` for one of ``cases``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("mslesseg_P14_T1_clin1", "mslesseg_P14_T10_clin1", "lesjak_patient07_clin2"):
    ...     (root / name).mkdir()
    >>> [p.name for p in derived_cases(root, ["mslesseg_P14_T1", "lesjak_patient19"])]
    ['mslesseg_P14_T1_clin1']
    """
    if not folder.is_dir():
        sys.exit(f"{folder}: missing (make it with pipelines/clinical_training_set.py)")
    return sorted(p for p in folder.iterdir() if p.is_dir() and any(p.name.startswith(c + "_") for c in cases))


def split(fold: str) -> tuple[list[str], list[str]]:
    """Training and validation exams of a fold (``A``/``B``) or of a left-out patient (``L07``, ...)."""
    val = list(FOLDS.get(fold) or PATIENTS[fold])
    train = sorted(p.name for p in DATA.iterdir() if p.is_dir() and p.name not in val)
    return train, val


def untuned_predictions(prob_dir: Path, out_dir: Path) -> None:
    """Threshold 0.5 and no size filter, from the probability maps ``lesionseg infer`` wrote."""
    import nibabel as nib
    import numpy as np

    from lesionseg.inference.postprocess import decide
    from lesionseg.data.writing import write_like

    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(prob_dir.glob("*_prob.nii.gz")):
        img = nib.load(path)
        pred = decide(np.asarray(img.dataobj, dtype=np.float32), 0.5)
        name = path.name.replace("_prob.nii.gz", "_pred.nii.gz")
        write_like(out_dir / name, pred, img.affine, img.header, np.uint8)


def train_and_evaluate(run_dir: Path, fold: str, sets: list[str], tune: bool, config: Path = CONFIG,
                       tune_on_train: bool = False, train_backend: str | None = None,
                       infer_sets: list[str] | None = None, eval_data: Path | None = None,
                       atlas: bool = False, extra_train: Path | None = None) -> None:
    """Train on the fold's training exams, then (tune,) infer and evaluate its held-out exams.

    ``tune_on_train`` tunes the decision on the training exams (leave-one-patient-out: the held-out
    exam never influences its own threshold) instead of the held-out ones.  ``train_backend`` trains
    under that Keras backend (``torch`` trains about 2x faster than TensorFlow on this CPU); tuning,
    inference and evaluation always run as a user's would, on the default backend.  ``infer_sets``
    are ``--set`` overrides of ``tune`` and ``infer`` (e.g. ``infer.overlap=0.25``).  ``eval_data``
    holds other versions of the same exams (e.g. thick-slice ones from ``lesionseg thick-slices``):
    training reads the shared exams, tuning, inference and evaluation read these.  ``atlas`` stores
    a lesion atlas of the other Lesjak patients with the run before tuning (the tuning then tries
    its cut-offs too).  ``extra_train``: derived exams of the training patients trained on as well
    (:func:`derived_cases`); tuning stays on the exams themselves.
    """
    train_cases, val_cases = split(fold)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    train_dir = case_folder(run_dir / "cases_train", train_cases, extra=extra_train)
    val_dir = case_folder(run_dir / "cases_val", val_cases, eval_data or DATA)
    tune_dir = case_folder(run_dir / "cases_tune", train_cases, eval_data or DATA)
    extra = [x for s in ["train.val_fraction=0", *sets] for x in ("--set", s)]
    print(f"[{run_dir.name}] train on {', '.join(train_cases)}; validate on {', '.join(val_cases)}", flush=True)
    if not (run_dir / "model.keras").is_file():
        run([*LESIONSEG, "train", "--config", str(config), "--data", str(train_dir), "--out", str(run_dir), *extra],
            log, backend=train_backend)
    isets = [x for s in (infer_sets or []) for x in ("--set", s)]
    if atlas:
        run([*LESIONSEG, "atlas", "--model", str(run_dir), "--masks", str(ATLAS_MASKS),
             "--exclude", *ATLAS_EXCLUDE], log)
    if tune and not (run_dir / "tuning.json").is_file():  # kept on a rerun; a retrained model has none
        run([*LESIONSEG, "tune", "--model", str(run_dir), "--data", str(tune_dir if tune_on_train else val_dir),
             *isets], log)
    run([*LESIONSEG, "infer", "--model", str(run_dir), "--input", str(val_dir), "--out", str(run_dir / "pred"),
         *isets], log)
    run([*LESIONSEG, "evaluate", "--pred", str(run_dir / "pred"), "--truth", str(val_dir),
         "--out", str(run_dir / "report"), "--config", str(config)], log)
    if tune:
        untuned_predictions(run_dir / "pred", run_dir / "pred_untuned")
        run([*LESIONSEG, "evaluate", "--pred", str(run_dir / "pred_untuned"), "--truth", str(val_dir),
             "--out", str(run_dir / "report_untuned"), "--config", str(config)], log)


def cmd_fold(args: argparse.Namespace) -> None:
    train_and_evaluate(Path(args.out) / f"fold{args.fold}", args.fold, args.set, tune=True)


def cmd_lopo(args: argparse.Namespace) -> None:
    """Leave-one-patient-out with a recipe: train/tune/infer per left-out patient, then pooled reports."""
    config = Path(args.config).resolve()
    out = Path(args.out or f"runs/lopo/{config.stem}")
    eval_data = Path(args.eval_data).resolve() if args.eval_data else None
    for patient in args.patients or list(PATIENTS):
        run_dir = out / patient
        if (run_dir / "report_untuned" / "summary.csv").is_file() and not args.force:
            print(f"[{patient}] done already ({run_dir})")
            continue
        if args.models_from and not (run_dir / "model.keras").is_file():
            reuse_fold_model(Path(args.models_from) / patient, run_dir, keep_decision=not args.retune)
        if args.ensemble_of and not (run_dir / "model.keras").is_file():
            members = [str(Path(d) / patient) for d in args.ensemble_of]
            run([*LESIONSEG, "ensemble", "--runs", *members, "--out", str(run_dir)])
        train_and_evaluate(run_dir, patient, args.set, tune=True, config=config, tune_on_train=True,
                           train_backend=args.train_backend, infer_sets=args.infer_set, eval_data=eval_data,
                           atlas=args.atlas, extra_train=Path(args.extra_train).resolve() if args.extra_train else None)
    pooled_reports(out, config, eval_data)


def reuse_fold_model(source: Path, run_dir: Path, keep_decision: bool = True) -> None:
    """Copy a fold's trained model (and, with ``keep_decision``, its tuned decision) from another LOPO folder.

    To add e.g. the atlas filter to the same networks, or (``keep_decision=False``) to tune them
    again over another grid.
    """
    if not (source / "model.keras").is_file():
        sys.exit(f"{source / 'model.keras'}: missing; train that fold first")
    run_dir.mkdir(parents=True, exist_ok=True)
    decision = ("tuning.json", "tuning.csv") if keep_decision else ()
    for name in ("model.keras", "config.yaml", "history.csv", "train.log", "curves.png", "split.csv", *decision):
        if (source / name).is_file():
            shutil.copy2(source / name, run_dir / name)
    print(f"[{run_dir.name}] model of {source} reused", flush=True)


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (made if missing) for the ``with`` block.

    Folds of one LOPO folder run as parallel processes (``lopo L07 L19`` beside ``lopo M14 M18``);
    each ends by rebuilding the pooled folders, and two doing it at once mixed one's exams with the
    other's predictions (``missing prediction for case ...``).
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pooled_reports(out: Path, config: Path, eval_data: Path | None = None) -> None:
    """Evaluate the held-out predictions of every finished fold together: ``OUT/report[_untuned]``.

    One process at a time per ``OUT`` (:func:`exclusive`), so folds may finish together.
    """
    with exclusive(out / ".pooled.lock"):
        _pooled_reports(out, config, eval_data)


def _pooled_reports(out: Path, config: Path, eval_data: Path | None) -> None:
    done = [p for p in PATIENTS if (out / p / "report_untuned" / "summary.csv").is_file()]
    if not done:
        return
    cases = case_folder(out / "cases_all", [c for p in done for c in PATIENTS[p]], eval_data or DATA)
    for pred in ("pred", "pred_untuned"):
        pooled = out / pred
        if pooled.exists():
            shutil.rmtree(pooled)
        pooled.mkdir(parents=True)
        for p in done:
            for f in sorted((out / p / pred).glob("*.nii.gz")):
                (pooled / f.name).symlink_to(f.resolve())
        report = out / pred.replace("pred", "report")
        run([*LESIONSEG, "evaluate", "--pred", str(pooled), "--truth", str(cases), "--out", str(report),
             "--config", str(config)])
    print(f"leave-one-patient-out over {', '.join(done)}: {out}/report (tuned on training exams), "
          f"{out}/report_untuned (threshold 0.5)")


def tune_study_run(run_dir: Path, report_dir: Path) -> None:
    """Each loss at its own best decision: tune on the held-out exams, infer, evaluate."""
    val_dir = run_dir / "cases_val"
    log = run_dir.parent / f"{run_dir.name}.log"
    run([*LESIONSEG, "tune", "--model", str(run_dir), "--data", str(val_dir)], log)
    run([*LESIONSEG, "infer", "--model", str(run_dir), "--input", str(val_dir), "--out", str(run_dir / "pred_tuned")],
        log)
    run([*LESIONSEG, "evaluate", "--pred", str(run_dir / "pred_tuned"), "--truth", str(val_dir),
         "--out", str(report_dir), "--config", str(CONFIG)], log)


def cmd_study(args: argparse.Namespace) -> None:
    names = args.losses or list(STUDY)
    for name in names:
        loss = name.removesuffix("_softmax")
        sets = [f"loss.name={loss}", *STUDY[name], *STUDY_BUDGET, *args.set]
        run_dir = Path(args.out) / name
        if (run_dir / "report" / "summary.csv").is_file() and not args.force:
            print(f"[{name}] done already ({run_dir}/report)")
        else:
            train_and_evaluate(run_dir, "A", sets, tune=False)
        if args.tune:
            tune_study_run(run_dir, Path(f"{args.out}_tuned") / name)


def cmd_tables(args: argparse.Namespace) -> None:
    import pandas as pd

    from lesionseg.evaluation.compare import to_markdown

    out = Path(args.out)
    rows = []
    for fold in FOLDS:
        for report in ("report", "report_untuned"):
            cases = Path(args.folds) / f"fold{fold}" / report / "cases.csv"
            if cases.is_file():
                df = pd.read_csv(cases)
                df.insert(0, "decision", "tuned" if report == "report" else "0.5, no size filter")
                df.insert(0, "fold", fold)
                rows.append(df)
    if rows:
        table = pd.concat(rows, ignore_index=True)
        keep = ["fold", "decision", "case", "GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall",
                "lesion_f1", "dice"]
        table = table[[c for c in keep if c in table.columns]]
        table.to_csv(out / "ms_per_exam.csv", index=False)
        print(to_markdown(table))
    studies = sorted(p for p in Path(args.study).glob("*/report") if (p / "summary.csv").is_file())
    if studies:
        run([*LESIONSEG, "compare", "--out", str(out / "ms_loss_study.csv"), *map(str, studies)])
    tuned = sorted(p for p in Path(f"{args.study}_tuned").glob("*") if (p / "summary.csv").is_file())
    if tuned:
        run([*LESIONSEG, "compare", "--out", str(out / "ms_loss_study_tuned.csv"), *map(str, tuned)])


LOPO_COLUMNS = ["recipe", "decision", "case", "GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall",
                "lesion_f1", "dice"]


def lopo_rows(recipe_dir: Path) -> "list":
    """Per exam and pooled rows of one recipe's leave-one-patient-out reports (tuned and untuned)."""
    import pandas as pd

    rows = []
    for report, decision in (("report", "tuned on training exams"), ("report_untuned", "0.5, no size filter")):
        cases, summary = recipe_dir / report / "cases.csv", recipe_dir / report / "summary.csv"
        if not cases.is_file():
            continue
        df = pd.read_csv(cases)
        pooled = pd.read_csv(summary).iloc[0]
        total = {"case": f"pooled ({int(pooled.cases)} exams)", **{k: pooled[k] for k in
                 ("GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1")},
                 "dice": pooled["dice_mean"]}
        df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
        df.insert(0, "decision", decision)
        df.insert(0, "recipe", recipe_dir.name)
        rows.append(df[[c for c in LOPO_COLUMNS if c in df.columns]])
    return rows


def lopo_size_rows(recipe_dir: Path) -> "list":
    """Pooled detection by lesion-volume band of one recipe (tuned and untuned): found / truth and false."""
    import pandas as pd

    from lesionseg.evaluation.report import sizes_table

    rows = []
    for report, decision in (("report", "tuned on training exams"), ("report_untuned", "0.5, no size filter")):
        lesions = recipe_dir / report / "lesions.csv"
        if not lesions.is_file():
            continue
        pooled = sizes_table(pd.read_csv(lesions, keep_default_na=False))
        pooled = pooled[pooled.case == "all"]
        row = {"recipe": recipe_dir.name, "decision": decision}
        for band in pooled.itertuples():
            row[f"found {band.band} mm³"] = f"{band.TP}/{band.GT}"
        for band in pooled.itertuples():
            row[f"false {band.band} mm³"] = band.FP
        rows.append(pd.DataFrame([row]))
    return rows


def keep_other_recipes(existing: Path, table: "pd.DataFrame") -> "pd.DataFrame":
    """``table`` after the rows of ``existing`` (a committed table) whose recipes it does not recompute.

    Run folders are local and may be gone (another machine, a cleaned ``runs/``); the committed
    table keeps their figures, and a new recipe's rows join them instead of replacing them.
    """
    import pandas as pd

    if not existing.is_file():
        return table
    old = pd.read_csv(existing)  # NaN where the table says n/a, as the recomputed rows have it
    old = old[~old.recipe.isin(set(table.recipe))]
    return pd.concat([old, table], ignore_index=True)


def cmd_lopo_table(args: argparse.Namespace) -> None:
    """One table of every recipe's leave-one-patient-out figures: per exam and pooled (Markdown + CSV)."""
    import pandas as pd

    from lesionseg.evaluation.compare import to_markdown

    root = Path(args.root)
    recipes = [root / r for r in args.recipes] if args.recipes else sorted(p for p in root.iterdir() if p.is_dir())
    rows = [r for d in recipes for r in lopo_rows(d)]
    if not rows:
        sys.exit(f"{root}: no finished leave-one-patient-out report (run `lopo` first)")
    table = pd.concat(rows, ignore_index=True)
    if not args.untuned:
        table = table[table.decision != "0.5, no size filter"]
    out = Path(args.out) if args.out else root
    out.mkdir(parents=True, exist_ok=True)
    if args.keep:
        table = keep_other_recipes(out / "lopo_table.csv", table)
    table.to_csv(out / "lopo_table.csv", index=False)
    (out / "lopo_table.md").write_text(to_markdown(table) + "\n")
    print(to_markdown(table))
    sizes = pd.concat([r for d in recipes for r in lopo_size_rows(d)], ignore_index=True)
    if not args.untuned:
        sizes = sizes[sizes.decision != "0.5, no size filter"]
    if args.keep:
        sizes = keep_other_recipes(out / "lopo_sizes.csv", sizes)
    sizes.to_csv(out / "lopo_sizes.csv", index=False)
    (out / "lopo_sizes.md").write_text(to_markdown(sizes) + "\n")
    print(to_markdown(sizes))
    print(f"written to {out / 'lopo_table.csv'}, {out / 'lopo_table.md'} and lopo_sizes.csv/.md (detection by lesion volume)")


SHIPPED_FILES = ("model.keras", "config.yaml", "tuning.json", "history.csv", "curves.png", "split.csv",
                 "lesion_atlas.nii.gz", "lesion_atlas.json", "ensemble.json")


def cmd_ship(args: argparse.Namespace) -> None:
    """Copy a run's model files into ``models/``; its held-out report (``validation/``) or, for a model
    trained on every exam, its report on those training exams (``fit/``, in-sample) goes with it."""
    src, dst = Path(args.run), Path(args.to)
    dst.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
        elif (dst / name).is_file():  # e.g. an atlas of the model shipped before: not this one's
            (dst / name).unlink()
    shutil.rmtree(dst / "members", ignore_errors=True)  # an ensemble's further models (lesionseg ensemble)
    if (src / "members").is_dir():
        shutil.copytree(src / "members", dst / "members")
    for report, kept in (("report", "validation"), ("fit_report", "fit")):
        shutil.rmtree(dst / kept, ignore_errors=True)  # an earlier model's report is not this one's
        if (src / report).is_dir():
            (dst / kept).mkdir()
            for name in ("cases.csv", "summary.csv"):
                shutil.copy2(src / report / name, dst / kept / name)
    kept = [k for r, k in (("report", "validation"), ("fit_report", "fit")) if (src / r).is_dir()]
    print(f"copied the model of {src} to {dst}" + (f" with its {' and '.join(kept)} report" if kept else
                                                    " (no report: its card quotes the recipe's LOPO figures)"))


def cmd_verify(args: argparse.Namespace) -> None:
    """Run the shipped model through infer + evaluate on the exams its card reports; compare the figures.

    ``MODEL/validation/cases.csv`` (held-out exams) or, for a model trained on every shared exam,
    ``MODEL/fit/cases.csv`` (its in-sample figures on those exams: a check that this install predicts
    what the shipped model predicted, not a measure of accuracy).
    """
    import pandas as pd

    model, out = Path(args.model), Path(args.out)
    stored = next((model / d / "cases.csv" for d in ("validation", "fit") if (model / d / "cases.csv").is_file()), None)
    if stored is None:
        sys.exit(f"{model}: no validation/cases.csv or fit/cases.csv to verify against")
    card = pd.read_csv(stored)
    val_dir = case_folder(out / "cases_val", list(card["case"]))
    run([*LESIONSEG, "infer", "--model", str(model), "--input", str(val_dir), "--out", str(out / "pred")])
    run([*LESIONSEG, "evaluate", "--pred", str(out / "pred"), "--truth", str(val_dir), "--out", str(out / "report"),
         "--config", str(model / "config.yaml")])
    cols = ["case", "GT", "TP", "FP", "FN", "lesion_f1", "dice"]
    got = pd.read_csv(out / "report" / "cases.csv")[cols]
    card = card[cols]
    print(got.to_string(index=False))
    same = got[cols[:5]].equals(card[cols[:5]]) and ((got[cols[5:]] - card[cols[5:]]).abs().max().max() < 1e-3)
    print(f"same figures as {stored}" if same else f"DIFFERENT figures from {stored}:\n" + card.to_string())
    if not same:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fold", help="train, tune, infer, evaluate one fold")
    f.add_argument("fold", choices=sorted(FOLDS))
    f.add_argument("--out", default="runs/ms")
    f.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    f.set_defaults(func=cmd_fold)
    s = sub.add_parser("study", help="one run per loss on fold A")
    s.add_argument("losses", nargs="*", help=f"subset of: {', '.join(STUDY)}")
    s.add_argument("--out", default="runs/ms_study")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    s.add_argument("--force", action="store_true", help="redo runs that have a report already")
    s.add_argument("--tune", action="store_true",
                   help="also tune each run's decision on the held-out exams and report it (OUT_tuned/<loss>)")
    s.set_defaults(func=cmd_study)
    t = sub.add_parser("tables", help="per-exam table of the folds and the loss-study comparison")
    t.add_argument("--folds", default="runs/ms")
    t.add_argument("--study", default="runs/ms_study")
    t.add_argument("--out", default="runs")
    t.set_defaults(func=cmd_tables)
    c = sub.add_parser("ship", help="copy a run's model (and its report) into models/")
    c.add_argument("--run", default="runs/ms_t1_all")
    c.add_argument("--to", default="models/ms_flair_t1")
    c.set_defaults(func=cmd_ship)
    lo = sub.add_parser("lopo", help="leave-one-patient-out: train, tune (on training exams), infer, evaluate")
    lo.add_argument("patients", nargs="*", help=f"subset of: {', '.join(PATIENTS)}")
    lo.add_argument("--config", default=str(CONFIG), help="the recipe (a train config)")
    lo.add_argument("--out", help="default runs/lopo/<config name>")
    lo.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    lo.add_argument("--force", action="store_true", help="redo folds that have a report already")
    lo.add_argument("--infer-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override of tune and infer only (e.g. infer.overlap=0.25)")
    lo.add_argument("--eval-data", help="tune, infer and evaluate on these versions of the exams (same case names, "
                    "e.g. thick-slice ones from lesionseg thick-slices); training reads the shared exams")
    lo.add_argument("--atlas", action="store_true",
                    help="store a lesion atlas of the other Lesjak patients with each fold, tune its cut-off too")
    lo.add_argument("--models-from", help="reuse the fold models of this LOPO folder (same recipe) instead of "
                    "training: compare decisions (e.g. --atlas) on the same networks")
    lo.add_argument("--ensemble-of", nargs="+", metavar="LOPO_DIR",
                    help="no training: each fold is the ensemble (lesionseg ensemble) of that fold's models in these "
                    "LOPO folders (e.g. two seeds of one recipe), tuned on its training exams like a trained fold")
    lo.add_argument("--retune", action="store_true", help="with --models-from: tune the decision again on the "
                    "training exams (e.g. over the grid of --infer-set infer.tune_thresholds=[...]) instead of "
                    "reusing the fold's")
    lo.add_argument("--extra-train", help="also train on the derived exams of this folder that belong to the "
                    "training patients (<case>_<suffix>, e.g. pipelines/clinical_training_set.py's)")
    lo.add_argument("--train-backend", choices=["tensorflow", "torch", "jax"],
                    help="Keras backend of the training step only (default: the environment's)")
    lo.set_defaults(func=cmd_lopo)
    lt = sub.add_parser("lopo-table", help="per-exam and pooled leave-one-patient-out table of every recipe")
    lt.add_argument("recipes", nargs="*", help="recipe folders under --root (default: all)")
    lt.add_argument("--root", default="runs/lopo")
    lt.add_argument("--untuned", action="store_true", help="also the rows at threshold 0.5, no size filter")
    lt.add_argument("--out", help="folder for lopo_table.csv/.md (default: --root; studies/lopo is committed)")
    lt.add_argument("--keep", action="store_true",
                    help="keep the rows of recipes already in --out's tables that are not recomputed here "
                         "(their run folders may be gone)")
    lt.set_defaults(func=cmd_lopo_table)
    v = sub.add_parser("verify", help="the shipped model on the exams of its validation/ or fit/ report, against it")
    v.add_argument("--model", default="models/ms_flair_t1")
    v.add_argument("--out", default="runs/ms_shipped")
    v.set_defaults(func=cmd_verify)
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: missing (the shared MS exams sit beside the repository)")
    args.func(args)


if __name__ == "__main__":
    main()
