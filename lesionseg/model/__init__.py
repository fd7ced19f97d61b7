"""The network: a 3D U-Net that emits logits, the heads (the one place for probabilities),
the class-imbalance losses and the training metrics.

Modules: :mod:`~lesionseg.model.unet`, :mod:`~lesionseg.model.heads`,
:mod:`~lesionseg.model.losses`, :mod:`~lesionseg.model.metrics`.
"""
