"""The contract's entry point ``lesionseg.losses.get_loss``; the losses live in :mod:`lesionseg.model.losses`."""

from lesionseg.model.losses import LOSS_NAMES, get_loss

__all__ = ["LOSS_NAMES", "get_loss"]
