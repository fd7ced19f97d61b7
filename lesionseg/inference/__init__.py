"""Stage 3, inference: the sliding window, the ``infer`` stage and decision tuning.

Modules:

- :mod:`~lesionseg.inference.sliding_window`: pure numpy window grid, weights
  and blending (:func:`predict_volume`);
- :mod:`~lesionseg.inference.window_options`: :class:`WindowOptions`, flip TTA
  and the foreground crop (:func:`predict_windows`), pure numpy too;
- :mod:`~lesionseg.inference.predictor`: :class:`Predictor`, a model loaded and
  checked once, image → lesion probability;
- :mod:`~lesionseg.inference.postprocess`: the decision, the size filter and
  the stored tuning;
- :mod:`~lesionseg.inference.infer`: the ``lesionseg infer`` stage (case loop,
  process pool);
- :mod:`~lesionseg.inference.tune`: the ``lesionseg tune`` stage.

The contract's entry point ``lesionseg.inference.predict_volume`` is re-exported here.
"""

from lesionseg.inference.sliding_window import predict_volume

__all__ = ["predict_volume"]
