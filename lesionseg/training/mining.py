"""Online hard-negative mining: draw background patches where the network being trained fires.

The fixed hard negatives of :mod:`lesionseg.sampling.hard_negatives` are bright
voxels: where an *intensity* model would fire.  A network learns other
mistakes — a periventricular cap, a gyrus, a flow artefact that it has
decided looks like a plaque.  With ``patches.hard_mining_every = N`` the
training loop asks the network itself: from epoch ``patches.hard_mining_start``
on, every N epochs, before the epoch's first batch, it predicts each training
exam (sliding window, overlap :data:`MINING_OVERLAP`), and the voxels at least
``patches.hard_mining_probability`` probable inside the brain and more than
``patches.hard_margin`` voxels from every lesion of the truth become that
exam's hard negatives until the next mining (nicMSlesions' second network
learns from the first one's false positives; here one network learns from its
own, online).  An exam where the network fires nowhere keeps what it had.

The mined voxels are written to ``RUN/checkpoint/hard_negatives.npz``, so a
resumed run draws the patches the uninterrupted run would have drawn.

Examples
--------
>>> [e for e in range(10) if is_mining_epoch(e, start=2, every=3)]
[2, 5, 8]
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lesionseg.data import writing
from lesionseg.inference.predictor import Predictor
from lesionseg.sampling.hard_negatives import hard_negative_voxels

log = logging.getLogger(__name__)

MINING_OVERLAP = 0.25  # a quarter of the validation's windows at 0.5: mining is a search, not a decision
MINED_FILE = "hard_negatives.npz"


def is_mining_epoch(epoch: int, start: int, every: int) -> bool:
    """Whether the hard negatives are mined before (0-based) ``epoch``: ``start``, ``start + every``, ...

    ``every = 0`` never mines.
    """
    return every > 0 and epoch >= start and (epoch - start) % every == 0


def brain_mask(case: Any) -> np.ndarray | None:
    """(D, H, W) bool brain of a prepared case (its sampling foreground), ``None`` when it has none."""
    table = case.lesions
    if table.foreground is None:
        return None
    brain = np.zeros(table.shape, bool)
    brain.flat[table.foreground] = True
    return brain


def mine_case(predictor: Predictor, case: Any, probability: float, margin: int) -> np.ndarray:
    """Flat indices of the voxels where the network fires falsely in one prepared case.

    Parameters
    ----------
    predictor : Predictor
        The network being trained, wrapped for whole volumes.
    case : PreparedCase
        A training case (normalised image, mask, sampling table).
    probability : float
        A voxel fires when its lesion probability is at least this.
    margin : int
        Voxels within this chessboard distance of a lesion are not false.

    Returns
    -------
    numpy.ndarray
        (K,) int64 ascending flat indices (C order) on the case's grid.
    """
    prob = predictor.probability(case.image)
    return hard_negative_voxels(prob, case.mask, probability, margin, brain_mask(case))


class HardNegativeMiner(keras.callbacks.Callback):
    """Replaces the hard negatives of a :class:`~lesionseg.sampling.feed.PatchSequence` by mined ones.

    Parameters
    ----------
    sequence : PatchSequence
        The training batches; its sampler's tables get the mined voxels.
    config : Config
        ``[patches]`` (mining settings, margin), the window and head.
    checkpoint_dir : Path or None
        Where the mined voxels are kept for a resume (``None``: not kept).
    distributed : bool
        The model was built under a ``tf.distribute`` strategy (predicted by a plain call).
    """

    def __init__(self, sequence: Any, config: Any, checkpoint_dir: Path | None, distributed: bool = False) -> None:
        super().__init__()
        self.distributed = distributed
        self.sequence = sequence
        self.patches = config.patches
        self.config = dataclasses.replace(config, infer=dataclasses.replace(config.infer, overlap=MINING_OVERLAP,
                                                                            tta_flips=()))
        self.checkpoint_dir = checkpoint_dir
        self.intensity = [t.hard for t in sequence.sampler.tables]  # the bright voxels, kept for exams mined empty
        self.mined_at: int | None = None

    def restore(self, epoch: int) -> None:
        """On resume before ``epoch``: the voxels of the last mining before it, if any was kept."""
        path = self.checkpoint_dir / MINED_FILE if self.checkpoint_dir is not None else None
        if path is None or not path.is_file():
            return
        with np.load(path) as saved:
            mined_at = int(saved["epoch"])
            if mined_at >= epoch:  # mined for an epoch that the checkpoint does not hold: mined again
                return
            self.apply([saved[f"case{i}"] for i in range(len(self.intensity))], mined_at)
        log.info("hard negatives mined before epoch %d restored from %s", mined_at + 1, path)

    def apply(self, mined: Sequence[np.ndarray], epoch: int) -> None:
        """Put ``mined`` (one flat-index array per case, empty: keep the bright voxels) into the sampler."""
        tables = self.sequence.sampler.tables
        for i, voxels in enumerate(mined):
            hard = voxels if voxels.size else self.intensity[i]
            if hard is not None:
                hard = hard.astype(tables[i].voxels.dtype)
            tables[i] = dataclasses.replace(tables[i], hard=hard)
        self.mined_at = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not is_mining_epoch(epoch, self.patches.hard_mining_start, self.patches.hard_mining_every):
            return
        t0 = time.perf_counter()
        from lesionseg.training.validation import DirectPredictor

        predictor = Predictor.from_model(DirectPredictor(self.model) if self.distributed else self.model, self.config)
        mined = [mine_case(predictor, case, self.patches.hard_mining_probability, self.patches.hard_margin)
                 for case in self.sequence.cases]
        self.apply(mined, epoch)
        self._save(mined, epoch)
        empty = [c.case_id for c, m in zip(self.sequence.cases, mined) if not m.size]
        log.info(
            "hard negatives mined before epoch %d: %s voxel(s) where the network fires (p >= %.2f) away from "
            "lesions in %d of %d training exam(s)%s (%.0f s)",
            epoch + 1,
            f"{sum(int(m.size) for m in mined):,}",
            self.patches.hard_mining_probability,
            len(mined) - len(empty),
            len(mined),
            f"; {', '.join(empty)} keep their bright voxels" if empty else "",
            time.perf_counter() - t0,
        )

    def _save(self, mined: Sequence[np.ndarray], epoch: int) -> None:
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with writing.atomic_path(self.checkpoint_dir / MINED_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, epoch=np.int64(epoch), **{f"case{i}": m for i, m in enumerate(mined)})
