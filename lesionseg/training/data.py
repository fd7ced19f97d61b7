"""The training data: every case labelled and readable, split by patient, the split written.

:func:`check_training_data` runs before the backend starts or the run folder is touched, so a
blank channel, a missing mask or an unknown validation case is a one-line error with nothing
written.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from lesionseg.config import Config
from lesionseg.data import io, writing
from lesionseg.data.check import require_readable
from lesionseg.data.split import Split, split_cases
from lesionseg.errors import DataError


@dataclass(frozen=True)
class TrainingData:
    """The checked training data: configuration, folder, its cases and their split."""

    config: Config
    data_dir: Path
    case_dirs: list[Path]
    split: Split


def check_training_data(config: Config, data_dir: Path) -> TrainingData:
    """Every case labelled and readable, the split valid: before the backend starts or RUN is touched."""
    cfg = config.train
    case_dirs = labelled_case_dirs(config, data_dir)
    split = split_cases([d.name for d in case_dirs], cfg.val_fraction, cfg.val_cases, config.data.group_pattern, cfg.seed)
    require_readable(case_dirs, config.data, with_mask=True)
    augment = config.augment
    if augment.transplant_probability > 0 and not Path(augment.transplant_masks).is_dir():
        raise DataError(f"{augment.transplant_masks}: transplant donor folder not found (augment.transplant_masks)")
    return TrainingData(config, data_dir, case_dirs, split)


def write_split(split: Split, path: Path) -> None:
    """``RUN/split.csv``: case, group (patient), side (train/val), atomically."""
    with writing.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case", "group", "side"])
            for side, ids in (("train", split.train), ("val", split.val)):
                for c in ids:
                    w.writerow([c, split.groups[c], side])


def labelled_case_dirs(config: Config, data_dir: Path) -> list[Path]:
    """Every case of ``data_dir``; each must have its mask (an unlabelled case is an error, not skipped)."""
    dirs = io.list_cases(data_dir)
    for d in dirs:
        if io.find_file(d, config.data.mask) is None:
            raise DataError(
                f"{d.name}/{config.data.mask}.nii.gz: missing mask (training needs one for every case of "
                f"{data_dir}; move unlabelled cases out of the folder)"
            )
    return dirs
