"""Training throughput on CPU: the whole pipeline next to the raw model.

Three figures, in patches per second, for the model, loss and patch size of
one config (default: the README demo, pipelines/samples.toml on data_samples/):

* ``sampler``: lesion-aware patch extraction + augmentation alone
  (``PatchSequence[i]``), no network;
* ``raw step``: ``model.fit`` on random arrays already in memory, no
  metrics, no callbacks (the cost of the network itself), then the same with
  the training and diagnostic metrics compiled in;
* ``pipeline``: ``model.fit`` on the ``PatchSequence`` with the training
  metrics, the diagnostics callback and the progress bar, i.e. what
  ``lesionseg train`` does between two validations.

The pipeline's overhead is ``raw / pipeline - 1``.  Whole-volume validation
is timed separately (once per epoch, not per patch).

``--precisions float32,bfloat16 [--monai]`` measures instead the raw train step
of the config's network in each ``train.precision`` and, with ``--monai``, the
same network in torch trained by MONAI's ``SupervisedTrainer`` (float32, and
under CPU bfloat16 autocast: MONAI's own ``amp`` switch autocasts CUDA only),
all interleaved in one process with the same threads, data, loss and batch.

    .venv/bin/python bench/bench_train.py [--config C] [--data DATA] [--steps N]
    .venv/bin/python bench/bench_train.py --config pipelines/ms_recipe_dice.toml \
        --precisions float32,bfloat16 --monai
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "pipelines" / "samples.toml")
    parser.add_argument("--data", type=Path, default=REPO / "data_samples")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--precisions", help="comma-separated train.precision values: compare raw steps only")
    parser.add_argument("--monai", action="store_true", help="with --precisions: also MONAI's SupervisedTrainer")
    args = parser.parse_args()

    from lesionseg.config import load_config
    from lesionseg.runtime import configure_backend

    config = load_config(args.config, args.overrides)
    backend = configure_backend(config.train.threads, config.train.seed)
    logging.basicConfig(level=logging.WARNING)

    import keras
    import numpy as np

    from lesionseg.data import io
    from lesionseg.sampling.feed import PatchSequence, load_cases
    from lesionseg.training.diagnostics import TrainingMonitor
    from lesionseg.training.monitor import DiagnosticsCallback, diagnostic_metrics
    from lesionseg.model.losses import get_loss
    from lesionseg.model.metrics import make_metrics
    from lesionseg.model.unet import build_unet, count_parameters
    from lesionseg.training.distribution import jit_compile
    from lesionseg.training.progress import progress_callback
    from lesionseg.training.validation import validate

    if args.precisions:
        return compare_precisions(config, backend, args)

    cfg = config.train
    head = config.model.head
    size = tuple(config.patches.size)
    n_ch = len(config.data.channels)
    case_dirs = io.list_cases(args.data)
    cases = load_cases(config, case_dirs)
    steps = args.steps + args.warmup
    seq = PatchSequence(cases, config.patches, config.augment, cfg.batch_size, steps, cfg.seed, augment=True)

    def new_model(metrics: list) -> keras.Model:
        keras.utils.set_random_seed(cfg.seed)
        model = build_unet(config.model, n_ch, size)
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.learning_rate),
            loss=get_loss(config.loss.name, head, **dict(config.loss.params)),
            metrics=metrics,
            jit_compile=jit_compile(backend),
        )
        return model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * cfg.batch_size, *size, n_ch)).astype(np.float32)
    y = (rng.random((steps * cfg.batch_size, *size, 1)) < 0.02).astype(np.float32)
    plain = new_model([])
    with_metrics = new_model(make_metrics(head) + diagnostic_metrics(head))
    piped = new_model(make_metrics(head) + diagnostic_metrics(head))
    loss_fn = get_loss(config.loss.name, head, **dict(config.loss.params))

    def time_sampler() -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            seq[i]
        return steps * cfg.batch_size / (time.perf_counter() - t0)

    def time_raw(model: keras.Model) -> float:
        return timed_fit(model, x, y, cfg.batch_size, args.warmup, args.steps)

    def time_pipeline(epoch: int) -> float:
        timer = step_timer(args.warmup)
        diag = DiagnosticsCallback(TrainingMonitor(head=head), probe=seq[0], loss_fn=loss_fn)
        seq.set_epoch(epoch)
        piped.fit(seq, epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=[progress_callback(1, steps), diag, timer])
        return args.steps * cfg.batch_size / timer.seconds

    # rounds interleave the measurements so a busy machine slows them alike; medians are reported
    rounds: dict[str, list[float]] = {"sampler": [], "raw": [], "raw_metrics": [], "pipeline": []}
    for r in range(args.rounds):
        rounds["sampler"].append(time_sampler())
        rounds["raw"].append(time_raw(plain))
        rounds["raw_metrics"].append(time_raw(with_metrics))
        rounds["pipeline"].append(time_pipeline(r))
    sampler, raw, raw_metrics, pipeline = (float(np.median(rounds[k])) for k in rounds)
    model = piped

    # whole-volume validation of two cases
    val = validate(model, cases[:2], config)

    print(f"backend {backend}, {os.cpu_count()} CPU(s), train.threads={cfg.threads}")
    print(
        f"model {model.name}: {count_parameters(model):,} parameters, loss {config.loss.name}, "
        f"batch {cfg.batch_size} x {'x'.join(map(str, size))} x {n_ch} channels"
    )
    print(f"{'measurement (median of %d rounds)' % args.rounds:<44}{'patches/s':>10}")
    print(f"{'sampler (extract + augment, no network)':<44}{sampler:>10.1f}")
    print(f"{'raw train step (fit on random arrays)':<44}{raw:>10.2f}")
    print(f"{'raw train step + training/diagnostic metrics':<44}{raw_metrics:>10.2f}")
    print(f"{'training pipeline (fit on PatchSequence)':<44}{pipeline:>10.2f}")
    print(f"pipeline overhead vs raw step: {100 * (raw / pipeline - 1):+.1f} % (metrics alone: {100 * (raw / raw_metrics - 1):+.1f} %)")
    shape = cases[0].image.shape[:3]
    print(f"whole-volume validation: {val.seconds / 2:.2f} s per {'x'.join(map(str, shape))} case")
    return 0


def step_timer(warmup: int):
    """A Keras callback timing an epoch from the end of its ``warmup``-th batch (``.seconds``)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == warmup:
                self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    return StepTimer()


def timed_fit(model, x, y, batch_size: int, warmup: int, steps: int) -> float:
    """Patches per second of ``model.fit`` on in-memory arrays, the first ``warmup`` batches untimed."""
    timer = step_timer(warmup)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return steps * batch_size / timer.seconds


def compare_precisions(config, backend: str, args: argparse.Namespace) -> int:
    """Raw train steps per ``train.precision`` (and MONAI's trainer): interleaved rounds, medians."""
    import keras
    import numpy as np

    from lesionseg.config import PRECISIONS
    from lesionseg.model.losses import get_loss
    from lesionseg.model.unet import build_unet, level_filters, precision_policy
    from lesionseg.training.distribution import jit_compile

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        print(f"--precisions: unknown {', '.join(unknown)} (one of {', '.join(PRECISIONS)})", file=sys.stderr)
        return 1
    cfg, head = config.train, config.model.head
    size, n_ch = tuple(config.patches.size), len(config.data.channels)
    steps = args.steps + args.warmup
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * cfg.batch_size, *size, n_ch)).astype(np.float32)
    y = (rng.random((steps * cfg.batch_size, *size, 1)) < 0.02).astype(np.float32)

    def lesionseg_step(precision: str):
        keras.utils.set_random_seed(cfg.seed)
        with precision_policy(precision):
            model = build_unet(config.model, n_ch, size)
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                      loss=get_loss(config.loss.name, head, **dict(config.loss.params)),
                      jit_compile=jit_compile(backend))
        return lambda: timed_fit(model, x, y, cfg.batch_size, args.warmup, args.steps)

    runners = {f"lesionseg ({backend}), train.precision={p}": lesionseg_step(p) for p in precisions}
    if args.monai:
        if config.model.depth != 2 or head != "sigmoid":
            print("--monai: the torch twin is the depth-2 sigmoid U-Net only", file=sys.stderr)
            return 1
        runners.update(monai_trainers(x, y, cfg, tuple(level_filters(config.model)), n_ch, args, precisions))
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            rounds[name].append(run())
    print(f"{os.cpu_count()} CPU(s), train.threads={cfg.threads}; network depth {config.model.depth}, "
          f"filters {'/'.join(map(str, level_filters(config.model)))}, loss {config.loss.name}, "
          f"batch {cfg.batch_size} x {'x'.join(map(str, size))} x {n_ch} channels; {args.steps} timed steps")
    print(f"{'raw train step (median of %d rounds)' % args.rounds:<64}{'patches/s':>10}")
    for name, values in rounds.items():
        print(f"{name:<64}{float(np.median(values)):>10.2f}")
    return 0


def monai_trainers(x, y, cfg, filters: tuple[int, ...], n_ch: int, args: argparse.Namespace,
                   precisions: list[str]) -> dict:
    """MONAI ``SupervisedTrainer`` runs on the torch twin of the network (``bench_inference.torch_unet``)."""
    import monai
    import torch
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceLoss
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(REPO / "bench"))
    from bench_inference import torch_unet

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    labels = torch.from_numpy(np.ascontiguousarray(np.moveaxis(y, -1, 1)))
    loader = DataLoader(TensorDataset(images, labels), batch_size=cfg.batch_size, shuffle=False)

    class Autocast(torch.nn.Module):
        """CPU bfloat16 autocast around the network; float32 logits out."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, batch):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.net(batch).float()

    def trainer(precision: str):
        torch.manual_seed(cfg.seed)
        net = torch_unet(n_ch, filters)
        net = Autocast(net) if precision == "bfloat16" else net
        engine = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=net,
            optimizer=torch.optim.Adam(net.parameters(), cfg.learning_rate), loss_function=DiceLoss(sigmoid=True),
            prepare_batch=lambda batch, device, non_blocking, **kw: (batch[0], batch[1]),
        )
        marks: dict[str, float] = {}

        @engine.on(Events.ITERATION_COMPLETED)
        def _mark(e):
            if e.state.iteration == args.warmup:
                marks["t0"] = time.perf_counter()

        def run() -> float:
            engine.run()  # a finished engine starts again from iteration 0
            return args.steps * cfg.batch_size / (time.perf_counter() - marks["t0"])

        return run

    return {f"MONAI {monai.__version__} SupervisedTrainer (torch {torch.__version__.split('+')[0]}), {p}": trainer(p)
            for p in precisions}


if __name__ == "__main__":
    raise SystemExit(main())
