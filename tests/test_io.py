"""NIfTI I/O: grids kept bit-for-bit, masks read strictly, errors in one line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import make_case, write_nifti
from lesionseg.errors import DataError
from lesionseg.data.io import list_cases, read_case, read_mask
from lesionseg.data.writing import atomic_path, write_like

RAS = np.array([[1.0, 0, 0, -10.5], [0, 1.0, 0, -12.25], [0, 0, 1.0, 7.125], [0, 0, 0, 1]])
LAS = np.array([[-0.9, 0, 0, 10.5], [0, 1.1, 0, -12.25], [0, 0, 1.3, 7.125], [0, 0, 0, 1]])
OBLIQUE = np.array(
    [[0.99, -0.1411, 0.0, -90.1234567], [0.1411, 0.99, 0.0, 126.7654321], [0.0, 0.0, 1.2, -72.5], [0, 0, 0, 1]]
)


@pytest.mark.parametrize("affine", [RAS, LAS, OBLIQUE], ids=["RAS", "LAS", "oblique"])
def test_round_trip_keeps_shape_affine_and_orientation(tmp_path, affine):
    case = read_case(make_case(tmp_path, "c1", affine=affine), ["flair", "t1"], "lesion_mask")
    assert case.image.shape == (20, 22, 18, 2) and case.image.dtype == np.float32
    out = write_like(tmp_path / "out" / "c1_prob.nii.gz", case.image[..., 0], case.affine, case.header)
    back = nib.load(str(out))
    src = nib.load(str(tmp_path / "c1" / "flair.nii.gz"))
    assert back.shape == src.shape
    assert np.array_equal(back.affine, src.affine)  # bit-for-bit
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(affine)
    assert np.array_equal(back.header.get_best_affine(), src.header.get_best_affine())
    np.testing.assert_array_equal(np.asarray(back.dataobj), case.image[..., 0])


def test_uint8_output_and_no_scaling(tmp_path):
    case = read_case(make_case(tmp_path, "c1", affine=LAS), ["flair"], "lesion_mask")
    out = write_like(tmp_path / "pred.nii.gz", case.mask, case.affine, case.header, dtype=np.uint8)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), case.mask)


def test_channels_last_order_follows_request(tmp_path):
    folder = make_case(tmp_path, "c1")
    a = read_case(folder, ["flair", "t1"])
    b = read_case(folder, ["t1", "flair"])
    np.testing.assert_array_equal(a.image[..., 0], b.image[..., 1])
    assert a.mask is None


def test_mask_float32_01_is_accepted_as_uint8(tmp_path):
    write_nifti(tmp_path / "c" / "m.nii.gz", np.array([[[0.0, 1.0], [1.0, 0.0]]] * 2, np.float32))
    mask, _ = read_mask(tmp_path / "c" / "m.nii.gz")
    assert mask.dtype == np.uint8 and mask.sum() == 4


def test_non_binary_mask_names_values(tmp_path):
    write_nifti(tmp_path / "c" / "m.nii.gz", np.array([[[0, 1], [2, 7]]] * 2, np.int16))
    with pytest.raises(DataError, match=r"c/m.nii.gz: mask values are not in \{0, 1\} \(found 0, 1, 2, 7\)"):
        read_mask(tmp_path / "c" / "m.nii.gz")
    mask, _ = read_mask(tmp_path / "c" / "m.nii.gz", mask_values="positive")
    assert mask.tolist() == [[[0, 1], [1, 1]]] * 2


def test_scaled_image_is_read_as_float32(tmp_path):
    img = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    (tmp_path / "c").mkdir()
    nib.save(img, str(tmp_path / "c" / "flair.nii.gz"))
    case = read_case(tmp_path / "c", ["flair"])
    assert case.image.dtype == np.float32
    assert case.image[..., 0].ravel().tolist() == [10 + 0.5 * v for v in range(8)]


def test_errors_name_file_and_problem(tmp_path):
    folder = make_case(tmp_path, "c1")
    with pytest.raises(DataError, match=r"^c1/t2.nii.gz: missing channel$"):
        read_case(folder, ["flair", "t2"])
    write_nifti(folder / "t1.nii.gz", np.arange(20 * 22 * 17, dtype=np.float32).reshape(20, 22, 17))
    with pytest.raises(DataError, match=r"c1/t1.nii.gz: shape \(20, 22, 17\) differs from c1/flair.nii.gz"):
        read_case(folder, ["flair", "t1"])


def test_nii_and_niigz_both_found_and_case_listing(tmp_path):
    write_nifti(tmp_path / "a" / "flair.nii", np.ones((3, 3, 3), np.float32))
    write_nifti(tmp_path / "b" / "flair.nii.gz", np.ones((3, 3, 3), np.float32))
    (tmp_path / "not_a_case").mkdir()
    assert [p.name for p in list_cases(tmp_path)] == ["a", "b"]
    assert list_cases(tmp_path / "a") == [tmp_path / "a"]  # a case folder is one case
    with pytest.raises(DataError, match="data folder not found"):
        list_cases(tmp_path / "missing")
    with pytest.raises(DataError, match=r"flair.nii.gz: a file, where a folder of cases is read.*give its folder"):
        list_cases(tmp_path / "b" / "flair.nii.gz")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_blank_or_constant_channel_is_refused_by_every_reader(tmp_path):
    folder = make_case(tmp_path, "c1")
    write_nifti(folder / "flair.nii.gz", np.zeros((20, 22, 18), np.float32))
    with pytest.raises(DataError, match=r"^c1/flair.nii.gz: constant image \(every voxel is 0\)$"):
        read_case(folder, ["flair", "t1"])


def test_header_larger_than_the_file_is_refused_before_reading(tmp_path):
    import gzip

    small = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    small.header.set_data_shape((1000, 1000, 1000))  # claims 4 GB of float32
    small.header["vox_offset"] = 352
    raw = small.header.binaryblock + b"\0" * 4 + np.ones(64, np.float32).tobytes()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "flair.nii.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c" / "flair.nii").write_bytes(raw)
    for name in ("flair.nii.gz", "flair.nii"):
        with pytest.raises(DataError, match=rf"^c/{name}: (truncated: the header describes|header claims)"):
            from lesionseg.data.io import read_image

            read_image(tmp_path / "c" / name)
    small.header.set_data_shape((600, 600, 600))  # 216 M voxels: under the ceiling, over the file
    (tmp_path / "c" / "t1.nii.gz").write_bytes(gzip.compress(small.header.binaryblock + b"\0" * 4 + b"\1" * 1000))
    with pytest.raises(DataError, match=r"^c/t1.nii.gz: truncated: the header describes 864,000,352 bytes"):
        read_image(tmp_path / "c" / "t1.nii.gz")


def test_header_beyond_the_memory_ceiling_is_refused(tmp_path):
    from lesionseg.data.io import MAX_VOXELS, read_image

    img = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    img.header.set_data_shape((2048, 2048, 2048))
    img.header["vox_offset"] = 352
    assert 2048**3 > MAX_VOXELS
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "flair.nii").write_bytes(img.header.binaryblock + b"\0" * 4 + b"\1" * 64)
    with pytest.raises(DataError, match=r"^c/flair.nii: header claims 2048x2048x2048 voxels \(8590 M\), more than"):
        read_image(tmp_path / "c" / "flair.nii")


def test_almost_binary_float_mask_shows_the_values_that_differ(tmp_path):
    write_nifti(tmp_path / "c" / "m.nii.gz", np.array([[[0, 1], [1.0000001, 0]]] * 2, np.float64))
    with pytest.raises(DataError, match=r"found 0, 1, 1\.0000001\)"):
        read_mask(tmp_path / "c" / "m.nii.gz")


def test_a_file_named_in_other_case_is_found_unless_two_are(tmp_path):
    """Scanner exports write FLAIR.nii.gz; the channel 'flair' finds it, and two such files are a question."""
    from lesionseg.data.io import find_file

    case = make_case(tmp_path, "c1", channels=("flair",))
    (case / "flair.nii.gz").rename(case / "FLAIR.nii.gz")
    assert find_file(case, "flair") == case / "FLAIR.nii.gz"
    assert read_case(case, ["flair"]).image.shape[-1] == 1
    (case / "Flair.nii").write_bytes(b"")
    with pytest.raises(DataError, match="differ only in case"):
        find_file(case, "flair")


def test_outputs_keep_the_inputs_orientation_codes_even_when_absent(tmp_path):
    """An input without qform/sform codes gives outputs without them: no claimed 'aligned' space."""
    affine = np.diag([0.9, 0.9, 7.0, 1.0])
    img = nib.Nifti1Image(np.ones((4, 4, 3), np.float32), affine)
    img.set_sform(affine, code=0)
    img.set_qform(affine, code=0)
    out = write_like(tmp_path / "o.nii.gz", np.zeros((4, 4, 3)), img.affine, img.header)
    back = nib.load(out)
    assert int(back.header["sform_code"]) == 0 and int(back.header["qform_code"]) == 0
    assert np.allclose(back.affine, nib.load(out).affine) and back.shape == (4, 4, 3)
    img.set_qform(affine, code=1)
    back = nib.load(write_like(tmp_path / "p.nii.gz", np.zeros((4, 4, 3)), img.affine, img.header))
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 0
    assert np.allclose(back.affine, affine)
