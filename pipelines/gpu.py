"""Train a recipe on a GPU machine in one command, then check the model on this CPU/TensorFlow.

A lent GPU machine (see README, *GPU, when one is lent*) has JAX and torch but neither TensorFlow,
Keras, nibabel, cc3d nor SimpleITK, cannot reach ``../shared`` or a package index, and takes a
working tree of at most 64 MiB.  So the run is prepared here, in three steps::

    python pipelines/gpu.py wheels                               # here, once: Keras, nibabel, cc3d ... -> .whl/
    python pipelines/gpu.py pack --config pipelines/ms_flair.toml --out .gpu      # here: compact cache
    # on the device machine, one command (KERAS_BACKEND=jax or torch; carry .gpu and .whl):
    #   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    #       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
    #   KERAS_BACKEND=jax python3 pipelines/gpu.py device --pack .gpu --out $OUT --set train.epochs=200
    python pipelines/gpu.py finish --pack .gpu --from FETCHED_DIR --to runs/gpu_ms_flair    # here, TensorFlow

The shipped FLAIR + T1 recipe: ``pack --config pipelines/ms_recipe_dice.toml``.  The loss study the same way
(a pack of its base recipe, ``pipelines/ms_recipe_tissue.toml``)::

    python pipelines/gpu.py pack --config pipelines/ms_recipe_tissue.toml --out .gpu
    #   KERAS_BACKEND=jax python3 pipelines/gpu.py device-study --out $OUT --parallel 8 --seconds 500
    python pipelines/gpu.py merge-study --from FETCHED_DIR      # new rows -> studies/loss_study/results.csv

``pack`` reads every exam of DATA, runs the recipe's preprocessing here (reorientation, resampling,
N4, brain extraction: SimpleITK stays on this machine) and writes the prepared volumes on their
working grid as int16 NIfTI with a scale factor (``<case>/<channel>.nii.gz``, ``lesion_mask``
uint8): relative quantisation below 2e-5 of each channel's range, far under the images' noise, and
a third of the float32 size.  Beside them ``recipe.yaml`` (the recipe with its preprocessing off,
since the cache is already on the working grid; donor masks for lesion transplantation copied in)
and ``pack.json`` (the recipe's own preprocessing, to be put back by ``finish``).

``device`` trains (``lesionseg train`` on the cache), then writes ``reference.npz``: eight
windows of the first exam (lesion centres first) with the probabilities the trained model gives
them on the device's backend at full float32 precision.  It copies ``model.keras``,
``config.yaml``, ``history.csv``, ``curves.png``, ``train.log`` and ``reference.npz`` to OUT.

``finish`` makes a run folder of those files, restores the recipe's preprocessing in its
``config.yaml`` (so ``lesionseg infer`` repeats it on new exams), then loads the model with this
machine's backend (TensorFlow by default) and predicts the reference windows: it fails when any
probability differs by more than ``--tolerance`` (default 1e-3) from the device's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lesionseg (the device machine has it only as source)
DATA = ROOT.parent / "shared" / "data" / "ms_lesions"
LESIONSEG = [sys.executable, "-m", "lesionseg"]
#: Wheels the device image lacks (Python 3.12, manylinux x86-64); the rest of lesionseg's needs are there.
WHEELS = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0", "nibabel==5.4.2", "connected-components-3d==4.1.1")
#: What the device run brings back (at most 8 files, each under 16 MiB).
RESULT_FILES = ("model.keras", "config.yaml", "history.csv", "curves.png", "train.log", "reference.npz")
TREE_LIMIT_MIB = 64
#: Windows in reference.npz.
N_REFERENCE = 8


def quantise(channel, dtype_max: int = 32767):
    """``(int16 array, slope)`` with ``array * slope`` within ``slope / 2`` of ``channel``; exact for integers."""
    import numpy as np

    channel = np.asarray(channel, np.float32)
    peak = float(np.abs(channel).max()) if channel.size else 0.0
    if peak <= dtype_max and np.array_equal(channel, np.round(channel)):
        return channel.astype(np.int16), 1.0
    slope = peak / dtype_max if peak > 0 else 1.0
    return np.round(channel / slope).astype(np.int16), slope


def write_scaled(path: Path, channel, affine) -> None:
    """Write one channel as int16 NIfTI with its scale factor (nibabel applies it on reading)."""
    import nibabel as nib

    data, slope = quantise(channel)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype("int16")
    img.header.set_slope_inter(slope, 0.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def tree_mib(*extra: Path) -> float:
    """MiB of what a device call sends: git's tracked and untracked-not-ignored files plus ``extra`` folders."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    total = sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())
    for folder in extra:
        total += sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return total / 2**20


def cmd_wheels(args: argparse.Namespace) -> None:
    """Download the wheels the device image lacks into ``.whl/`` (needs a package index here)."""
    out = ROOT / ".whl"
    out.mkdir(exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                                             "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version=3.12",
           "--implementation=cp", *platforms, "-d", str(out), *WHEELS]
    subprocess.run(cmd, check=True)
    print(f"{out}: {sum(p.stat().st_size for p in out.glob('*.whl')) / 2**20:.1f} MiB of wheels")


def cmd_pack(args: argparse.Namespace) -> None:
    """Preprocess DATA with the recipe and write the compact cache ``OUT`` (see the module docstring)."""
    import nibabel as nib
    import numpy as np

    from lesionseg.config import load_config
    from lesionseg.config.loading import config_from_dict, config_to_dict, save_config
    from lesionseg.data.io import list_cases, read_case
    from lesionseg.data.preprocess import prepare

    config = load_config(args.config, args.set)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    data = config.data
    cases = list_cases(Path(args.data))
    for i, case_dir in enumerate(cases, 1):
        t0 = time.time()
        case = read_case(case_dir, data.channels, mask_name=data.mask, mask_values=data.mask_values,
                         affine_tolerance=data.affine_tolerance)
        prepared = prepare(case.image, case.mask, case.grid, config.preprocess)
        for c, name in enumerate(data.channels):
            write_scaled(out / "data" / case.case_id / f"{name}.nii.gz", prepared.image[..., c], prepared.grid.affine)
        mask = nib.Nifti1Image(np.asarray(prepared.mask, np.uint8), prepared.grid.affine)
        nib.save(mask, str(out / "data" / case.case_id / f"{data.mask}.nii.gz"))
        print(f"  {i}/{len(cases)} {case.case_id}: {prepared.grid.shape} prepared in {time.time() - t0:.0f} s",
              flush=True)
    raw = config_to_dict(config)
    restore = {"preprocess": dict(raw["preprocess"]), "augment": {"transplant_masks": raw["augment"]["transplant_masks"]}}
    raw["preprocess"] = {**raw["preprocess"], "reorient": False, "spacing": None, "bias_correction": False,
                         "brain_extraction": False}
    if config.augment.transplant_probability > 0:
        donors = out / "donor_masks"
        shutil.copytree(Path(config.augment.transplant_masks), donors)
        where = donors.resolve()
        raw["augment"] = {**raw["augment"],
                          "transplant_masks": str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where)}
    save_config(config_from_dict(raw), out / "recipe.yaml")
    (out / "pack.json").write_text(json.dumps({"recipe": str(args.config), "sets": list(args.set),
                                               "cases": [c.name for c in cases], "restore": restore}, indent=1) + "\n")
    wheels = ROOT / ".whl"
    size = tree_mib(out, *([wheels] if wheels.is_dir() else []))
    print(f"{out}: {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 2**20:.1f} MiB; a device call "
          f"would send {size:.1f} MiB (limit {TREE_LIMIT_MIB})")
    if size > TREE_LIMIT_MIB:
        sys.exit(f"{out}: the device call would send {size:.1f} MiB, over its {TREE_LIMIT_MIB} MiB limit")


def reference_windows(run_dir: Path, data_dir: Path, n: int = N_REFERENCE):
    """``n`` windows of the first cache exam (lesion centres first, then the brain's centre), normalised."""
    import numpy as np

    from lesionseg.config import load_config
    from lesionseg.data.io import list_cases
    from lesionseg.sampling.feed import prepare_case

    config = load_config(run_dir / "config.yaml", ["preprocess.reorient=false", "preprocess.bias_correction=false",
                                                   "preprocess.brain_extraction=false"])
    case = prepare_case(config, list_cases(data_dir)[0])
    size = np.array(config.patches.size)
    shape = np.array(case.image.shape[:3])
    lesion_voxels = np.argwhere(case.mask > 0)
    rng = np.random.default_rng(0)
    picks = lesion_voxels[rng.choice(len(lesion_voxels), size=min(n // 2, len(lesion_voxels)), replace=False)] \
        if len(lesion_voxels) else np.zeros((0, 3), int)
    centres = [*picks, *([shape // 2] * (n - len(picks)))]
    centres[-1] = shape // 2 + size // 3  # not the same window twice
    windows = []
    for c in centres:
        lo = np.clip(np.asarray(c) - size // 2, 0, shape - size)
        windows.append(case.image[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]])
    return config, np.stack(windows).astype(np.float32)


def predict_windows(run_dir: Path, config, windows):
    """Lesion probabilities of ``windows`` by ``run_dir``'s model on this process's Keras backend."""
    from lesionseg.inference.predictor import load_run_model, make_predict_fn

    model = load_run_model(run_dir)
    return make_predict_fn(model, config.model.head)(windows)


def cmd_device(args: argparse.Namespace) -> None:
    """On the device machine: train on the cache, write the reference windows, copy the results to OUT."""
    import numpy as np

    pack, out, run_dir = Path(args.pack).resolve(), Path(args.out).resolve(), Path(args.run).resolve()
    out.mkdir(parents=True, exist_ok=True)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"device: backend {backend}, training {pack / 'data'} -> {run_dir}", flush=True)
    t0 = time.time()
    sets = [f"--set={s}" for s in args.set]
    cmd = [*LESIONSEG, "train", "--config", str(pack / "recipe.yaml"), "--data", str(pack / "data"), "--out",
           str(run_dir), "--overwrite", *sets]
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        for name in ("train.log", "history.csv"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, out / name)
        sys.exit(f"training failed ({proc.returncode}) after {time.time() - t0:.0f} s")
    print(f"device: trained in {time.time() - t0:.0f} s", flush=True)
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")  # the reference at full float32
    if backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    config, windows = reference_windows(run_dir, pack / "data")
    prob = predict_windows(run_dir, config, windows)
    np.savez_compressed(out / "reference.npz", windows=windows, prob=prob, backend=backend)
    for name in RESULT_FILES[:-1]:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    print(f"device: done in {time.time() - t0:.0f} s; {', '.join(sorted(p.name for p in out.iterdir()))} in {out}")


def cmd_device_study(args: argparse.Namespace) -> None:
    """On the device machine: run unfinished cells of a study on the cache; its ``results.csv`` to OUT.

    The study's finished rows travel in ``STUDY_DIR/results.csv`` (committed), so only the cells
    missing there run; the pack must be made with the study's base recipe (no preprocessing).
    """
    study, pack, out = Path(args.study).resolve(), Path(args.pack).resolve(), Path(args.out).resolve()
    recipe = json.loads((pack / "pack.json").read_text())
    if any(v not in (False, None) for k, v in recipe["restore"]["preprocess"].items()):
        sys.exit(f"{pack}: packed with preprocessing on; a study needs a pack of its base recipe without any")
    work = Path(args.run).resolve()
    work.mkdir(parents=True, exist_ok=True)
    done = study.parent / "results.csv"
    if done.is_file():
        shutil.copy2(done, work / "results.csv")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*LESIONSEG, "study", "--config", str(study), "--data", str(pack / "data"), "--out", str(work),
           "--parallel", str(args.parallel)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=args.seconds)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "stopped at --seconds"
    if (work / "results.csv").is_file():
        shutil.copy2(work / "results.csv", out / "results.csv")
    print(f"device: study ended ({code}) after {time.time() - t0:.0f} s; results.csv in {out}")


def cmd_merge_study(args: argparse.Namespace) -> None:
    """Here: append the device's new study rows (cell, variant not yet present) to the local ``results.csv``."""
    import csv

    source, into = Path(args.source) / "results.csv", Path(args.into)
    with open(source, newline="") as fh:
        new = list(csv.DictReader(fh))
    have: set[tuple[str, str]] = set()
    columns = list(new[0]) if new else []
    if into.is_file():
        with open(into, newline="") as fh:
            reader = csv.DictReader(fh)
            if columns and reader.fieldnames != columns:
                sys.exit(f"{into}: columns differ from {source}'s; not merged")
            have = {(r["cell"], r["variant"]) for r in reader}
    rows = [r for r in new if (r["cell"], r["variant"]) not in have]
    with open(into, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        if not have:
            writer.writeheader()
        writer.writerows(rows)
    print(f"{into}: {len(rows)} new row(s) from {source} ({len(new) - len(rows)} already there)")


def cmd_finish(args: argparse.Namespace) -> None:
    """Here: a run folder from the fetched files, the recipe's preprocessing restored, TensorFlow checked."""
    import numpy as np
    import yaml

    from lesionseg.config import load_config
    from lesionseg.config.loading import save_config

    pack, source, run_dir = Path(args.pack), Path(args.source), Path(args.to)
    missing = [n for n in RESULT_FILES if n not in ("curves.png", "train.log") and not (source / n).is_file()]
    if missing:
        sys.exit(f"{source}: missing {', '.join(missing)} (did the device run finish?)")
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, run_dir / name)
    restore = json.loads((pack / "pack.json").read_text())["restore"]
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    for section, values in restore.items():
        raw[section] = {**raw.get(section, {}), **values}
    tmp = run_dir / "config.restored.yaml"
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    save_config(load_config(tmp), run_dir / "config.yaml")
    tmp.unlink()
    reference = np.load(run_dir / "reference.npz")
    config = load_config(run_dir / "config.yaml")
    prob = predict_windows(run_dir, config, reference["windows"])
    diff = float(np.abs(prob - reference["prob"]).max())
    flips = int(((prob >= 0.5) != (reference["prob"] >= 0.5)).sum())
    import keras

    print(f"{run_dir}: {keras.backend.backend()} here against {reference['backend']} on the device: "
          f"max |Δ probability| {diff:.2e} over {prob.size:,} voxels, {flips} decision(s) at 0.5 differ")
    if diff > args.tolerance:
        sys.exit(f"{run_dir}: predictions differ by {diff:.2e} (> {args.tolerance}); do not use this model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheels", help="download the wheels the device image lacks into .whl/")
    w.set_defaults(func=cmd_wheels)
    p = sub.add_parser("pack", help="preprocess the exams with a recipe into a compact cache")
    p.add_argument("--config", required=True, help="the recipe (a lesionseg .toml)")
    p.add_argument("--data", default=str(DATA), help="labelled exams (default ../shared/data/ms_lesions)")
    p.add_argument("--out", default=str(ROOT / ".gpu"), help="the cache folder (git-ignored .gpu)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_pack)
    d = sub.add_parser("device", help="on the device machine: train on the cache, write the reference, copy to OUT")
    d.add_argument("--pack", default=str(ROOT / ".gpu"))
    d.add_argument("--out", required=True, help="where the results go ($OUT on the device machine)")
    d.add_argument("--run", default="/tmp/lesionseg_gpu_run", help="the run folder during training")
    d.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="training overrides, e.g. train.epochs=200 (the budget a GPU affords)")
    d.set_defaults(func=cmd_device)
    s = sub.add_parser("device-study", help="on the device machine: the unfinished cells of a study")
    s.add_argument("--study", default=str(ROOT / "studies" / "loss_study" / "study.toml"))
    s.add_argument("--pack", default=str(ROOT / ".gpu"))
    s.add_argument("--out", required=True, help="where results.csv goes ($OUT on the device machine)")
    s.add_argument("--run", default="/tmp/lesionseg_gpu_study", help="the study folder during the run")
    s.add_argument("--parallel", type=int, default=8, help="cells side by side (they share the GPU)")
    s.add_argument("--limit", type=int, default=0, help="run at most this many cells (0: all)")
    s.add_argument("--seconds", type=float, default=500, help="stop the study after this long (rows so far kept)")
    s.set_defaults(func=cmd_device_study)
    m = sub.add_parser("merge-study", help="here: add the device's new study rows to results.csv")
    m.add_argument("--from", dest="source", required=True, help="the fetched folder with results.csv")
    m.add_argument("--into", default=str(ROOT / "studies" / "loss_study" / "results.csv"))
    m.set_defaults(func=cmd_merge_study)
    f = sub.add_parser("finish", help="here: make a run folder of the fetched files and check it on TensorFlow")
    f.add_argument("--pack", default=str(ROOT / ".gpu"))
    f.add_argument("--from", dest="source", required=True, help="the fetched files (the device tool's files_at)")
    f.add_argument("--to", required=True, help="the run folder to make")
    f.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed probability difference")
    f.set_defaults(func=cmd_finish)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
