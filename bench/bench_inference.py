"""Benchmark: whole-volume sliding-window inference, lesionseg vs MONAI.

One 182×218×182 two-channel volume (the size of the shared MNI exams), the
reference U-Net (depth 2, filters 16/32/64, batch norm, 48³ windows),
overlap 0.5, Gaussian blending, 8 windows per batch.

- lesionseg: :meth:`lesionseg.inference.predictor.Predictor.probability` (Keras,
  ``predict_on_batch``) — windows/s, total seconds, stitching overhead
  (everything outside the model call, as a % of model time) and peak RSS.
- MONAI (when ``torch`` and ``monai`` are installed, the ``bench`` extra):
  ``monai.inferers.sliding_window_inference`` with a torch U-Net of the same
  layer structure and parameter count (hence FLOPs), Gaussian mode with
  σ = 0.125 · patch, same batch size and thread count.

Each side runs in its own process so that peak RSS is its own.  Targets:
≥ 2.5× MONAI's throughput, overhead < 2 % of model time, peak RSS < 2 GiB.

Run: ``.venv/bin/python bench/bench_inference.py`` (a few minutes on 2 cores;
``--shape 64 64 64`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_SPEEDUP = 2.5
TARGET_OVERHEAD_PCT = 2.0
TARGET_RSS_GIB = 2.0


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_volume(shape, channels, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((*shape, channels), dtype=np.float32)


# ---------------------------------------------------------------- lesionseg (Keras)


def run_lesionseg(args) -> dict:
    import numpy as np

    from lesionseg.config import Config, InferConfig, ModelConfig, PatchConfig
    from lesionseg.inference.sliding_window import window_corners
    from lesionseg.runtime import configure_backend

    backend = configure_backend(args.threads, seed=0)
    from lesionseg.model.unet import build_unet

    cfg = ModelConfig(depth=2, base_filters=16, growth=2.0, head="sigmoid", norm="batch")
    from lesionseg.model.unet import inference_model

    trained = build_unet(cfg, args.channels, tuple(args.patch))
    model = inference_model(trained, cfg, args.precision)  # what `lesionseg infer` predicts with
    image = make_volume(args.shape, args.channels)
    rss_before = peak_rss_mib()

    model_time = [0.0]
    n_windows = [0]
    predict_on_batch = model.predict_on_batch

    class Timed:  # what predict.make_predict_fn calls, with the model call timed
        inputs, outputs = model.inputs, model.outputs

        @staticmethod
        def predict_on_batch(batch):
            t0 = time.perf_counter()
            out = np.asarray(predict_on_batch(batch))
            model_time[0] += time.perf_counter() - t0
            n_windows[0] += len(batch)
            return out

    # warm-up: trace both batch shapes (full and the last partial one) outside the timing
    total = len(window_corners([max(s, p) for s, p in zip(args.shape, args.patch)], args.patch, args.overlap))
    for b in {args.batch, total % args.batch or args.batch}:
        predict_on_batch(np.zeros((b, *args.patch, args.channels), np.float32))

    from lesionseg.inference.predictor import Predictor

    infer = InferConfig(overlap=args.overlap, blend="gaussian", batch_size=args.batch)
    config = Config(patches=PatchConfig(size=tuple(args.patch)), model=cfg, infer=infer)
    t0 = time.perf_counter()
    prob = Predictor.from_model(Timed, config).probability(image)
    total_s = time.perf_counter() - t0
    assert prob.shape == tuple(args.shape) and prob.dtype == np.float32
    return {
        "name": f"lesionseg (keras {backend}, {args.precision})",
        "windows": n_windows[0],
        "total_s": total_s,
        "model_s": model_time[0],
        "params": int(sum(np.prod(w.shape) for w in trained.trainable_weights)),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------- MONAI (torch)


def torch_unet(in_channels: int, filters=(16, 32, 64), out_channels: int = 1):
    """The reference U-Net in torch: same layers, shapes and parameter count as build_unet."""
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout, eps=1e-3),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout, eps=1e-3),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            f0, f1, f2 = filters
            self.enc0, self.enc1, self.bottleneck = block(in_channels, f0), block(f0, f1), block(f1, f2)
            self.pool = nn.MaxPool3d(2)
            self.up1, self.dec1 = nn.ConvTranspose3d(f2, f1, 2, stride=2), block(2 * f1, f1)
            self.up0, self.dec0 = nn.ConvTranspose3d(f1, f0, 2, stride=2), block(2 * f0, f0)
            self.head = nn.Conv3d(f0, out_channels, 1)

        def forward(self, x):
            s0 = self.enc0(x)
            s1 = self.enc1(self.pool(s0))
            x = self.bottleneck(self.pool(s1))
            x = self.dec1(torch.cat([self.up1(x), s1], 1))
            x = self.dec0(torch.cat([self.up0(x), s0], 1))
            return self.head(x)

    return UNet()


def run_monai(args) -> dict:
    import monai
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = torch_unet(args.channels).eval()
    image = make_volume(args.shape, args.channels)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))[None]  # (1, C, D, H, W)
    del image
    rss_before = peak_rss_mib()

    model_time = [0.0]
    n_windows = [0]

    def predictor(batch):
        t0 = time.perf_counter()
        out = torch.sigmoid(net(batch))
        model_time[0] += time.perf_counter() - t0
        n_windows[0] += batch.shape[0]
        return out

    with torch.inference_mode():
        net(torch.zeros(args.batch, args.channels, *args.patch))  # warm-up
        t0 = time.perf_counter()
        prob = sliding_window_inference(
            x,
            roi_size=tuple(args.patch),
            sw_batch_size=args.batch,
            predictor=predictor,
            overlap=args.overlap,
            mode="gaussian",
            sigma_scale=0.125,
            padding_mode="constant",
            progress=False,
        )
        total_s = time.perf_counter() - t0
    assert tuple(prob.shape) == (1, 1, *args.shape)
    return {
        "name": f"MONAI {monai.__version__} (torch {torch.__version__})",
        "windows": n_windows[0],
        "total_s": total_s,
        "model_s": model_time[0],
        "params": int(sum(p.numel() for p in net.parameters() if p.requires_grad)),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------- driver


def _child(side: str, args, precision: str = "float32") -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--only",
        side,
        "--shape",
        *map(str, args.shape),
        "--patch",
        *map(str, args.patch),
        "--channels",
        str(args.channels),
        "--overlap",
        str(args.overlap),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--precision",
        precision,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"{side}: failed ({tail})", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def _row(r: dict) -> str:
    overhead = 100.0 * (r["total_s"] - r["model_s"]) / r["model_s"]
    return (
        f"| {r['name']} | {r['windows']} | {r['params']:,} | {r['windows'] / r['total_s']:.2f} | "
        f"{r['total_s']:.1f} | {r['model_s']:.1f} | {overhead:.2f} % | {r['peak_rss_mib'] / 1024:.2f} |"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[182, 218, 182])
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48])
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--skip-monai", action="store_true", help="only lesionseg")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help="also run lesionseg with infer.precision=bfloat16")
    p.add_argument("--only", choices=["lesionseg", "monai"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.only:
        result = run_lesionseg(args) if args.only == "lesionseg" else run_monai(args)
        print(json.dumps(result))
        return 0

    print(
        f"volume {'×'.join(map(str, args.shape))}×{args.channels}, window {'×'.join(map(str, args.patch))}, "
        f"overlap {args.overlap}, batch {args.batch}, {args.threads} thread(s), "
        f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)"
    )
    results = [_child("lesionseg", args)]
    have_monai = False
    if not args.skip_monai:
        try:
            import monai  # noqa: F401
            import torch  # noqa: F401

            have_monai = True
        except ImportError:
            print("MONAI/torch not installed (pip install '.[bench]'): lesionseg only")
    if have_monai:
        results.append(_child("monai", args))
    if args.bf16:
        results.append(_child("lesionseg", args, "bfloat16"))
    print("| pipeline | windows | trainable params | windows/s | total s | model s | stitching overhead | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if r:
            print(_row(r))
    ours = results[0]
    ok = True
    if ours:
        overhead = 100.0 * (ours["total_s"] - ours["model_s"]) / ours["model_s"]
        rss = ours["peak_rss_mib"] / 1024
        print(f"overhead {overhead:.2f} % (target < {TARGET_OVERHEAD_PCT} %): {'ok' if overhead < TARGET_OVERHEAD_PCT else 'MISSED'}")
        print(f"peak RSS {rss:.2f} GiB (target < {TARGET_RSS_GIB} GiB): {'ok' if rss < TARGET_RSS_GIB else 'MISSED'}")
        ok = overhead < TARGET_OVERHEAD_PCT and rss < TARGET_RSS_GIB
        if have_monai and results[1]:
            speedup = (ours["windows"] / ours["total_s"]) / (results[1]["windows"] / results[1]["total_s"])
            print(f"throughput vs MONAI {speedup:.2f}× (target ≥ {TARGET_SPEEDUP}×): {'ok' if speedup >= TARGET_SPEEDUP else 'MISSED'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if ours else 1


if __name__ == "__main__":
    raise SystemExit(main())
