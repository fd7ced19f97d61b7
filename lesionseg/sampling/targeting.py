"""Measuring what a set of patches shows the network: which lesions each patch targets.

A patch *targets* a lesion when a voxel of the lesion lies in the patch's
central half (:func:`~lesionseg.sampling.extraction.central_half`).
:func:`target_counts` counts, per lesion, the patches that target it, and
:func:`summarize_targeting` reduces those counts to the share of lesions seen
and the small/large-quarter ratios used by the tests and ``bench/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.sampling.extraction import PatchSpec, central_half, extract_patch


def targeted_lesions(labels: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """Labels of the lesions with a voxel in the patch's central half.

    Parameters
    ----------
    labels : numpy.ndarray
        (D, H, W) lesion labels of the patch's case (:func:`~lesionseg.data.labels.label_components`).
    spec : PatchSpec
        The patch.

    Returns
    -------
    numpy.ndarray
        Sorted unique labels (> 0) the patch *targets*.
    """
    sl = central_half(spec.size)
    corner = [c + s.start for c, s in zip(spec.corner, sl)]
    size = [s.stop - s.start for s in sl]
    centre = extract_patch(labels, corner, size, 0)
    found = np.unique(centre)
    return found[found > 0]


@dataclass(frozen=True)
class TargetingSummary:
    """How often a set of patches targets each lesion.

    Attributes
    ----------
    n_lesions : int
        Lesions over all cases.
    targeted_fraction : float
        Share of lesions targeted at least once.
    small_mean, large_mean : float
        Mean number of patches targeting a lesion of the smallest / largest
        quarter (quarters by volume within each case, ``max(1, L // 4)``
        lesions each, ties in label order; means over the pooled quarters).
    ratio : float
        ``small_mean / large_mean`` (NaN when ``large_mean`` is 0).
    case_ratio : float
        Mean over cases of each case's own small/large ratio (cases whose
        large quarter is never targeted are left out).
    """

    n_lesions: int
    targeted_fraction: float
    small_mean: float
    large_mean: float
    ratio: float
    case_ratio: float


def target_counts(
    labels: Sequence[np.ndarray], n_lesions: Sequence[int], specs: Sequence[PatchSpec]
) -> list[np.ndarray]:
    """Per case, the number of patches that target each lesion.

    Parameters
    ----------
    labels : sequence of numpy.ndarray
        Per case, (D, H, W) lesion labels (:meth:`LesionTable.labels`).
    n_lesions : sequence of int
        Per case, number of lesions.
    specs : sequence of PatchSpec
        The patches.

    Returns
    -------
    list of numpy.ndarray
        One (L_c,) int64 array per case, index ``l - 1`` for label ``l``.
    """
    counts = [np.zeros(n, np.int64) for n in n_lesions]
    for spec in specs:
        hit = targeted_lesions(labels[spec.case], spec).astype(np.int64)
        counts[spec.case][hit - 1] += 1
    return counts


def summarize_targeting(volumes: Sequence[np.ndarray], counts: Sequence[np.ndarray]) -> TargetingSummary:
    """Targeted share and small/large-quarter ratios.

    Parameters
    ----------
    volumes : sequence of numpy.ndarray
        Per case, (L_c,) lesion volumes in voxels.
    counts : sequence of numpy.ndarray
        Per case, (L_c,) targeting counts (:func:`target_counts`).
    """
    small, large, ratios, total, hit = [], [], [], 0, 0
    for vol, cnt in zip(volumes, counts):
        n = len(vol)
        if n == 0:
            continue
        total += n
        hit += int(np.count_nonzero(cnt))
        order = np.argsort(vol, kind="stable")
        q = max(1, n // 4)
        small.append(cnt[order[:q]])
        large.append(cnt[order[-q:]])
        if large[-1].mean() > 0:
            ratios.append(small[-1].mean() / large[-1].mean())
    nan = float("nan")
    if total == 0:
        return TargetingSummary(0, nan, nan, nan, nan, nan)
    small_mean = float(np.concatenate(small).mean())
    large_mean = float(np.concatenate(large).mean())
    ratio = small_mean / large_mean if large_mean > 0 else nan
    case_ratio = float(np.mean(ratios)) if ratios else nan
    return TargetingSummary(total, hit / total, small_mean, large_mean, ratio, case_ratio)
