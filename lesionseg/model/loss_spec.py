"""The loss family's vocabulary: names, default parameters and their checks (no Keras here).

Kept apart from :mod:`lesionseg.model.losses` so that a configuration is validated completely
at load (:mod:`lesionseg.config`) without importing a deep-learning backend.
"""

from __future__ import annotations

from typing import Any

from lesionseg.errors import LesionsegError

LOSS_NAMES: tuple[str, ...] = (
    "dice",
    "bce",
    "focal",
    "tversky",
    "focal_tversky",
    "combo",
    "symmetric_focal",
    "asymmetric_focal",
    "symmetric_focal_tversky",
    "asymmetric_focal_tversky",
    "symmetric_unified_focal",
    "asymmetric_unified_focal",
)

CLASS_CHOICES = ("foreground", "both")

_REGION = {"smooth": 1e-6, "batch_dice": True}
LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "dice": {"classes": "foreground", **_REGION},
    "bce": {},
    "focal": {"gamma": 2.0, "delta": None},
    "tversky": {"delta": 0.7, "classes": "foreground", **_REGION},
    "focal_tversky": {"delta": 0.7, "gamma": 0.75, "classes": "foreground", **_REGION},
    "combo": {"weight": 0.5, "delta": 0.5, "classes": "foreground", **_REGION},
    "symmetric_focal": {"delta": 0.7, "gamma": 2.0},
    "asymmetric_focal": {"delta": 0.7, "gamma": 2.0},
    "symmetric_focal_tversky": {"delta": 0.7, "gamma": 0.75, **_REGION},
    "asymmetric_focal_tversky": {"delta": 0.7, "gamma": 0.75, **_REGION},
    "symmetric_unified_focal": {"weight": 0.5, "delta": 0.6, "gamma": 0.5, **_REGION},
    "asymmetric_unified_focal": {"weight": 0.5, "delta": 0.6, "gamma": 0.5, **_REGION},
}
"""Default parameters of every loss (names as in Yeung et al., 2022)."""


def check_loss_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, names and ranges checked; one-line LesionsegError otherwise."""
    defaults = LOSS_DEFAULTS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise LesionsegError(
            f"loss {name!r}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}"
        )
    p = {**defaults, **params}

    def bad(key: str, rule: str) -> LesionsegError:
        return LesionsegError(f"loss {name!r}: {key} must be {rule}, got {p[key]!r}")

    def number(key: str) -> float:
        value = p[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(key, "a number")
        return float(value)

    if "delta" in p and p["delta"] is not None:
        p["delta"] = number("delta")
        if not 0.0 <= p["delta"] <= 1.0:
            raise bad("delta", "in [0, 1]")
    if "weight" in p:
        p["weight"] = number("weight")
        if not 0.0 <= p["weight"] <= 1.0:
            raise bad("weight", "in [0, 1]")
    if "gamma" in p:
        p["gamma"] = number("gamma")
        if name in ("focal", "symmetric_focal", "asymmetric_focal"):
            if p["gamma"] < 0.0:
                raise bad("gamma", "≥ 0")
        elif name == "focal_tversky":
            if p["gamma"] <= 0.0:
                raise bad("gamma", "> 0 (it is the exponent of 1 − TI)")
        elif not 0.0 <= p["gamma"] < 1.0:
            raise bad("gamma", "in [0, 1) (the Tversky exponent is 1 − γ)")
    if "smooth" in p:
        p["smooth"] = number("smooth")
        if p["smooth"] <= 0.0:
            raise bad("smooth", "> 0")
    if "batch_dice" in p and not isinstance(p["batch_dice"], bool):
        raise bad("batch_dice", "true or false")
    if "classes" in p and p["classes"] not in CLASS_CHOICES:
        raise bad("classes", " or ".join(repr(c) for c in CLASS_CHOICES))
    return p


def check_loss_name(name: str) -> None:
    """Raise a one-line :class:`LesionsegError` unless ``name`` is one of :data:`LOSS_NAMES`."""
    if name not in LOSS_NAMES:
        raise LesionsegError(f"loss.name {name!r} is unknown; valid: {', '.join(LOSS_NAMES)}")
