"""Where training runs: the ``tf.distribute`` strategy, its replicas, the chief, XLA.

``train.strategy = "mirrored"`` uses all GPUs of one machine,
``"multi_worker"`` every machine listed in ``TF_CONFIG`` (the same command
on each; the chief writes the run folder).  ``train.batch_size`` is the
global batch, split evenly across replicas.  Keras is imported only inside
the functions, after :func:`lesionseg.runtime.configure_backend`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from lesionseg.config import STRATEGIES  # the choices of train.strategy
from lesionseg.errors import LesionsegError

# the stage's logger: the lines of train.log keep their source name
log = logging.getLogger("lesionseg.training.train")



def make_strategy(name: str, backend: str) -> Any:
    """The ``tf.distribute`` strategy named in ``train.strategy`` (``None`` for default).

    ``mirrored``: every GPU of this machine (CPU when there is none);
    ``multi_worker``: every machine listed in ``TF_CONFIG``.  Must be called
    before TensorFlow runs any operation.

    Parameters
    ----------
    name : str
        One of :data:`STRATEGIES`.
    backend : str
        The Keras backend of this process.

    Returns
    -------
    tf.distribute.Strategy or None

    Raises
    ------
    LesionsegError
        Unknown name, or a strategy without the TensorFlow backend.
    """
    if name not in STRATEGIES:
        raise LesionsegError(f"config train.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "default":
        return None
    if backend != "tensorflow":
        raise LesionsegError(
            f"config train.strategy={name!r} needs the TensorFlow backend (KERAS_BACKEND=tensorflow), "
            f"this process runs {backend!r}"
        )
    import tensorflow as tf  # local: tf.distribute only on the TensorFlow backend (checked above)

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        log.warning("train.strategy=multi_worker without TF_CONFIG: running as a single worker")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: Any) -> bool:
    """True on the worker that writes the run folder (always, without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", lambda: None)():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def replicas(strategy: Any) -> int:
    """Replicas in sync (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def replica_scaled(loss_fn: Callable[[Any, Any], Any], n_replicas: int) -> Callable[[Any, Any], Any]:
    """The loss divided by the number of replicas, for ``model.compile`` under a strategy.

    Keras divides a per-voxel loss by the replica count before the
    cross-replica gradient sum, but passes a scalar loss through unscaled
    (``keras.losses.loss.reduce_values``); the region losses here are
    scalars pooled over the (per-replica) batch, so without this the
    gradients and the reported loss would be ``n_replicas`` times too large.
    """
    if n_replicas <= 1:
        return loss_fn

    def loss(y_true: Any, y_pred: Any) -> Any:
        return loss_fn(y_true, y_pred) / float(n_replicas)

    loss.__name__ = getattr(loss_fn, "name", "loss")
    return loss


def scope(strategy: Any) -> contextlib.AbstractContextManager:
    """``strategy.scope()``, or a context that does nothing without a strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def jit_compile(backend: str) -> bool | str:
    """``jit_compile`` for ``model.compile``.

    TensorFlow: XLA off on CPU (slower there and a long first step), automatic on GPUs.  JAX: always
    on — without it Keras runs the train step op by op, which starves a GPU.  torch: off (eager;
    ``torch.compile`` would add minutes of compilation to short runs).
    """
    if backend == "tensorflow":
        import tensorflow as tf  # local: backend chosen at run time; not loaded under jax/torch

        return "auto" if tf.config.list_physical_devices("GPU") else False
    return backend == "jax"


def check_replicas(batch_size: int, n_replicas: int, strategy_name: str) -> None:
    """Raise unless the global batch splits evenly across the replicas of the strategy."""
    if batch_size % n_replicas:
        raise LesionsegError(
            f"config train.batch_size={batch_size} is the global batch and must be divisible by the "
            f"{n_replicas} replicas of train.strategy={strategy_name!r}"
        )
