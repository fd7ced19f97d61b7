"""A study's answer from its ``results.csv``: the mean ± sd table and the TP-against-FP plot.

``lesionseg study --summarize --out STUDY_DIR`` writes ``STUDY_DIR/table.csv``,
``STUDY_DIR/table.md`` (per variant, per loss × head and any other grid key:
runs, GT/TP/FP/FN, precision, recall, lesion F1 and Dice as mean ± sd over
seeds and folds, how many runs predicted nothing and how many over-segmented), ``STUDY_DIR/tp_fp.png``,
each loss's per-class terms on the held-out exams (``terms.csv``, ``terms_table.md``;
:mod:`lesionseg.study.terms`) and the study's claims answered by paired differences
(``verdicts.md``; :mod:`lesionseg.study.verdicts`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

SPREAD = ["GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1", "dice"]
NOT_GROUPS = {"cell", "seed", "fold", "GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1",
              "dice", "pred_volume_ml", "truth_volume_ml", "blank_exams", "diagnostics", "train_seconds",
              "cell_seconds"}


#: Columns the summary, the terms and the verdicts read (``lesionseg study`` writes them all).
NEEDED = ("cell", "variant", "loss", "head", "seed", "fold", "GT", "TP", "FP", "FN", "lesion_precision",
          "lesion_recall", "lesion_f1", "dice", "pred_volume_ml", "truth_volume_ml", "diagnostics")


def load_results(path: Path) -> pd.DataFrame:
    """``results.csv``; a one-line error when it is missing, unreadable, empty or lacks a needed column."""
    path = Path(path)
    if not path.is_file():
        raise LesionsegError(f"{path}: no study results (run `lesionseg study` first)")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise LesionsegError(f"{path}: empty file, no header and no finished cell") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LesionsegError(f"{path}: not a readable results table ({first})") from None
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise LesionsegError(f"{path}: no column {', '.join(missing)}; is it a results.csv of lesionseg study?")
    if df.empty:
        raise LesionsegError(f"{path}: no finished cell yet")
    for column in ("GT", "TP", "FP", "FN", "lesion_f1", "dice"):
        if not pd.api.types.is_numeric_dtype(df[column]):
            raise LesionsegError(f"{path}: column {column} holds values that are not numbers")
    return df


def mean_sd(values: pd.Series) -> str:
    values = values.astype(float)
    if len(values) < 2:
        return f"{values.mean():.3g}"
    return f"{values.mean():.3g} ± {values.std(ddof=1):.2g}"


def over_segmented_runs(df: pd.DataFrame) -> pd.Series:
    """Rows whose predicted lesion volume is over 10x the truth's (:func:`~lesionseg.evaluation.scoring.over_segmented`).

    Under the ``any`` criterion such a prediction touches most true lesions by chance: its TP,
    recall and lesion F1 say nothing (one blob over a whole brain scores F1 1.0), so the table
    counts them beside the means.
    """
    from lesionseg.evaluation.scoring import OVERSEGMENTATION

    return (df.truth_volume_ml > 0) & (df.pred_volume_ml > OVERSEGMENTATION * df.truth_volume_ml)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant and grid combination (seeds and folds pooled): mean ± sd of each count.

    Parameters
    ----------
    df : pandas.DataFrame
        ``results.csv`` rows.

    Returns
    -------
    pandas.DataFrame
        Columns: the grouping columns, ``runs``, ``blank_runs`` (runs whose every held-out exam was
        predicted blank), ``collapse_diagnostic`` (runs where training's blank-collapse diagnostic
        fired), ``over_segmented_runs`` (runs predicting over 10x the true lesion volume, whose
        lesion counts mean nothing), then ``GT`` ... ``dice`` as text ``mean ± sd`` and the numeric ``TP_mean``, ``TP_sd``,
        ``FP_mean``, ``FP_sd``, ``f1_mean``, ``f1_sd`` used by the plot.
    """
    groups = [c for c in df.columns if c not in NOT_GROUPS]
    rows = []
    for key, part in df.groupby(groups, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(groups, key))
        row["runs"] = len(part)
        row["blank_runs"] = int((part.TP + part.FP == 0).sum())
        diag = part.diagnostics.fillna("").astype(str)
        row["collapse_diagnostic"] = int(diag.str.contains("blank|collapse").sum())
        row["over_segmented_runs"] = int(over_segmented_runs(part).sum())
        for col in SPREAD:
            row[col] = mean_sd(part[col])
        for col, name in (("TP", "TP"), ("FP", "FP"), ("lesion_f1", "f1")):
            row[f"{name}_mean"] = float(part[col].mean())
            row[f"{name}_sd"] = float(part[col].std(ddof=1)) if len(part) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def plot_tp_fp(table: pd.DataFrame, path: Path, variant: str = "default") -> Path:
    """TP against FP per grid combination of one variant, with ± sd error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = table[table.variant == variant] if "variant" in table.columns else table
    fig, ax = plt.subplots(figsize=(8, 6))
    markers = {"sigmoid": "o", "softmax": "s"}
    for _, row in part.iterrows():
        label = f"{row.get('loss', '')} / {row.get('head', '')}"
        ax.errorbar(row.FP_mean, row.TP_mean, xerr=row.FP_sd, yerr=row.TP_sd,
                    fmt=markers.get(str(row.get("head")), "o"), capsize=3, label=label)
        ax.annotate(str(row.get("loss", "")), (row.FP_mean, row.TP_mean), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("false-positive lesions (mean ± sd over runs; symlog)")
    ax.set_ylabel("true-positive lesions (mean ± sd over runs)")
    ax.set_title(f"lesions found against false lesions ({variant}; circles sigmoid, squares softmax)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(out: Path, readme: Path | None = None) -> tuple[Path, Path, Path]:
    """``table.csv``, ``table.md`` and ``tp_fp.png`` of a study folder, from its ``results.csv``.

    With ``readme``, the study's block in that Markdown document is rewritten too
    (:mod:`lesionseg.study.readme_block`); its markers are checked before anything is written.
    """
    from lesionseg.evaluation.compare import to_markdown
    from lesionseg.study import readme_block

    out = Path(out)
    results = load_results(out / "results.csv")
    if readme is not None:
        readme_block.check_document(readme, out)
    table = summarize(results)
    shown = table[[c for c in table.columns if not c.endswith(("_mean", "_sd"))]]
    csv_path, md_path = out / "table.csv", out / "table.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(shown) + "\n")
    variant = "default" if "variant" in table.columns and (table.variant == "default").any() else (
        str(table.variant.iloc[0]) if "variant" in table.columns else "default")
    png = plot_tp_fp(table, out / "tp_fp.png", variant)
    log.info("study summary: %d row(s) -> %s, %s, %s", len(table), csv_path, md_path, png)
    print(to_markdown(shown))
    from lesionseg.study.verdicts import write_verdicts

    terms = write_terms_table(out)
    verdicts = write_verdicts(out, results, terms)
    log.info("the study's claims, answered from its rows: %s", verdicts)
    if readme is not None:
        readme_block.write_block(readme, out, readme_block.answer_block(table, results, terms, readme, out))
        log.info("the study's table, plot and verdicts -> %s", readme)
    return csv_path, md_path, png


def write_terms_table(out: Path) -> pd.DataFrame | None:
    """``terms.csv`` brought up to date and ``terms_table.md`` (:mod:`lesionseg.study.terms`); the terms."""
    from lesionseg.evaluation.compare import to_markdown
    from lesionseg.study.terms import TERMS_TABLE, terms_table, update_terms

    terms = update_terms(out)
    if terms is None or terms.empty:
        return None
    path = Path(out) / TERMS_TABLE
    path.write_text(to_markdown(terms_table(terms)) + "\n")
    log.info("loss terms of %d cell(s) -> %s", len(terms), path)
    return terms

