"""Train/validation split: whole patients on one side, seeded, explicit cases honoured."""

from __future__ import annotations

import pytest

from lesionseg.errors import LesionsegError
from lesionseg.data.split import group_key, split_cases

MS_EXAMS = [
    "lesjak_patient07",
    "lesjak_patient19",
    "mslesseg_P14_T1",
    "mslesseg_P14_T2",
    "mslesseg_P14_T3",
    "mslesseg_P18_T1",
]
MS_PATTERN = r"^(mslesseg_P\d+|lesjak_patient\d+)"


def test_group_key_first_group_whole_match_and_fallback():
    assert group_key("mslesseg_P14_T2", MS_PATTERN) == "mslesseg_P14"
    assert group_key("lesjak_patient07", MS_PATTERN) == "lesjak_patient07"
    assert group_key("sub-01_ses-2", r"sub-\d+") == "sub-01"  # no group: the whole match
    assert group_key("other", MS_PATTERN) == "other"  # no match: its own group
    assert group_key("mslesseg_P14_T2", None) == "mslesseg_P14_T2"


def test_invalid_pattern_is_a_one_line_config_error():
    with pytest.raises(LesionsegError, match="group_pattern"):
        group_key("a", "(unclosed")


@pytest.mark.parametrize("seed", range(12))
def test_one_patient_never_straddles_the_split(seed):
    split = split_cases(MS_EXAMS, val_fraction=0.25, group_pattern=MS_PATTERN, seed=seed)
    p14 = {c for c in MS_EXAMS if c.startswith("mslesseg_P14")}
    assert p14 <= set(split.train) or p14 <= set(split.val)
    assert set(split.train) | set(split.val) == set(MS_EXAMS)
    assert not set(split.train) & set(split.val)
    assert len({split.groups[c] for c in split.val}) == 1  # 25 % of 4 patients = 1 patient


def test_without_pattern_exams_split_independently():
    # 6 exams, 6 groups: 25 % -> 2 validation cases, whichever they are
    split = split_cases(MS_EXAMS, val_fraction=0.25, group_pattern=None, seed=3)
    assert len(split.val) == 2


def test_split_is_seeded():
    a = split_cases(MS_EXAMS, 0.5, group_pattern=MS_PATTERN, seed=1)
    b = split_cases(MS_EXAMS, 0.5, group_pattern=MS_PATTERN, seed=1)
    assert a == b
    vals = {split_cases(MS_EXAMS, 0.5, group_pattern=MS_PATTERN, seed=s).val for s in range(10)}
    assert len(vals) > 1  # the seed matters


def test_explicit_val_cases_pull_in_their_patient(caplog):
    split = split_cases(MS_EXAMS, val_cases=["mslesseg_P14_T2"], group_pattern=MS_PATTERN)
    assert split.val == ("mslesseg_P14_T1", "mslesseg_P14_T2", "mslesseg_P14_T3")
    assert "same patient" in caplog.text
    assert "lesjak_patient07" in split.train


def test_explicit_unknown_val_case_is_an_error():
    with pytest.raises(LesionsegError, match="sample99"):
        split_cases(["sample01", "sample02"], val_cases=["sample99"])


def test_never_all_groups_in_validation_and_single_group_means_no_validation():
    assert len(split_cases(["a", "b"], val_fraction=0.9).train) == 1
    one = split_cases(["x_T1", "x_T2"], val_fraction=0.5, group_pattern=r"^(x)")
    assert one.val == () and one.train == ("x_T1", "x_T2")
    with pytest.raises(LesionsegError, match="no training case"):
        split_cases(["a", "b"], val_cases=["a", "b"])
    assert split_cases(["a", "b", "c"], val_fraction=0.0).val == ()
