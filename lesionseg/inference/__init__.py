"""Stage 3, inference: the sliding window, the ``infer`` stage and decision tuning.

Modules: :mod:`~lesionseg.inference.sliding_window` (pure numpy: windows, blending, the
decision), :mod:`~lesionseg.inference.predictor` (``lesionseg infer``),
:mod:`~lesionseg.inference.tune` (``lesionseg tune``).

The contract's entry point ``lesionseg.inference.predict_volume`` is re-exported here.
"""

from lesionseg.inference.sliding_window import predict_volume

__all__ = ["predict_volume"]
