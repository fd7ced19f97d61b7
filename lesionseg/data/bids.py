"""BIDS in and out: a BIDS dataset as ``lesionseg infer`` input, a BIDS derivatives folder as output.

Input: a dataset root (``dataset_description.json``, ``sub-*/[ses-*/]anat/``) is read with
pybids (``BIDSLayout``, entities parsed by the BIDS reference library): each subject (and session)
with every channel the model needs — a channel name maps to a BIDS suffix (``flair`` → ``FLAIR``,
``t1`` → ``T1w``, ``t2`` → ``T2w``, others as written) — is one case, ``sub-<label>[_ses-<label>]``.
A subject/session with several files for one channel (runs, acquisitions) is an error naming them.

Output (``--out``, conventionally ``<dataset>/derivatives/lesionseg``)::

    dataset_description.json                     DatasetType "derivative", GeneratedBy lesionseg
    sub-01/[ses-1/]anat/sub-01[_ses-1]_space-orig_desc-lesion_mask.nii.gz        uint8 {0, 1}
    sub-01/[ses-1/]anat/sub-01[_ses-1]_space-orig_desc-lesion_probseg.nii.gz     float32 in [0, 1]
    cohort.csv, failures.csv                     as for folder inputs
    .lesionseg/                                  the flat working folder: records, the cases' links

The flat working folder keeps what makes a run resumable (records, atomic writes); the BIDS files
are hard links to (or copies of) its outputs, published as each run ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lesionseg import __version__
from lesionseg.errors import DataError

log = logging.getLogger(__name__)

SUFFIXES = {"flair": "FLAIR", "t1": "T1w", "t2": "T2w", "pd": "PD", "t2star": "T2starw"}
WORK_DIR = ".lesionseg"
CASES_DIR = "cases"


@dataclass(frozen=True)
class BidsCase:
    """One subject (and session) of a BIDS dataset: its case id, entities and channel files."""

    case_id: str
    subject: str
    session: str | None
    files: dict[str, Path]

    @property
    def folder(self) -> Path:
        """``sub-<label>[/ses-<label>]/anat`` relative to a dataset or derivatives root."""
        base = Path(f"sub-{self.subject}")
        return (base / f"ses-{self.session}" if self.session else base) / "anat"


def is_bids(path: Path) -> bool:
    """A BIDS dataset root: ``dataset_description.json`` or ``sub-*`` folders."""
    path = Path(path)
    return path.is_dir() and ((path / "dataset_description.json").is_file() or any(path.glob("sub-*")))


def suffix_of(channel: str) -> str:
    """The BIDS suffix of a channel name (``flair`` → ``FLAIR``)."""
    return SUFFIXES.get(channel.lower(), channel)


def bids_cases(root: Path, channels: list[str]) -> list[BidsCase]:
    """Every subject/session of ``root`` with all ``channels`` (pybids); others are logged and skipped.

    Raises
    ------
    DataError
        No subject has every channel, or one has several candidates for a channel.
    """
    from bids import BIDSLayout  # local: pybids indexes the dataset (seconds), only for BIDS inputs

    layout = BIDSLayout(str(root), validate=False, derivatives=False)
    cases = []
    for subject in sorted(layout.get_subjects()):
        sessions = sorted(layout.get_sessions(subject=subject)) or [None]
        for session in sessions:
            files, missing = {}, []
            for channel in channels:
                query = {"subject": subject, "datatype": "anat", "suffix": suffix_of(channel),
                         "extension": [".nii.gz", ".nii"], "return_type": "filename"}
                if session is not None:
                    query["session"] = session
                found = sorted(layout.get(**query))
                if len(found) > 1:
                    names = ", ".join(Path(f).name for f in found)
                    raise DataError(f"sub-{subject}{f'/ses-{session}' if session else ''}: several "
                                    f"{suffix_of(channel)} files ({names}); keep one per subject and session")
                if not found:
                    missing.append(suffix_of(channel))
                    continue
                files[channel] = Path(found[0])
            case_id = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            if missing:
                log.warning("%s: no %s; skipped", case_id, ", ".join(missing))
                continue
            cases.append(BidsCase(case_id, subject, session, files))
    if not cases:
        raise DataError(f"{root}: no subject with every channel ({', '.join(suffix_of(c) for c in channels)})")
    return cases


def stage_cases(cases: list[BidsCase], out_dir: Path) -> Path:
    """``OUT/.lesionseg/cases/<case>/<channel>.nii[.gz]``: links to the BIDS files, a folder input for infer."""
    root = Path(out_dir) / WORK_DIR / CASES_DIR
    if root.exists():
        shutil.rmtree(root)
    for case in cases:
        folder = root / case.case_id
        folder.mkdir(parents=True)
        for channel, path in case.files.items():
            ext = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
            (folder / f"{channel}{ext}").symlink_to(path.resolve())
    return root


def derivative_paths(case: BidsCase, out_dir: Path) -> tuple[Path, Path]:
    """The mask and probseg paths of one case in the derivatives folder."""
    stem = case.case_id + "_space-orig_desc-lesion"
    folder = Path(out_dir) / case.folder
    return folder / f"{stem}_mask.nii.gz", folder / f"{stem}_probseg.nii.gz"


def _publish_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.part"
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    partial.replace(target)


def publish(cases: list[BidsCase], work: Path, out_dir: Path, model: str) -> int:
    """Link every finished case's outputs into the derivatives layout; write ``dataset_description.json``.

    Returns the number of cases published.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": "lesionseg lesion segmentation",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "lesionseg", "Version": __version__, "Description": f"model {model}"}],
    }
    (out_dir / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    published = 0
    for case in cases:
        pred, prob = work / f"{case.case_id}_pred.nii.gz", work / f"{case.case_id}_prob.nii.gz"
        if not (pred.is_file() and prob.is_file() and (work / f"{case.case_id}_record.json").is_file()):
            continue
        mask_path, prob_path = derivative_paths(case, out_dir)
        _publish_file(pred, mask_path)
        _publish_file(prob, prob_path)
        published += 1
    for name in ("cohort.csv", "failures.csv"):
        if (work / name).is_file():
            shutil.copyfile(work / name, out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)
    return published
