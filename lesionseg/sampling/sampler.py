"""Lesion-aware patch sampling: where patches go, and cutting them out.

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
(brain) voxel, ``random`` patches anywhere.

Conventions
-----------
* Volumes are ``(D, H, W)`` or ``(D, H, W, C)`` numpy arrays in the voxel
  order of the file as stored on disk (no reorientation).
* A patch is given by its first corner ``(i0, j0, k0)`` and its size; the
  corner is in the voxel indices of the stored file and **may be negative, or
  reach past the far border**, when the patch hangs over the edge of the volume
  (a centre near a border, or a volume smaller than the patch).  The part
  outside the volume is filled with 0 by :func:`extract_patch`; sampling never
  fails and never moves a patch to keep it inside.
* With ``jitter <= 0.5`` the chosen lesion voxel always lies in the patch's
  *central half* (:func:`central_half`), the middle 24³ of a 48³ patch.
* Every random draw goes through an explicit :class:`numpy.random.Generator`;
  :func:`patch_rng` derives one per patch from ``(seed, epoch, index)`` so that
  patch ``n`` of epoch ``e`` is the same whatever the batch size, the number of
  workers or the order in which batches are built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.data.labels import check_connectivity, label_components
from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

MODES = ("lesion", "foreground", "random")
SAMPLE_STREAM = 0
AUGMENT_STREAM = 1
BALANCE_SEED = 0  # fixed: the lesion weights do not depend on the sampling seed


@dataclass(frozen=True, eq=False)
class LesionTable:
    """What sampling needs from one case, computed once.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape (D, H, W) of the case.
    voxels : numpy.ndarray
        (N,) int32/int64 flat (C-order) indices of all lesion voxels, grouped
        by lesion: lesion ``l`` (1-based label) owns
        ``voxels[offsets[l - 1]:offsets[l]]``.
    offsets : numpy.ndarray
        (L + 1,) int64 start of each lesion's run in ``voxels``.
    foreground : numpy.ndarray or None
        (M,) flat indices of the non-zero (brain) voxels; ``None`` means the
        whole volume.
    """

    shape: tuple[int, int, int]
    voxels: np.ndarray
    offsets: np.ndarray
    foreground: np.ndarray | None = None

    @property
    def n_lesions(self) -> int:
        """Number of lesions (connected components)."""
        return len(self.offsets) - 1

    @property
    def volumes(self) -> np.ndarray:
        """(L,) int64 voxel count of each lesion, label order."""
        return np.diff(self.offsets)

    def labels(self) -> np.ndarray:
        """(D, H, W) lesion labels rebuilt from the voxel lists (uint16, or uint32 above 65535 lesions)."""
        dtype = np.uint16 if self.n_lesions < 65535 else np.uint32
        labels = np.zeros(self.shape, dtype)
        labels.ravel()[self.voxels] = np.repeat(np.arange(1, self.n_lesions + 1, dtype=dtype), self.volumes)
        return labels

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays, in bytes."""
        fg = 0 if self.foreground is None else self.foreground.nbytes
        return int(self.voxels.nbytes + self.offsets.nbytes + fg)


@dataclass(frozen=True)
class PatchSpec:
    """Where one patch lies.

    Attributes
    ----------
    case : int
        Index of the case in the sampler's case list.
    corner : tuple of int
        First corner (i0, j0, k0) in the stored file's voxel indices; may be
        negative or past the far border (padded with zeros).
    size : tuple of int
        Patch size (d, h, w) in voxels.
    mode : {"lesion", "foreground", "random"}
        How the patch was placed (after any fallback).
    lesion : int
        Label (1-based, in :func:`~lesionseg.data.labels.label_components` order) of the targeted lesion
        for ``lesion`` patches, 0 otherwise.
    """

    case: int
    corner: tuple[int, int, int]
    size: tuple[int, int, int]
    mode: str
    lesion: int = 0


def _index_dtype(n: int) -> type:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def index_lesions(
    mask: np.ndarray, connectivity: int = 26, foreground: np.ndarray | None = None
) -> LesionTable:
    """Label a mask once and keep the voxel lists sampling needs.

    Parameters
    ----------
    mask : numpy.ndarray
        (D, H, W) binary lesion mask.
    connectivity : {6, 18, 26}
        Connectivity of lesions.
    foreground : numpy.ndarray or None
        (D, H, W) bool non-zero (brain) region for ``foreground`` patches;
        ``None`` or an empty region means the whole volume.

    Returns
    -------
    LesionTable

    Examples
    --------
    >>> m = np.zeros((8, 8, 8), np.uint8); m[1, 1, 1] = 1; m[5:7, 5, 5] = 1
    >>> t = index_lesions(m)
    >>> t.n_lesions, t.volumes.tolist()
    (2, [1, 2])
    """
    labels, n = label_components(mask, connectivity)
    flat = labels.ravel()
    dtype = _index_dtype(flat.size)
    where = np.flatnonzero(flat)
    order = np.argsort(flat[where], kind="stable")
    voxels = where[order].astype(dtype)
    counts = np.bincount(flat[where], minlength=n + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    fg = None
    if foreground is not None:
        if foreground.shape != labels.shape:
            raise ValueError(f"foreground shape {foreground.shape} differs from mask {labels.shape}")
        fg_idx = np.flatnonzero(foreground).astype(dtype)
        fg = fg_idx if fg_idx.size else None
    shape = tuple(int(s) for s in labels.shape)
    return LesionTable(shape=shape, voxels=voxels, offsets=offsets, foreground=fg)  # type: ignore[arg-type]


def mode_probabilities(lesion: float, foreground: float, random: float) -> np.ndarray:
    """The three mode fractions normalised to sum to one.

    Raises
    ------
    LesionsegError
        A negative fraction, or all three zero.
    """
    p = np.array([lesion, foreground, random], dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise LesionsegError(
            "config patches: lesion_fraction, foreground_fraction and random_fraction must be "
            f">= 0 with a positive sum, got {lesion}, {foreground}, {random}"
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


def central_half(size: Sequence[int]) -> tuple[slice, slice, slice]:
    """Slices of a patch's central half per axis (the middle 24³ of a 48³ patch).

    Examples
    --------
    >>> central_half((48, 48, 16))
    (slice(12, 36, None), slice(12, 36, None), slice(4, 12, None))
    """
    out = []
    for s in size:
        half = max(1, s // 2)
        start = (s - half) // 2
        out.append(slice(start, start + half))
    return tuple(out)  # type: ignore[return-value]


def target_position_range(size: Sequence[int], jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive range of the chosen lesion voxel's position inside the patch.

    The position is uniform over the integers within ``jitter * s / 2`` of the
    patch centre ``(s - 1) / 2`` on each axis: ``jitter = 0`` centres the voxel
    (index ``s // 2``), ``0.5`` lets it anywhere in the central half, ``1``
    anywhere in the patch.

    Returns
    -------
    lo, hi : numpy.ndarray
        (3,) int64 inclusive bounds, ``0 <= lo <= hi < s``.
    """
    s = np.asarray(size, dtype=np.int64)
    centre = (s - 1) / 2.0
    reach = float(jitter) * s / 2.0
    lo = np.clip(np.ceil(centre - reach - 1e-9), 0, s - 1).astype(np.int64)
    hi = np.clip(np.floor(centre + reach + 1e-9), 0, s - 1).astype(np.int64)
    empty = lo > hi  # jitter 0 with an even size: no integer at the exact centre
    lo = np.where(empty, s // 2, lo)
    hi = np.where(empty, s // 2, hi)
    return lo, hi


def extract_patch(volume: np.ndarray, corner: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """Cut a patch out of a volume, padding with ``fill`` outside it.

    Parameters
    ----------
    volume : numpy.ndarray
        (D, H, W) or (D, H, W, C) array.
    corner : sequence of int
        First corner (may be negative or past the border).
    size : sequence of int
        Patch size (d, h, w).
    fill : float
        Value of voxels outside the volume.

    Returns
    -------
    numpy.ndarray
        (d, h, w) or (d, h, w, C), same dtype as ``volume``; a new array.

    Examples
    --------
    >>> v = np.arange(27).reshape(3, 3, 3)
    >>> extract_patch(v, (-1, 0, 0), (2, 1, 1))[:, 0, 0].tolist()
    [0, 0]
    >>> extract_patch(v, (2, 2, 2), (2, 2, 2))[0, 0, 0].item()
    26
    """
    spatial = volume.shape[:3]
    out = np.full(tuple(size) + volume.shape[3:], fill, dtype=volume.dtype)
    src, dst = [], []
    for c, s, n in zip(corner, size, spatial):
        lo, hi = max(c, 0), min(c + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - c, hi - c))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def patch_rng(seed: int, epoch: int, index: int, stream: int = SAMPLE_STREAM) -> np.random.Generator:
    """The generator of patch ``index`` of ``epoch`` (stream 0 sampling, 1 augmentation)."""
    return np.random.default_rng([int(seed), int(epoch), int(index), int(stream)])


def lesion_corner(rng: np.random.Generator, voxel: np.ndarray, size: Sequence[int], jitter: float) -> np.ndarray:
    """Corner of a patch holding ``voxel`` at a jittered position (see :func:`target_position_range`)."""
    lo, hi = target_position_range(size, jitter)
    position = rng.integers(lo, hi + 1)
    return np.asarray(voxel, dtype=np.int64) - position


def centred_corner(voxel: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Corner of the patch whose centre (index ``s // 2``) is ``voxel``."""
    return np.asarray(voxel, dtype=np.int64) - np.asarray(size, dtype=np.int64) // 2


def own_target_probability(size: Sequence[int], jitter: float) -> float:
    """Probability that the chosen lesion voxel lands in the patch's central half (1 when jitter <= 0.5)."""
    lo, hi = target_position_range(size, jitter)
    p = 1.0
    for s, a, b in zip(central_half(size), lo, hi):
        inside = max(0, min(b + 1, s.stop) - max(a, s.start))
        p *= inside / (b - a + 1)
    return p


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


def _pick(cdf: np.ndarray, u: float) -> int:
    """Index drawn from a cumulative distribution with a uniform ``u`` in [0, 1)."""
    return min(int(np.searchsorted(cdf, u * cdf[-1], "right")), len(cdf) - 1)


class PatchSampler:
    """Draws :class:`PatchSpec` s over a list of cases.

    Each patch first chooses a case uniformly, then a mode by the fractions;
    a ``lesion`` patch then chooses a lesion of that case with probability
    ∝ ``volume ** alpha`` (coverage-balanced when ``balance``), a voxel of the
    lesion uniformly, and the voxel's position in the patch within the jitter
    range.  A ``lesion`` patch of a case without lesions falls back to a
    ``foreground`` patch (logged once per case).

    Parameters
    ----------
    tables : sequence of LesionTable
        One per case, in a fixed order (the ``case`` of every spec indexes it).
    size : sequence of int
        Patch size (d, h, w).
    fractions : tuple of float
        Shares of ``lesion``, ``foreground`` and ``random`` patches (normalised).
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
        fractions: tuple[float, float, float] = (0.5, 0.4, 0.1),
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
            (cfg.lesion_fraction, cfg.foreground_fraction, cfg.random_fraction),
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
        if mode == "lesion":
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


# --- measuring what the sampler shows the network -------------------------------------------


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
