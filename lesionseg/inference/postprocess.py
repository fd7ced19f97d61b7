"""From a lesion probability map to the binary mask: the decision and the size filter.

The decision is a threshold on the lesion probability (strictly above it,
so 0.5 on a two-class softmax is its argmax); predicted components smaller
than a minimum volume are then removed, and, for a run with a lesion atlas
and a cut-off above 0, those lying wholly where the atlas's patients had no
lesion (:mod:`lesionseg.inference.atlas`, ``infer.min_atlas``).  Both settings come from
``infer.threshold`` / ``infer.min_lesion_mm3`` when set, else from
``RUN/tuning.json`` written by ``lesionseg tune`` (:func:`read_tuning`),
else 0.5 and 0 (:func:`resolve_decision`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lesionseg.config import InferConfig
from lesionseg.data.labels import check_connectivity, component_sizes
from lesionseg.errors import LesionsegError
from lesionseg.inference.atlas import drop_outside_atlas

TUNING_FILE = "tuning.json"
DEFAULT_THRESHOLD = 0.5


class DecisionSettings(Protocol):
    """Anything with a tuned ``threshold`` and ``min_lesion_mm3`` (either may be None)."""

    threshold: float | None
    min_lesion_mm3: float | None


@dataclass(frozen=True)
class StoredTuning:
    """The decision settings stored with a model by ``lesionseg tune``.

    Attributes
    ----------
    threshold : float or None
        Lesion-probability threshold.
    min_lesion_mm3 : float or None
        Minimum predicted lesion volume in mm³.
    """

    threshold: float | None
    min_lesion_mm3: float | None
    min_atlas: float | None = None


def read_tuning(run_dir: str | Path) -> StoredTuning | None:
    """``RUN/tuning.json`` as :class:`StoredTuning`, or ``None`` when the run was not tuned.

    Raises
    ------
    LesionsegError
        If the file exists but is not valid tuning JSON.
    """
    path = Path(run_dir) / TUNING_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        threshold = raw.get("threshold")
        min_mm3 = raw.get("min_lesion_mm3")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold {threshold} is not in [0, 1]")
        if min_mm3 is not None and not float(min_mm3) >= 0.0:
            raise ValueError(f"min_lesion_mm3 {min_mm3} is negative")
        min_atlas = raw.get("min_atlas")
        if min_atlas is not None and not 0.0 <= float(min_atlas) <= 1.0:
            raise ValueError(f"min_atlas {min_atlas} is not in [0, 1]")
        return StoredTuning(
            threshold=None if threshold is None else float(threshold),
            min_lesion_mm3=None if min_mm3 is None else float(min_mm3),
            min_atlas=None if min_atlas is None else float(min_atlas),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise LesionsegError(f"{path}: not a valid tuning file ({exc}); rerun lesionseg tune") from None


def resolve_decision(infer_cfg: InferConfig, tuned: DecisionSettings | None = None) -> tuple[float, float]:
    """The (threshold, min_lesion_mm3) to apply: config, else tuned, else (0.5, 0)."""
    threshold = infer_cfg.threshold
    if threshold is None and tuned is not None:
        threshold = tuned.threshold
    min_mm3 = infer_cfg.min_lesion_mm3
    if min_mm3 is None and tuned is not None:
        min_mm3 = tuned.min_lesion_mm3
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    return threshold, 0.0 if min_mm3 is None else float(min_mm3)


def resolve_min_atlas(infer_cfg: InferConfig, tuned: DecisionSettings | None = None,
                      calibrated: float = 0.0) -> float:
    """The lesion-atlas cut-off to apply: ``infer.min_atlas``, else the tuned one, else ``calibrated``.

    ``calibrated`` is the run's atlas's own cut-off (:attr:`~lesionseg.inference.atlas.LesionAtlas.min_atlas`;
    0 without an atlas): 0 switches the filter off.
    """
    value = infer_cfg.min_atlas
    if value is None and tuned is not None:
        value = getattr(tuned, "min_atlas", None)
    return float(calibrated) if value is None else float(value)


def decide(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Binary lesion mask: voxels whose probability exceeds ``threshold``.

    Strictly greater, so ``threshold=0.5`` on the lesion probability of a
    two-class softmax equals its argmax (ties go to background, as argmax
    picks the first class).

    Parameters
    ----------
    prob : numpy.ndarray
        (D, H, W) lesion probabilities in [0, 1].
    threshold : float
        Decision threshold in [0, 1].

    Returns
    -------
    numpy.ndarray
        (D, H, W) uint8 in {0, 1}.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return (np.asarray(prob) > np.float32(threshold)).astype(np.uint8)


def remove_small_components(
    mask: np.ndarray,
    min_mm3: float,
    zooms: Sequence[float],
    connectivity: int = 26,
) -> np.ndarray:
    """Remove connected components smaller than ``min_mm3``.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary mask (any non-zero is lesion).
    min_mm3 : float
        Components whose volume (voxels × voxel volume) is below this are
        removed; components of exactly this volume are kept.  ≤ 0 keeps all.
    zooms : sequence of float
        Voxel size in mm per axis.
    connectivity : {6, 18, 26}
        Neighbourhood that joins voxels into one component.

    Returns
    -------
    numpy.ndarray
        (D, H, W) uint8 in {0, 1}.

    Raises
    ------
    ConnectivityError
        ``connectivity`` not 6, 18 or 26 (a ``ValueError``).
    """
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    check_connectivity(connectivity)
    if min_mm3 is None or min_mm3 <= 0 or not binary.any():
        return binary
    voxel_mm3 = float(np.prod([float(z) for z in zooms[:3]]))
    labels, sizes = component_sizes(binary, connectivity)
    keep = sizes.astype(np.float64) * voxel_mm3 >= float(min_mm3) * (1 - 1e-9)
    keep[0] = False
    return keep[labels].astype(np.uint8)


def postprocess(
    prob: np.ndarray,
    infer_cfg: InferConfig,
    zooms: Sequence[float],
    tuned: DecisionSettings | None = None,
    atlas_values: np.ndarray | None = None,
    calibrated_min_atlas: float = 0.0,
) -> np.ndarray:
    """Binary lesion mask from a probability map: decision, size filter, then the atlas filter.

    Parameters
    ----------
    prob : numpy.ndarray
        (D, H, W) lesion probability.
    infer_cfg : InferConfig
        ``threshold`` / ``min_lesion_mm3`` (``None``: use ``tuned``, else
        0.5 / 0) and ``connectivity``.
    zooms : sequence of float
        Voxel size in mm.
    tuned : StoredTuning or TuningResult or None
        Settings stored with the model by ``lesionseg tune``.
    atlas_values : numpy.ndarray or None
        (D, H, W) lesion atlas on the same grid (:mod:`lesionseg.inference.atlas`);
        needed only when the resolved ``min_atlas`` is above 0.
    calibrated_min_atlas : float
        The atlas's own cut-off, used when neither the config nor the tuning sets one.

    Returns
    -------
    numpy.ndarray
        (D, H, W) uint8 in {0, 1}.

    Raises
    ------
    LesionsegError
        An atlas cut-off above 0 without an atlas.
    """
    threshold, min_mm3 = resolve_decision(infer_cfg, tuned)
    mask = decide(prob, threshold)
    mask = remove_small_components(mask, min_mm3, zooms, infer_cfg.connectivity)
    min_atlas = resolve_min_atlas(infer_cfg, tuned, calibrated_min_atlas)
    if min_atlas <= 0:
        return mask
    if atlas_values is None:
        raise LesionsegError(
            f"infer.min_atlas is {min_atlas:g} but the model has no lesion atlas "
            "(lesionseg atlas --model RUN --masks DIR makes one; --set infer.min_atlas=0 switches the filter off)"
        )
    return drop_outside_atlas(mask, atlas_values, min_atlas, infer_cfg.connectivity)
