"""Lesion-aware patch sampling: where patches go (:class:`PatchSampler`).

Peers (nnU-Net's foreground oversampling, MONAI's positive/negative crops,
TorchIO's label sampler) pick patch centres in proportion to lesion *voxels*,
so one large confluent lesion soaks up the positive patches and lesions of a
few voxels are rarely seen.  Here every patch first chooses a case uniformly;
a ``lesion`` patch then chooses a lesion (a connected component) of that case
with weight ``volume ** alpha`` (``alpha = 0``: every lesion equally often;
``alpha = 1``: the peers' voxel-proportional behaviour), then a voxel of that
lesion, then a random position of that voxel inside the patch (the
*jitter*), so the lesion is not always centred.  With *balancing* on, the
weights are corrected for what patches aimed at neighbouring lesions already
show (:func:`coverage_matrix`, :func:`balance_probabilities`), so that lesions
crowded around a large confluent one are not over-shown at the expense of
isolated small ones.  ``foreground`` patches are centred on a random non-zero
(brain) voxel, ``random`` patches anywhere, ``hard`` patches hold a
hard-negative voxel (where a model fires away from every lesion:
:mod:`~lesionseg.sampling.hard_negatives`) in their central half, placed with
the same jitter as a lesion voxel.

The pieces live in :mod:`~lesionseg.sampling.lesion_table` (the lesions of a
case), :mod:`~lesionseg.sampling.extraction` (patch geometry, cutting patches
out, per-patch random streams, and the conventions of corners and jitter),
:mod:`~lesionseg.sampling.weights` (mode and lesion probabilities, balancing)
and :mod:`~lesionseg.sampling.targeting` (measuring what patches show).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from lesionseg.data.labels import check_connectivity
from lesionseg.errors import LesionsegError
from lesionseg.sampling.extraction import SAMPLE_STREAM, PatchSpec, patch_rng, target_position_range
from lesionseg.sampling.lesion_table import LesionTable
from lesionseg.sampling.weights import (
    BALANCE_SEED,
    balance_probabilities,
    coverage_matrix,
    lesion_probabilities,
    mode_probabilities,
)

log = logging.getLogger(__name__)

MODES = ("lesion", "foreground", "random", "hard")  # "hard" last: a zero hard fraction draws as before


def _pick(cdf: np.ndarray, u: float) -> int:
    """Index drawn from a cumulative distribution with a uniform ``u`` in [0, 1)."""
    return min(int(np.searchsorted(cdf, u * cdf[-1], "right")), len(cdf) - 1)


class PatchSampler:
    """Draws :class:`PatchSpec` s over a list of cases.

    Each patch first chooses a case uniformly, then a mode by the fractions;
    a ``lesion`` patch then chooses a lesion of that case with probability
    ∝ ``volume ** alpha`` (coverage-balanced when ``balance``), a voxel of the
    lesion uniformly, and the voxel's position in the patch within the jitter
    range.  A ``lesion`` (``hard``) patch of a case without lesions (hard
    negatives) falls back to a ``foreground`` patch (logged once per case).

    Parameters
    ----------
    tables : sequence of LesionTable
        One per case, in a fixed order (the ``case`` of every spec indexes it).
    size : sequence of int
        Patch size (d, h, w).
    fractions : tuple of float
        Shares of ``lesion``, ``foreground``, ``random`` and (optional fourth)
        ``hard`` patches (normalised).
    alpha : float
        Lesion weight exponent: ``volume ** alpha``.
    jitter : float
        Position jitter of the chosen lesion voxel (0..1, fraction of half
        the patch size; <= 0.5 keeps it in the central half).
    balance : bool
        Correct the lesion weights so that each lesion is *targeted* (has a
        voxel in a patch's central half) at a rate ∝ ``volume ** alpha``,
        counting the patches aimed at its neighbours (:func:`coverage_matrix`,
        :func:`balance_probabilities`).  Off: the lesion is *chosen* at that
        rate, and lesions crowded around a large one are over-shown.
    names : sequence of str or None
        Case ids for log lines.

    Notes
    -----
    The weights are computed once, here, with a fixed internal seed: they do
    not depend on the sampling seed, the epoch, or the worker count.
    """

    def __init__(
        self,
        tables: Sequence[LesionTable],
        size: Sequence[int],
        fractions: tuple[float, ...] = (0.5, 0.4, 0.1),
        alpha: float = 0.0,
        jitter: float = 0.5,
        balance: bool = True,
        names: Sequence[str] | None = None,
    ) -> None:
        if not tables:
            raise LesionsegError("patch sampling needs at least one case")
        size = tuple(int(s) for s in size)
        if len(size) != 3 or min(size) < 1:
            raise LesionsegError(f"config patches.size must be 3 positive integers, got {size}")
        if not 0.0 <= float(jitter) <= 1.0:
            raise LesionsegError(f"config patches.jitter must be in [0, 1], got {jitter}")
        if not np.isfinite(alpha):
            raise LesionsegError(f"config patches.alpha must be a finite number, got {alpha}")
        self.tables = list(tables)
        self.names = list(names) if names is not None else [f"case {i}" for i in range(len(self.tables))]
        self.size: tuple[int, int, int] = size  # type: ignore[assignment]
        self.alpha = float(alpha)
        self.jitter = float(jitter)
        self.balance = bool(balance)
        self.mode_p = mode_probabilities(*fractions)
        self._mode_cdf = np.cumsum(self.mode_p)
        self._pos_lo, self._pos_hi = target_position_range(self.size, self.jitter)
        self._half = np.asarray(self.size, np.int64) // 2
        self.lesion_p: list[np.ndarray] = []
        rng = np.random.default_rng(BALANCE_SEED)
        start = time.perf_counter()
        for table, name in zip(self.tables, self.names):
            p = lesion_probabilities(table.volumes, self.alpha)
            if self.balance and table.n_lesions > 1:
                p = balance_probabilities(coverage_matrix(table, self.size, self.jitter, rng=rng), p)
            self.lesion_p.append(p)
            if table.n_lesions == 0 and self.mode_p[0] > 0:
                log.info("%s: no lesion; its lesion patches fall back to foreground patches", name)
            if (table.hard is None or table.hard.size == 0) and self.mode_p[3] > 0:
                log.info("%s: no hard negative; its hard patches fall back to foreground patches", name)
        self._lesion_cdf = [np.cumsum(p) for p in self.lesion_p]
        if self.balance:
            log.debug("lesion weights of %d lesion(s) balanced in %.1f s", self.n_lesions, time.perf_counter() - start)

    @classmethod
    def from_config(cls, tables: Sequence[LesionTable], cfg, names: Sequence[str] | None = None) -> PatchSampler:
        """A sampler from a :class:`~lesionseg.config.PatchConfig`."""
        check_connectivity(cfg.connectivity, "config patches.connectivity")
        return cls(
            tables,
            cfg.size,
            (cfg.lesion_fraction, cfg.foreground_fraction, cfg.random_fraction, cfg.hard_fraction),
            cfg.alpha,
            cfg.jitter,
            cfg.balance,
            names,
        )

    @property
    def n_lesions(self) -> int:
        """Lesions over all cases."""
        return sum(t.n_lesions for t in self.tables)

    def draw(self, rng: np.random.Generator) -> PatchSpec:
        """Draw one patch position.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of every random choice (case, mode, lesion, voxel, jitter).

        Returns
        -------
        PatchSpec
        """
        case = int(rng.integers(len(self.tables)))
        table = self.tables[case]
        mode = MODES[_pick(self._mode_cdf, rng.random())]
        if mode == "lesion" and table.n_lesions:
            label = 1 + _pick(self._lesion_cdf[case], rng.random())
            start, stop = table.offsets[label - 1], table.offsets[label]
            flat = table.voxels[start + rng.integers(stop - start)]
            voxel = np.array(np.unravel_index(flat, table.shape), dtype=np.int64)
            corner = voxel - rng.integers(self._pos_lo, self._pos_hi + 1)
            return PatchSpec(case, tuple(int(v) for v in corner), self.size, "lesion", label)  # type: ignore[arg-type]
        if mode == "hard" and table.hard is not None and table.hard.size:
            flat = table.hard[rng.integers(table.hard.size)]
            voxel = np.array(np.unravel_index(flat, table.shape), dtype=np.int64)
            corner = voxel - rng.integers(self._pos_lo, self._pos_hi + 1)
            return PatchSpec(case, tuple(int(v) for v in corner), self.size, "hard")  # type: ignore[arg-type]
        if mode in ("lesion", "hard"):
            mode = "foreground"
        if mode == "foreground" and table.foreground is not None:
            flat = table.foreground[rng.integers(table.foreground.size)]
            voxel = np.array(np.unravel_index(flat, table.shape), dtype=np.int64)
        else:
            voxel = rng.integers(0, np.asarray(table.shape, np.int64))
        corner = voxel - self._half
        return PatchSpec(case, tuple(int(v) for v in corner), self.size, mode)  # type: ignore[arg-type]

    def spec(self, seed: int, epoch: int, index: int) -> PatchSpec:
        """Patch ``index`` of ``epoch`` under ``seed`` (see :func:`patch_rng`)."""
        return self.draw(patch_rng(seed, epoch, index, SAMPLE_STREAM))

    def specs(self, seed: int, epoch: int, count: int, start: int = 0) -> list[PatchSpec]:
        """Patches ``start .. start + count - 1`` of ``epoch``."""
        return [self.spec(seed, epoch, n) for n in range(start, start + count)]
