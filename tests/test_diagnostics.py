"""Training diagnostics: each classic failure is provoked on purpose and its warning fires.

The rules are tested on plain numbers (no network); the Keras side is tested
with tiny 3D networks that are broken on purpose: a crippled head that can
only say "background", a sigmoid before a logits loss, and a learning rate so
large that the loss becomes NaN.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lesionseg.training.diagnostics import (  # noqa: E402
    EpochStats,
    TrainingMonitor,
    output_range_problem,
    reference_losses,
)
from lesionseg.training.monitor import DiagnosticsCallback, diagnostic_metrics  # noqa: E402
from lesionseg.model.losses import get_loss  # noqa: E402
from lesionseg.model.metrics import make_metrics  # noqa: E402

SHAPE = (8, 8, 8)


def _batch(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 8, 8, 1) images whose bright cube is the lesion."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, *SHAPE, 1), np.float32)
    for b in range(n):
        i, j, k = rng.integers(1, 5, size=3)
        y[b, i : i + 3, j : j + 3, k : k + 3] = 1
    x = (rng.normal(0, 0.3, y.shape) + 2.0 * y).astype(np.float32)
    return x, y


def _tiny_net(final: str | None = None, crippled: bool = False) -> keras.Model:
    inp = keras.Input((*SHAPE, 1))
    h = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inp)
    if crippled:  # a head that can only output a large negative logit: always background
        out = keras.layers.Conv3D(1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(-20.0), trainable=False)(h)
    else:
        out = keras.layers.Conv3D(1, 1, activation=final)(h)
    return keras.Model(inp, out)


def _fit(model, loss, lr, monitor, epochs, x, y, **cb_kw):
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=make_metrics("sigmoid") + diagnostic_metrics("sigmoid"), jit_compile=False)
    cb = DiagnosticsCallback(monitor, probe=(x, y), loss_fn=loss, **cb_kw)
    model.fit(x, y, batch_size=2, epochs=epochs, verbose=0, callbacks=[cb], shuffle=False)
    return cb


# -- rules on plain numbers --------------------------------------------------


def _healthy(e: int) -> EpochStats:
    return EpochStats(e, loss=0.9 * 0.8**e, true_fg=0.05, pred_fg=0.04, p_lesion=0.6, p_background=0.05, logit_min=-9, logit_max=4)


def test_healthy_run_raises_nothing():
    mon = TrainingMonitor(reference_losses={"background": 0.99, "uniform": 0.93})
    found = [f for e in range(1, 15) for f in mon.end_epoch(_healthy(e))]
    assert found == []


def test_flat_loss_at_ln2_fires_after_patience_only():
    mon = TrainingMonitor(loss_name="bce", reference_losses={"uniform": math.log(2), "background": 8.0}, patience=3)
    stats = [EpochStats(e, loss=math.log(2) + 0.001 * (-1) ** e) for e in (1, 2, 3)]
    assert mon.end_epoch(stats[0]) == [] and mon.end_epoch(stats[1]) == []
    (f,) = mon.end_epoch(stats[2])
    assert f.code == "flat_loss" and "0.693" in f.message and "logits" in f.message
    assert mon.end_epoch(EpochStats(4, loss=math.log(2))) == []  # reported once


def test_flat_loss_elsewhere_is_not_a_failure():
    mon = TrainingMonitor(reference_losses={"uniform": math.log(2)}, patience=3)
    assert all(mon.end_epoch(EpochStats(e, loss=0.21)) == [] for e in range(1, 6))


def test_collapse_needs_lesions_in_batches_and_no_separation():
    blank = dict(pred_fg=0.0, p_lesion=0.01, p_background=0.01)
    mon = TrainingMonitor(patience=2)
    assert mon.end_epoch(EpochStats(1, 0.5, true_fg=0.03, **blank)) == []
    (f,) = mon.end_epoch(EpochStats(2, 0.5, true_fg=0.03, **blank))
    assert f.code == "collapse" and "learning rate" in f.message
    # no lesion in the batches: nothing to say
    mon = TrainingMonitor(patience=2)
    assert [mon.end_epoch(EpochStats(e, 0.5, true_fg=0.0, **blank)) for e in (1, 2)] == [[], []]
    # blank at 0.5 but lesion probability rising well above background: still learning (BCE warm-up)
    mon = TrainingMonitor(patience=2)
    learning = dict(pred_fg=0.0, p_lesion=0.35, p_background=0.02)
    assert [mon.end_epoch(EpochStats(e, 0.5, true_fg=0.03, **learning)) for e in (1, 2)] == [[], []]


def test_lesion_everywhere_fires_unless_shrinking():
    mon = TrainingMonitor(patience=3)
    found = [f for e in (1, 2, 3) for f in mon.end_epoch(EpochStats(e, 0.9, true_fg=0.01, pred_fg=0.97))]
    assert [f.code for f in found] == ["everything"] and "learning rate" in found[0].message
    # a region loss often starts by predicting half the patch, then shrinks: not a failure
    mon = TrainingMonitor(patience=3)
    shrinking = [EpochStats(e, 0.9, true_fg=0.01, pred_fg=p) for e, p in ((1, 0.9), (2, 0.7), (3, 0.55))]
    assert [f for s in shrinking for f in mon.end_epoch(s)] == []


def test_diverging_and_oscillating_loss_point_at_the_learning_rate():
    mon = TrainingMonitor()
    codes = [f.code for e, l in enumerate([0.9, 0.5, 0.4, 0.55, 0.7], 1) for f in mon.end_epoch(EpochStats(e, l))]
    assert codes == ["diverging"]
    mon = TrainingMonitor()
    found = [f for e, l in enumerate([0.6, 0.3, 0.62, 0.31, 0.6, 0.3], 1) for f in mon.end_epoch(EpochStats(e, l))]
    assert [f.code for f in found] == ["oscillating"] and "learning rate" in found[0].message


def test_nan_loss_and_output_range():
    mon = TrainingMonitor()
    (f,) = mon.end_epoch(EpochStats(3, float("nan")))
    assert f.code == "nan" and "last good" in f.message
    assert output_range_problem(0.0, 1.0) == "probabilities"
    assert output_range_problem(0.0, 37.0) == "non-negative"
    assert output_range_problem(-2.0, 3.0) is None


def test_monitor_state_round_trip():
    mon = TrainingMonitor(reference_losses={"uniform": 0.7})
    for e in (1, 2):
        mon.end_epoch(_healthy(e))
    mon.fired["collapse"] = 2
    again = TrainingMonitor()
    again.load_state(mon.state_dict())
    assert again.history == mon.history and again.fired == mon.fired
    assert again.reference_losses == {"uniform": 0.7}


# -- reference losses and metrics -----------------------------------------------


def test_reference_loss_of_bce_at_zero_logits_is_ln2():
    _, y = _batch()
    refs = reference_losses(get_loss("bce", "sigmoid"), y, "sigmoid")
    assert refs["uniform"] == pytest.approx(math.log(2), rel=1e-4)
    refs2 = reference_losses(get_loss("bce", "softmax"), y, "softmax")
    assert refs2["uniform"] == pytest.approx(math.log(2), rel=1e-4)
    # certain background (logit -8) costs ~8 per lesion voxel, ~0 per background voxel
    assert refs["background"] == pytest.approx(8 * y.mean(), abs=1e-3)


def test_diagnostic_metrics_values():
    _, y = _batch(2)
    logits = np.where(y > 0, 3.0, -3.0).astype(np.float32)
    logits[0, 0, 0, 0, 0] = 5.0  # one false positive voxel
    values = {}
    for m in diagnostic_metrics("sigmoid"):
        m.update_state(y, logits)
        values[m.name] = float(m.result())
    assert values["logit_min"] == -3.0 and values["logit_max"] == 5.0
    assert values["true_fg"] == pytest.approx(y.mean())
    assert values["p_lesion"] == pytest.approx(1 / (1 + math.exp(-3)), rel=1e-5)
    assert values["p_background"] > 1 / (1 + math.exp(3))


# -- failures provoked on real (tiny) networks ------------------------------------


def test_crippled_head_collapse_to_blank_fires(caplog):
    x, y = _batch(4)
    mon = TrainingMonitor(loss_name="dice", patience=2)
    with caplog.at_level(logging.WARNING, logger="lesionseg"):
        cb = _fit(_tiny_net(crippled=True), get_loss("dice", "sigmoid"), 1e-3, mon, 3, x, y)
    codes = [f.code for f in cb.findings]
    assert "collapse" in codes
    assert "DIAGNOSTIC collapse" in caplog.text and "collapse to blank" in caplog.text


def test_sigmoid_before_logits_loss_is_detected_before_training(caplog):
    x, y = _batch(4)
    mon = TrainingMonitor(loss_name="bce")
    with caplog.at_level(logging.WARNING, logger="lesionseg"):
        cb = _fit(_tiny_net(final="sigmoid"), get_loss("bce", "sigmoid"), 1e-3, mon, 1, x, y)
    first = cb.findings[0]
    assert first.code == "logits" and first.epoch == 0  # before the first step
    assert "probabilities" in first.message and "DIAGNOSTIC logits" in caplog.text
    # a ReLU on the output is caught too
    cb = _fit(_tiny_net(final="relu"), get_loss("bce", "sigmoid"), 1e-3, TrainingMonitor(), 1, x, y)
    assert any(f.code == "logits" and "ReLU" in f.message for f in cb.findings)


def test_nan_loss_stops_and_keeps_last_good_weights(caplog):
    x, y = _batch(4)
    model = _tiny_net()
    poisoned = [x.copy(), y]
    start = None

    class Poison(keras.callbacks.Callback):
        """Remember the good weights, then make the next step's gradients NaN."""

        def on_epoch_end(self, epoch, logs=None):
            nonlocal start
            if epoch == 0:
                start = [w.copy() for w in self.model.get_weights()]
                self.model.optimizer.learning_rate.assign(float("nan"))

    keras.utils.set_random_seed(0)
    loss = get_loss("bce", "sigmoid")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=make_metrics("sigmoid") + diagnostic_metrics("sigmoid"), jit_compile=False)
    cb = DiagnosticsCallback(TrainingMonitor(), probe=tuple(poisoned), loss_fn=loss)
    with caplog.at_level(logging.WARNING, logger="lesionseg"):
        hist = model.fit(x, y, batch_size=2, epochs=5, verbose=0, callbacks=[Poison(), cb], shuffle=False)
    assert cb.nan_stop is not None and cb.nan_stop.code == "nan"
    assert len(hist.history["loss"]) == 2  # stopped in epoch 2, not 5
    assert "DIAGNOSTIC nan" in caplog.text
    for w, good in zip(model.get_weights(), start):
        assert np.all(np.isfinite(w))
        np.testing.assert_array_equal(w, good)


def test_non_negative_outputs_of_a_linear_head_are_not_called_a_misplaced_activation():
    # lesionseg's U-Net is checked to emit logits; outputs >= 0 then mean dead/positive features
    # (a 4-filter net under one seed did this at its first epoch), not a ReLU on the head
    plain = TrainingMonitor().check_outputs(0.0, 9.3, epoch=1)
    linear = TrainingMonitor(linear_head=True).check_outputs(0.0, 9.3, epoch=1)
    assert plain[0].code == linear[0].code == "logits"
    assert "ReLU sits on the output" in plain[0].message
    assert "linear" in linear[0].message and "ReLU sits on the output" not in linear[0].message
    assert "base_filters" in linear[0].message
    assert TrainingMonitor(linear_head=True).check_outputs(-1.0, 2.0, epoch=1) == []
