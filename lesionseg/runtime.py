"""Backend set-up shared by every stage that runs a model.

Keras 3 runs on TensorFlow by default and on JAX or PyTorch when
``KERAS_BACKEND`` says so.  On CPU with TensorFlow, 2 intra-op threads and 1
inter-op thread are fastest on a 2-core machine (oneDNN stays on, XLA off).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)
_configured = False

#: Lines TensorFlow's native code writes to stderr while it starts on a machine without a GPU (or
#: with one), before any Python logging: written before absl's log is set up, so
#: TF_CPP_MIN_LOG_LEVEL does not hold them back.  Harmless, and alarming ("E0000 ... CUDA error").
BACKEND_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cuda_platform\.cc|failed call to cuInit"
    r"|cuda_(dnn|fft|blas)\.cc|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc"
    r"|oneDNN custom operations are on|TF-TRT Warning|This TensorFlow binary is optimized"
    r"|rebuild TensorFlow with the appropriate compiler flags|cpu_feature_guard\.cc"
)


def backend_noise(line: str) -> bool:
    """Whether a native stderr line is TensorFlow's start-up chatter (:data:`BACKEND_NOISE`).

    Examples
    --------
    >>> backend_noise("E0000 00:00:1 123 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error")
    True
    >>> backend_noise("Fatal Python error: Segmentation fault")
    False
    """
    return bool(BACKEND_NOISE.search(line))


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hold back the backend's native start-up lines; pass every other stderr line through.

    File descriptor 2 is pointed at a temporary file for the block (native code
    writes there directly, past ``sys.stderr``); on exit, also when the block
    raises, the lines that are not :func:`backend_noise` are written to the
    real stderr, in order.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not backend_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


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
    with quiet_native_stderr():
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow" and not _configured:
            _start_tensorflow(threads)
    if not _configured and threads > 0:
        if backend == "torch":
            import torch  # local: optional, only on the PyTorch backend

            torch.set_num_threads(threads)
        _configured = True
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    return backend


def _start_tensorflow(threads: int) -> None:
    """Thread counts (``threads`` > 0), then the device scan that prints CUDA chatter on a CPU machine."""
    import tensorflow as tf  # local: backend chosen at run time; not loaded under jax/torch

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised: keep what is set
            log.debug("TensorFlow threads already initialised")
    tf.config.list_physical_devices()


def cpu_computes_bfloat16(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX), ``None`` when unknown.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "cpuinfo"
    >>> _ = f.write_text("flags\\t\\t: fpu avx2 fma\\n")
    >>> cpu_computes_bfloat16(f)
    False
    >>> _ = f.write_text("flags\\t\\t: fpu avx512f avx512_bf16\\n")
    >>> cpu_computes_bfloat16(f)
    True
    """
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return None
    return None


def accelerator_present(backend: str) -> bool:
    """Whether the Keras backend sees a GPU (or another non-CPU device)."""
    try:
        if backend == "tensorflow":
            import tensorflow as tf  # local: the backend in use

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "torch":
            import torch  # local: the backend in use

            return bool(torch.cuda.is_available())
        if backend == "jax":
            import jax  # local: the backend in use

            return jax.default_backend() != "cpu"
    except Exception:  # noqa: BLE001  (a broken device query must not stop the run)
        return False
    return False


def warn_if_bfloat16_is_emulated(setting: str, precision: str) -> bool:
    """Log a warning when ``setting`` asks for bfloat16 where neither a GPU nor the CPU computes it.

    Without AVX-512 BF16 or AMX the backends emulate bfloat16: measured on an
    AVX2-only CPU (README, *Performance*), a training step was 5× (TensorFlow)
    to 40× (PyTorch) slower than in float32, and inference 7× slower.

    Returns
    -------
    bool
        Whether the warning was logged.
    """
    if precision != "bfloat16":
        return False
    import keras  # local: called after configure_backend

    backend = keras.backend.backend()
    if accelerator_present(backend) or cpu_computes_bfloat16() is not False:
        return False
    log.warning(
        "%s=bfloat16 on a CPU without AVX-512 BF16 or AMX and no GPU: %s emulates bfloat16 here, several "
        "times slower than float32 (README, Performance); --set %s=float32 is faster on this machine",
        setting, backend, setting,
    )
    return True
