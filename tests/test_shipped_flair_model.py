"""The FLAIR-only clinical model shipped in models/ms_flair: raw heads and thick slices, on their own grids.

``lesionseg infer --model models/ms_flair`` must run on what clinics have: a synthetic head with
skull and scalp (RAS and LAS), and a 0.9 × 0.9 × 7 mm thick-slice FLAIR made from a shared exam
(cropped to a slab around the ventricles so that the test takes seconds; skipped where ../shared
is absent).  Outputs must have the shape and affine of each input file.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from lesionseg.cli import main
from lesionseg.config import load_config
from conftest import REPO

MODEL = REPO / "models" / "ms_flair"
SHARED = REPO.parent / "shared" / "data" / "ms_lesions"
FAST = ["--set", "infer.overlap=0", "--set", "infer.workers=1"]


def test_the_flair_model_is_complete_and_stores_its_preprocessing():
    for name in ("model.keras", "config.yaml", "tuning.json", "MODEL_CARD.md", "split.csv"):
        assert (MODEL / name).is_file(), f"models/ms_flair/{name} missing"
    assert sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file()) < 20 * 2**20
    config = load_config(MODEL / "config.yaml")
    assert config.data.channels == ("flair",)
    pre = config.preprocess
    assert pre.reorient and tuple(pre.spacing) == (1.0, 1.0, 1.0) and pre.bias_correction and pre.brain_extraction
    tuning = json.loads((MODEL / "tuning.json").read_text())
    assert 0 < tuning["threshold"] < 1 and tuning["min_lesion_mm3"] >= 0
    from lesionseg.inference.ensemble import check_members

    members = check_members(MODEL)  # one network, or an ensemble whose members are all present and unchanged
    assert members[0] == MODEL / "model.keras"
    # the stored decision is the one chosen on the recipe's held-out predictions of every fold (model card),
    # with seed 0's depth-3 networks and with both seeds' side by side
    assert config.model.depth == 3
    for study in ("ms_flair_clinvis_12800_d3", "ms_flair_clinvis_12800_d3_seeds"):
        chosen = json.loads((REPO / "studies" / "clinical_path" / "cross_fold" / study /
                             "decisions.json").read_text())["all"]
        assert (tuning["threshold"], tuning["min_lesion_mm3"]) == (chosen["threshold"], chosen["min_lesion_mm3"]), study


def test_the_flair_model_predicts_skull_on_heads_in_ras_and_las_on_their_grids(tmp_path):
    heads = tmp_path / "heads"
    assert main(["samples", "--head", "--out", str(heads)]) == 0
    raw = tmp_path / "raw"
    raw.mkdir()
    for case in ("sample01", "sample04"):
        (raw / case).mkdir()
        shutil.copy(heads / case / "flair.nii.gz", raw / case / "flair.nii.gz")  # FLAIR only, no T1
    codes = {c: "".join(nib.aff2axcodes(nib.load(raw / c / "flair.nii.gz").affine)) for c in ("sample01", "sample04")}
    assert codes == {"sample01": "RAS", "sample04": "LAS"}
    pred = tmp_path / "pred"
    assert main(["infer", "--model", str(MODEL), "--input", str(raw), "--out", str(pred), *FAST]) == 0
    for case in codes:
        given = nib.load(raw / case / "flair.nii.gz")
        for kind in ("prob", "pred"):
            out = nib.load(pred / f"{case}_{kind}.nii.gz")
            assert out.shape == given.shape
            np.testing.assert_array_equal(out.affine, given.affine)
        prob = np.asarray(nib.load(pred / f"{case}_prob.nii.gz").dataobj)
        assert np.isfinite(prob).all() and 0 <= prob.min() and prob.max() <= 1
        assert prob[:2].max() == 0 and prob[-2:].max() == 0  # the air and scalp at the edges: nothing


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/ms_lesions is absent")
def test_the_flair_model_finds_lesions_on_a_thick_slice_exam_on_its_grid(tmp_path):
    """A 0.9 x 0.9 x 7 mm slab of a shared exam (its own thick-slice truth): lesions found, grid kept.

    The exam was among the model's training exams (at 1 mm): this checks the clinical path end to
    end; held-out figures are the leave-one-patient-out ones of the model card.
    """
    slab = tmp_path / "slab" / "lesjak_patient19"
    slab.mkdir(parents=True)
    for name in ("flair.nii.gz", "lesion_mask.nii.gz"):
        img = nib.load(SHARED / "lesjak_patient19" / name)
        crop = img.slicer[40:140, 60:170, 70:112]  # the lateral ventricles and the lesions around them
        nib.save(crop, slab / name)
    thick = tmp_path / "thick"
    assert main(["thick-slices", "--config", str(MODEL / "config.yaml"), "--data", str(tmp_path / "slab"),
                 "--out", str(thick), "--slice-mm", "7"]) == 0
    case = thick / "lesjak_patient19"
    given = nib.load(case / "flair.nii.gz")
    assert np.allclose(given.header.get_zooms(), (0.9, 0.9, 7.0), atol=1e-4)
    pred = tmp_path / "pred"
    assert main(["infer", "--model", str(MODEL), "--input", str(thick), "--out", str(pred), *FAST]) == 0
    out = nib.load(pred / "lesjak_patient19_pred.nii.gz")
    assert out.shape == given.shape
    np.testing.assert_array_equal(out.affine, given.affine)
    mask = np.asarray(out.dataobj) > 0
    truth = np.asarray(nib.load(case / "lesion_mask.nii.gz").dataobj) > 0
    assert truth.sum() > 100

    def dice(m: np.ndarray) -> float:
        return float(2 * (m & truth).sum() / (m.sum() + truth.sum()))

    # the probability map lies on the thick grid, over the lesions: at 0.5 it outlines them (a shifted or
    # flipped map would not); the stored decision (0.99, no size filter) keeps its most certain part, as
    # the card says of this exam's dim confluent lesions
    prob = np.asarray(nib.load(pred / "lesjak_patient19_prob.nii.gz").dataobj)
    assert dice(prob > 0.5) > 0.5, f"Dice {dice(prob > 0.5):.3f} at 0.5 on the thick-slice slab"
    tuning = json.loads((MODEL / "tuning.json").read_text())
    if tuning["min_lesion_mm3"] == 0:
        np.testing.assert_array_equal(mask, prob > tuning["threshold"])
    assert dice(mask) > 0.15, f"Dice {dice(mask):.3f} with the stored decision on the thick-slice slab"
    assert (mask & truth).sum() > 0.8 * mask.sum()  # what it keeps is lesion
