"""The 3D U-Net: architecture, shapes, checks, logits-only head, saving, other backends."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lesionseg.config import ModelConfig  # noqa: E402
from lesionseg.errors import LesionsegError  # noqa: E402
from lesionseg.model.losses import LOSS_NAMES, get_loss  # noqa: E402
from lesionseg.model.metrics import make_metrics  # noqa: E402
from lesionseg.model.unet import (  # noqa: E402
    assert_emits_logits,
    build_unet,
    count_parameters,
    level_filters,
    load_model,
)

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(depth=2, base_filters=4)


def expected_parameters(cfg: ModelConfig, cin: int) -> int:
    """Weights of the documented architecture, counted by hand."""
    f = [int(round(cfg.base_filters * cfg.growth**level)) for level in range(cfg.depth + 1)]
    norm = {"batch": 4, "instance": 2, "group": 2, "none": 0}[cfg.norm]
    bias = 1 if cfg.norm == "none" else 0

    def block(a, b):  # two 3×3×3 convolutions, each with its normalisation
        return 27 * a * b + b * bias + norm * b + 27 * b * b + b * bias + norm * b

    total, c = 0, cin
    for level in range(cfg.depth):
        total += block(c, f[level])
        c = f[level]
    total += block(c, f[cfg.depth])
    c = f[cfg.depth]
    for level in reversed(range(cfg.depth)):
        kernel = 8 if cfg.upsampling == "transpose" else 27
        total += kernel * c * f[level] + f[level]
        total += block(2 * f[level], f[level])
        c = f[level]
    k = 1 if cfg.head == "sigmoid" else 2
    return total + c * k + k


def test_reference_model_parameter_count_and_forward_pass():
    """Reference: depth 2, filters 16/32/64, batch norm, 2 input channels."""
    for head, k in (("sigmoid", 1), ("softmax", 2)):
        cfg = ModelConfig(head=head)
        model = build_unet(cfg, in_channels=2, patch_size=(48, 48, 48))
        assert level_filters(cfg) == [16, 32, 64]
        n = count_parameters(model)
        log.info("reference U-Net (%s head): %d parameters", head, n)
        print(f"reference U-Net ({head} head): {n:,} parameters")
        assert n == expected_parameters(cfg, 2) == model.count_params()
        x = np.random.default_rng(0).normal(size=(2, 48, 48, 48, 2)).astype(np.float32)
        out = keras.ops.convert_to_numpy(model(x, training=False))
        assert out.shape == (2, 48, 48, 48, k) and out.dtype == np.float32
        assert out.min() < 0 < out.max()  # logits, not probabilities


@pytest.mark.parametrize(
    "cfg, cin, size",
    [
        (replace(TINY, depth=3, norm="instance", activation="leaky_relu"), 1, (16, 24, 32)),
        (replace(TINY, depth=4, norm="group", base_filters=6, growth=1.5, head="softmax"), 3, (16, 16, 32)),
        (replace(TINY, depth=5, base_filters=2, norm="none", upsampling="upsample", dropout=0.2), 2, (32, 32, 32)),
    ],
)
def test_configurations_build_and_keep_the_spatial_shape(cfg, cin, size):
    model = build_unet(cfg, in_channels=cin, patch_size=size)
    assert count_parameters(model) == expected_parameters(cfg, cin)
    x = np.zeros((1, *size, cin), np.float32)
    out = model(x, training=False)
    assert tuple(out.shape) == (1, *size, 1 if cfg.head == "sigmoid" else 2)
    assert_emits_logits(model, cfg.head)


def test_one_model_predicts_any_window_divisible_by_2_to_the_depth():
    model = build_unet(TINY, in_channels=2)
    for size in ((16, 16, 16), (8, 12, 20), (32, 16, 4)):
        out = model(np.zeros((1, *size, 2), np.float32))
        assert tuple(out.shape) == (1, *size, 1)


def test_patch_size_must_be_divisible_by_2_to_the_depth():
    with pytest.raises(LesionsegError, match=r"\(50, 48, 48\).*2\*\*depth = 4"):
        build_unet(ModelConfig(), 2, (50, 48, 48))
    with pytest.raises(LesionsegError, match="32.*model.depth = 5"):
        build_unet(ModelConfig(depth=5), 2, (48, 48, 48))
    build_unet(ModelConfig(depth=4), 2, (48, 48, 48))  # 48 = 3·16 is fine


@pytest.mark.parametrize(
    "change, message",
    [
        ({"depth": 1}, "model.depth"),
        ({"depth": 6}, "model.depth"),
        ({"base_filters": 0}, "model.base_filters"),
        ({"head": "relu"}, "model.head"),
        ({"norm": "layer"}, "model.norm"),
        ({"activation": "sigmoid"}, "model.activation.*logits"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"upsampling": "bilinear"}, "model.upsampling"),
    ],
)
def test_invalid_config_is_a_one_line_error(change, message):
    with pytest.raises(LesionsegError, match=message) as info:
        build_unet(replace(TINY, **change), 2)
    assert "\n" not in str(info.value)


def test_a_head_with_an_activation_is_refused():
    inputs = keras.Input((None, None, None, 2))
    x = keras.layers.Conv3D(4, 3, padding="same")(inputs)
    with_sigmoid = keras.Model(inputs, keras.layers.Conv3D(1, 1, activation="sigmoid")(x))
    with pytest.raises(LesionsegError, match="sigmoid.*must emit logits"):
        assert_emits_logits(with_sigmoid)
    with_softmax = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Conv3D(2, 1)(x)))
    with pytest.raises(LesionsegError, match="Softmax"):
        assert_emits_logits(with_softmax)
    with_relu = keras.Model(inputs, keras.layers.Activation("relu")(keras.layers.Conv3D(1, 1)(x)))
    with pytest.raises(LesionsegError, match="must emit logits"):
        assert_emits_logits(with_relu)
    logits = keras.Model(inputs, keras.layers.Conv3D(1, 1)(x))
    assert_emits_logits(logits, "sigmoid")
    with pytest.raises(LesionsegError, match="2 output channel"):
        assert_emits_logits(logits, "softmax")


def test_save_and_load_give_identical_outputs(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_unet(replace(TINY, head="softmax", dropout=0.1), in_channels=2)
    loss = get_loss("asymmetric_unified_focal", "softmax", delta=0.65)
    model.compile(optimizer="adam", loss=loss, metrics=make_metrics("softmax"), jit_compile=False)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 16, 16, 16, 2)).astype(np.float32)
    y = (rng.random((2, 16, 16, 16, 1)) < 0.1).astype(np.float32)
    history = model.fit(x, y, epochs=1, verbose=0)  # moves batch-norm statistics off their init
    assert {"soft_dice", "hard_dice", "fg_fraction", "mean_prob"} <= set(history.history)
    path = tmp_path / "model.keras"
    model.save(path)
    probe = rng.normal(size=(1, 24, 16, 32, 2)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(probe, training=False))
    for compile_ in (False, True):
        again = load_model(path, compile=compile_)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(probe, training=False)), expected)
    assert again.loss.get_config()["params"] == loss.get_config()["params"]
    assert again.loss.head == "softmax"


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(LesionsegError, match="model.keras: model file not found"):
        load_model(tmp_path / "model.keras")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(LesionsegError, match="broken.keras: cannot load model"):
        load_model(broken)
    good = tmp_path / "good.keras"
    build_unet(ModelConfig(depth=2, base_filters=2), in_channels=1).save(good)
    for name, data, why in (("empty.keras", b"", "empty file"),
                            ("cut.keras", good.read_bytes()[:1000], "corrupt or truncated")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LesionsegError, match=f"{name}: cannot load model \\({why}") as err:
            load_model(tmp_path / name)
        assert "not found" not in str(err.value)


# --------------------------------------------------------------------------- other backends

BACKEND_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from keras import ops
    from lesionseg.config import ModelConfig
    from lesionseg.model.losses import LOSS_NAMES, get_loss
    from lesionseg.model.metrics import make_metrics
    from lesionseg.model.unet import build_unet, load_model

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    y = (rng.random((2, 8, 8, 8, 1)) < 0.2).astype("float32")
    z = (2 * rng.normal(size=(2, 8, 8, 8, 1))).astype("float32")
    soft = np.concatenate([np.zeros_like(z), z], axis=-1)

    def grad(loss, logits):
        if backend == "jax":
            import jax
            return np.asarray(jax.grad(lambda t: loss(y, t))(logits))
        if backend == "torch":
            import torch
            t = torch.tensor(logits, requires_grad=True)
            loss(torch.tensor(y), t).backward()
            return t.grad.numpy()
        raise SystemExit("unexpected backend " + backend)

    values, finite = {}, True
    for name in LOSS_NAMES:
        for head, logits in (("sigmoid", z), ("softmax", soft)):
            loss = get_loss(name, head)
            values[name + "/" + head] = float(ops.convert_to_numpy(loss(y, logits)))
            g = grad(loss, logits)
            finite = finite and bool(np.all(np.isfinite(g)) and np.any(g != 0))

    keras.utils.set_random_seed(0)
    model = build_unet(ModelConfig(depth=2, base_filters=4, head="softmax"), 2, (16, 16, 16))
    model.compile(optimizer="adam", loss=get_loss("asymmetric_unified_focal", "softmax"),
                  metrics=make_metrics("softmax"))
    x = rng.normal(size=(2, 16, 16, 16, 2)).astype("float32")
    t = (rng.random((2, 16, 16, 16, 1)) < 0.1).astype("float32")
    history = model.fit(x, t, epochs=1, verbose=0).history
    model.save(sys.argv[1])
    out = ops.convert_to_numpy(model(x, training=False))
    again = ops.convert_to_numpy(load_model(sys.argv[1])(x, training=False))
    same = bool(np.array_equal(again, out))
    print("RESULT " + json.dumps({
        "backend": backend, "values": values, "finite_grads": finite, "shape": list(out.shape),
        "loss_history": history["loss"], "reloaded_same": same,
    }))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_runs_unchanged_on_another_backend(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           # XLA's optimiser makes each tiny CPU compile (one per weight shape) seconds long
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    run = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT, str(tmp_path / "model.keras")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["backend"] == backend
    assert result["finite_grads"] and result["reloaded_same"]
    assert result["shape"] == [2, 16, 16, 16, 2]
    assert all(np.isfinite(result["loss_history"]))
    # the same numbers as this process's backend
    rng = np.random.default_rng(0)
    y = (rng.random((2, 8, 8, 8, 1)) < 0.2).astype("float32")
    z = (2 * rng.normal(size=(2, 8, 8, 8, 1))).astype("float32")
    soft = np.concatenate([np.zeros_like(z), z], axis=-1)
    for name in LOSS_NAMES:
        for head, logits in (("sigmoid", z), ("softmax", soft)):
            here = float(keras.ops.convert_to_numpy(get_loss(name, head)(y, logits)))
            assert result["values"][f"{name}/{head}"] == pytest.approx(here, rel=1e-5, abs=1e-7)


def test_inference_model_folds_batch_norm_exactly():
    """Folding BN into the convolutions keeps the logits (trained BN statistics)."""
    import dataclasses

    from lesionseg.config import ModelConfig
    from lesionseg.model.unet import build_unet, inference_model

    cfg = ModelConfig(depth=2, base_filters=4, norm="batch")
    model = build_unet(cfg, 2)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(0.3, 3, n)])
    x = rng.standard_normal((2, 16, 16, 16, 2)).astype(np.float32)
    folded = inference_model(model, cfg, "float32")
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-4, rtol=1e-4)
    fast = inference_model(model, cfg, "bfloat16")
    out = np.asarray(fast.predict_on_batch(x))
    assert out.dtype == np.float32
    ref = np.asarray(model.predict_on_batch(x))
    assert np.abs(out - ref).max() < 0.1 * max(1.0, np.abs(ref).max())
    other = dataclasses.replace(cfg, norm="instance")
    plain = build_unet(other, 2)
    assert inference_model(plain, other, "float32") is plain
