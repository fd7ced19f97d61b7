"""A BIDS dataset in, a BIDS derivatives folder out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionseg.cli import main

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "pipelines" / "threshold_baseline.toml"
pytest.importorskip("bids", reason="pybids is not installed (pip install -e '.[bids]')")


def make_bids(samples_dir: Path, root: Path) -> Path:
    """sub-01 (no session), sub-02 with two sessions, sub-03 without T1w (skipped)."""
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "samples", "BIDSVersion": "1.9.0"}))
    layout = {("01", None): "sample01", ("02", "1"): "sample02", ("02", "2"): "sample04", ("03", None): "sample03"}
    for (sub, ses), case in layout.items():
        anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        anat.mkdir(parents=True)
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        shutil.copyfile(samples_dir / case / "flair.nii.gz", anat / f"{stem}_FLAIR.nii.gz")
        if sub != "03":
            shutil.copyfile(samples_dir / case / "t1.nii.gz", anat / f"{stem}_T1w.nii.gz")
    return root


def test_bids_dataset_to_derivatives(samples_dir, tmp_path):
    bids_root = make_bids(samples_dir, tmp_path / "ds")
    run = tmp_path / "run"
    assert main(["train", "--config", str(BASELINE), "--data", str(samples_dir), "--out", str(run)]) == 0
    out = bids_root / "derivatives" / "lesionseg"
    assert main(["infer", "--model", str(run), "--input", str(bids_root), "--out", str(out)]) == 0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "lesionseg"
    expected = {
        "sub-01/anat/sub-01_space-orig_desc-lesion_mask.nii.gz": "sub-01/anat/sub-01_FLAIR.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_space-orig_desc-lesion_mask.nii.gz": "sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii.gz",
        "sub-02/ses-2/anat/sub-02_ses-2_space-orig_desc-lesion_probseg.nii.gz": "sub-02/ses-2/anat/sub-02_ses-2_FLAIR.nii.gz",
    }
    for derived, source in expected.items():
        a, b = nib.load(out / derived), nib.load(bids_root / source)
        assert a.shape == b.shape and np.array_equal(a.affine, b.affine)
    assert not (out / "sub-03").exists()  # no T1w: skipped with a warning
    rows = (out / "cohort.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]

    from bids import BIDSLayout  # the derivatives folder is a valid derivative dataset for pybids

    layout = BIDSLayout(str(bids_root), validate=False, derivatives=str(out))
    masks = layout.get(scope="derivatives", desc="lesion", suffix="mask", extension=".nii.gz")
    assert sorted(f.get_entities()["subject"] for f in masks) == ["01", "02", "02"]

    stamp = (out / "sub-01/anat/sub-01_space-orig_desc-lesion_mask.nii.gz").stat().st_mtime_ns
    assert main(["infer", "--model", str(run), "--input", str(bids_root), "--out", str(out)]) == 0
    assert (out / "sub-01/anat/sub-01_space-orig_desc-lesion_mask.nii.gz").stat().st_mtime_ns == stamp


def test_output_inside_a_bids_dataset_only_under_derivatives(samples_dir, tmp_path, capsys):
    bids_root = make_bids(samples_dir, tmp_path / "ds")
    run = tmp_path / "run"
    assert main(["train", "--config", str(BASELINE), "--data", str(samples_dir), "--out", str(run)]) == 0
    assert main(["infer", "--model", str(run), "--input", str(bids_root), "--out", str(bids_root / "preds")]) == 1
    assert "inside the input folder" in capsys.readouterr().err
