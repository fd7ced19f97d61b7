"""Errors that reach the user as one clear line (no traceback)."""

from __future__ import annotations


class LesionsegError(Exception):
    """A problem with the user's input or setup, reported as one line.

    The message names the file (or config key) and the problem, e.g.
    ``"case01/lesion_mask.nii.gz: mask values are not in {0, 1} (found 0, 1, 2)"``.
    The command-line interface prints it as ``ERROR <message>`` and exits 1.
    """


class DataError(LesionsegError):
    """A NIfTI file or case that cannot be used as it is."""
