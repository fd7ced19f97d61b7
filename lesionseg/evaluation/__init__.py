"""Stage 4, evaluation: lesion labelling, matching criteria, scoring, reports, compare, overlays.

Modules: :mod:`~lesionseg.evaluation.lesions` (one labelling, every criterion),
:mod:`~lesionseg.evaluation.report` (``lesionseg evaluate`` and ``compare``),
:mod:`~lesionseg.evaluation.overlays`.
"""
