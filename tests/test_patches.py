"""The patch bank (`lesionseg patches`): index.csv contract, stored patches, agreement with the online sampler."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from conftest import make_case

from lesionseg.cli import main
from lesionseg.config import load_config
from lesionseg.sampling.feed import PatchSequence, load_cases
from lesionseg.data.io import list_cases
from lesionseg.data.normalize import normalize_image
from lesionseg.sampling.bank import load_bank_patch, read_index
from lesionseg.sampling.extraction import extract_patch

CONTRACT = ["case", "i0", "j0", "k0", "size_i", "size_j", "size_k", "lesion_voxels"]
LAS = np.diag([-1.0, 1.0, 1.0, 1.0]) @ np.array(
    [[1.0, 0, 0, -10], [0, 1.2, 0, 5], [0, 0, 0.9, 3], [0, 0, 0, 1]]
)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_case(root, "p1", lesions=((5, 5, 5, 2), (15, 16, 12, 1), (3, 18, 14, 0)), affine=LAS, seed=1)
    make_case(root, "p2", shape=(7, 9, 6), lesions=((3, 4, 3, 1),), seed=2)  # smaller than a patch
    make_case(root, "p3", lesions=(), seed=3)
    return root


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[data]\nchannels = ["flair", "t1"]\n'
        "[patches]\nsize = [10, 8, 12]\nn_patches = 14\nseed = 3\n"
        "lesion_fraction = 0.6\nforeground_fraction = 0.3\nrandom_fraction = 0.1\n"
    )
    return path


def run_bank(config_file, data, out, *extra):
    return main(["patches", "--config", str(config_file), "--data", str(data), "--out", str(out), *extra])


def test_bank_index_follows_the_contract(tmp_path, data, config_file):
    out = tmp_path / "bank"
    assert run_bank(config_file, data, out) == 0
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 14
    assert list(rows[0])[: len(CONTRACT) + 1] == ["patch", *CONTRACT]
    assert {r["case"] for r in rows} <= {"p1", "p2", "p3"}
    assert {(r["size_i"], r["size_j"], r["size_k"]) for r in rows} == {("10", "8", "12")}
    assert {r["mode"] for r in rows} <= {"lesion", "foreground", "random"}
    assert all(r["mode"] != "lesion" for r in rows if r["case"] == "p3")  # no lesion there: fell back
    assert load_config(out / "config.yaml").patches.n_patches == 14
    assert sorted(p.name for p in (out / "patches").iterdir()) == sorted({f"{r['case']}.npz" for r in rows})


def test_corners_are_voxel_indices_of_the_files_as_stored(tmp_path, data, config_file):
    out = tmp_path / "bank"
    assert run_bank(config_file, data, out) == 0
    raw = {}
    for case in ("p1", "p2", "p3"):
        flair = np.asarray(nib.load(data / case / "flair.nii.gz").dataobj, np.float32)
        t1 = np.asarray(nib.load(data / case / "t1.nii.gz").dataobj, np.float32)
        mask = np.asarray(nib.load(data / case / "lesion_mask.nii.gz").dataobj)
        raw[case] = (normalize_image(np.stack([flair, t1], -1)), mask)
    for entry in read_index(out):
        image, mask = load_bank_patch(out, entry)
        ref_image, ref_mask = raw[entry.case]
        np.testing.assert_array_equal(image, extract_patch(ref_image, entry.corner, entry.size))
        np.testing.assert_array_equal(mask, extract_patch(ref_mask, entry.corner, entry.size))
        assert entry.lesion_voxels == int(mask.sum())
        if entry.mode == "lesion":
            assert entry.lesion_id > 0 and entry.lesion_voxels > 0


def test_bank_equals_online_sampler_epoch_zero(tmp_path, data, config_file):
    out = tmp_path / "bank"
    assert run_bank(config_file, data, out) == 0
    config = load_config(config_file)
    cases = load_cases(config, list_cases(data))
    seq = PatchSequence(
        cases, config.patches, config.augment, batch_size=7, steps_per_epoch=2, seed=config.patches.seed, augment=False
    )
    x = np.concatenate([seq[0][0], seq[1][0]])
    y = np.concatenate([seq[0][1], seq[1][1]])
    entries = read_index(out)
    assert [e.patch for e in entries] == list(range(14))
    for n, entry in enumerate(entries):
        image, mask = load_bank_patch(out, entry)
        spec = seq.spec(n)
        assert (cases[spec.case].case_id, spec.corner, spec.mode) == (entry.case, entry.corner, entry.mode)
        np.testing.assert_array_equal(image, x[n])
        np.testing.assert_array_equal(mask, y[n, ..., 0])


def test_same_seed_same_bank_other_seed_other_bank(tmp_path, data, config_file):
    assert run_bank(config_file, data, tmp_path / "a") == 0
    assert run_bank(config_file, data, tmp_path / "b") == 0
    assert run_bank(config_file, data, tmp_path / "c", "--set", "patches.seed=4") == 0
    text = {k: (tmp_path / k / "index.csv").read_text() for k in "abc"}
    assert text["a"] == text["b"]
    assert text["a"] != text["c"]


def test_bad_case_fails_with_one_line_and_no_index(tmp_path, data, config_file, capsys):
    (data / "p2" / "lesion_mask.nii.gz").unlink()
    out = tmp_path / "bank"
    assert run_bank(config_file, data, out) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("ERROR")]
    assert "Traceback" not in err
    assert len(errors) == 1 and "p2/lesion_mask.nii.gz" in errors[0]
    assert not (out / "index.csv").exists()


def test_bad_patch_config_is_a_user_error(tmp_path, data, config_file, capsys):
    assert run_bank(config_file, data, tmp_path / "x", "--set", "patches.lesion_fraction=-1") == 1
    assert "lesion_fraction" in capsys.readouterr().err
