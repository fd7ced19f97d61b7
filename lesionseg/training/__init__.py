"""Stage 2, training: ``lesionseg train``.

Modules: :mod:`~lesionseg.training.train` (the stage), :mod:`~lesionseg.training.diagnostics`
(failure rules and the callback that reports them), :mod:`~lesionseg.training.curves`.
"""
