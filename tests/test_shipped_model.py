"""The pretrained model shipped in models/ms_flair_t1: it loads, emits logits, and finds real lesions.

It is trained on all 6 shared exams (its held-out figures are its recipe's leave-one-patient-out
ones, in its card), so the inference check is one of consistency, not of accuracy: on a cropped
real exam (seconds; skipped where ../shared is absent) it paints the lesions it was trained on,
not the brain, on the crop's own grid, with its stored decision.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionseg.cli import main
from lesionseg.config import load_config
from conftest import REPO, write_nifti

MODEL = REPO / "models" / "ms_flair_t1"
EXAM = "lesjak_patient07"  # a low-load exam (1.3 ml): painting the brain would show


def test_the_shipped_model_is_complete_and_small():
    for name in ("model.keras", "config.yaml", "tuning.json", "MODEL_CARD.md", "split.csv"):
        assert (MODEL / name).is_file(), f"models/ms_flair_t1/{name} missing"
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size < 20 * 2**20
    config = load_config(MODEL / "config.yaml")
    assert config.data.channels == ("flair", "t1")
    tuning = json.loads((MODEL / "tuning.json").read_text())
    assert 0 < tuning["threshold"] < 1 and tuning["min_lesion_mm3"] >= 0


def test_the_card_states_what_it_was_trained_on_and_where_its_figures_come_from():
    import pandas as pd

    split = pd.read_csv(MODEL / "split.csv")
    card = (MODEL / "MODEL_CARD.md").read_text()
    assert set(split["side"]) == {"train"}  # every shared exam trains it: no figure may be called held-out
    for case in split["case"]:
        assert f"`{case}`" in card
    assert "leave-one-patient-out" in card.lower()
    # its stored in-sample figures (what `make verify-ms` re-computes) name only training exams
    fit = pd.read_csv(MODEL / "fit" / "cases.csv")
    assert set(fit["case"]) <= set(split["case"])
    assert not (MODEL / "validation").exists()


def test_the_card_names_the_recipe_the_model_was_trained_with():
    """The recipe file the card names is the shipped config's data, patches, augmentation, network and loss."""
    import re

    card = (MODEL / "MODEL_CARD.md").read_text()
    named = set(re.findall(r"\*\*Recipe\*\*: `(pipelines/[\w.]+\.toml)`", card))
    assert len(named) == 1, named
    recipe, shipped = load_config(REPO / named.pop()), load_config(MODEL / "config.yaml")
    for section in ("data", "patches", "model", "loss"):
        assert getattr(shipped, section) == getattr(recipe, section), section
    assert shipped.augment.transplant_probability == recipe.augment.transplant_probability
    assert shipped.train.epochs * shipped.train.steps_per_epoch * shipped.train.batch_size == 12_800


def test_the_shipped_model_emits_logits():
    from lesionseg.model.unet import assert_emits_logits
    from lesionseg.inference.predictor import load_run_model

    assert_emits_logits(load_run_model(MODEL))


def _crop(shared_ms: Path, out: Path, size: int = 80) -> tuple[Path, np.ndarray, np.ndarray]:
    """A size³ crop of the exam around its largest lesion cluster, as a case folder."""
    src = shared_ms / EXAM
    mask = np.asarray(nib.load(src / "lesion_mask.nii.gz").dataobj) > 0
    centre = np.round(np.argwhere(mask).mean(axis=0)).astype(int)
    lo = [int(np.clip(c - size // 2, 0, s - size)) for c, s in zip(centre, mask.shape)]
    box = tuple(slice(a, a + size) for a in lo)
    affine = nib.load(src / "flair.nii.gz").affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array(lo)
    case = out / "cropped" / EXAM
    for name in ("flair", "t1", "lesion_mask"):
        data = np.asarray(nib.load(src / f"{name}.nii.gz").dataobj)[box]
        write_nifti(case / f"{name}.nii.gz", data, affine)
    return case.parent, mask[box], affine


def test_the_shipped_model_finds_the_lesions_of_a_real_exam_on_its_grid(shared_ms, tmp_path):
    data, truth, affine = _crop(shared_ms, tmp_path)
    assert truth.sum() > 0
    # the crop is not on the MNI grid of a lesion atlas shipped with the model: predicted without its filter
    assert main(["infer", "--model", str(MODEL), "--input", str(data), "--out", str(tmp_path / "pred")]) == 0
    tuned = json.loads((MODEL / "tuning.json").read_text())
    img = nib.load(tmp_path / "pred" / f"{EXAM}_pred.nii.gz")
    pred = np.asarray(img.dataobj) > 0
    np.testing.assert_array_equal(img.affine, affine)
    assert pred.shape == truth.shape
    # it finds real lesion voxels without painting the brain
    assert np.logical_and(pred, truth).sum() > 0.2 * truth.sum()
    brain = np.asarray(nib.load(data / EXAM / "flair.nii.gz").dataobj) != 0
    assert pred.sum() < 0.2 * brain.sum()
    # the decision stored with the model was applied: no component below its minimum lesion size
    import cc3d

    sizes = np.bincount(cc3d.connected_components(pred, connectivity=26).ravel())[1:]
    assert sizes.size and sizes.min() >= tuned["min_lesion_mm3"]
    prob = np.asarray(nib.load(tmp_path / "pred" / f"{EXAM}_prob.nii.gz").dataobj)
    assert 0.0 <= prob.min() and prob.max() <= 1.0 and prob.max() > tuned["threshold"]
