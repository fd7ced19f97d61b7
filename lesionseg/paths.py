"""Output paths checked before any work starts, and the leftovers of killed runs.

Every command that writes checks its output first (:func:`check_output_folder`,
:func:`check_output_file`): an output that is an existing file, lies under a file, sits
inside one of the command's inputs, or cannot be written is a one-line error before a
model is loaded or a case is read.  Atomic writes (:func:`lesionseg.data.writing.atomic_path`)
name their temporaries ``.<name>.tmp-<pid>-<id><suffix>``; :func:`remove_stale_temporaries`
deletes those whose process is gone, so a rerun cleans up after a ``kill -9``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}(\.[A-Za-z0-9.]+)?$")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_writable(path: Path, shown: Path) -> None:
    """Raise unless a file can be created in the folder ``path`` (which exists)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".lesionseg-write-test-", dir=path)
    except OSError as exc:
        raise LesionsegError(f"{shown}: output folder is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_folder(path: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Raise a one-line :class:`LesionsegError` unless ``path`` can be used as an output folder.

    Parameters
    ----------
    path : str or Path
        The output folder; it may not exist yet (it is not created here).
    inputs : iterable of path
        Folders the command reads; the output may be none of them nor lie inside one
        (predictions written into the data folder would become a case of it).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LesionsegError(f"{path}: output folder is an existing file")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise LesionsegError(f"{path}: output folder lies under a file ({base})")
    for folder in inputs:
        folder = Path(folder)
        if folder.is_dir() and inside(path, folder):
            raise LesionsegError(f"{path}: output folder is inside the input folder {folder}; choose another --out")
    _check_writable(base, path)


def check_output_file(path: str | Path) -> None:
    """Raise a one-line :class:`LesionsegError` unless ``path`` can be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise LesionsegError(f"{path}: is a folder; --out names the file to write (e.g. {path / 'compare.csv'})")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise LesionsegError(f"{path}: lies under a file ({base})")
    _check_writable(base, path.parent)


def temporary_name(path: Path) -> Path:
    """The temporary sibling an atomic write of ``path`` uses: ``.<stem>.tmp-<pid>-<id><suffix>``."""
    name = path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    return path.parent / f".{name[: len(name) - len(suffix)]}.tmp-{os.getpid()}-{os.urandom(4).hex()}{suffix}"


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(*folders: str | Path) -> list[Path]:
    """Delete the atomic-write temporaries left in ``folders`` by processes that no longer run.

    Returns
    -------
    list of Path
        The files removed (also logged).
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _TEMPORARY.match(entry.name)
            if match and entry.is_file() and not process_alive(int(match.group(1))):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    if removed:
        log.info("removed %d leftover temporary file(s) of an interrupted run: %s",
                 len(removed), ", ".join(p.name for p in removed[:5]))
    return removed
