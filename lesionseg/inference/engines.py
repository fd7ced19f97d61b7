"""Where ``lesionseg infer`` runs its exams: the local process pool, a Dask cluster, or Ray.

``--engine local`` (default) predicts in this process or a local process pool (``infer.workers``).
``--engine dask`` submits one task per exam to a ``dask.distributed`` cluster: ``--address`` joins a
running scheduler (e.g. one started by dask-jobqueue on Slurm), without it a local cluster of
``infer.workers`` single-threaded worker processes is started.  Each worker loads the model once
(on its first exam) and keeps it; results come back with ``as_completed`` as exams finish, so
``cohort.csv`` and ``failures.csv`` are written by the client exactly as with the local engine, and
outputs are identical (each exam is predicted by the same code on the same inputs).
``--engine ray`` does the same with Ray: ``infer.workers`` actors (one CPU each) each holding the
model, exams dealt out as actors become free; ``--address`` joins a running Ray cluster (``auto``,
or ``ray://head:10001``), without it a local Ray instance is started.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lesionseg.config import Config
from lesionseg.errors import LesionsegError
from lesionseg.provenance import Source

log = logging.getLogger(__name__)

ENGINES = ("local", "dask", "ray")

# the worker's cache: one predictor per (run, config) for the life of the worker process
_CACHE: dict[tuple[str, int], Any] = {}


def _dask_predict(run_dir: Path, config: Config, case_dir: Path, out_dir: Path, source: Source,
                  threads: int) -> tuple[Path, dict[str, object] | None]:
    """A Dask task: predict one exam with the worker's cached model."""
    from lesionseg.inference.infer import predict_case
    from lesionseg.inference.postprocess import read_tuning
    from lesionseg.inference.predictor import Predictor
    from lesionseg.runtime import configure_backend

    key = (str(run_dir), hash(repr(config)))
    if key not in _CACHE:
        configure_backend(threads)
        _CACHE[key] = (Predictor.from_run(run_dir, config), read_tuning(run_dir))
    predictor, tuned = _CACHE[key]
    return predict_case(predictor, case_dir, out_dir, tuned, show_progress=False, source=source)


def predict_with_dask(
    run_dir: Path,
    config: Config,
    case_dirs: Sequence[Path],
    out_dir: Path,
    source: Source,
    on_result: Callable[[Path, tuple[Path, dict[str, object] | None] | BaseException], None],
    address: str | None = None,
) -> None:
    """Predict every exam on a Dask cluster; ``on_result(case_dir, result or exception)`` as each finishes."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise LesionsegError("--engine dask needs dask.distributed (pip install -e '.[cluster]')") from None
    workers = max(1, min(int(config.infer.workers), len(case_dirs)))
    cluster = None
    if address:
        client = Client(address)
        log.info("dask: joined the scheduler at %s (%d worker(s))", address, len(client.scheduler_info()["workers"]))
    else:
        import dask

        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers; any value turns off glibc's dynamic
        # mmap threshold, so every large array of the sliding window becomes a fresh mmap + page faults
        # (measured: 37.8 s against 27.8 s per exam of the local pool, bench/bench_cohort.py)
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
        log.info("dask: local cluster of %d worker process(es)", workers)
    threads = max(1, (os.cpu_count() or 1) // workers) if not address else 0
    try:
        futures = {client.submit(_dask_predict, run_dir, config, case_dir, out_dir, source, threads, pure=False,
                                 key=f"lesionseg-{case_dir.name}-{os.urandom(3).hex()}"): case_dir
                   for case_dir in case_dirs}
        for future in as_completed(futures):
            try:
                result: Any = future.result()
            except Exception as exc:  # the exam's own error, handed to the caller, which decides
                result = exc
            on_result(futures[future], result)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _RayPredictor:
    """A Ray actor's state: the model, loaded once, and the run's tuned decision."""

    def __init__(self, run_dir: Path, config: Config, threads: int) -> None:
        from lesionseg.inference.postprocess import read_tuning
        from lesionseg.inference.predictor import Predictor
        from lesionseg.runtime import configure_backend

        configure_backend(threads)
        self.predictor = Predictor.from_run(run_dir, config)
        self.tuned = read_tuning(run_dir)

    def predict(self, case_dir: Path, out_dir: Path, source: Source) -> tuple[Path, dict[str, object] | None]:
        from lesionseg.inference.infer import predict_case

        return predict_case(self.predictor, case_dir, out_dir, self.tuned, show_progress=False, source=source)


def predict_with_ray(
    run_dir: Path,
    config: Config,
    case_dirs: Sequence[Path],
    out_dir: Path,
    source: Source,
    on_result: Callable[[Path, Any], None],
    address: str | None = None,
) -> None:
    """Predict every exam with Ray actors; ``on_result(case_dir, result or exception)`` as each finishes."""
    try:
        import ray
    except ImportError:
        raise LesionsegError("--engine ray needs ray (pip install -e '.[ray]')") from None
    workers = max(1, min(int(config.infer.workers), len(case_dirs)))
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    threads = 0 if address else max(1, (os.cpu_count() or 1) // workers)
    try:
        actor_cls = ray.remote(num_cpus=1)(_RayPredictor)
        actors = [actor_cls.remote(run_dir, config, threads) for _ in range(workers)]
        queue = list(case_dirs)
        running: dict[Any, tuple[Any, Path]] = {}
        for actor in actors:
            if queue:
                case_dir = queue.pop(0)
                running[actor.predict.remote(case_dir, out_dir, source)] = (actor, case_dir)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, case_dir = running.pop(ready[0])
            try:
                result: Any = ray.get(ready[0])
            except Exception as exc:  # RayTaskError wraps the exam's own error
                cause = getattr(exc, "cause", None)
                result = cause if isinstance(cause, BaseException) else exc
            if queue:
                nxt = queue.pop(0)
                running[actor.predict.remote(nxt, out_dir, source)] = (actor, nxt)
            on_result(case_dir, result)
    finally:
        if started:
            ray.shutdown()
