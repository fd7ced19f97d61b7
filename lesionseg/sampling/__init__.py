"""Stage 1, sampling: lesion-aware patch centres, extraction, augmentation and the Keras feed.

Modules: :mod:`~lesionseg.sampling.sampler` (where patches go, cutting them out),
:mod:`~lesionseg.sampling.augment`, :mod:`~lesionseg.sampling.feed` (cached volumes -> online
patches for Keras), :mod:`~lesionseg.sampling.bank` (``lesionseg patches``).
"""
