"""lesionseg: find small lesions in 3D NIfTI volumes.

Stages (each a module, a CLI subcommand and a Makefile target): lesion-aware
patches (:mod:`lesionseg.sampling.sampler`), training (:mod:`lesionseg.training.train`),
sliding-window inference (:mod:`lesionseg.inference.sliding_window`) and lesion-wise
evaluation (:mod:`lesionseg.evaluation.lesions`, :mod:`lesionseg.evaluation.report`).
"""

__version__ = "0.1.0"
