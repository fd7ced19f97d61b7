"""Stage 4, evaluation: lesion matching criteria, scoring, reports, compare, overlays.

Modules: :mod:`~lesionseg.evaluation.criteria` (the matching criteria, registered by name),
:mod:`~lesionseg.evaluation.scoring` (per-case record, pooling over cases, model selection),
:mod:`~lesionseg.evaluation.lesions` (evaluate one case), :mod:`~lesionseg.evaluation.report`
(the report tables), :mod:`~lesionseg.evaluation.evaluate` (``lesionseg evaluate``),
:mod:`~lesionseg.evaluation.compare` (``lesionseg compare``), :mod:`~lesionseg.evaluation.overlays`.
Lesions themselves are labelled by :mod:`lesionseg.data.labels`.
"""
