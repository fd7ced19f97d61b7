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
    cfg = load_config(None, ["model.head=softmax", "train.val_cases=[a, b]", "loss.params.delta=0.6"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert config_to_dict(cfg)["train"]["val_cases"] == ["a", "b"]


@pytest.mark.parametrize("name", ["smoke", "samples", "ms_flair_t1"])
def test_pipeline_configs_load(name):
    from conftest import REPO

    path = REPO / "pipelines" / f"{name}.toml"
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    load_config(path)
