"""Training history: one CSV row per epoch, and the curves plotted from it.

``RUN/history.csv`` columns (:data:`HISTORY_COLUMNS`): ``epoch`` (1-based),
``loss``, ``lr``, ``train_dice`` (hard Dice of the training batches),
``train_pred_fg`` / ``train_true_fg`` (predicted / true lesion-voxel fraction of
the training batches), ``val_dice`` (mean voxel Dice over validation cases),
``val_lesion_precision``, ``val_lesion_recall``, ``val_lesion_f1`` (pooled
lesion counts, ``any`` criterion by default), ``val_pred_fg`` (predicted
foreground fraction of the validation volumes), ``val_TP``, ``val_FP``,
``val_FN``, ``best`` (1 when this epoch's model became ``model.keras``),
``seconds`` and ``diagnostics`` (codes of the warnings raised that epoch).
Validation columns are empty on epochs without validation.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lesionseg.data.writing import atomic_path

HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "lr",
    "train_dice",
    "train_pred_fg",
    "train_true_fg",
    "val_dice",
    "val_lesion_precision",
    "val_lesion_recall",
    "val_lesion_f1",
    "val_pred_fg",
    "val_TP",
    "val_FP",
    "val_FN",
    "best",
    "seconds",
    "diagnostics",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_history(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write history rows (dicts keyed by :data:`HISTORY_COLUMNS`) as CSV, atomically.

    Missing or NaN values are written as empty cells.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in HISTORY_COLUMNS})
    return path


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Read ``history.csv`` back: numbers as float (``epoch`` as int), empty cells as NaN."""
    rows: list[dict[str, Any]] = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for key, text in raw.items():
                if key == "diagnostics":
                    row[key] = text or ""
                elif key == "epoch":
                    row[key] = int(text)
                else:
                    row[key] = float(text) if text not in ("", None) else math.nan
            rows.append(row)
    return rows


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> list[float]:
    """One history column as floats (NaN where empty or not a number)."""
    out = []
    for r in rows:
        v = r.get(name)
        try:
            out.append(float(v) if v not in (None, "") else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _points(rows: Sequence[Mapping[str, Any]], name: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one column where it has a value."""
    epochs = [int(r["epoch"]) for r in rows]
    pairs = [(e, v) for e, v in zip(epochs, _column(rows, name)) if not math.isnan(v)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _plot_loss(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.plot(*_points(rows, "loss"), "o-", color="C0", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Loss and learning rate")
    lr_ax = ax.twinx()
    lr_ax.plot(*_points(rows, "lr"), "--", color="C3", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    if any(v > 0 for v in _column(rows, "lr") if not math.isnan(v)):
        lr_ax.set_yscale("log")
    handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)


def _plot_dice(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.plot(*_points(rows, "train_dice"), "o-", label="train Dice (batches)")
    ax.plot(*_points(rows, "val_dice"), "s-", label="val Dice (volumes)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Voxel Dice")


def _plot_lesions(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.plot(*_points(rows, "val_lesion_precision"), "^-", label="val lesion precision")
    ax.plot(*_points(rows, "val_lesion_recall"), "v-", label="val lesion recall")
    ax.plot(*_points(rows, "val_lesion_f1"), "s-", lw=2, label="val lesion F1")
    epochs = [int(r["epoch"]) for r in rows]
    best = [e for e, b in zip(epochs, _column(rows, "best")) if b == 1]
    for e in best[-1:]:
        ax.axvline(e, color="grey", ls=":", label=f"best (epoch {e})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Lesion-wise detection (validation)")


def _plot_foreground(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.plot(*_points(rows, "train_true_fg"), ":", label="train lesion fraction")
    ax.plot(*_points(rows, "train_pred_fg"), "o-", label="train predicted foreground")
    ax.plot(*_points(rows, "val_pred_fg"), "s-", label="val predicted foreground")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_title("Foreground fraction (-> 0: collapse to blank)")


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot loss + learning rate, Dice, lesion-wise P/R/F1 and foreground fractions.

    Parameters
    ----------
    rows : sequence of mapping
        History rows as written by :func:`write_history`.
    path : str or Path
        Output PNG (written atomically).

    Returns
    -------
    Path
        ``path``.
    """
    fig = Figure(figsize=(10, 7), constrained_layout=True)  # no pyplot: no GUI backend, no global figure list
    axes = fig.subplots(2, 2)
    _plot_loss(axes[0, 0], rows)
    _plot_dice(axes[0, 1], rows)
    _plot_lesions(axes[1, 0], rows)
    _plot_foreground(axes[1, 1], rows)
    for a in axes.flat:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        if a is not axes[0, 0]:
            a.legend(fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    return path
