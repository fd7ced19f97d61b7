"""Shared fixtures: the sample data, the shared real data (skipped when absent), tiny NIfTI cases."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

# keep the 2-core CI machine responsive and TensorFlow quiet
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
SHARED_DATA = REPO.parent / "shared" / "data"


def load_pipeline(name: str, module_name: str | None = None) -> ModuleType:
    """The script ``pipelines/<name>.py`` as a module (the scripts are not a package).

    ``module_name`` registers it in ``sys.modules`` under that name (dataclasses and pickling of
    its objects need it); by default it is loaded anonymously, fresh each call.
    """
    spec = importlib.util.spec_from_file_location(module_name or name, REPO / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if module_name:
        sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None, dtype=None) -> Path:
    """Write a small NIfTI file for tests (sform and qform set from ``affine``)."""
    affine = np.eye(4) if affine is None else affine
    arr = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
    img = nib.Nifti1Image(arr, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def make_case(
    root: Path,
    name: str,
    shape=(20, 22, 18),
    channels=("flair", "t1"),
    lesions=((10, 10, 9, 2),),
    affine: np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """A tiny case folder: smooth noisy channels, ball lesions (i, j, k, radius) brighter on channel 0."""
    rng = np.random.default_rng(seed)
    folder = root / name
    mask = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for i, j, k, r in lesions:
        mask[((grid[0] - i) ** 2 + (grid[1] - j) ** 2 + (grid[2] - k) ** 2) <= r * r] = 1
    for c, ch in enumerate(channels):
        img = 100 + 10 * rng.standard_normal(shape)
        img += (60.0 if c == 0 else -30.0) * mask.astype(np.float64)
        write_nifti(folder / f"{ch}.nii.gz", img.astype(np.float32), affine)
    write_nifti(folder / "lesion_mask.nii.gz", mask, affine)
    return folder


@pytest.fixture
def samples_dir() -> Path:
    """The bundled synthetic sample cases."""
    assert SAMPLES.is_dir(), "data_samples/ is missing: run `lesionseg samples`"
    return SAMPLES


@pytest.fixture
def shared_ms() -> Path:
    """../shared/data/ms_lesions (6 real MS exams); skipped when absent."""
    path = SHARED_DATA / "ms_lesions"
    if not path.is_dir():
        pytest.skip("../shared/data/ms_lesions not available")
    return path


@pytest.fixture
def shared_masks() -> Path:
    """../shared/data/lesjak_masks (30 real lesion masks); skipped when absent."""
    path = SHARED_DATA / "lesjak_masks"
    if not path.is_dir():
        pytest.skip("../shared/data/lesjak_masks not available")
    return path


def linear_flair_t1_run(run: Path, infer: object | None = None) -> Path:
    """A run folder whose "network" is one 1x1x1 convolution: lesion where FLAIR is bright and T1 dark.

    logit = 2 * flair - t1 - 1 (on the normalised channels); ``infer`` is the run's InferConfig.
    """
    keras = pytest.importorskip("keras")
    from lesionseg.config import Config, DataConfig, InferConfig, ModelConfig, PatchConfig, save_config

    inp = keras.Input((None, None, None, 2))
    model = keras.Model(inp, keras.layers.Conv3D(1, 1, name="logits")(inp))
    model.get_layer("logits").set_weights(
        [np.array([2.0, -1.0], np.float32).reshape(1, 1, 1, 2, 1), np.array([-1.0], np.float32)]
    )
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    cfg = Config(
        data=DataConfig(channels=("flair", "t1")),
        patches=PatchConfig(size=(8, 8, 8)),
        model=ModelConfig(depth=2, base_filters=4),
        infer=infer if infer is not None else InferConfig(),
    )
    save_config(cfg, run / "config.yaml")
    return run
