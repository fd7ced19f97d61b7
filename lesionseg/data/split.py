"""Case-level train/validation split that keeps each patient on one side.

Several exams of one patient (e.g. ``mslesseg_P14_T1``, ``_T2``, ``_T3``)
share anatomy and lesions; putting some in training and others in validation
leaks the answer and inflates the validation score.  Cases are therefore
grouped by a patient key taken from the case id with
``config.data.group_pattern`` and whole groups are assigned to one side.

>>> group_key("mslesseg_P14_T2", r"^(.*)_T\\d+$")
'mslesseg_P14'
>>> s = split_cases(["a1", "a2", "b1", "c1"], val_fraction=0.34, group_pattern=r"^(\\w)")
>>> sorted(s.val) in (["a1", "a2"], ["b1"], ["c1"])
True
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """A train/validation split of case ids.

    Attributes
    ----------
    train : tuple of str
        Training case ids, sorted.
    val : tuple of str
        Validation case ids, sorted (empty: no validation).
    groups : dict
        Patient key of every case id.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    groups: dict[str, str]

    def describe(self) -> str:
        """One line: counts of cases and patients on each side."""

        def n_groups(ids: Sequence[str]) -> int:
            return len({self.groups[c] for c in ids})

        return (
            f"{len(self.train)} training case(s) from {n_groups(self.train)} patient(s), "
            f"{len(self.val)} validation case(s) from {n_groups(self.val)} patient(s)"
        )


def group_key(case_id: str, pattern: str | None) -> str:
    """Patient key of a case id.

    Parameters
    ----------
    case_id : str
        Case folder name.
    pattern : str or None
        Regular expression searched in ``case_id``; its first group (or the
        whole match when it has no group) is the key.  ``None`` or no match:
        the case is its own group.

    Returns
    -------
    str
        The group (patient) key.
    """
    if pattern is None:
        return case_id
    try:
        match = re.search(pattern, case_id)
    except re.error as exc:
        raise LesionsegError(f"config data.group_pattern {pattern!r}: invalid regular expression ({exc})") from None
    if match is None:
        return case_id
    key = match.group(1) if match.groups() else match.group(0)
    return key if key else case_id


def split_cases(
    case_ids: Sequence[str],
    val_fraction: float = 0.25,
    val_cases: Sequence[str] = (),
    group_pattern: str | None = None,
    seed: int = 0,
) -> Split:
    """Split case ids into training and validation, whole patients at a time.

    Parameters
    ----------
    case_ids : sequence of str
        All labelled case ids.
    val_fraction : float
        Share of groups (patients) held out when ``val_cases`` is empty;
        rounded, at least one group when > 0, never every group.
    val_cases : sequence of str
        Explicit validation case ids.  The other exams of their patients are
        moved to validation too (with a warning) so no patient is split.
    group_pattern : str or None
        See :func:`group_key`.
    seed : int
        Seed of the group shuffle (same seed, same split).

    Returns
    -------
    Split
        Sorted training and validation ids and the group of every case.

    Raises
    ------
    LesionsegError
        Unknown validation case, or nothing left to train on.
    """
    ids = sorted(dict.fromkeys(case_ids))
    if not ids:
        raise LesionsegError("no labelled cases to split")
    if not 0.0 <= val_fraction < 1.0:
        raise LesionsegError(f"config train.val_fraction must be in [0, 1), got {val_fraction}")
    groups = {c: group_key(c, group_pattern) for c in ids}
    by_group: dict[str, list[str]] = {}
    for c in ids:
        by_group.setdefault(groups[c], []).append(c)

    if val_cases:
        unknown = [c for c in val_cases if c not in groups]
        if unknown:
            raise LesionsegError(
                f"config train.val_cases: case(s) {', '.join(unknown)} not found among the labelled cases "
                f"({', '.join(ids[:6])}{', ...' if len(ids) > 6 else ''})"
            )
        val_groups = {groups[c] for c in val_cases}
        val = sorted(c for g in val_groups for c in by_group[g])
        extra = sorted(set(val) - set(val_cases))
        if extra:
            log.warning(
                "validation also takes %s: same patient as a requested validation case (data.group_pattern)",
                ", ".join(extra),
            )
    elif val_fraction > 0 and len(by_group) >= 2:
        keys = sorted(by_group)
        order = np.random.default_rng(seed).permutation(len(keys))
        n_val = min(max(1, math.floor(val_fraction * len(keys) + 0.5)), len(keys) - 1)
        val = sorted(c for i in order[:n_val] for c in by_group[keys[i]])
    else:
        if val_fraction > 0:
            log.warning("only one patient in the data: no validation split (best model = last epoch)")
        val = []

    train = [c for c in ids if c not in set(val)]
    if not train:
        raise LesionsegError("train/validation split leaves no training case; use fewer val_cases")
    return Split(train=tuple(train), val=tuple(val), groups=groups)
