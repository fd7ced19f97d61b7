"""Training metrics from logits (pooled over batches) and the logits-misuse check."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lesionseg.config import ModelConfig  # noqa: E402
from lesionseg.model.heads import HeadError, lesion_probability_numpy  # noqa: E402
from lesionseg.model.metrics import (  # noqa: E402
    ForegroundFraction,
    HardDice,
    MeanProbability,
    SoftDice,
    looks_like_probabilities,
    make_metrics,
)
from lesionseg.model.unet import build_unet  # noqa: E402


def batches(head: str, seed: int = 0):
    """Two batches of (y_true, logits) with different lesion loads."""
    rng = np.random.default_rng(seed)
    out = []
    for lesion in (0.05, 0.3):
        y = (rng.random((2, 6, 5, 4, 1)) < lesion).astype(np.float32)
        z = (1.5 * rng.normal(size=y.shape) + 2.0 * (y - 0.5)).astype(np.float32)
        logits = z if head == "sigmoid" else np.concatenate([-z / 2, z / 2], axis=-1)
        out.append((y, logits))
    return out


def value(metric) -> float:
    return float(keras.ops.convert_to_numpy(metric.result()))


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_metrics_match_numpy_pooled_over_batches(head):
    data = batches(head)
    y = np.concatenate([b[0] for b in data]).astype(np.float64)
    p = np.concatenate([lesion_probability_numpy(b[1], head) for b in data]).astype(np.float64)
    hard = (p > 0.5).astype(np.float64)
    expected = {
        "soft_dice": 2 * np.sum(p * y) / (np.sum(p) + np.sum(y)),
        "hard_dice": 2 * np.sum(hard * y) / (np.sum(hard) + np.sum(y)),
        "fg_fraction": hard.mean(),
        "mean_prob": p.mean(),
    }
    # pooled, not the mean of per-batch ratios (those differ here)
    probs = [(t, lesion_probability_numpy(z, head)) for t, z in data]
    per_batch = [2 * np.sum(q * t) / (q.sum() + t.sum()) for t, q in probs]
    assert abs(np.mean(per_batch) - expected["soft_dice"]) > 1e-3
    for metric in make_metrics(head):
        for t, z in data:
            metric.update_state(t, z)
        assert value(metric) == pytest.approx(expected[metric.name], rel=1e-5), metric.name
        metric.reset_state()
        metric.update_state(*data[0])
        assert value(metric) != pytest.approx(expected[metric.name], rel=1e-5)


def test_dice_is_nan_without_lesion_or_prediction_and_fraction_spots_collapse():
    y = np.zeros((1, 4, 4, 4, 1), np.float32)
    blank = np.full_like(y, -8.0)  # a collapsed model: nothing predicted
    soft, hard, frac = SoftDice("sigmoid"), HardDice("sigmoid"), ForegroundFraction("sigmoid")
    for m in (soft, hard, frac):
        m.update_state(y, blank)
    assert np.isnan(value(hard))
    assert value(soft) == pytest.approx(0.0, abs=1e-6)  # tiny soft false positives, no truth
    assert value(frac) == 0.0
    y[0, :2] = 1
    frac.reset_state()
    frac.update_state(y, blank)
    assert value(frac) == 0.0
    frac.update_state(y, -blank)
    assert value(frac) == 0.5


def test_threshold_is_strictly_above_one_half():
    y = np.ones((1, 2, 2, 2, 1), np.float32)
    m = ForegroundFraction("softmax")
    m.update_state(y, np.zeros((1, 2, 2, 2, 2), np.float32))  # p = 0.5 exactly
    assert value(m) == 0.0
    mean = MeanProbability("softmax")
    mean.update_state(y, np.zeros((1, 2, 2, 2, 2), np.float32))
    assert value(mean) == pytest.approx(0.5)


def test_metrics_serialise_with_their_head():
    for metric in make_metrics("softmax"):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(again) is type(metric) and again.head == "softmax" and again.name == metric.name
    with pytest.raises(HeadError, match="sigmoid' or 'softmax"):
        SoftDice("relu")


def test_looks_like_probabilities_flags_outputs_in_0_1():
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    model = build_unet(ModelConfig(depth=2, base_filters=4), in_channels=2)
    logits = keras.ops.convert_to_numpy(model(rng.normal(size=(2, 16, 16, 16, 2)).astype(np.float32)))
    assert not looks_like_probabilities(logits)
    assert looks_like_probabilities(lesion_probability_numpy(logits, "sigmoid"))
    assert looks_like_probabilities(np.array([0.0, 1.0, 0.3]))
    assert not looks_like_probabilities(np.array([0.2, 1.5]))  # e.g. a ReLU head that overshoots
    assert not looks_like_probabilities(np.array([0.2, np.nan]))
    assert not looks_like_probabilities(np.array([]))
