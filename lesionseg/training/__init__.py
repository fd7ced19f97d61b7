"""Stage 2, training: ``lesionseg train``.

Modules: :mod:`~lesionseg.training.train` (the stage: :func:`~lesionseg.training.train.train`),
:mod:`~lesionseg.training.loop` (the epoch callback that wires the parts),
:mod:`~lesionseg.training.schedule` (learning rate, reduce-on-plateau, early stopping),
:mod:`~lesionseg.training.selection` and :mod:`~lesionseg.training.validation` (whole-volume
validation, the best model), :mod:`~lesionseg.training.checkpoint` (run state, checkpoint, resume),
:mod:`~lesionseg.training.distribution` (``tf.distribute`` strategies),
:mod:`~lesionseg.training.diagnostics` (failure rules) and :mod:`~lesionseg.training.monitor`
(their Keras metrics and callback), :mod:`~lesionseg.training.history`,
:mod:`~lesionseg.training.curves` and :mod:`~lesionseg.training.progress`.

Modules that import Keras (``loop``, ``monitor``, ``progress``) are imported by the stage only
after :func:`lesionseg.runtime.configure_backend`.
"""
