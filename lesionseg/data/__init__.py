"""Stage 0, data: NIfTI cases in and out, checks, normalisation, synthetic samples, splits.

Modules: :mod:`~lesionseg.data.io` (reading cases and masks), :mod:`~lesionseg.data.writing`
(atomic writes, volumes on the input grid),
:mod:`~lesionseg.data.check` (``lesionseg check``), :mod:`~lesionseg.data.normalize`,
:mod:`~lesionseg.data.synthetic` (``data_samples/``), :mod:`~lesionseg.data.split`
(patient-level train/validation split).
"""
