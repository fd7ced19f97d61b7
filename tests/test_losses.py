"""The loss family: head equivalence, closed forms, the paper's asymmetries, stability, training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":  # gradients below use tf.GradientTape
    pytest.skip("these tests take gradients with the TensorFlow backend", allow_module_level=True)

from lesionseg.config import ModelConfig  # noqa: E402
from lesionseg.errors import LesionsegError  # noqa: E402
from lesionseg.model.losses import LOSS_DEFAULTS, LOSS_NAMES, get_loss  # noqa: E402
from lesionseg.model.unet import build_unet  # noqa: E402

CONTRACT_NAMES = (
    "dice bce focal tversky focal_tversky combo symmetric_focal asymmetric_focal "
    "symmetric_focal_tversky asymmetric_focal_tversky symmetric_unified_focal "
    "asymmetric_unified_focal"
).split()
HEADS = ("sigmoid", "softmax")


def as_head(z: np.ndarray, head: str) -> np.ndarray:
    """Sigmoid logit z (..., 1) → logits of the head: z itself, or (0, z)."""
    return z if head == "sigmoid" else np.concatenate([np.zeros_like(z), z], axis=-1)


def value_and_grad(loss, y: np.ndarray, logits: np.ndarray) -> tuple[float, np.ndarray]:
    var = tf.Variable(np.asarray(logits, dtype=np.float32))
    with tf.GradientTape() as tape:
        value = loss(tf.constant(y, dtype=tf.float32), var)
    return float(value), tape.gradient(value, var).numpy()


def sigmoid64(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def random_case(seed: int, shape=(2, 6, 5, 4, 1), lesion=0.2, scale=2.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(shape) < lesion).astype(np.float32)
    z = (scale * rng.normal(size=shape)).astype(np.float32)
    return y, z


# --------------------------------------------------------------------------- names and errors


def test_names_match_the_contract():
    assert tuple(CONTRACT_NAMES) == LOSS_NAMES
    assert set(LOSS_DEFAULTS) == set(LOSS_NAMES)


def test_unknown_name_head_or_parameter_is_a_clear_error():
    with pytest.raises(LesionsegError, match="valid: dice, bce"):
        get_loss("dicee", "sigmoid")
    with pytest.raises(LesionsegError, match="sigmoid, softmax"):
        get_loss("dice", "relu")
    with pytest.raises(LesionsegError, match="unknown parameter.*alpha.*valid: weight, delta, gamma"):
        get_loss("asymmetric_unified_focal", "sigmoid", alpha=0.3)
    with pytest.raises(LesionsegError, match="delta must be in"):
        get_loss("tversky", "sigmoid", delta=1.5)
    with pytest.raises(LesionsegError, match="gamma"):
        get_loss("symmetric_focal_tversky", "sigmoid", gamma=1.0)
    with pytest.raises(LesionsegError, match="classes"):
        get_loss("dice", "sigmoid", classes="lesion")
    with pytest.raises(LesionsegError, match="unknown parameter"):
        get_loss("asymmetric_focal_tversky", "sigmoid", classes="foreground")


def test_wrong_channel_count_is_a_clear_error():
    y, z = random_case(0)
    with pytest.raises(LesionsegError, match="2 channel"):
        get_loss("dice", "softmax")(y, z)
    with pytest.raises(LesionsegError, match="1 channel"):
        get_loss("dice", "sigmoid")(y, as_head(z, "softmax"))


def test_loss_round_trips_through_keras_serialisation():
    loss = get_loss("asymmetric_unified_focal", "softmax", delta=0.65, batch_dice=False)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert (again.loss_name, again.head) == ("asymmetric_unified_focal", "softmax")
    assert again.params == loss.params and again.params["delta"] == 0.65
    y, z = random_case(1)
    assert float(again(y, as_head(z, "softmax"))) == float(loss(y, as_head(z, "softmax")))


# --------------------------------------------------------------------------- the two heads agree


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_softmax_with_logits_0_z_equals_sigmoid_with_z(name):
    y, z = random_case(2, scale=3.0)
    params = {"batch_dice": False} if "smooth" in LOSS_DEFAULTS[name] else {}
    for kwargs in ({}, params):
        v_sig, g_sig = value_and_grad(get_loss(name, "sigmoid", **kwargs), y, z)
        v_soft, g_soft = value_and_grad(get_loss(name, "softmax", **kwargs), y, as_head(z, "softmax"))
        assert v_soft == pytest.approx(v_sig, rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(g_soft[..., 1:2], g_sig, rtol=1e-4, atol=1e-9)
        # a softmax gradient is antisymmetric in its two logits
        np.testing.assert_allclose(g_soft[..., 0:1], -g_sig, rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------- per-class terms

EXPECTED_TERMS = {
    "dice": {"region_lesion"}, "tversky": {"region_lesion"}, "focal_tversky": {"region_lesion"},
    "bce": {"ce_background", "ce_lesion"}, "focal": {"ce_background", "ce_lesion"},
    "symmetric_focal": {"ce_background", "ce_lesion"}, "asymmetric_focal": {"ce_background", "ce_lesion"},
    "combo": {"ce_background", "ce_lesion", "region_lesion"},
    "symmetric_focal_tversky": {"region_background", "region_lesion"},
    "asymmetric_focal_tversky": {"region_background", "region_lesion"},
    "symmetric_unified_focal": {"ce_background", "ce_lesion", "region_background", "region_lesion"},
    "asymmetric_unified_focal": {"ce_background", "ce_lesion", "region_background", "region_lesion"},
}


def numpy_terms(loss, y, logits) -> dict[str, float]:
    return {k: float(keras.ops.convert_to_numpy(v)) for k, v in loss.terms(y, logits).items()}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_terms_sum_to_the_loss_and_agree_between_heads(name):
    assert set(EXPECTED_TERMS) == set(LOSS_NAMES)
    y, z = random_case(3, scale=3.0)
    sig, soft = get_loss(name, "sigmoid"), get_loss(name, "softmax")
    terms = numpy_terms(sig, y, z)
    assert set(terms) == EXPECTED_TERMS[name]
    assert sum(terms.values()) == pytest.approx(float(sig(y, z)), rel=1e-6)
    soft_terms = numpy_terms(soft, y, as_head(z, "softmax"))
    assert soft_terms == pytest.approx(terms, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", ["bce", "asymmetric_focal", "dice", "asymmetric_unified_focal"])
def test_a_false_positive_raises_the_terms_that_see_it(name):
    """Turn one confident background voxel into a confident false positive: which terms move."""
    y, z = random_case(4, scale=3.0)
    i = tuple(np.argwhere(y[..., 0] == 0)[0])
    z[i] = -6.0
    before = numpy_terms(get_loss(name, "sigmoid"), y, z)
    z[i] = 6.0
    after = numpy_terms(get_loss(name, "sigmoid"), y, z)
    moved = {k for k in before if after[k] > before[k] * (1 + 1e-6) + 1e-9}
    assert moved == ({"ce_background", "region_background", "region_lesion"} & EXPECTED_TERMS[name])
    assert all(after[k] == pytest.approx(before[k]) for k in set(before) - moved)


# --------------------------------------------------------------------------- closed forms


def np_counts(y, p, axes=None):
    tp = np.sum(y * p, axis=axes)
    fn = np.sum(y * (1 - p), axis=axes)
    fp = np.sum((1 - y) * p, axis=axes)
    return tp, fn, fp


def test_hand_made_example_at_p_one_half():
    # 2×2×2 patch, two lesion voxels, every logit 0 (p = 0.5)
    y = np.zeros((1, 2, 2, 2, 1), np.float32)
    y[0, 0, 0, :, 0] = 1
    z = np.zeros_like(y)
    # Dice = 2·(2·0.5) / (8·0.5 + 2) = 1/3
    assert float(get_loss("dice", "sigmoid")(y, z)) == pytest.approx(2 / 3, rel=1e-5)
    # TP = 1, FN = 1, FP = 3: TI = 1 / (1 + 0.7 + 0.9)
    assert float(get_loss("tversky", "sigmoid")(y, z)) == pytest.approx(1 - 1 / 2.6, rel=1e-5)
    assert float(get_loss("bce", "sigmoid")(y, z)) == pytest.approx(np.log(2), rel=1e-6)
    # focal: every voxel (1 - 0.5)^2 · log 2
    assert float(get_loss("focal", "sigmoid")(y, z)) == pytest.approx(0.25 * np.log(2), rel=1e-6)
    # background Dice: TP = 3, |pred| = 4, |truth| = 6 → 6/10; mean with lesion 1/3
    both = float(get_loss("dice", "sigmoid", classes="both")(y, z))
    assert both == pytest.approx(1 - 0.5 * (1 / 3 + 0.6), rel=1e-5)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("head", HEADS)
def test_random_5d_examples_match_numpy(seed, head):
    y, z = random_case(seed, shape=(3, 5, 4, 6, 1), lesion=0.3)
    y[1] = 0  # one background-only patch in the batch
    p = sigmoid64(z)
    logits = as_head(z, head)

    def loss(name, **kw):
        return float(get_loss(name, head, **kw)(y, logits))

    tp, fn, fp = np_counts(y, p)
    assert loss("dice") == pytest.approx(1 - 2 * tp / (2 * tp + fn + fp), rel=1e-5)
    assert loss("tversky") == pytest.approx(1 - tp / (tp + 0.7 * fn + 0.3 * fp), rel=1e-5)
    assert loss("tversky", delta=0.4) == pytest.approx(1 - tp / (tp + 0.4 * fn + 0.6 * fp), rel=1e-5)
    # per-patch Dice (the reference implementation's reduction), smooth included
    s = 1e-6
    tpb, fnb, fpb = np_counts(y, p, axes=(1, 2, 3, 4))
    per_patch = 1 - (tpb + s) / (tpb + 0.5 * fnb + 0.5 * fpb + s)
    assert loss("dice", batch_dice=False) == pytest.approx(per_patch.mean(), rel=1e-5)
    # both classes: background Dice from the complements
    tp0, fn0, fp0 = np_counts(1 - y, 1 - p)
    dice0 = 2 * tp0 / (2 * tp0 + fn0 + fp0)
    dice1 = 2 * tp / (2 * tp + fn + fp)
    assert loss("dice", classes="both") == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-5)

    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert loss("bce") == pytest.approx(ce.mean(), rel=1e-5)
    pt = np.where(y == 1, p, 1 - p)
    assert loss("focal") == pytest.approx(np.mean((1 - pt) ** 2 * -np.log(pt)), rel=1e-5)
    assert loss("focal", gamma=0.0) == pytest.approx(ce.mean(), rel=1e-5)
    alpha = np.where(y == 1, 0.25, 0.75)
    assert loss("focal", delta=0.25, gamma=1.5) == pytest.approx(
        np.mean(alpha * (1 - pt) ** 1.5 * -np.log(pt)), rel=1e-5
    )
    ft = (1 - tp / (tp + 0.7 * fn + 0.3 * fp)) ** 0.75
    assert loss("focal_tversky") == pytest.approx(ft, rel=1e-5)
    combo = 0.5 * np.mean(-(0.5 * y * np.log(p) + 0.5 * (1 - y) * np.log(1 - p))) + 0.5 * (
        1 - 2 * tp / (2 * tp + fn + fp)
    )
    assert loss("combo") == pytest.approx(combo, rel=1e-5)


def yeung_reference(y, p, delta, gamma):
    """Numpy Yeung et al. (2022) terms: (L_msF, L_maF, L_msFT, L_maFT)."""
    ce1, ce0 = -y * np.log(p), -(1 - y) * np.log(1 - p)
    msf = np.mean(delta * (1 - p) ** gamma * ce1 + (1 - delta) * p**gamma * ce0)
    maf = np.mean(delta * ce1 + (1 - delta) * p**gamma * ce0)
    tp1, fn1, fp1 = np_counts(y, p)
    tp0, fn0, fp0 = np_counts(1 - y, 1 - p)
    e1 = 1 - tp1 / (tp1 + delta * fn1 + (1 - delta) * fp1)
    e0 = 1 - tp0 / (tp0 + delta * fn0 + (1 - delta) * fp0)
    msft = 0.5 * (e0 ** (1 - gamma) + e1 ** (1 - gamma))
    maft = 0.5 * (e0 + e1 ** (1 - gamma))
    return msf, maf, msft, maft


@pytest.mark.parametrize("head", HEADS)
def test_symmetric_and_asymmetric_variants_match_the_paper(head):
    y, z = random_case(5, shape=(2, 6, 6, 6, 1), lesion=0.15)
    p = sigmoid64(z)
    logits = as_head(z, head)

    def loss(name, **kw):
        return float(get_loss(name, head, **kw)(y, logits))

    msf, maf, msft, maft = yeung_reference(y, p, 0.7, 2.0)
    assert loss("symmetric_focal") == pytest.approx(msf, rel=1e-5)
    assert loss("asymmetric_focal") == pytest.approx(maf, rel=1e-5)
    msf, maf, msft, maft = yeung_reference(y, p, 0.7, 0.75)
    assert loss("symmetric_focal_tversky") == pytest.approx(msft, rel=1e-5)
    assert loss("asymmetric_focal_tversky") == pytest.approx(maft, rel=1e-5)
    msf, maf, msft, maft = yeung_reference(y, p, 0.6, 0.5)
    assert loss("symmetric_unified_focal") == pytest.approx(0.5 * msf + 0.5 * msft, rel=1e-5)
    assert loss("asymmetric_unified_focal") == pytest.approx(0.5 * maf + 0.5 * maft, rel=1e-5)
    # λ weighs the focal (distribution) part
    assert loss("asymmetric_unified_focal", weight=1.0) == pytest.approx(maf, rel=1e-5)
    assert loss("asymmetric_unified_focal", weight=0.0) == pytest.approx(maft, rel=1e-5)


def test_asymmetry_is_exactly_where_the_paper_puts_it():
    rng = np.random.default_rng(6)
    z = (2 * rng.normal(size=(2, 6, 6, 6, 1))).astype(np.float32)
    background = np.zeros_like(z)
    lesion_only = np.ones_like(z)
    sym, asym = get_loss("symmetric_focal", "sigmoid"), get_loss("asymmetric_focal", "sigmoid")
    # focal: background terms are suppressed in both → identical on a background-only patch
    assert float(asym(background, z)) == pytest.approx(float(sym(background, z)), rel=1e-6)
    # lesion terms keep their full cross-entropy in the asymmetric loss only
    p = sigmoid64(z)
    assert float(asym(lesion_only, z)) == pytest.approx(np.mean(-0.7 * np.log(p)), rel=1e-5)
    assert float(asym(lesion_only, z)) > float(sym(lesion_only, z))
    # focal Tversky: the lesion term (1 − TI_1)^(1−γ) is enhanced in both, the background
    # term only in the symmetric loss: (1 − TI_0) < (1 − TI_0)^(1−γ) for errors in (0, 1)
    y, z = random_case(7, shape=(1, 6, 6, 6, 1), lesion=0.3)
    sft, aft = get_loss("symmetric_focal_tversky", "sigmoid"), get_loss("asymmetric_focal_tversky", "sigmoid")
    assert float(aft(y, z)) < float(sft(y, z))
    # with γ = 0 there is no focal modulation and every variant collapses to its base loss
    both_tversky = float(get_loss("tversky", "sigmoid", classes="both")(y, z))
    for name in ("symmetric_focal_tversky", "asymmetric_focal_tversky"):
        assert float(get_loss(name, "sigmoid", gamma=0.0)(y, z)) == pytest.approx(both_tversky, rel=1e-5)
    weighted_ce = float(get_loss("combo", "sigmoid", weight=1.0, delta=0.7)(y, z))
    for name in ("symmetric_focal", "asymmetric_focal"):
        assert float(get_loss(name, "sigmoid", gamma=0.0)(y, z)) == pytest.approx(weighted_ce, rel=1e-5)


# --------------------------------------------------------------------------- stability


def stability_cases():
    rng = np.random.default_rng(8)
    shape = (2, 8, 8, 8, 1)
    lesion = (rng.random(shape) < 0.1).astype(np.float32)
    normal = rng.normal(size=shape).astype(np.float32)
    extreme = np.where(rng.random(shape) < 0.5, 50.0, -50.0).astype(np.float32)
    return {
        "background_only": (np.zeros(shape, np.float32), normal),
        "all_lesion": (np.ones(shape, np.float32), normal),
        "extreme_logits": (lesion, extreme),
        "extreme_background_only": (np.zeros(shape, np.float32), extreme),
        "extreme_all_lesion": (np.ones(shape, np.float32), extreme),
    }


@pytest.mark.parametrize("case", list(stability_cases()))
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_finite_value_and_nonzero_gradient(name, head, case):
    y, z = stability_cases()[case]
    logits = z if head == "sigmoid" else np.concatenate([-z / 2, z / 2], axis=-1)
    value, grad = value_and_grad(get_loss(name, head), y, logits)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    assert np.any(grad != 0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_perfect_predictions_give_the_minimum(name):
    rng = np.random.default_rng(9)
    y = (rng.random((2, 8, 8, 8, 1)) < 0.1).astype(np.float32)
    y[1] = 0  # a background-only patch
    sign = 2 * y - 1
    loss = get_loss(name, "sigmoid")
    values = [float(loss(y, scale * sign)) for scale in (50.0, 10.0, 3.0, 1.0)]
    # every listed minimum is 0 (combo is shifted to 1 − DSC); (1 − TI)^0.25 leaves ~1e-5
    assert 0.0 <= values[0] < 1e-4
    assert values == sorted(values)  # more confident and right → lower
    wrong = float(loss(y, -50.0 * sign))
    assert wrong > values[-1]
    noise = float(loss(y, rng.normal(size=y.shape).astype(np.float32)))
    assert values[0] < noise


# --------------------------------------------------------------------------- training


def toy_batch():
    rng = np.random.default_rng(10)
    y = np.zeros((2, 16, 16, 16, 1), np.float32)
    y[0, 4:9, 5:10, 6:10] = 1
    y[1, 9:13, 2:6, 8:12] = 1
    x = np.concatenate([2.0 * y + 0.5 * rng.normal(size=y.shape), rng.normal(size=y.shape)], axis=-1)
    return x.astype(np.float32), y


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_loss_decreases_when_training_a_tiny_unet(head):
    keras.utils.set_random_seed(0)
    model = build_unet(ModelConfig(depth=2, base_filters=4, head=head), 2, (16, 16, 16))
    initial = [w.numpy() for w in model.weights]
    x, y = toy_batch()
    x, y = tf.constant(x), tf.constant(y)
    failures = []
    for name in LOSS_NAMES:
        model.set_weights(initial)
        loss = get_loss(name, head)
        optimizer = keras.optimizers.Adam(3e-3)
        values = []
        for _ in range(4):
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            grads = tape.gradient(value, model.trainable_weights)
            optimizer.apply(grads, model.trainable_weights)
            values.append(float(value))
        values.append(float(loss(y, model(x, training=True))))
        if not values[-1] < values[0]:
            failures.append((name, values))
    assert not failures, failures
