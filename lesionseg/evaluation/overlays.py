"""PNG overlays of lesion status: TP green, FN red, FP yellow, over an image slice.

Drawn with matplotlib's object API (``Figure`` + Agg canvas), so the global
backend is never touched and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lesionseg.data.writing import atomic_path
from lesionseg.evaluation.lesions import STATUS_FN, STATUS_FP, STATUS_TP

#: RGB colour per status code
COLOURS = {STATUS_TP: (0.0, 0.85, 0.0), STATUS_FN: (1.0, 0.0, 0.0), STATUS_FP: (1.0, 0.9, 0.0)}


def pick_slices(status: np.ndarray, n_slices: int = 3, axis: int = 2) -> list[int]:
    """Slices worth showing: the one with most FN, most FP and most TP voxels, then the busiest.

    Parameters
    ----------
    status : numpy.ndarray
        (D, H, W) uint8 status codes (:func:`lesionseg.evaluation.lesions.lesion_status_map`).
    n_slices : int
        Number of slices wanted.
    axis : int
        Slicing axis.

    Returns
    -------
    list of int
        Distinct slice indices in increasing order; the middle slice when
        there is no lesion at all.
    """
    other = tuple(a for a in range(3) if a != axis)
    per_code = {code: np.count_nonzero(status == code, axis=other) for code in (STATUS_FN, STATUS_FP, STATUS_TP)}
    chosen: list[int] = []
    for code in (STATUS_FN, STATUS_FP, STATUS_TP):
        counts = per_code[code]
        if counts.max() > 0 and int(counts.argmax()) not in chosen and len(chosen) < n_slices:
            chosen.append(int(counts.argmax()))
    total = sum(per_code.values())
    for idx in np.argsort(-total, kind="stable"):
        if len(chosen) >= n_slices or total[idx] == 0:
            break
        if int(idx) not in chosen:
            chosen.append(int(idx))
    if not chosen:
        chosen = [status.shape[axis] // 2]
    return sorted(chosen)


def _window(background: np.ndarray) -> tuple[float, float]:
    values = background[background != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1.0, 99.0])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def write_overlay(
    path: str | Path,
    status: np.ndarray,
    background: np.ndarray | None = None,
    title: str = "",
    n_slices: int = 3,
    axis: int = 2,
) -> Path:
    """Write one PNG with ``n_slices`` panels of the lesion status over the image.

    Parameters
    ----------
    path : str or Path
        Output ``.png`` (written atomically).
    status : numpy.ndarray
        (D, H, W) uint8 status codes: TP green, FN red, FP yellow.
    background : numpy.ndarray or None
        (D, H, W) image on the same grid (e.g. FLAIR), shown in grey;
        ``None`` draws the status on black.
    title : str
        Figure title (e.g. the case id and its counts).
    n_slices : int
        Panels (slices chosen by :func:`pick_slices`).
    axis : int
        Slicing axis (2: the third voxel axis, axial for most brain MRI).

    Returns
    -------
    Path
        The written file.
    """
    status = np.asarray(status)
    if background is not None and np.shape(background) != status.shape:
        raise ValueError(f"background {np.shape(background)} and status {status.shape} differ in shape")
    slices = pick_slices(status, n_slices, axis)
    lo, hi = _window(np.asarray(background)) if background is not None else (0.0, 1.0)
    fig = Figure(figsize=(3.2 * len(slices), 3.6), dpi=100)
    axes = fig.subplots(1, len(slices), squeeze=False)[0]
    for ax, index in zip(axes, slices, strict=True):
        st = np.take(status, index, axis=axis).T
        rgba = np.zeros(st.shape + (4,), np.float32)
        for code, colour in COLOURS.items():
            rgba[st == code, :3] = colour
            rgba[st == code, 3] = 0.75
        if background is not None:
            bg = np.take(np.asarray(background, dtype=np.float32), index, axis=axis).T
            ax.imshow(bg, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        else:
            ax.imshow(np.zeros(st.shape), cmap="gray", vmin=0, vmax=1, origin="lower")
        ax.imshow(rgba, origin="lower", interpolation="nearest")
        ax.set_title(f"slice {index} (axis {axis})", fontsize=8)
        ax.set_axis_off()
    handles = [Patch(color=COLOURS[c], label=name) for c, name in
               ((STATUS_TP, "TP"), (STATUS_FN, "FN"), (STATUS_FP, "FP"))]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
