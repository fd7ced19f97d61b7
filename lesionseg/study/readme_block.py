"""A study's answer inside a Markdown document (the README), rewritten from ``results.csv`` on every summary.

``lesionseg study --summarize --out STUDY --readme README.md`` fills the block between the two
marker lines

    <!-- study-answer:begin STUDY -->
    <!-- study-answer:end -->

(``STUDY`` as written relative to the document's folder) with the loss × head table of the
default decision (mean ± sd over seeds and folds), the TP-against-FP plot and the verdicts of
claims 1, 2 and 5 (:mod:`lesionseg.study.verdicts`), so the README's table, plot and verdicts are
computed from the rows by one command and never edited by hand.  Everything outside the block is
left byte for byte; the document is replaced atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lesionseg.errors import LesionsegError

END = "<!-- study-answer:end -->"
COLUMNS = ["loss", "head", "runs", "blank_runs", "over_segmented_runs", "GT", "TP", "FP", "FN",
           "lesion_precision", "lesion_recall", "lesion_f1", "dice"]


def begin_marker(document: Path, out: Path) -> str:
    """The opening marker of ``out``'s block in ``document`` (the study folder relative to the document)."""
    key = Path(os.path.relpath(Path(out).resolve(), Path(document).resolve().parent)).as_posix()
    return f"<!-- study-answer:begin {key} -->"


def block_span(text: str, begin: str, document: Path) -> tuple[int, int]:
    """Start and end offsets of the block's inside; one-line error when the markers are missing or repeated."""
    if text.count(begin) != 1:
        found = "no" if begin not in text else "more than one"
        raise LesionsegError(f"{document}: {found} line '{begin}' (put it, and '{END}' after it, where the "
                             "study's answer should go)")
    start = text.index(begin) + len(begin)
    end = text.find(END, start)
    if end < 0:
        raise LesionsegError(f"{document}: '{begin}' has no '{END}' after it")
    return start, end


def check_document(document: Path, out: Path) -> None:
    """Fail before any work when ``document`` is unreadable or lacks the study's block."""
    from lesionseg.paths import check_output_file

    document = Path(document)
    if not document.is_file():
        raise LesionsegError(f"{document}: no such document to put the study's answer in")
    try:
        text = document.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LesionsegError(f"{document}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    block_span(text, begin_marker(document, out), document)
    check_output_file(document)  # its folder must take the atomic rewrite


def progress_line(out: Path, results: pd.DataFrame, rel: str = ".") -> str:
    """How many of the grid's cells have run, and which grid points still miss runs ('' without ``study.toml``).

    The grid is read from ``OUT/study.toml`` (its ``[study.grid]`` values × its ``[study.folds]`` table);
    a study whose folds come from a file-name pattern has no fixed count without its data, so it gets none.
    ``rel`` is the study folder as the document links it.
    """
    import itertools

    from lesionseg.study.grid import column_name, read_study

    path = Path(out) / "study.toml"
    try:
        study = read_study(path)
    except LesionsegError:
        return ""
    grid, folds = study.get("grid") or {}, study.get("folds")
    if not isinstance(folds, dict) or not folds or not grid:
        return ""
    keys = list(grid)
    columns = [column_name(k) for k in keys]
    if not set(columns) <= set(results.columns):
        return ""
    runs = results.drop_duplicates("cell") if "cell" in results.columns else results
    done = runs[columns].astype(str).value_counts().to_dict()
    points = list(itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)))
    total = len(points) * len(folds)
    missing = []
    for point in points:
        found = done.get(tuple(str(v) for v in point), 0)
        if found < len(folds):
            missing.append(f"{' × '.join(str(v) for v in point)} ({len(folds) - found})")
    finished = sum(min(done.get(tuple(str(v) for v in p), 0), len(folds)) for p in points)
    line = f"**{finished} of the {total} cells** of [`study.toml`]({rel}/study.toml) have run"
    if missing:
        line += "; still to run (cells): " + ", ".join(missing)
    return line + "."


def answer_block(table: pd.DataFrame, results: pd.DataFrame, terms: pd.DataFrame | None, document: Path,
                 out: Path) -> str:
    """The block's Markdown: table of the default decision, plot, verdicts of claims 1, 2 and 5."""
    from lesionseg.evaluation.compare import to_markdown
    from lesionseg.study.verdicts import (VERDICTS_FILE, collapse_verdicts, head_tally, head_verdicts, ranking,
                                          variant_tally)

    here = Path(document).resolve().parent
    rel = Path(os.path.relpath(Path(out).resolve(), here)).as_posix()
    default = table[table.variant == "default"] if "variant" in table.columns else table
    shown = default[[c for c in COLUMNS if c in default.columns]].rename(columns={
        "blank_runs": "blank", "over_segmented_runs": "over-seg.", "lesion_precision": "precision",
        "lesion_recall": "recall", "lesion_f1": "lesion F1", "dice": "Dice"})
    n_runs = int((results.variant == "default").sum()) if "variant" in results.columns else len(results)
    progress = progress_line(out, results, rel)
    decisions = []
    if "variant" in results.columns and {"default", "no_overlap", "tuned"} <= set(results.variant):
        decisions = ["**What the decision changes** (same runs, per loss × head):", "",
                     "- overlapping windows averaged against windows that do not overlap: "
                     + variant_tally(results, "default", "no_overlap", "FP"),
                     "- threshold and minimum size tuned on the training exams against 0.5: "
                     + variant_tally(results, "tuned", "default", "FP") + "; "
                     + variant_tally(results, "tuned", "default", "TP") + "; "
                     + variant_tally(results, "tuned", "default", "lesion_f1"), ""]
    parts = [
        "",
        f"*Written by `lesionseg study --summarize --out {rel} --readme {Path(document).name}` from the "
        f"{n_runs} run(s) of [`results.csv`]({rel}/results.csv); do not edit by hand.*",
        "",
        *([progress, ""] if progress else []),
        "Threshold 0.5, no size filter, overlapping windows averaged (the `default` decision); mean ± sd "
        "over the runs (folds × seeds); *blank*: runs that predicted nothing; *over-seg.*: runs painting "
        "over 10× the true lesion volume, whose lesion counts mean little. Every decision variant: "
        f"[`table.md`]({rel}/table.md).",
        "",
        to_markdown(shown),
        "",
        f"![true against false lesions per loss and head]({rel}/tp_fp.png)",
        "",
        "**Does softmax give more false lesions than sigmoid with the same loss?** (paired by fold and seed)",
        "",
        *head_tally(results, terms),
        *head_verdicts(results, terms),
        "",
        "**Do losses collapse to blank predictions, and does the diagnostic say so?**",
        "",
        *collapse_verdicts(results),
        "",
        "**Which loss and head are best, and can the spread tell?**",
        "",
        *ranking(results),
        "",
        *decisions,
        f"Overlapping windows and the tuned decision, loss by loss: [`verdicts.md`]({rel}/{VERDICTS_FILE}).",
        "",
    ]
    return "\n".join(parts)


def write_block(document: Path, out: Path, block: str) -> Path:
    """Replace the inside of ``out``'s block in ``document`` with ``block`` (atomically)."""
    from lesionseg.data.writing import atomic_path

    document = Path(document)
    text = document.read_text()
    start, end = block_span(text, begin_marker(document, out), document)
    with atomic_path(document) as tmp:
        tmp.write_text(text[:start] + block + text[end:])
    return document
