"""Backend set-up shared by every stage that runs a model.

Keras 3 runs on TensorFlow by default and on JAX or PyTorch when
``KERAS_BACKEND`` says so.  On CPU with TensorFlow, 2 intra-op threads and 1
inter-op thread are fastest on a 2-core machine (oneDNN stays on, XLA off).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_configured = False


def configure_backend(threads: int = 2, seed: int | None = None) -> str:
    """Quiet the backend's start-up chatter, set thread counts and seeds.

    Parameters
    ----------
    threads : int
        Intra-op threads (0 = the backend's default).
    seed : int or None
        Seeds Python, NumPy and the backend (``keras.utils.set_random_seed``).

    Returns
    -------
    str
        The Keras backend in use (``tensorflow``, ``jax`` or ``torch``).
    """
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # local: this call is where the backend starts; infer/tune import this module at top and call it
    # only after checking their inputs, so a bad input fails in one line, before TensorFlow starts
    import keras

    backend = keras.backend.backend()
    if not _configured and threads > 0:
        if backend == "tensorflow":
            import tensorflow as tf  # local: backend chosen at run time; not loaded under jax/torch

            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # already initialised: keep what is set
                log.debug("TensorFlow threads already initialised")
        elif backend == "torch":
            import torch  # local: optional, only on the PyTorch backend

            torch.set_num_threads(threads)
        _configured = True
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    return backend
