"""``pipelines/fp_components.py``: the peak rule keeps a component whole when its peak reaches the cut."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from conftest import load_pipeline, write_nifti


def test_peak_rule_keeps_confident_components_at_their_full_extent(tmp_path):
    fp = load_pipeline("fp_components")
    prob = np.zeros((12, 12, 12), np.float32)
    prob[2:5, 2:5, 2:5] = 0.6   # a component above 0.5 whose peak is 0.95: kept whole
    prob[3, 3, 3] = 0.95
    prob[8:11, 8:11, 8:11] = 0.7  # a component that never reaches 0.8: dropped
    affine = np.diag([0.9, 0.9, 7.0, 1.0])
    write_nifti(tmp_path / "pred" / "c1_prob.nii.gz", prob, affine)
    fp.peak_masks([tmp_path / "pred" / "c1_prob.nii.gz"], tmp_path / "out", 0.8)
    out = nib.load(tmp_path / "out" / "c1_pred.nii.gz")
    mask = np.asarray(out.dataobj)
    np.testing.assert_array_equal(out.affine, nib.load(tmp_path / "pred" / "c1_prob.nii.gz").affine)
    assert mask[2:5, 2:5, 2:5].all() and mask.sum() == 27
    fp.peak_masks([tmp_path / "pred" / "c1_prob.nii.gz"], tmp_path / "out_low", 0.5)
    assert np.asarray(nib.load(tmp_path / "out_low" / "c1_pred.nii.gz").dataobj).sum() == 54
