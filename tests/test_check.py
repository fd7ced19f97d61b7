"""``lesionseg check`` on deliberately broken cases: one right line per problem, exit 1, no traceback."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import make_case, write_nifti
from lesionseg.cli import main


@pytest.fixture
def broken(tmp_path):
    root = tmp_path / "data"
    make_case(root, "good")
    make_case(root, "missing_channel").joinpath("t1.nii.gz").unlink()
    make_case(root, "missing_mask").joinpath("lesion_mask.nii.gz").unlink()
    corrupt = make_case(root, "corrupt")
    corrupt.joinpath("flair.nii.gz").write_bytes(gzip.compress(b"this is not a nifti file at all" * 10))
    truncated = make_case(root, "truncated")
    data = truncated.joinpath("t1.nii.gz").read_bytes()
    truncated.joinpath("t1.nii.gz").write_bytes(data[: len(data) // 2])
    four_d = make_case(root, "four_d")
    write_nifti(four_d / "t1.nii.gz", np.ones((20, 22, 18, 3), np.float32))
    shapes = make_case(root, "shapes")
    bad_shape = np.zeros((20, 22, 19), np.uint8)
    bad_shape[3, 3, 3] = 1
    write_nifti(shapes / "lesion_mask.nii.gz", bad_shape)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    aff = make_case(root, "affine")
    mask = np.zeros((20, 22, 18), np.uint8)
    mask[5, 5, 5] = 1
    write_nifti(aff / "lesion_mask.nii.gz", mask, shifted)
    nonbin = make_case(root, "nonbinary")
    mask[6, 6, 6] = 2
    write_nifti(nonbin / "lesion_mask.nii.gz", mask)
    nan = make_case(root, "nan")
    img = np.ones((20, 22, 18), np.float32)
    img[1, 2, 3] = np.nan
    write_nifti(nan / "flair.nii.gz", img)
    empty = make_case(root, "empty_mask", lesions=())
    const = make_case(root, "constant")
    write_nifti(const / "t1.nii.gz", np.full((20, 22, 18), 7.0, np.float32))
    make_case(root, "small", shape=(10, 10, 10), lesions=((5, 5, 5, 1),))
    degenerate = make_case(root, "degenerate")  # an sform row of zeros, no qform: a voxel axis without extent
    import nibabel as nib

    t1 = nib.load(degenerate / "t1.nii.gz")
    header = t1.header.copy()
    header.set_qform(None, code=0)
    header["srow_z"] = [0.0, 0.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(np.asarray(t1.dataobj), None, header=header), degenerate / "t1.nii.gz")
    assert empty.is_dir()
    return root


EXPECTED = [
    ("ERROR missing_channel/t1.nii.gz: missing channel",),
    ("ERROR missing_mask/lesion_mask.nii.gz: missing mask",),
    ("ERROR corrupt/flair.nii.gz: unreadable NIfTI",),
    ("ERROR truncated/t1.nii.gz:", "corrupt or truncated"),
    ("ERROR four_d/t1.nii.gz: not a 3D volume (shape (20, 22, 18, 3))",),
    ("ERROR shapes/lesion_mask.nii.gz: shape (20, 22, 19) differs from shapes/flair.nii.gz",),
    ("ERROR affine/lesion_mask.nii.gz: affine differs from affine/flair.nii.gz by up to 2 mm",),
    ("ERROR nonbinary/lesion_mask.nii.gz: mask values are not in {0, 1} (found 0, 1, 2)",),
    ("ERROR nan/flair.nii.gz: contains NaN/Inf (1 voxels)",),
    ("WARNING empty_mask/lesion_mask.nii.gz: mask is empty (no lesion)",),
    ("ERROR constant/t1.nii.gz: constant image (every voxel is 7)",),
    ("WARNING small/flair.nii.gz: volume (10, 10, 10) is smaller than the patch (16, 16, 16)",),
    ("ERROR degenerate/t1.nii.gz: its affine (sform/qform) is singular (voxel axes of 1, 1, 0 mm",),
]


def test_check_reports_every_problem(broken, capsys):
    code = main(["check", str(broken), "--set", "patches.size=[16,16,16]"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    lines = [ln for ln in out.splitlines() if ln.startswith(("ERROR", "WARNING"))]
    for parts in EXPECTED:
        assert any(all(p in ln for p in parts) for ln in lines), f"no line with {parts}:\n{out}"
    assert not any(ln.startswith(("ERROR good", "WARNING good")) for ln in lines)
    assert len(lines) == len(EXPECTED)
    table = out.splitlines()[0]
    assert table.split()[:3] == ["case", "shape", "spacing_mm"]


def test_check_clean_folder_exits_0(tmp_path, capsys):
    make_case(tmp_path, "a")
    make_case(tmp_path, "b", lesions=((5, 5, 5, 1), (14, 15, 12, 2)))
    assert main(["check", str(tmp_path), "--set", "patches.size=[16,16,16]"]) == 0
    out = capsys.readouterr().out
    assert "ERROR" not in out and "b" in out


def test_check_without_masks_and_channel_option(tmp_path, capsys):
    case = make_case(tmp_path, "a", channels=("flair",))
    case.joinpath("lesion_mask.nii.gz").unlink()
    assert main(["check", str(tmp_path), "--no-mask", "--channels", "flair", "--set", "patches.size=[8,8,8]"]) == 0
    assert main(["check", str(tmp_path), "--no-mask"]) == 1
    assert "ERROR a/t1.nii.gz: missing channel" in capsys.readouterr().out


def test_check_missing_folder_one_line(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "data folder not found" in err


def test_check_samples_clean(samples_dir, capsys):
    assert main(["check", str(samples_dir)]) == 0
    out = capsys.readouterr().out
    assert "WARNING sample07/lesion_mask.nii.gz: mask is empty" in out


@pytest.mark.shared
def test_check_shared_ms_lesions(shared_ms, capsys):
    assert main(["check", str(shared_ms), "--channels", "flair,t1"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:] if ln and not ln.startswith(("ERROR", "WARN"))}
    assert rows["lesjak_patient19"][4] == "98"  # lesions, 26-connectivity (data README)
    assert rows["mslesseg_P18_T1"][4] == "3"
    # t2 is absent for two exams: asking for it is an error naming them
    assert main(["check", str(shared_ms), "--channels", "flair,t1,t2"]) == 1
    out = capsys.readouterr().out
    assert "ERROR mslesseg_P14_T1/t2.nii.gz: missing channel" in out
    assert "ERROR mslesseg_P18_T1/t2.nii.gz: missing channel" in out


def test_check_measures_the_patch_on_the_working_grid_and_warns_about_missing_orientation(tmp_path, capsys):
    """A 0.9 x 0.9 x 7 mm exam of 20 slices is 140 mm deep: on the 1 mm working grid nothing is padded."""
    import nibabel as nib

    affine = np.diag([0.9, 0.9, 7.0, 1.0])
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.uniform(1, 100, (40, 40, 20)).astype(np.float32), affine)
    img.set_sform(affine, code=0)
    img.set_qform(affine, code=0)
    (tmp_path / "c1").mkdir()
    nib.save(img, tmp_path / "c1" / "flair.nii.gz")
    args = ["check", str(tmp_path), "--no-mask", "--channels", "flair", "--set", "patches.size=[32,32,32]"]
    main([*args, "--set", "preprocess.spacing=[1,1,1]"])
    out = capsys.readouterr().out
    assert "smaller than the patch" not in out
    assert "no orientation (qform and sform codes are 0)" in out
    main(args)  # no resampling: the file's own 20 slices are what the network sees
    assert "volume (40, 40, 20) is smaller than the patch (32, 32, 32)" in capsys.readouterr().out


def test_check_says_what_infer_will_do_with_a_raw_head_also_stored_as_4d(tmp_path, capsys):
    """A head with skull, 7 mm slices, saved as a 4D file of one volume (as some converters write it):
    two warnings that name what infer does, no crash (the skull test read the 4D array as it was)."""
    import nibabel as nib

    from lesionseg.data.synthetic import generate_case, with_head

    head = with_head(generate_case("h", 3, (64, 64, 64), 5), seed=3)
    thick = np.pad(head.flair, 24)[:, :, ::7]  # air of exact zeros around the head: the skull test decides
    affine = np.diag([1.0, 1.0, 7.0, 1.0])
    for name, data in (("as3d", thick), ("as4d", thick[..., None])):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), tmp_path / name / "flair.nii.gz")
    (tmp_path / "stripped").mkdir()
    nib.save(nib.Nifti1Image(generate_case("s", 3, (64, 64, 64), 5).flair.astype(np.float32), np.eye(4)),
             tmp_path / "stripped" / "flair.nii.gz")
    code = main(["check", str(tmp_path), "--no-mask", "--channels", "flair", "--set", "preprocess.spacing=[1,1,1]",
                 "--set", "preprocess.brain_extraction=true"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("as3d", "as4d"):
        assert f"WARNING {name}/flair.nii.gz: anisotropic voxels (1 x 1 x 7 mm); infer resamples it" in out
        assert f"WARNING {name}/flair.nii.gz: looks not skull-stripped" in out and "infer extracts the brain" in out
    assert "stripped/flair.nii.gz: looks not" not in out and "stripped/flair.nii.gz: anisotropic" not in out


def test_check_warns_when_thick_slices_lie_across_an_axis_the_model_never_saw_them_on(tmp_path, capsys):
    """models/ms_flair learnt thick slices as axial ones: sagittal or coronal 2D FLAIR is named as unseen,
    whatever the voxel order of the file (the working grid is RAS)."""
    import nibabel as nib

    from lesionseg.config import PreprocessConfig
    from lesionseg.data.check import slice_axis_warning
    from lesionseg.data.io import Grid

    rng = np.random.default_rng(0)
    cases = {"axial": np.diag([0.9, 0.9, 7.0, 1.0]), "sagittal": np.diag([-5.0, 0.9, 0.9, 1.0]),  # LAS
             "coronal_first": np.array([[0, 0.9, 0, 0], [6.0, 0, 0, 0], [0, 0, 0.9, 0], [0, 0, 0, 1.0]])}
    for name, affine in cases.items():
        shape = tuple(20 if abs(affine[:3, i]).max() > 2 else 60 for i in range(3))
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(rng.uniform(1, 100, shape).astype(np.float32), affine), tmp_path / name / "flair.nii.gz")
    args = ["check", str(tmp_path), "--no-mask", "--channels", "flair", "--set", "preprocess.reorient=true",
            "--set", "preprocess.spacing=[1,1,1]"]
    main([*args, "--set", "augment.thick_slice_probability=0.5"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "the model learnt thick slices" in ln]
    assert len(lines) == 2
    assert lines[0].startswith("WARNING coronal_first/flair.nii.gz: coronal slices (6 mm); the model learnt thick "
                               "slices only as axial ones ([augment] thick_slice_axis = 2)")
    assert lines[1].startswith("WARNING sagittal/flair.nii.gz: sagittal slices (5 mm)")
    main(args)  # a model trained without thick slices: nothing to compare with
    assert "the model learnt thick slices" not in capsys.readouterr().out
    grid = Grid((20, 60, 60), np.diag([-5.0, 0.9, 0.9, 1.0]), (5.0, 0.9, 0.9))
    no_reorient = PreprocessConfig(reorient=False, spacing=(1.0, 1.0, 1.0))
    assert "slices across voxel axis 0" in slice_axis_warning(grid, tmp_path / "f.nii.gz", no_reorient, (2,))
    assert slice_axis_warning(grid, tmp_path / "f.nii.gz", no_reorient, (0,)) is None
    reorient = PreprocessConfig(reorient=True, spacing=(1.0, 1.0, 1.0))
    assert slice_axis_warning(grid, tmp_path / "f.nii.gz", reorient, (2, 2, 0, 1)) is None  # learnt all three
    assert "only as axial and coronal ones ([augment] thick_slice_axis = [2, 1])" in slice_axis_warning(
        grid, tmp_path / "f.nii.gz", reorient, (2, 1))
