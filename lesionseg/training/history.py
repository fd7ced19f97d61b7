"""The rows of ``RUN/history.csv`` while training runs, and the epoch log line.

The columns are :data:`lesionseg.training.curves.HISTORY_COLUMNS`;
:mod:`lesionseg.training.curves` reads, writes and plots them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.training.curves import plot_curves, write_history

# the stage's logger: the lines of train.log keep their source name
log = logging.getLogger("lesionseg.training.train")


def log_value(logs: Mapping[str, Any] | None, key: str) -> float:
    """``logs[key]`` of ``model.fit`` as a float (NaN when missing or not a number)."""
    try:
        return float(np.asarray((logs or {})[key]))
    except (KeyError, TypeError, ValueError):
        return math.nan


def finite_or_zero(x: float | None) -> float:
    """``x``, or 0 when it is None, NaN or infinite."""
    return 0.0 if x is None or not math.isfinite(x) else float(x)


def epoch_row(epoch: int, logs: Mapping[str, Any], lr: float, codes: Iterable[str]) -> dict[str, Any]:
    """The training columns of one history row.

    Parameters
    ----------
    epoch : int
        1-based epoch.
    logs : mapping
        The epoch logs of ``model.fit``.
    lr : float
        Learning rate the epoch ran with.
    codes : iterable of str
        Codes of the diagnostic findings of the epoch.
    """
    return {
        "epoch": epoch,
        "loss": log_value(logs, "loss"),
        "lr": lr,
        "train_dice": log_value(logs, "hard_dice"),
        "train_pred_fg": log_value(logs, "fg_fraction"),
        "train_true_fg": log_value(logs, "true_fg"),
        "best": 0,
        "diagnostics": " ".join(sorted(set(codes))),
    }


def validation_columns(val: Any) -> dict[str, Any]:
    """The validation columns of a history row from a :class:`~lesionseg.training.validation.ValidationResult`."""
    return {
        "val_dice": val.dice,
        "val_lesion_precision": val.lesion_precision,
        "val_lesion_recall": val.lesion_recall,
        "val_lesion_f1": val.lesion_f1,
        "val_pred_fg": val.pred_fg,
        "val_TP": val.TP,
        "val_FP": val.FP,
        "val_FN": val.FN,
    }


class History:
    """The history rows of a run, written to ``RUN/history.csv`` after every epoch.

    Parameters
    ----------
    rows : list of dict
        Rows so far (those of the checkpoint's epochs on resume).
    run_dir : Path or None
        The run folder; ``None`` on workers that do not write it.
    """

    def __init__(self, rows: list[dict[str, Any]], run_dir: Path | None) -> None:
        self.rows = rows
        self.run_dir = run_dir

    def append(self, row: dict[str, Any]) -> None:
        """Add the row of an epoch."""
        self.rows.append(row)

    def add_code_to_last(self, code: str) -> None:
        """Add a diagnostic code to the last row (raises IndexError without rows)."""
        last = self.rows[-1]
        last["diagnostics"] = " ".join(sorted(set(last["diagnostics"].split()) | {code}))

    def row(self, epoch: int) -> dict[str, Any] | None:
        """The row of a 1-based epoch, or ``None``."""
        return next((r for r in self.rows if r["epoch"] == epoch), None)

    def write(self) -> None:
        """Write ``history.csv`` (when this process writes the run folder)."""
        if self.run_dir is not None:
            write_history(self.rows, self.run_dir / "history.csv")

    def write_curves(self) -> None:
        """Draw ``curves.png``; a failure is logged, never raised (it must not lose a trained model)."""
        if self.run_dir is None or not self.rows:
            return
        try:
            plot_curves(self.rows, self.run_dir / "curves.png")
        except Exception as exc:  # a plot must never lose a trained model
            log.warning("could not draw %s: %s", self.run_dir / "curves.png", exc)


def log_epoch(row: Mapping[str, Any], epochs: int) -> None:
    """Log the INFO line of one epoch (training numbers, validation numbers, learning rate)."""

    def f(v: Any, fmt: str = ".3f") -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    val = ""
    if "val_lesion_f1" in row:
        val = (
            f" | val lesion F1 {f(row['val_lesion_f1'])} (P {f(row['val_lesion_precision'])} "
            f"R {f(row['val_lesion_recall'])}, TP {row['val_TP']} FP {row['val_FP']} FN {row['val_FN']}) "
            f"Dice {f(row['val_dice'])}"
        )
    log.info(
        "epoch %d/%d loss %s Dice %s fg %s%s | lr %.3g | %.0f s%s",
        row["epoch"],
        epochs,
        f(row["loss"], ".4f"),
        f(row["train_dice"]),
        f(row["train_pred_fg"], ".4f"),
        val,
        row["lr"],
        row["seconds"],
        " [best]" if row["best"] else "",
    )
