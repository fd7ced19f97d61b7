"""lesionseg: find small lesions in 3D NIfTI volumes.

Stages (each a module, a CLI subcommand and a Makefile target): lesion-aware
patches (:mod:`lesionseg.sampling`), training (:mod:`lesionseg.train`),
sliding-window inference (:mod:`lesionseg.inference`) and lesion-wise
evaluation (:mod:`lesionseg.lesions`, :mod:`lesionseg.report`).
"""

__version__ = "0.1.0"
