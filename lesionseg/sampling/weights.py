"""Choice probabilities of the patch sampler: modes, lesions, and coverage balancing.

A ``lesion`` patch chooses a lesion of its case with weight ``volume ** alpha``
(:func:`lesion_probabilities`).  With balancing on, those weights are
corrected for what patches aimed at neighbouring lesions already show
(:func:`coverage_matrix`, :func:`balance_probabilities`), so that lesions
crowded around a large confluent one are not over-shown at the expense of
isolated small ones.  The balancing uses a fixed seed (:data:`BALANCE_SEED`):
the weights do not depend on the sampling seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionseg.errors import LesionsegError
from lesionseg.sampling.extraction import central_half, extract_patch, own_target_probability, target_position_range
from lesionseg.sampling.lesion_table import LesionTable

BALANCE_SEED = 0  # fixed: the lesion weights do not depend on the sampling seed


def mode_probabilities(lesion: float, foreground: float, random: float, hard: float = 0.0) -> np.ndarray:
    """The mode fractions (lesion, foreground, random, hard) normalised to sum to one.

    Raises
    ------
    LesionsegError
        A negative fraction, or all zero.
    """
    p = np.array([lesion, foreground, random, hard], dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise LesionsegError(
            "config patches: lesion_fraction, foreground_fraction, random_fraction and hard_fraction must be "
            f">= 0 with a positive sum, got {lesion}, {foreground}, {random}, {hard}"
        )
    return p / p.sum()


def lesion_probabilities(volumes: np.ndarray, alpha: float) -> np.ndarray:
    """Choice probability of each lesion, ∝ ``volume ** alpha``.

    Parameters
    ----------
    volumes : numpy.ndarray
        (L,) lesion volumes in voxels (all > 0).
    alpha : float
        0 = uniform over lesions, 1 = proportional to lesion voxels; negative
        values favour small lesions further.

    Returns
    -------
    numpy.ndarray
        (L,) float64 summing to one (empty when there is no lesion).

    Examples
    --------
    >>> lesion_probabilities(np.array([1, 3]), 0.0).tolist()
    [0.5, 0.5]
    >>> lesion_probabilities(np.array([1, 3]), 1.0).tolist()
    [0.25, 0.75]
    """
    v = np.asarray(volumes, dtype=np.float64)
    if v.size == 0:
        return v
    w = v**alpha
    return w / w.sum()


def coverage_matrix(
    table: LesionTable,
    size: Sequence[int],
    jitter: float,
    samples: int = 32,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """How often a patch aimed at one lesion targets each lesion of its case.

    ``C[a, b]`` estimates (Monte Carlo, ``samples`` patches per lesion) the
    probability that a ``lesion`` patch aimed at lesion ``a + 1`` has a voxel
    of lesion ``b + 1`` in its central half.  The diagonal is at least
    :func:`own_target_probability`.

    Returns
    -------
    numpy.ndarray
        (L, L) float64 in [0, 1].
    """
    rng = np.random.default_rng(BALANCE_SEED) if rng is None else rng
    n = table.n_lesions
    cover = np.zeros((n, n))
    if n == 0:
        return cover
    labels = table.labels()
    lo, hi = target_position_range(size, jitter)
    centre = central_half(size)
    start = np.array([s.start for s in centre], np.int64)
    extent = [s.stop - s.start for s in centre]
    shape = np.asarray(table.shape, np.int64)
    for a in range(n):
        first, count = table.offsets[a], table.offsets[a + 1] - table.offsets[a]
        flat = table.voxels[first + rng.integers(count, size=samples)]
        voxels = np.stack(np.unravel_index(flat, tuple(shape)), axis=1)
        corners = voxels - rng.integers(lo, hi + 1, size=(samples, 3)) + start
        for corner in corners:
            found = np.unique(extract_patch(labels, corner, extent, 0))
            cover[a, found[found > 0].astype(np.int64) - 1] += 1.0
    cover /= samples
    diag = np.diag_indices(n)
    cover[diag] = np.maximum(cover[diag], own_target_probability(size, jitter))
    return cover


def balance_probabilities(cover: np.ndarray, target: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Choice probabilities whose *targeting* rates approach ``target``.

    A patch aimed at lesion ``a`` also shows its neighbours (``cover[a, b]``),
    so lesions near others are seen more often than they are chosen.  This
    finds ``p >= 0`` (summing to one) with ``cover.T @ p`` as close to
    proportional to ``target`` as it can be, by multiplicative updates
    ``p <- p * sqrt(target / rate)``; lesions already over-shown by their
    neighbours (a large confluent lesion) drift to weight 0.

    Parameters
    ----------
    cover : numpy.ndarray
        (L, L) from :func:`coverage_matrix`.
    target : numpy.ndarray
        (L,) wanted relative targeting rates (e.g. ``volume ** alpha``).

    Returns
    -------
    numpy.ndarray
        (L,) float64 summing to one.
    """
    target = np.asarray(target, np.float64)
    if target.size == 0:
        return target
    target = target / target.sum()
    p = target.copy()
    for _ in range(iterations):
        rate = cover.T @ p
        p = p * np.sqrt(target / np.maximum(rate, 1e-300))
        p /= p.sum()
    return p
