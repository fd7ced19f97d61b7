"""A configurable 3D U-Net (Keras 3 functional API, channels-last) that emits logits.

Architecture (``ModelConfig``): ``depth`` down-sampling steps (2–5); level l
has ``round(base_filters * growth**l)`` filters (16/32/64 at depth 2 by
default, the reference model); every block is two 3×3×3 convolutions, each
followed by normalisation and ReLU/LeakyReLU; max-pooling down, transposed
convolution (or nearest up-sampling + 3×3×3 convolution) up, skip
connections by concatenation, dropout in the bottleneck and decoder.  The
head is a 1×1×1 convolution with **no activation** giving K logits (1 for a
sigmoid head, 2 for softmax); :mod:`lesionseg.model.heads` turns them into
probabilities.

The spatial input dimensions are ``None``, so one model predicts any window
whose sides are divisible by ``2**depth``.  Only built-in Keras layers are
used, so ``.keras`` files load anywhere; the package's losses and metrics are
registered for compiled models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

import lesionseg.model.losses  # noqa: F401  (registers the serialisable loss for load_model)
import lesionseg.model.metrics  # noqa: F401  (registers the metrics for load_model)
from lesionseg.config import PRECISIONS, ModelConfig, check_patch_size
from lesionseg.errors import LesionsegError
from lesionseg.model.heads import head_channels

log = logging.getLogger(__name__)

LEAKY_SLOPE = 0.01  # nnU-Net's negative slope


def level_filters(cfg: ModelConfig) -> list[int]:
    """Filters of levels 0..depth (the last is the bottleneck)."""
    return [
        max(1, int(round(cfg.base_filters * cfg.growth**level))) for level in range(cfg.depth + 1)
    ]


def _norm(x, kind: str, filters: int, name: str):
    if kind == "batch":
        return keras.layers.BatchNormalization(name=name)(x)
    if kind == "instance":
        return keras.layers.GroupNormalization(groups=-1, name=name)(x)
    if kind == "group":
        groups = max(g for g in range(1, 9) if filters % g == 0)
        return keras.layers.GroupNormalization(groups=groups, name=name)(x)
    return x


def _act(x, kind: str, name: str):
    if kind == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)(x)
    return keras.layers.ReLU(name=name)(x)


def _conv_block(x, filters: int, cfg: ModelConfig, prefix: str):
    """Two (3×3×3 convolution → normalisation → activation) steps."""
    for i in (1, 2):
        x = keras.layers.Conv3D(
            filters, 3, padding="same", use_bias=cfg.norm == "none",
            kernel_initializer="he_normal", name=f"{prefix}_conv{i}",
        )(x)
        x = _norm(x, cfg.norm, filters, f"{prefix}_norm{i}")
        x = _act(x, cfg.activation, f"{prefix}_act{i}")
    return x


def _dropout(x, rate: float, name: str):
    return keras.layers.Dropout(rate, name=name)(x) if rate > 0 else x


def build_unet(
    cfg: ModelConfig, in_channels: int, patch_size: tuple[int, int, int] | None = None
) -> keras.Model:
    """Build the 3D U-Net described by ``cfg``.

    Parameters
    ----------
    cfg : ModelConfig
        Architecture (depth, filters, norm, activation, dropout, up-sampling, head).
    in_channels : int
        Number of input channels C (e.g. 2 for FLAIR + T1).
    patch_size : tuple of 3 int, optional
        Training patch size (voxels); checked to be divisible by ``2**depth``.
        The model itself accepts any such size (spatial dims are ``None``).

    Returns
    -------
    keras.Model
        Input (B, d, h, w, C) float32 → logits (B, d, h, w, K) float32,
        K = 1 (sigmoid head) or 2 (softmax head), no activation.

    Raises
    ------
    LesionsegError
        Invalid configuration, channel count or patch size.
    """
    if not isinstance(in_channels, int) or in_channels < 1:
        raise LesionsegError(f"in_channels must be a positive integer, got {in_channels!r}")
    if patch_size is not None:
        check_patch_size(patch_size, cfg.depth)
    filters = level_filters(cfg)

    inputs = keras.Input(shape=(None, None, None, in_channels), name="image")
    x = inputs
    skips = []
    for level in range(cfg.depth):
        x = _conv_block(x, filters[level], cfg, f"enc{level}")
        skips.append(x)
        x = keras.layers.MaxPooling3D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, filters[cfg.depth], cfg, "bottleneck")
    x = _dropout(x, cfg.dropout, "bottleneck_dropout")
    for level in reversed(range(cfg.depth)):
        f = filters[level]
        if cfg.upsampling == "transpose":
            x = keras.layers.Conv3DTranspose(f, 2, strides=2, name=f"dec{level}_up")(x)
        else:
            x = keras.layers.UpSampling3D(2, name=f"dec{level}_up")(x)
            x = keras.layers.Conv3D(f, 3, padding="same", name=f"dec{level}_upconv")(x)
        x = keras.layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skips[level]])
        x = _dropout(x, cfg.dropout, f"dec{level}_dropout")
        x = _conv_block(x, f, cfg, f"dec{level}")
    logits = keras.layers.Conv3D(
        head_channels(cfg.head), 1, activation=None, dtype="float32", name="logits"
    )(x)
    name = f"unet3d_d{cfg.depth}_f{cfg.base_filters}_{cfg.head}"
    model = keras.Model(inputs, logits, name=name)
    assert_emits_logits(model, cfg.head)
    return model


_ACTIVATION_LAYERS = ("Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "PReLU")


def assert_emits_logits(model: keras.Model, head: str | None = None) -> None:
    """Raise unless the model's output layer is activation-free (emits logits).

    Parameters
    ----------
    model : keras.Model
        A single-output model.
    head : {"sigmoid", "softmax"}, optional
        Also check the number of output channels against the head.

    Raises
    ------
    LesionsegError
        If the last layer is an activation layer or has a non-linear
        ``activation`` (e.g. a sigmoid/softmax/ReLU head), or has the wrong
        number of channels.  Probabilities must be made by
        :mod:`lesionseg.model.heads`, never inside the model.
    """
    layer = model.layers[-1]
    kind = type(layer).__name__
    activation = getattr(layer, "activation", None)
    act_name = getattr(activation, "__name__", None)
    if kind in _ACTIVATION_LAYERS or (activation is not None and act_name != "linear"):
        what = act_name if kind not in _ACTIVATION_LAYERS else kind
        raise LesionsegError(
            f"model {model.name!r}: output layer {layer.name!r} applies {what!r}; lesionseg "
            "models must emit logits (no activation on the head) — probabilities are made "
            "in lesionseg.model.heads"
        )
    if head is not None:
        k = head_channels(head)
        channels = model.outputs[0].shape[-1]
        if channels != k:
            raise LesionsegError(
                f"model {model.name!r}: head {head!r} needs {k} output channel(s), "
                f"model has {channels}"
            )


def count_parameters(model: keras.Model) -> int:
    """Total number of weights (trainable and not, e.g. batch-norm statistics)."""
    return int(sum(math.prod(w.shape) for w in model.weights))


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a ``.keras`` model saved by lesionseg (custom losses/metrics registered).

    Parameters
    ----------
    path : str or Path
        The ``.keras`` file.
    compile : bool
        Also restore the loss, metrics and optimizer (to resume training).
        Inference does not need them.

    Raises
    ------
    LesionsegError
        Missing or unreadable file.
    """
    from lesionseg.training.checkpoint import check_model_file

    path = check_model_file(path)
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LesionsegError(f"{path}: cannot load model ({first})") from None




@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Layers built inside this block compute in ``precision``.

    ``bfloat16`` is Keras' ``mixed_bfloat16`` policy: variables stay float32,
    convolutions run in bfloat16, batch normalisation upcasts to float32 and
    the head (built with ``dtype="float32"``) emits float32 logits.  The global
    policy is restored on exit.

    Raises
    ------
    LesionsegError
        ``precision`` is not one of ``PRECISIONS``.
    """
    if precision not in PRECISIONS:
        raise LesionsegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_model(model: keras.Model) -> keras.Model:
    """The same network computing in float32: what a run saves after mixed-precision training.

    Mixed-precision variables are float32 already, so the copy holds exactly
    the trained weights; a float32 model is returned as it is.  The copy is
    not compiled (inference and tuning do not need the optimizer).
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def as_float32(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=as_float32)
    copy.set_weights(model.get_weights())
    return copy


def uncompiled_copy(model: keras.Model) -> keras.Model:
    """The same network and weights without optimizer, loss or metrics (``model`` if it has none).

    What ``model.keras`` holds: the optimizer's variables (two per weight under Adam) are for
    resuming training, which reads them from the run's checkpoint instead.
    """
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())  # clone_model would compile the copy too
    copy.set_weights(model.get_weights())
    return copy


def inference_model(model: keras.Model, cfg: ModelConfig, precision: str = "float32") -> keras.Model:
    """A faster copy of a trained U-Net for inference: batch norm folded into the convolutions.

    In inference mode batch normalisation is an affine map per channel, so
    ``conv → BN`` equals one convolution with scaled kernel and a bias:
    ``k' = k·γ/√(σ²+ε)``, ``b' = β − μ·γ/√(σ²+ε)``.  The folded model gives the
    same logits to float rounding (≈1e-5) and is about 8 % faster on CPU.

    Parameters
    ----------
    model : keras.Model
        A model built by :func:`build_unet` with ``cfg`` (trained weights).
    cfg : ModelConfig
        Its architecture.
    precision : {"float32", "bfloat16"}
        ``bfloat16`` computes in bfloat16 (logits stay float32): about 2× faster
        on CPUs with AVX512-BF16/AMX and on GPUs, with logits differing by
        ~1e-2, so borderline voxels may flip; ``float32`` is exact.

    Returns
    -------
    keras.Model
        The model to predict with (``model`` itself when nothing applies).
    """
    if precision not in PRECISIONS:
        raise LesionsegError(f"infer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if cfg.norm != "batch" and precision == "float32":
        return model
    in_channels = int(model.input_shape[-1])
    with precision_policy(precision):
        target = build_unet(dataclasses.replace(cfg, norm="none" if cfg.norm == "batch" else cfg.norm), in_channels)
    source = {layer.name: layer for layer in model.layers}
    for layer in target.layers:
        if not layer.weights:
            continue
        original = source.get(layer.name)
        if original is None:
            raise LesionsegError(f"model layer {layer.name!r} not found: was it built by lesionseg?")
        bn = source.get(layer.name.replace("_conv", "_norm")) if "_conv" in layer.name else None
        if cfg.norm == "batch" and isinstance(bn, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (np.asarray(w) for w in bn.get_weights())
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel = np.asarray(original.get_weights()[0])
            layer.set_weights([kernel * scale, beta - mean * scale])
        else:
            layer.set_weights(original.get_weights())
    return target
