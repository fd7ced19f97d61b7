"""Stage 1, sampling: lesion-aware patch centres, extraction, augmentation and the Keras feed.

Modules: :mod:`~lesionseg.sampling.sampler` (where patches go),
:mod:`~lesionseg.sampling.lesion_table` (the lesions of a case as voxel lists),
:mod:`~lesionseg.sampling.extraction` (patch geometry, cutting patches out, per-patch random
streams), :mod:`~lesionseg.sampling.weights` (mode and lesion probabilities, coverage balancing),
:mod:`~lesionseg.sampling.targeting` (which lesions patches show),
:mod:`~lesionseg.sampling.augment`, :mod:`~lesionseg.sampling.feed` (cached volumes -> online
patches for Keras), :mod:`~lesionseg.sampling.bank` (``lesionseg patches``).
"""
