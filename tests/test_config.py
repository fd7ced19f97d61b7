"""Configuration: files, overrides, types, unknown keys, round trip."""

from __future__ import annotations

import pytest

from lesionseg.config import Config, config_to_dict, load_config, save_config
from lesionseg.errors import LesionsegError


def test_defaults_and_toml_yaml_json_agree(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\ndepth = 3\n[data]\nchannels = ["flair"]\n')
    (tmp_path / "c.yaml").write_text("model:\n  depth: 3\ndata:\n  channels: [flair]\n")
    (tmp_path / "c.json").write_text('{"model": {"depth": 3}, "data": {"channels": ["flair"]}}')
    configs = [load_config(tmp_path / f"c.{ext}") for ext in ("toml", "yaml", "json")]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].model.depth == 3 and configs[0].data.channels == ("flair",)
    assert configs[0].patches.size == (48, 48, 48) == Config().patches.size


def test_overrides_parse_values(tmp_path):
    cfg = load_config(
        None,
        [
            "train.epochs=5",
            "patches.size=[32, 32, 16]",
            "infer.threshold=0.4",
            "infer.threshold=null",
            "evaluate.overlays=true",
            "loss.name=focal_tversky",
            "loss.params.gamma=0.75",
            "train.learning_rate=1e-4",
        ],
    )
    assert cfg.train.learning_rate == 1e-4
    assert cfg.train.epochs == 5
    assert cfg.patches.size == (32, 32, 16)
    assert cfg.infer.threshold is None
    assert cfg.evaluate.overlays is True
    assert cfg.loss.name == "focal_tversky" and cfg.loss.params == {"gamma": 0.75}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=5", r"unknown key\(s\) epochz"),
        ("nope.x=1", r"unknown section\(s\) nope"),
        ("train.epochs=1.5", "expected an integer"),
        ("train.epochs=many", "expected an integer"),
        ("evaluate.overlays=3", "expected true/false"),
        ("train.epochs", "expected section.key=value"),
        ("model.depth=null", "null is not allowed"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(LesionsegError, match=message):
        load_config(None, [override])


def test_bad_file(tmp_path):
    (tmp_path / "c.toml").write_text("[model\n")
    with pytest.raises(LesionsegError, match="not a valid config file"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(LesionsegError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_save_and_reload_is_identical(tmp_path):
    cfg = load_config(
        None, ["model.head=softmax", "train.val_cases=[a, b]", "loss.name=tversky", "loss.params.delta=0.6"]
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert config_to_dict(cfg)["train"]["val_cases"] == ["a", "b"]


@pytest.mark.parametrize("name", ["smoke", "samples", "ms_flair_t1", "ms_recipe_tissue", "ms_recipe_dice", "ms_flair", "threshold_baseline"])
def test_pipeline_configs_load(name):
    from conftest import REPO

    path = REPO / "pipelines" / f"{name}.toml"
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    load_config(path)


# ---------------------------------------------------------------- every value range-checked at load


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.clip_percentiles=[99.5, 0.5]", "data.clip_percentiles"),
        ("data.clip_percentiles=[-5, 150]", "data.clip_percentiles"),
        ("data.clip_percentiles=[1, 2, 3]", "data.clip_percentiles"),
        ("data.normalization=zscored", "data.normalization"),
        ("data.mask_values=any", "data.mask_values"),
        ("data.channels=[]", "data.channels"),
        ("data.channels=[flair, flair]", "data.channels"),
        ("data.group_pattern='('", "data.group_pattern"),
        ("patches.size=[48, 48]", "patches.size"),
        ("patches.jitter=2", "patches.jitter"),
        ("patches.lesion_fraction=-0.1", "patches.lesion_fraction"),
        ("patches.connectivity=8", "patches.connectivity"),
        ("augment.flip_axes=[3]", "augment.flip_axes"),
        ("augment.intensity_scale=1.5", "augment.intensity_scale"),
        ("augment.noise_probability=2", "augment.noise_probability"),
        ("model.depth=7", "model.depth"),
        ("model.head=linear", "model.head"),
        ("model.activation=softmax", "model.activation"),
        ("model.dropout=1", "model.dropout"),
        ("loss.name=dicee", "loss.name"),
        ("loss.params.smooth=0", "smooth must be"),
        ("train.epochs=-1", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.schedule=linear", "train.schedule"),
        ("train.val_fraction=1", "train.val_fraction"),
        ("train.strategy=everywhere", "train.strategy"),
        ("infer.overlap=1.5", "infer.overlap"),
        ("infer.overlap=1", "infer.overlap"),
        ("infer.blend=gausian", "infer.blend"),
        ("infer.threshold=2", "infer.threshold"),
        ("infer.tta_flips=[5]", "infer.tta_flips"),
        ("infer.workers=0", "infer.workers"),
        ("infer.tune_thresholds=[]", "infer.tune_thresholds"),
        ("infer.tune_thresholds=[1.5]", "infer.tune_thresholds"),
        ("infer.tune_min_sizes_mm3=[-1]", "infer.tune_min_sizes_mm3"),
        ("infer.precision=float16", "infer.precision"),
        ("evaluate.criterion=dice", "evaluate.criterion"),
        ("evaluate.iou_threshold=0", "evaluate.iou_threshold"),
        ("evaluate.min_lesion_mm3=-3", "evaluate.min_lesion_mm3"),
    ],
)
def test_every_section_is_range_checked_at_load(override, key):
    with pytest.raises(LesionsegError, match=key.replace(".", r"\.")) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_patch_size_is_checked_against_the_model_depth_before_training(tmp_path, capsys):
    from lesionseg.cli import main
    from lesionseg.config import check_training_config

    with pytest.raises(LesionsegError, match=r"2\*\*depth = 8"):
        check_training_config(load_config(None, ["model.depth=3", "patches.size=[36, 48, 48]"]))
    check_training_config(load_config(None, ["model.depth=3", "patches.size=[32, 48, 64]"]))
    (tmp_path / "data").mkdir()
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "X"), "--set", "patches.size=[18,16,16]"]
    assert main(argv) == 1
    assert "2**depth = 4" in capsys.readouterr().err and not (tmp_path / "X").exists()


def test_a_bad_config_is_refused_before_the_backend_loads(tmp_path):
    """`train` with a typo anywhere in the config: exit 1, one line, no run folder, no Keras import."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "X"
    for override in ("infer.blend=gausian", "train.epochs=-1"):
        code = (
            "import sys; from lesionseg.cli import main; "
            f"rc = main(['train', '--config', {str(root / 'pipelines' / 'smoke.toml')!r}, '--data', "
            f"{str(root / 'data_samples')!r}, '--out', {str(out)!r}, '--set', {override!r}]); "
            "print('keras' in sys.modules, 'tensorflow' in sys.modules); sys.exit(rc)"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stdout.split() == ["False", "False"]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR config ") and override.split("=")[0] in lines[0]
        assert not out.exists()


def test_the_vocabulary_of_the_config_is_the_code_s():
    """Every choice the config accepts is implemented, and every implemented one is accepted."""
    from lesionseg.config import CRITERIA
    from lesionseg.evaluation.criteria import CRITERIA as REGISTRY

    assert set(REGISTRY) == set(CRITERIA)


def test_one_override_path_for_every_command():
    """`apply_overrides` is what load_config and the run-config commands (infer, tune) both use."""
    from lesionseg.config import apply_overrides

    raw = {"loss": {"name": "tversky", "params": {"delta": 0.7}}, "infer": {"overlap": 0.5}}
    out = apply_overrides(raw, ["loss.params.smooth=0.001", "infer.overlap=0.25", "train.epochs=3"])
    assert out == {"loss": {"name": "tversky", "params": {"delta": 0.7, "smooth": 0.001}},
                   "infer": {"overlap": 0.25}, "train": {"epochs": 3}}
    assert raw == {"loss": {"name": "tversky", "params": {"delta": 0.7}}, "infer": {"overlap": 0.5}}


def test_dice_recipe_is_the_tissue_recipe_with_the_dice_loss():
    """The recipe comparison in README changes one thing: the loss."""
    import dataclasses

    from conftest import REPO

    tissue = load_config(REPO / "pipelines" / "ms_recipe_tissue.toml")
    dice = load_config(REPO / "pipelines" / "ms_recipe_dice.toml")
    assert (tissue.loss.name, dice.loss.name) == ("asymmetric_unified_focal", "dice")
    assert dataclasses.replace(dice, loss=tissue.loss) == tissue
