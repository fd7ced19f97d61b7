"""The lesion atlas: building it, the component filter, its tuning and `lesionseg atlas/tune/infer` with it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import linear_flair_t1_run, make_case

from lesionseg.cli import main
from lesionseg.config import InferConfig
from lesionseg.errors import LesionsegError
from lesionseg.inference.atlas import (
    ATLAS_FILE,
    LesionAtlas,
    build_atlas,
    component_atlas_max,
    drop_outside_atlas,
    load_atlas,
)
from lesionseg.inference.postprocess import postprocess, resolve_min_atlas
from lesionseg.inference.tune import tune_threshold_and_size


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def test_atlas_is_the_fraction_of_masks_then_smoothed(tmp_path):
    a = np.zeros((9, 9, 9), np.uint8)
    a[4, 4, 4] = 1
    b = a.copy()
    b[1, 1, 1] = 1
    paths = [_save(tmp_path / "a.nii.gz", a), _save(tmp_path / "b.nii.gz", b)]
    raw = build_atlas(paths, sigma_mm=0)
    assert raw.values[4, 4, 4] == 1.0 and raw.values.sum() == pytest.approx(1.5, abs=1e-4)
    assert raw.values[1, 1, 1] == pytest.approx(0.5, abs=1 / 65535)  # stored on a 1/65535 grid
    smooth = build_atlas(paths, sigma_mm=1.5)
    assert smooth.values[4, 4, 5] > 0 and smooth.values[4, 4, 4] < 1.0  # spread to the neighbours
    assert smooth.values.sum() == pytest.approx(1.5, rel=1e-2)  # mass kept (less the tails below 1e-4)
    np.testing.assert_array_equal(smooth.affine, np.eye(4))


def test_atlas_refuses_masks_on_different_grids(tmp_path):
    a = _save(tmp_path / "a.nii.gz", np.zeros((5, 5, 5), np.uint8))
    b = _save(tmp_path / "b.nii.gz", np.zeros((5, 5, 6), np.uint8))
    with pytest.raises(LesionsegError, match=r"b\.nii\.gz: grid 5x5x6 does not match"):
        build_atlas([a, b])
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    c = _save(tmp_path / "c.nii.gz", np.zeros((5, 5, 5), np.uint8), shifted)
    with pytest.raises(LesionsegError, match="c.nii.gz"):
        build_atlas([a, c])


def test_filter_keeps_a_component_that_touches_the_atlas_anywhere():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:4, 1:4, 1:4] = 1  # touches the atlas at one corner voxel only
    mask[7:9, 7:9, 7:9] = 1  # wholly outside
    atlas = np.zeros(mask.shape, np.float32)
    atlas[3, 3, 3] = 0.02
    kept = drop_outside_atlas(mask, atlas, 0.01)
    assert kept[1:4, 1:4, 1:4].all() and not kept[7:9, 7:9, 7:9].any()
    assert drop_outside_atlas(mask, atlas, 0.05).sum() == 0
    np.testing.assert_array_equal(drop_outside_atlas(mask, atlas, 0.0), mask)  # 0 switches it off
    labels = np.zeros(mask.shape, np.int32)
    labels[1:4, 1:4, 1:4] = 1
    labels[7:9, 7:9, 7:9] = 2
    np.testing.assert_allclose(component_atlas_max(labels, 3, atlas), [0.0, 0.02, 0.0])


def test_postprocess_applies_the_cut_off_only_with_an_atlas():
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1:3, 1:3, 1:3] = 0.9
    prob[6:8, 6:8, 6:8] = 0.9
    atlas = np.zeros(prob.shape, np.float32)
    atlas[1:3, 1:3, 1:3] = 0.1
    cfg = InferConfig(min_atlas=0.05)
    out = postprocess(prob, cfg, (1.0, 1.0, 1.0), None, atlas)
    assert out.sum() == 8 and out[1, 1, 1] == 1
    with pytest.raises(LesionsegError, match="no lesion atlas"):
        postprocess(prob, cfg, (1.0, 1.0, 1.0), None, None)
    assert postprocess(prob, InferConfig(), (1.0, 1.0, 1.0), None, None).sum() == 16  # default: off
    assert resolve_min_atlas(InferConfig(min_atlas=0.0), None) == 0.0


def test_config_checks_the_atlas_keys(tmp_path):
    assert main(["-q", "train", "--config", str(_minimal_config(tmp_path)), "--data", str(tmp_path),
                 "--out", str(tmp_path / "r"), "--set", "infer.min_atlas=2"]) == 1
    assert main(["-q", "train", "--config", str(_minimal_config(tmp_path)), "--data", str(tmp_path),
                 "--out", str(tmp_path / "r"), "--set", "infer.tune_min_atlas=[2]"]) == 1
    assert not (tmp_path / "r").exists()


def _minimal_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('[data]\nchannels = ["flair"]\n')
    return path


def test_tuning_picks_a_cut_off_that_drops_false_positives_outside_the_atlas():
    shape = (30, 30, 30)
    truth = np.zeros(shape, np.uint8)
    truth[5:8, 5:8, 5:8] = 1
    truth[20:23, 5:8, 5:8] = 1
    prob = np.where(truth > 0, 0.9, 0.0).astype(np.float32)
    prob[22:26, 22:26, 22:26] = 0.9  # a false lesion as big as the true ones: no size filter removes it
    prob[5:8, 22:25, 22:25] = 0.9
    atlas = np.zeros(shape, np.float32)
    atlas[3:10, 3:10, 3:10] = 0.05
    atlas[18:25, 3:10, 3:10] = 0.01
    without = tune_threshold_and_size([prob], [truth], [(1, 1, 1)], [0.5], [0.0, 10.0])
    assert without.min_atlas is None and len(without.table) == 2 and set(without.table.min_atlas) == {0.0}
    assert without.lesion_f1 == pytest.approx(2 / 3)  # 2 TP, 2 FP
    result = tune_threshold_and_size([prob], [truth], [(1, 1, 1)], [0.5], [0.0, 10.0],
                                     atlases=[atlas], min_atlas=[0.0, 0.005, 0.02])
    assert len(result.table) == 2 * 3
    assert result.min_atlas == 0.005  # 0.02 would lose the lesion where the atlas is 0.01
    assert result.lesion_f1 == pytest.approx(1.0)
    row = result.table[(result.table.min_atlas == 0.02) & (result.table.min_lesion_mm3 == 0.0)].iloc[0]
    assert row.TP == 1 and row.FP == 0
    with pytest.raises(LesionsegError, match="tune_min_atlas"):
        tune_threshold_and_size([prob], [truth], [(1, 1, 1)], [0.5], [0.0], atlases=[atlas], min_atlas=[1.5])


# ---------------------------------------------------------------- lesionseg atlas / tune / infer


@pytest.fixture
def run_with_false_blob(tmp_path) -> tuple[Path, Path, Path]:
    """A 1x1x1-conv model (lesion = bright FLAIR, dark T1), two cases with a bright false blob, atlas masks."""
    run = linear_flair_t1_run(tmp_path / "run", InferConfig(tune_thresholds=(0.5, 0.9), tune_min_sizes_mm3=(0.0, 4.0)))
    data = tmp_path / "data"
    masks = tmp_path / "masks"
    shape = (24, 22, 20)
    union = np.zeros(shape, np.uint8)
    for n, (name, lesion) in enumerate((("c1", (6, 6, 6, 2)), ("c2", (7, 6, 6, 2)))):
        folder = make_case(data, name, shape=shape, lesions=(lesion,), seed=n)
        flair = nib.load(str(folder / "flair.nii.gz"))
        img = np.asarray(flair.dataobj, np.float32)
        img[15:20, 14:19, 13:18] += 90.0  # bright on FLAIR, not a lesion, far from every atlas lesion
        _save(folder / "flair.nii.gz", img, flair.affine)
        union |= np.asarray(nib.load(str(folder / "lesion_mask.nii.gz")).dataobj).astype(np.uint8)
    for n in range(2):  # two "other patients" with lesions where these exams have theirs
        _save(masks / f"patient0{n}_lesion_mask.nii.gz", union, flair.affine)
    return run, data, masks


def test_atlas_tune_and_infer_drop_the_false_blob(run_with_false_blob, tmp_path):
    run, data, masks = run_with_false_blob
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(masks), "--sigma-mm", "1"]) == 0
    assert (run / ATLAS_FILE).is_file()
    assert json.loads((run / "lesion_atlas.json").read_text())["n_masks"] == 2
    assert main(["-q", "tune", "--model", str(run), "--data", str(data),
                 "--set", "infer.tune_min_atlas=[0.0, 0.01]"]) == 0
    stored = json.loads((run / "tuning.json").read_text())
    assert stored["min_atlas"] == 0.01 and stored["lesion_f1"] == pytest.approx(1.0)

    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir)]) == 0
    for case in ("c1", "c2"):
        prob = np.asarray(nib.load(str(pred_dir / f"{case}_prob.nii.gz")).dataobj)
        pred = np.asarray(nib.load(str(pred_dir / f"{case}_pred.nii.gz")).dataobj)
        assert (prob[15:20, 14:19, 13:18] > stored["threshold"]).mean() > 0.5  # the network fires there ...
        assert pred[15:20, 14:19, 13:18].sum() == 0  # ... and the atlas filter drops it
        truth = np.asarray(nib.load(str(data / case / "lesion_mask.nii.gz")).dataobj)
        assert (pred[truth > 0]).mean() > 0.5
        record = json.loads((pred_dir / f"{case}_record.json").read_text())
        assert record["min_atlas"] == 0.01

    # the same run without the filter: a rerun into the same folder predicts again (the decision changed)
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir),
                 "--set", "infer.min_atlas=0"]) == 0
    pred = np.asarray(nib.load(str(pred_dir / "c1_pred.nii.gz")).dataobj)
    assert pred[15:20, 14:19, 13:18].sum() > 0


def test_infer_refuses_an_exam_off_the_atlas_grid_before_writing(run_with_false_blob, tmp_path, capsys):
    run, data, masks = run_with_false_blob
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(masks)]) == 0
    other = tmp_path / "other"
    make_case(other, "c9", shape=(20, 22, 18))
    pred_dir = tmp_path / "pred"
    capsys.readouterr()
    assert main(["-q", "infer", "--model", str(run), "--input", str(other), "--out", str(pred_dir),
                 "--set", "infer.min_atlas=0.01"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR c9/flair.nii.gz: grid 20x22x18 does not match the lesion atlas's 24x22x20 grid")
    assert len(err.splitlines()) == 1
    assert not list(pred_dir.glob("*.nii.gz")) if pred_dir.exists() else True
    # without an atlas, a cut-off above 0 is an error that says how to make one
    (run / ATLAS_FILE).unlink()
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir),
                 "--set", "infer.min_atlas=0.01"]) == 1
    assert "lesionseg atlas" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"", b"not a NIfTI", "truncated"])
def test_atlas_and_tune_name_a_damaged_file_in_one_line_before_any_work(run_with_false_blob, damage, capsys):
    run, data, masks = run_with_false_blob
    bad = masks / "patient01_lesion_mask.nii.gz"
    bad.write_bytes(bad.read_bytes()[:60] if damage == "truncated" else damage)
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(masks)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR ") and "patient01_lesion_mask.nii.gz:" in err and err.count("\n") == 1
    assert load_atlas(run) is None

    flair = data / "c2" / "flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:60] if damage == "truncated" else damage)
    assert main(["-q", "tune", "--model", str(run), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR ") and "c2/flair.nii.gz:" in err and err.count("\n") == 1
    assert not (run / "tuning.json").exists()


def test_atlas_command_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(tmp_path / "none")]) == 1
    assert "not a folder of lesion masks" in capsys.readouterr().err
    masks = tmp_path / "masks"
    _save(masks / "patient07_lesion_mask.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(masks)]) == 1
    assert "config.yaml: missing" in capsys.readouterr().err
    (run / "config.yaml").write_text("data:\n  channels: [flair]\n")
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(masks), "--exclude", "patient07"]) == 1
    assert "no *.nii/*.nii.gz mask left" in capsys.readouterr().err
    assert load_atlas(run) is None


def test_atlas_on_grid_checks_shape_and_affine():
    atlas = LesionAtlas(np.zeros((4, 5, 6), np.float32), np.eye(4))
    assert atlas.on_grid((4, 5, 6), np.eye(4), "x").shape == (4, 5, 6)
    moved = np.eye(4)
    moved[2, 3] = 0.01
    with pytest.raises(LesionsegError, match="x: grid 4x5x6 does not match"):
        atlas.on_grid((4, 5, 6), moved, "x")


def test_an_atlas_read_back_equals_the_one_built(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for n in range(3):
        m = (rng.random((24, 20, 16)) > 0.998).astype(np.uint8)
        paths.append(_save(tmp_path / "masks" / f"p{n}.nii.gz", m))
    built = build_atlas(paths, sigma_mm=1.0)
    assert built.values.min() == 0.0 and (built.values[built.values > 0] >= 1e-4).all()
    run = tmp_path / "run"
    from lesionseg.inference.atlas import write_atlas

    write_atlas(run, built, paths, 1.0)
    assert nib.load(str(run / ATLAS_FILE)).get_data_dtype() == np.uint16
    back = load_atlas(run)
    np.testing.assert_array_equal(back.values, built.values)
    np.testing.assert_array_equal(back.affine, built.affine)


def test_the_calibrated_cut_off_keeps_the_lesions_of_an_unseen_patient(tmp_path):
    """Leave one mask out: the cut-off keeps `coverage` of the left-out patients' lesions."""
    from lesionseg.inference.atlas import calibrate_cut_off

    shape = (20, 20, 20)
    paths = []
    for n in range(4):
        m = np.zeros(shape, np.uint8)
        m[4:7, 4:7, 4:7] = 1  # a lesion every patient has
        if n == 0:
            m[14:17, 14:17, 14:17] = 1  # one only patient 0 has: nobody else had a lesion there
        paths.append(_save(tmp_path / f"p{n}.nii.gz", m))
    cut, n_lesions = calibrate_cut_off(paths, sigma_mm=0.0, coverage=0.8)
    assert n_lesions == 5
    assert cut == pytest.approx(1.0, abs=1e-4)  # 4 of the 5 lesions (80 %) lie where all 3 others had one
    cut, _ = calibrate_cut_off(paths, sigma_mm=0.0, coverage=1.0)
    assert cut == 0.0  # keeping every lesion: the one nobody else had sits at atlas value 0
    with pytest.raises(LesionsegError, match="coverage"):
        calibrate_cut_off(paths, 0.0, 0.0)


def test_infer_applies_the_calibrated_cut_off_when_tune_leaves_it(run_with_false_blob, tmp_path):
    run, data, masks = run_with_false_blob
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(masks), "--sigma-mm", "1"]) == 0
    info = json.loads((run / "lesion_atlas.json").read_text())
    assert 0 < info["min_atlas"] and info["calibration"]["coverage"] == 0.95
    assert main(["-q", "tune", "--model", str(run), "--data", str(data)]) == 0
    assert json.loads((run / "tuning.json").read_text())["min_atlas"] is None  # not tuned: the atlas's own
    pred_dir = tmp_path / "pred"
    assert main(["-q", "infer", "--model", str(run), "--input", str(data), "--out", str(pred_dir)]) == 0
    pred = np.asarray(nib.load(str(pred_dir / "c1_pred.nii.gz")).dataobj)
    assert pred[15:20, 14:19, 13:18].sum() == 0 and pred[4:9, 4:9, 4:9].sum() > 0
    assert json.loads((pred_dir / "c1_record.json").read_text())["min_atlas"] == info["min_atlas"]


def test_the_models_own_cut_off_skips_an_exam_off_its_grid_with_a_warning(run_with_false_blob, tmp_path, caplog):
    """A user's exam outside the atlas's space is still predicted (the default filter is the model's, not theirs)."""
    run, data, masks = run_with_false_blob
    assert main(["-q", "atlas", "--model", str(run), "--masks", str(masks), "--sigma-mm", "1"]) == 0
    other = tmp_path / "other"
    make_case(other, "c9", shape=(20, 22, 18))
    pred_dir = tmp_path / "pred"
    with caplog.at_level("WARNING"):
        assert main(["infer", "--model", str(run), "--input", str(other), "--out", str(pred_dir)]) == 0
    assert "not on the grid of the model's lesion atlas" in caplog.text
    record = json.loads((pred_dir / "c9_record.json").read_text())
    assert record["min_atlas"] == 0.0
    written = (pred_dir / "c9_pred.nii.gz").stat().st_mtime_ns
    assert main(["-q", "infer", "--model", str(run), "--input", str(other), "--out", str(pred_dir)]) == 0
    assert (pred_dir / "c9_pred.nii.gz").stat().st_mtime_ns == written  # a rerun keeps it
