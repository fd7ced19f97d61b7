"""The training input pipeline: cached, normalised volumes -> online patches for Keras.

:func:`load_cases` reads every case once (NIfTI -> normalised float32 image,
uint8 mask, lesion labels -> :class:`~lesionseg.sampling.lesion_table.LesionTable`) and
keeps it in memory; :class:`PatchSequence` then cuts new patches every epoch
from those arrays (never re-reading NIfTI) and feeds Keras as a
``keras.utils.PyDataset``, which works on the TensorFlow, JAX and torch
backends.

Determinism: patch ``n`` of epoch ``e`` is drawn from
``patch_rng(seed, e, n)`` (augmented with a second, independent stream), so a
batch is the same whatever the number of workers, the order batches are
built in, or whether earlier batches were built at all.  With
``seed = config.patches.seed`` and ``augment=False``, epoch 0 holds exactly the
patches that ``lesionseg patches`` writes (patch ``n`` is item
``n % batch_size`` of batch ``n // batch_size``).

Memory: the cache holds per case the image (D·H·W·C·4 bytes), the mask
(D·H·W bytes) and the voxel lists (4 bytes per lesion and per brain voxel).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from pathlib import Path

import keras
import nibabel as nib
import numpy as np

from lesionseg.config import AugmentConfig, Config, PatchConfig
from lesionseg.data.io import Grid, read_case
from lesionseg.data.labels import check_connectivity
from lesionseg.data.normalize import foreground_mask, normalize_image, saturated_fraction
from lesionseg.data.preprocess import prepare
from lesionseg.errors import LesionsegError
from lesionseg.sampling.augment import augment_patch
from lesionseg.sampling.extraction import AUGMENT_STREAM, TRANSPLANT_STREAM, PatchSpec, extract_patch, patch_rng
from lesionseg.sampling.hard_negatives import hard_negative_voxels
from lesionseg.sampling.lesion_table import LesionTable, index_lesions
from lesionseg.sampling.sampler import PatchSampler
from lesionseg.sampling.transplant import DonorMasks, lesion_contrast, transplant

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """One case ready for sampling.

    Attributes
    ----------
    case_id : str
        Folder name of the case.
    image : numpy.ndarray
        (D, H, W, C) float32, normalised (``config.data.normalization``).
    mask : numpy.ndarray
        (D, H, W) uint8 in {0, 1}.
    grid : Grid
        Voxel grid of the case's files.
    header : nibabel.Nifti1Header
        Header of the first channel.
    lesions : LesionTable
        Lesion voxel lists (labelled once) and brain voxels for sampling.
    channels : tuple of str
        Channel names, in the order of ``image``'s last axis.
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray
    grid: Grid
    header: nib.Nifti1Header
    lesions: LesionTable
    channels: tuple[str, ...] = ()

    @property
    def n_lesions(self) -> int:
        """Number of lesions (connected components of the mask)."""
        return self.lesions.n_lesions

    @property
    def nbytes(self) -> int:
        """Memory held by the case's arrays, in bytes."""
        return int(self.image.nbytes + self.mask.nbytes + self.lesions.nbytes)


SATURATION_WARNING = 0.10


def warn_saturated_lesions(case: Any, normalization: str, clip_percentiles: tuple[float, float]) -> None:
    """Log a warning when the intensity clipping flattens ≥ 10 % of a case's lesion voxels."""
    if normalization == "none" or case.mask is None or tuple(clip_percentiles) == (0.0, 100.0):
        return
    for c, name in enumerate(case.channels):
        low, high = saturated_fraction(case.image[..., c], case.mask, clip_percentiles)
        for share, side in ((high, "upper"), (low, "lower")):
            if share >= SATURATION_WARNING:
                log.warning(
                    "%s: %.0f %% of the lesion voxels of %s sit at the %s clip value "
                    "(data.clip_percentiles=%s) and lose their contrast; "
                    "--set data.clip_percentiles=[0,100] keeps it",
                    case.case_id,
                    100 * share,
                    name,
                    side,
                    list(clip_percentiles),
                )


def prepare_case(config: Config, case_dir: Path) -> PreparedCase:
    """Read, normalise and index one case (see :func:`load_cases`)."""
    data = config.data
    case = read_case(
        case_dir,
        data.channels,
        mask_name=data.mask,
        mask_values=data.mask_values,
        affine_tolerance=data.affine_tolerance,
    )
    prepared = prepare(case.image, case.mask, case.grid, config.preprocess)  # the working grid (as read when off)
    if prepared.grid is not case.grid:
        case = replace(case, image=prepared.image, mask=prepared.mask, grid=prepared.grid)
    brain = np.zeros(case.grid.shape, bool)
    for c in range(case.image.shape[-1]):
        brain |= foreground_mask(case.image[..., c])
    image = normalize_image(case.image, data.normalization, data.clip_percentiles)
    warn_saturated_lesions(case, data.normalization, data.clip_percentiles)
    table = index_lesions(case.mask, config.patches.connectivity, brain)
    patches = config.patches
    if patches.hard_fraction > 0:
        channel = image[..., data.channels.index(patches.hard_channel)]
        hard = hard_negative_voxels(channel, case.mask, patches.hard_threshold, patches.hard_margin, brain)
        table = replace(table, hard=hard.astype(table.voxels.dtype))
        log.debug("%s: %d hard-negative voxel(s)", case.case_id, hard.size)
    return PreparedCase(
        case_id=case.case_id,
        image=np.ascontiguousarray(image, dtype=np.float32),
        mask=case.mask,  # type: ignore[arg-type]
        grid=case.grid,
        header=case.header,
        lesions=table,
        channels=case.channels,
    )


def load_cases(config: Config, case_dirs: Sequence[Path]) -> list[PreparedCase]:
    """Read every case once into memory, ready for online sampling.

    Parameters
    ----------
    config : Config
        ``config.data`` (channels, mask, mask_values, affine_tolerance,
        normalization, clip_percentiles) and ``config.patches.connectivity``.
    case_dirs : sequence of Path
        Case folders (e.g. :func:`lesionseg.data.io.list_cases`).

    Returns
    -------
    list of PreparedCase
        In the order of ``case_dirs``.

    Raises
    ------
    DataError
        A case that cannot be read (missing mask, files not on one grid, ...).
    """
    check_connectivity(config.patches.connectivity, "config patches.connectivity")
    cases = []
    total = 0
    for case_dir in case_dirs:
        case = prepare_case(config, Path(case_dir))
        total += case.nbytes
        vol = case.lesions.volumes
        log.info(
            "%s: %s x %d channel(s), %d lesion(s) (%s voxels, largest %s), %.1f MB",
            case.case_id,
            "x".join(str(s) for s in case.grid.shape),
            case.image.shape[-1],
            case.n_lesions,
            int(vol.sum()),
            int(vol.max()) if vol.size else 0,
            case.nbytes / 2**20,
        )
        cases.append(case)
    log.info("%d case(s) cached: %.1f MB in memory", len(cases), total / 2**20)
    return cases


def cut_patch(case: PreparedCase, spec: PatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask patch of a spec, padded with 0 outside the volume.

    Returns
    -------
    image : numpy.ndarray
        (d, h, w, C) float32.
    mask : numpy.ndarray
        (d, h, w) uint8.
    """
    return extract_patch(case.image, spec.corner, spec.size), extract_patch(case.mask, spec.corner, spec.size)


class PatchSequence(keras.utils.PyDataset):
    """Online lesion-aware patches for ``model.fit``, new ones every epoch.

    Parameters
    ----------
    cases : sequence of PreparedCase
        Cached cases (:func:`load_cases`); all with the same channels.
    patch_cfg : PatchConfig
        Patch size, mode fractions, alpha, jitter, balance.
    augment_cfg : AugmentConfig
        Augmentation settings (used when ``augment``).
    batch_size : int
        Patches per batch.
    steps_per_epoch : int
        Batches per epoch (``len(self)``).
    seed : int
        Sampling seed (>= 0).
    augment : bool
        Apply ``augment_cfg``.
    **kwargs
        ``workers``, ``use_multiprocessing``, ``max_queue_size`` of
        :class:`keras.utils.PyDataset`.

    Notes
    -----
    ``self[b]`` returns ``(x, y)``: x (B, d, h, w, C) float32, y
    (B, d, h, w, 1) float32 in {0, 1}.  :meth:`on_epoch_end` moves on to the
    next epoch's patches and :meth:`set_epoch` jumps to an epoch.  Keras's
    ``fit`` also calls ``on_epoch_end`` once before the first epoch, so pass
    :meth:`epoch_callback` to ``fit(callbacks=[...])``: it sets the sampling
    epoch to Keras's own epoch number (``initial_epoch`` included) before each
    epoch's first batch is requested, so a resumed run draws exactly the
    patches the uninterrupted run would have.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch_cfg: PatchConfig,
        augment_cfg: AugmentConfig,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        augment: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not cases:
            raise ValueError("PatchSequence needs at least one case")
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(f"batch_size and steps_per_epoch must be >= 1, got {batch_size}, {steps_per_epoch}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        n_channels = {c.image.shape[-1] for c in cases}
        if len(n_channels) != 1:
            raise ValueError(f"cases have different channel counts: {sorted(n_channels)}")
        self.cases = list(cases)
        self.sampler = PatchSampler.from_config(
            [c.lesions for c in self.cases], patch_cfg, [c.case_id for c in self.cases]
        )
        self.augment_cfg = augment_cfg
        self.do_augment = bool(augment)
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.seed = int(seed)
        self.n_channels = n_channels.pop()
        self.epoch = 0
        self.donors: DonorMasks | None = None
        self.contrasts: list[tuple[np.ndarray, np.ndarray] | None] = []
        if self.do_augment and augment_cfg.transplant_probability > 0:
            self.donors = DonorMasks.from_folder(augment_cfg.transplant_masks, tuple(augment_cfg.transplant_exclude))
            for c in self.cases:
                if tuple(c.mask.shape) != tuple(self.donors.shape):
                    raise LesionsegError(
                        f"{c.case_id}: grid {tuple(c.mask.shape)} differs from the donor masks' {self.donors.shape} "
                        f"({augment_cfg.transplant_masks}); transplanted lesions must sit at the same voxels"
                    )
            self.contrasts = [lesion_contrast(c.image, c.mask) for c in self.cases]

    def __len__(self) -> int:
        return self.steps_per_epoch

    def spec(self, index: int, epoch: int | None = None) -> PatchSpec:
        """Where patch ``index`` (counted over the epoch) of ``epoch`` lies (default: current epoch)."""
        return self.sampler.spec(self.seed, self.epoch if epoch is None else epoch, index)

    def patch(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Patch ``index`` of ``epoch``: image (d, h, w, C) float32, mask (d, h, w) uint8, augmented if on."""
        epoch = self.epoch if epoch is None else epoch
        spec = self.sampler.spec(self.seed, epoch, index)
        image, mask = cut_patch(self.cases[spec.case], spec)
        if self.donors is not None and self.contrasts[spec.case] is not None:
            rng = patch_rng(self.seed, epoch, index, TRANSPLANT_STREAM)
            if rng.random() < self.augment_cfg.transplant_probability:
                names = self.donors.names
                donor = self.donors.cut(names[int(rng.integers(len(names)))], spec.corner, spec.size)
                image, mask = transplant(rng, image, mask, donor, self.contrasts[spec.case])  # type: ignore[arg-type]
        if self.do_augment:
            rng = patch_rng(self.seed, epoch, index, AUGMENT_STREAM)
            image, mask = augment_patch(rng, image, mask, self.augment_cfg)
        return image, mask

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} out of range 0..{self.steps_per_epoch - 1}")
        epoch = self.epoch
        size = self.sampler.size
        x = np.empty((self.batch_size, *size, self.n_channels), np.float32)
        y = np.empty((self.batch_size, *size, 1), np.float32)
        for i in range(self.batch_size):
            image, mask = self.patch(index * self.batch_size + i, epoch)
            x[i] = image
            y[i, ..., 0] = mask
        return x, y

    def on_epoch_end(self) -> None:
        """Move on to the next epoch's patches."""
        self.epoch += 1

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback that keeps this sequence's epoch equal to ``fit``'s epoch."""
        return EpochSync(self)

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of ``epoch`` next (to resume training at that epoch)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)


class EpochSync(keras.callbacks.Callback):
    """Sets a :class:`PatchSequence` to Keras's epoch number at the start of every epoch."""

    def __init__(self, sequence: PatchSequence) -> None:
        super().__init__()
        self.sequence = sequence

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.sequence.set_epoch(epoch)
