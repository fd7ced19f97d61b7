"""Hard negatives: where a model fires but there is no lesion.

Most false lesions of a FLAIR model are bright tissue that is not MS: the
periventricular caps and rims, the cortex and the septum, flow artefacts.
Random and brain-centred patches show them rarely (they are a few percent of
the brain), so the network learns "bright = lesion".  ``hard`` patches
(``patches.hard_fraction``) are centred on such voxels: those where the
intensity-threshold model (:mod:`lesionseg.model.threshold`) fires — normalised
``patches.hard_channel`` at least ``patches.hard_threshold`` — more than
``patches.hard_margin`` voxels away from every lesion of the truth.

Examples
--------
>>> import numpy as np
>>> flair = np.zeros((9, 9, 9), np.float32)
>>> mask = np.zeros((9, 9, 9), np.uint8)
>>> flair[2, 2, 2] = flair[6, 6, 6] = 3.0   # two bright voxels
>>> mask[6, 6, 5] = 1                        # one lesion, next to the second
>>> hard = hard_negative_voxels(flair, mask, threshold=2.0, margin=1)
>>> [np.unravel_index(int(i), flair.shape) for i in hard] == [(2, 2, 2)]
True
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def hard_negative_voxels(
    channel: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    margin: int,
    brain: np.ndarray | None = None,
) -> np.ndarray:
    """Flat indices of the voxels at least ``threshold`` bright and more than ``margin`` from any lesion.

    Parameters
    ----------
    channel : numpy.ndarray
        (D, H, W) normalised intensity (e.g. the FLAIR z-score).
    mask : numpy.ndarray
        (D, H, W) lesion mask (non-zero = lesion).
    threshold : float
        Candidates have ``channel >= threshold``.
    margin : int
        Chessboard distance in voxels: candidates this close to a lesion are
        dropped (0: only lesion voxels themselves).
    brain : numpy.ndarray or None
        (D, H, W) bool region the candidates must lie in (``None``: anywhere).

    Returns
    -------
    numpy.ndarray
        (K,) int64 flat (C-order) indices, ascending.
    """
    lesion = np.asarray(mask) != 0
    if margin > 0 and lesion.any():
        lesion = ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3), bool), iterations=int(margin))
    candidates = (np.asarray(channel) >= np.float32(threshold)) & ~lesion
    if brain is not None:
        candidates &= np.asarray(brain, bool)
    return np.flatnonzero(candidates).astype(np.int64)
