"""The patch bank: ``lesionseg patches --config C --data DATA --out P``.

Writes what training would see, to inspect or to reuse:

* ``P/index.csv``: one row per patch, in patch order: ``patch, case, i0, j0,
  k0, size_i, size_j, size_k, lesion_voxels, mode, lesion_id,
  lesion_volume_vox, file, row``.  ``(i0, j0, k0)`` is the patch's first
  corner in the voxel indices of the case's files as stored on disk; it is
  negative (or the patch reaches past the far border) when the patch hangs
  over the edge of the volume, where it is padded with zeros.
  ``lesion_voxels`` counts lesion voxels inside the patch; ``lesion_id`` is the
  targeted lesion's label (connected components in raster order of their
  first voxel, ``patches.connectivity``), 0 for foreground/random patches.
* ``P/patches/<case>.npz``: per case, ``image`` (n, d, h, w, C) float32
  (normalised, not augmented) and ``mask`` (n, d, h, w) uint8, rows in the
  order of that case's rows in ``index.csv`` (column ``row``).
* ``P/config.yaml``: the resolved configuration.

Patch ``n`` of the bank is patch ``n`` of epoch 0 of a
:class:`~lesionseg.sampling.feed.PatchSequence` built with
``seed = config.patches.seed`` and ``augment=False``.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesionseg.config import Config, save_config
from lesionseg.errors import LesionsegError
from lesionseg.data.io import list_cases
from lesionseg.data.writing import atomic_path
from lesionseg.sampling.feed import cut_patch, load_cases
from lesionseg.sampling.sampler import PatchSampler

log = logging.getLogger(__name__)

INDEX_COLUMNS = (
    "patch",
    "case",
    "i0",
    "j0",
    "k0",
    "size_i",
    "size_j",
    "size_k",
    "lesion_voxels",
    "mode",
    "lesion_id",
    "lesion_volume_vox",
    "file",
    "row",
)


@dataclass(frozen=True)
class BankEntry:
    """One row of ``index.csv`` (see the module docstring for the columns)."""

    patch: int
    case: str
    corner: tuple[int, int, int]
    size: tuple[int, int, int]
    lesion_voxels: int
    mode: str
    lesion_id: int
    lesion_volume_vox: int
    file: str
    row: int


def write_patch_bank(config: Config, data_dir: Path, out_dir: Path) -> Path:
    """Sample ``config.patches.n_patches`` patches and write them with their index.

    Parameters
    ----------
    config : Config
        ``[data]`` (reading, normalisation) and ``[patches]`` (size, modes,
        alpha, jitter, balance, connectivity, n_patches, seed).
    data_dir : Path
        Data folder (``DATA/<case>/<channel>.nii.gz`` + mask).
    out_dir : Path
        Output folder ``P``.

    Returns
    -------
    Path
        ``P/index.csv`` (written last, atomically, like every file here).
    """
    cfg = config.patches
    if cfg.n_patches < 1:
        raise LesionsegError(f"config patches.n_patches must be >= 1, got {cfg.n_patches}")
    if cfg.seed < 0:
        raise LesionsegError(f"config patches.seed must be >= 0, got {cfg.seed}")
    out_dir = Path(out_dir)
    check_bank_folder(out_dir)
    cases = load_cases(config, list_cases(data_dir))
    sampler = PatchSampler.from_config([c.lesions for c in cases], cfg, [c.case_id for c in cases])
    specs = sampler.specs(cfg.seed, 0, cfg.n_patches)

    by_case: dict[int, list[int]] = {}
    for n, spec in enumerate(specs):
        by_case.setdefault(spec.case, []).append(n)
    entries: list[BankEntry | None] = [None] * len(specs)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_bank(config, cases, specs, by_case, entries, staging)
        _move_bank_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index = out_dir / "index.csv"
    modes = {m: sum(e.mode == m for e in entries if e) for m in ("lesion", "foreground", "random")}
    log.info(
        "%d patch(es) of %s from %d case(s): %s",
        len(entries), "x".join(map(str, cfg.size)), len(cases),
        ", ".join(f"{k} {v}" for k, v in modes.items()),
    )
    return index


def check_bank_folder(out_dir: Path) -> None:
    """``--out`` must be new, empty of lesionseg files, or a patch bank: never a run folder."""
    from lesionseg.training.checkpoint import holds_run

    if out_dir.is_dir() and holds_run(out_dir):
        raise LesionsegError(f"{out_dir}: holds a trained run ({', '.join(holds_run(out_dir))}); a patch bank "
                             "would overwrite its config.yaml; choose another --out")
    if (out_dir / "config.yaml").is_file() and not (out_dir / "index.csv").is_file():
        raise LesionsegError(f"{out_dir}: holds a config.yaml that is not a patch bank's (no index.csv); "
                             "choose another --out")


def _move_bank_in(staging: Path, out_dir: Path) -> None:
    """Move a complete bank from ``staging`` into ``out_dir``: patches first, ``index.csv`` last.

    The earlier bank's patch files (those its ``index.csv`` names) that the new one does not write
    are removed; any other file in the folder is not ours and stays.
    """
    old = set()
    if (out_dir / "index.csv").is_file():
        with open(out_dir / "index.csv", newline="") as fh:
            old = {row.get("file", "") for row in csv.DictReader(fh)}
    (out_dir / "patches").mkdir(parents=True, exist_ok=True)
    new = set()
    for path in sorted((staging / "patches").glob("*.npz")):
        os.replace(path, out_dir / "patches" / path.name)
        new.add(f"patches/{path.name}")
    os.replace(staging / "config.yaml", out_dir / "config.yaml")
    os.replace(staging / "index.csv", out_dir / "index.csv")
    for name in old - new:
        if name.startswith("patches/") and name.endswith(".npz") and "/" not in name[len("patches/"):]:
            (out_dir / name).unlink(missing_ok=True)


def _write_bank(config: Config, cases: list, specs: list, by_case: dict[int, list[int]],
                entries: list[BankEntry | None], out_dir: Path) -> None:
    """Cut every patch and write ``patches/<case>.npz``, ``config.yaml`` and ``index.csv`` into ``out_dir``."""
    patch_dir = out_dir / "patches"
    with tqdm(total=len(specs), desc="patches", unit="patch", disable=None) as bar:
        for c, numbers in sorted(by_case.items()):
            case = cases[c]
            images, masks = [], []
            for row, n in enumerate(numbers):
                spec = specs[n]
                image, mask = cut_patch(case, spec)
                images.append(image)
                masks.append(mask)
                volume = int(case.lesions.volumes[spec.lesion - 1]) if spec.lesion else 0
                entries[n] = BankEntry(
                    n, case.case_id, spec.corner, spec.size, int(mask.sum()), spec.mode,
                    spec.lesion, volume, f"patches/{case.case_id}.npz", row,
                )
                bar.update(1)
            path = patch_dir / f"{case.case_id}.npz"
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, image=np.stack(images), mask=np.stack(masks))
            log.info("%s: %d patch(es) -> %s", case.case_id, len(numbers), path.name)
    save_config(config, out_dir / "config.yaml")
    with atomic_path(out_dir / "index.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(INDEX_COLUMNS)
            for e in entries:
                assert e is not None
                w.writerow([e.patch, e.case, *e.corner, *e.size, e.lesion_voxels, e.mode, e.lesion_id,
                            e.lesion_volume_vox, e.file, e.row])


def read_index(bank_dir: Path) -> list[BankEntry]:
    """The rows of ``P/index.csv`` in patch order."""
    path = Path(bank_dir) / "index.csv"
    if not path.is_file():
        raise LesionsegError(f"{path}: missing; is {bank_dir} a patch bank?")
    with open(path, newline="") as fh:
        return [
            BankEntry(
                int(r["patch"]), r["case"], (int(r["i0"]), int(r["j0"]), int(r["k0"])),
                (int(r["size_i"]), int(r["size_j"]), int(r["size_k"])), int(r["lesion_voxels"]),
                r["mode"], int(r["lesion_id"]), int(r["lesion_volume_vox"]), r["file"], int(r["row"]),
            )
            for r in csv.DictReader(fh)
        ]


def load_bank_patch(bank_dir: Path, entry: BankEntry) -> tuple[np.ndarray, np.ndarray]:
    """Image (d, h, w, C) float32 and mask (d, h, w) uint8 of one bank row."""
    with np.load(Path(bank_dir) / entry.file) as data:
        return data["image"][entry.row], data["mask"][entry.row]
