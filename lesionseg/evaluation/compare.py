"""The ``lesionseg compare`` stage: report folders side by side, and Markdown tables.

``lesionseg compare`` names each report by its folder, or by the folder
above it when the report folder has a generic name (``report``,
``reports``, ``eval``, ``evaluation``, ``evaluate``, ``results``,
``validation``): ``runs/unet_dice/report`` becomes ``unet_dice``.  Reports
that would get the same name are named by their path instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lesionseg.data import writing
from lesionseg.errors import LesionsegError
from lesionseg.evaluation.report import SETTINGS_COLUMNS

log = logging.getLogger("lesionseg.evaluation.report")

COMPARE_COLUMNS = (
    "run", "GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1", "dice_mean",
)  # fmt: skip
#: report folder names that say nothing about the run (compare uses the parent's name)
GENERIC_REPORT_NAMES = frozenset({"report", "reports", "eval", "evaluation", "evaluate", "results", "validation"})


def run_name(report_dir: Path) -> str:
    """A readable run name for a report folder (see the module docstring).

    Examples
    --------
    >>> run_name(Path("runs/unet_dice/report")), run_name(Path("reports/baseline"))
    ('unet_dice', 'baseline')
    """
    path = Path(report_dir)
    if path.name in ("", ".", ".."):
        path = path.resolve()
    if path.name.lower() in GENERIC_REPORT_NAMES and path.parent.name not in ("", ".", ".."):
        return path.parent.name
    return path.name


def _read_summary(folder: Path) -> dict[str, object]:
    """The one row of ``folder/summary.csv``, checked."""
    path = folder / "summary.csv"
    if not path.is_file():
        raise LesionsegError(f"{path}: missing; is {folder} a lesionseg report folder?")
    try:
        summary = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LesionsegError(f"{path}: unreadable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in COMPARE_COLUMNS[1:] if c not in summary.columns]
    if missing or len(summary) != 1:
        what = f"missing column(s) {', '.join(missing)}" if missing else f"{len(summary)} rows, expected 1"
        raise LesionsegError(f"{path}: not a lesionseg summary ({what})")
    return summary.iloc[0].to_dict()


def compare_reports(report_dirs: Sequence[Path], out_csv: Path) -> pd.DataFrame:
    """One row per report folder, side by side; written to ``out_csv`` (atomically).

    Parameters
    ----------
    report_dirs : sequence of Path
        Folders holding a ``summary.csv`` written by
        :func:`lesionseg.evaluation.report.write_reports`.
    out_csv : Path
        Output CSV.

    Returns
    -------
    pandas.DataFrame
        Columns ``run, GT, TP, FP, FN, lesion_precision, lesion_recall,
        lesion_f1, dice_mean`` then ``cases`` and the settings
        (``criterion, connectivity, min_lesion_mm3``).

    Raises
    ------
    LesionsegError
        A folder without ``summary.csv`` or a summary missing columns.
    """
    if not report_dirs:
        raise LesionsegError("compare: name at least one report folder")
    rows = []
    for folder in map(Path, report_dirs):
        row = _read_summary(folder)
        row["run"] = run_name(folder)
        row["_path"] = folder.as_posix()
        rows.append(row)
    names = [r["run"] for r in rows]
    for r in rows:
        if names.count(r["run"]) > 1:
            r["run"] = r["_path"]
    extra = [c for c in ("cases", *SETTINGS_COLUMNS) if any(c in r for r in rows)]
    table = pd.DataFrame(rows)[[*COMPARE_COLUMNS, *extra]]
    for column in SETTINGS_COLUMNS:
        if column in table and table[column].nunique(dropna=False) > 1:
            log.warning(
                "the reports differ in %s (%s): their counts are not comparable",
                column, ", ".join(map(str, table[column].unique())),
            )  # fmt: skip
    with writing.atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    write_compare_page(table, [Path(r["_path"]) for r in rows], Path(out_csv).with_suffix(".html"))
    return table


def write_compare_page(table: pd.DataFrame, report_dirs: Sequence[Path], path: Path) -> Path:
    """The comparison as an HTML table beside the CSV, each run linked to its ``report.html`` (when it has one)."""
    import html
    import os

    columns = list(table.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for (_, row), folder in zip(table.iterrows(), report_dirs):
        page = folder / "report.html"
        cells = []
        for c in columns:
            text = html.escape(_cell(row[c]))
            if c == "run" and page.is_file():
                href = Path(os.path.relpath(page.resolve(), Path(path).resolve().parent)).as_posix()
                text = f'<a href="{html.escape(href)}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    page_html = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lesionseg comparison</title>"
                 "<style>body{font-family:sans-serif}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
                 "padding:2px 6px;text-align:right}</style></head><body><h1>lesionseg comparison</h1>"
                 f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>\n")
    with writing.atomic_path(path) as tmp:
        tmp.write_text(page_html, encoding="utf-8")
    return path


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value).replace("|", "\\|")


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown (GitHub) table of a data frame: numbers right-aligned, 3 decimals, NaN as n/a.

    Examples
    --------
    >>> print(to_markdown(pd.DataFrame({"run": ["a"], "TP": [3], "lesion_f1": [2 / 3]})))
    | run |  TP | lesion_f1 |
    |:----|----:|----------:|
    | a   |   3 |     0.667 |
    """
    columns = [str(c) for c in df.columns]
    cells = [[_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    widths = [max([len(c), 3, *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    marks = [("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1)) for w, num in zip(widths, numeric, strict=True)]
    rule = "|" + "|".join(marks) + "|"
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])
