"""``pipelines/clinical_path_check.py``: a skull-stripped exam wrapped in a synthetic head, in place."""

from __future__ import annotations


import nibabel as nib
import numpy as np
from scipy import ndimage

from conftest import load_pipeline


def _check_module():
    return load_pipeline("clinical_path_check")


def _stripped_exam(tmp_path):
    """A 40³ 'brain' (a ball of intensity ~100 on exact zeros) with one lesion, LAS, 1 mm."""
    grid = np.indices((40, 40, 40)).astype(np.float32)
    ball = ((grid - 20.0) ** 2).sum(axis=0) <= 15.0**2
    rng = np.random.default_rng(0)
    flair = np.where(ball, 100.0 + rng.normal(0, 3, ball.shape), 0.0).astype(np.float32)
    lesion = ((grid - np.array([24.0, 20.0, 20.0])[:, None, None, None]) ** 2).sum(axis=0) <= 3.0**2
    flair[lesion] = 180.0
    affine = np.array([[-1.0, 0, 0, 30.0], [0, 1.0, 0, -12.0], [0, 0, 1.0, 5.0], [0, 0, 0, 1]])
    case = tmp_path / "exams" / "exam01"
    case.mkdir(parents=True)
    nib.save(nib.Nifti1Image(flair, affine), case / "flair.nii.gz")
    nib.save(nib.Nifti1Image(lesion.astype(np.uint8), affine), case / "lesion_mask.nii.gz")
    return case, flair, lesion, affine


def test_wrap_in_head_keeps_the_brain_where_it_was_and_grows_csf_skull_and_scalp_around_it(tmp_path):
    check = _check_module()
    case, flair, lesion, affine = _stripped_exam(tmp_path)
    target = check.wrap_in_head(case, tmp_path / "heads")

    head_img = nib.load(target / "flair.nii.gz")
    head = np.asarray(head_img.dataobj, np.float32)
    mask = np.asarray(nib.load(target / "lesion_mask.nii.gz").dataobj)
    pad = check.PAD
    assert head.shape == tuple(s + 2 * pad for s in flair.shape) and mask.shape == head.shape
    # the same voxel of the brain sits at the same place in the scanner: world coordinates kept
    np.testing.assert_allclose(head_img.affine @ [pad, pad, pad, 1], affine @ [0, 0, 0, 1])
    inner = (slice(pad, -pad),) * 3
    diff = head[inner][flair > 0] - flair[flair > 0]  # the brain itself, plus the head's scanner noise
    median = float(np.median(flair[flair > 0]))
    assert abs(diff.mean()) < 0.005 * median and 0.025 * median < diff.std() < 0.035 * median
    np.testing.assert_array_equal(mask[inner], lesion.astype(np.uint8))
    assert mask.sum() == lesion.sum()

    # the layers, by distance from the brain: CSF (dark), skull (darker), scalp fat (bright), skin
    brain = np.pad(flair > 0, pad)
    dist = ndimage.distance_transform_edt(~brain)
    levels = {name: float(np.median(head[(dist > lo) & (dist <= hi)]) / median)
              for name, lo, hi in (("csf", 0.5, 2.5), ("skull", 4.5, 7.5), ("scalp", 8.5, 10.5), ("skin", 11.5, 12.5))}
    assert levels["skull"] < 0.15 < levels["csf"] < 0.4 < levels["skin"] < 1.0 < levels["scalp"], levels
    assert (head[dist > 13.5] == 0).all()  # air: exact zeros, as a scanner's masked background
    assert head.min() >= 0


def test_a_fold_subset_without_a_trained_fold_fails_before_writing_anything(tmp_path, monkeypatch, capsys):
    """Predicting a subset while the others train: with none of the asked folds trained, one clear error."""
    import sys

    import pytest

    module = _check_module()
    folds = tmp_path / "lopo"
    (folds / "L07").mkdir(parents=True)  # still training: no config.yaml yet
    (folds / "M14").mkdir()
    (folds / "M14" / "config.yaml").write_text("data: {}\n")  # trained, but not asked for
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["clinical_path_check.py", "--folds", str(folds), "--out", str(out), "L07"])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 2
    assert "no trained fold among L07" in capsys.readouterr().err
    assert not out.exists()


def test_parallel_fold_processes_make_the_thick_exams_once_and_never_under_each_other(tmp_path, monkeypatch):
    """Two folds predicted by parallel processes: the second reuses the exams instead of rebuilding them
    while the first predicts from them; other settings rebuild them."""
    import threading
    import time

    module = _check_module()
    case, *_ = _stripped_exam(tmp_path)
    monkeypatch.setattr(module, "FOLDS", {"L07": [case.name]})
    out = tmp_path / "out"
    built, inside = [], []

    def fake_lesionseg(*args):  # thick-slices: slow, so a second process would overlap it
        assert args[0] == "thick-slices"
        inside.append(1)
        assert len(inside) == 1, "two processes built the thick exams at once"
        time.sleep(0.3)
        (out / "heads_thick" / case.name).mkdir(parents=True, exist_ok=True)
        built.append(args[args.index("--slice-mm") + 1])
        inside.pop()

    monkeypatch.setattr(module, "run", fake_lesionseg)
    settings = {"data": str(case.parent), "slice_mm": "7", "gap_mm": "0", "in_plane_mm": "0.9", "axis": "2"}

    def one_fold_process():
        with module.exclusive(out / ".exams.lock"):
            module.thick_exams(case.parent, out, tmp_path / "config.yaml", settings)

    processes = [threading.Thread(target=one_fold_process) for _ in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=30)
    assert built == ["7"]  # made once, by whichever came first
    assert (out / "heads" / case.name / "flair.nii.gz").is_file()
    module.thick_exams(case.parent, out, tmp_path / "config.yaml", {**settings, "slice_mm": "5"})
    assert built == ["7", "5"]  # other settings: made again
