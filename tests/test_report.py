"""Reports: the CSV files, `lesionseg evaluate` end to end on tiny NIfTI cases, `compare`."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from conftest import write_nifti

import lesionseg.evaluation.compare
import lesionseg.evaluation.lesions
import lesionseg.evaluation.report
from lesionseg.cli import main
from lesionseg.config import EvaluateConfig
from lesionseg.evaluation.compare import compare_reports, run_name, to_markdown
from lesionseg.evaluation.lesions import evaluate_case
from lesionseg.evaluation.report import write_reports

SHAPE = (12, 12, 12)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm³ voxels, read from the header
AFFINE[:3, 3] = (-5.0, 3.0, 10.0)


def vol(*voxel_lists) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    for voxels in voxel_lists:
        for v in voxels:
            m[v] = 1
    return m


A = [(2, 2, k) for k in range(1, 4)]  # 3 voxels
B = [(8, 8, k) for k in range(7, 10)]  # 3 voxels
C = [(2, 9, 9), (3, 9, 9)]  # 2 voxels

# case: (truth, prediction)
CASES = {
    "c1": (vol(A, B), vol(A, C)),  # GT 2, TP 1, FN 1, FP 1
    "c2": (vol(), vol()),  # empty: ratios and Dice undefined
    "c3": (vol(A), vol(A)),  # perfect
}
DICE_C1 = 2 * 3 / (6 + 5)


def contract_columns_first(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    assert tuple(frame.columns[: len(columns)]) == columns


def write_dataset(root, cases=CASES, affine=AFFINE):
    data, pred = root / "data", root / "pred"
    for case, (truth, prediction) in cases.items():
        write_nifti(data / case / "lesion_mask.nii.gz", truth, affine)
        write_nifti(data / case / "flair.nii.gz", (100 + 50 * truth).astype(np.float32), affine)
        write_nifti(pred / f"{case}_pred.nii.gz", prediction, affine)
    return data, pred


@pytest.fixture(autouse=True)
def fresh_log_handler():
    """setup_logging keeps its stderr handler; drop it so each test's capsys sees the log."""
    logger = logging.getLogger("lesionseg")
    stale = [h for h in logger.handlers if getattr(h, "_lesionseg", False)]
    for handler in stale:
        logger.removeHandler(handler)
    yield
    for handler in [h for h in logger.handlers if getattr(h, "_lesionseg", False)]:
        logger.removeHandler(handler)


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------- write_reports


def test_write_reports_columns_and_pooled_numbers(tmp_path):
    evals = [evaluate_case(t, p, (1.0, 1.0, 2.0), EvaluateConfig(), case) for case, (t, p) in CASES.items()]
    out = write_reports(evals, tmp_path / "report", EvaluateConfig())
    cases = pd.read_csv(out / "cases.csv")
    summary = pd.read_csv(out / "summary.csv")
    lesions = pd.read_csv(out / "lesions.csv", keep_default_na=False)
    contract_columns_first(cases, lesionseg.evaluation.report.CASE_COLUMNS[:12])
    contract_columns_first(summary, lesionseg.evaluation.report.SUMMARY_COLUMNS[:11])
    contract_columns_first(lesions, lesionseg.evaluation.lesions.LESION_COLUMNS)
    for table in (cases, summary):
        assert (table.criterion == "any").all() and (table.connectivity == 26).all()
        assert (table.min_lesion_mm3 == 0.0).all()

    c = cases.set_index("case")
    assert c.loc["c1", ["GT", "TP", "FN", "FP", "n_pred"]].tolist() == [2, 1, 1, 1, 2]
    assert c.loc["c1", "dice"] == pytest.approx(DICE_C1)
    assert c.loc["c1", "gt_volume_mm3"] == 12.0 and c.loc["c1", "pred_volume_mm3"] == 10.0
    # the empty case: undefined ratios are empty cells (NaN), not 0 or 1
    assert c.loc["c2", ["GT", "n_pred"]].tolist() == [0, 0]
    assert c.loc["c2", ["lesion_precision", "lesion_recall", "lesion_f1", "dice"]].isna().all()

    s = summary.iloc[0]
    assert (s.cases, s.GT, s.TP, s.FN, s.FP, s.n_pred) == (3, 3, 2, 1, 1, 3)
    assert s.lesion_precision == pytest.approx(2 / 3) and s.lesion_recall == pytest.approx(2 / 3)
    assert s.lesion_f1 == pytest.approx(2 / 3)
    assert s.dice_mean == pytest.approx((DICE_C1 + 1.0) / 2)  # c2 (undefined) left out
    assert s.lesion_f1_mean == pytest.approx((0.5 + 1.0) / 2)

    assert len(lesions) == 2 + 2 + 1 + 1
    c1 = lesions[lesions.case == "c1"].set_index(["source", "lesion_id"])
    assert sorted(c1.status) == ["FN", "FP", "TP", "TP"]
    assert set(lesions.volume_mm3[lesions.source == "truth"]) == {6.0}
    assert not list(tmp_path.glob("report/.*"))  # no temporary files left

    # sizes.csv: every lesion in one band; per case and pooled the bands add up to cases.csv / summary.csv
    sizes = pd.read_csv(out / "sizes.csv")
    contract_columns_first(sizes, lesionseg.evaluation.report.SIZE_COLUMNS)
    assert (sizes.criterion == "any").all()
    per_case = sizes[sizes.case != "all"].groupby("case")[["GT", "TP", "FN", "FP"]].sum()
    for case in per_case.index:
        assert per_case.loc[case].tolist() == c.loc[case, ["GT", "TP", "FN", "FP"]].tolist()
    pooled = sizes[sizes.case == "all"]
    assert pooled[["GT", "TP", "FN", "FP"]].sum().tolist() == [s.GT, s.TP, s.FN, s.FP]
    band = pooled.set_index("band").loc["<10"]  # the 6 mm³ truth lesions: 3 of them, 2 found
    assert (band.GT, band.TP) == (3, 2) and band.lesion_recall == pytest.approx(2 / 3)
    assert pooled.set_index("band").loc[">=1000"].GT == 0 and pd.isna(pooled.set_index("band").loc[">=1000"].lesion_recall)


def test_empty_evaluation_list_writes_headers(tmp_path):
    out = write_reports([], tmp_path / "r", EvaluateConfig(criterion="iou"))
    assert len(pd.read_csv(out / "lesions.csv")) == 0
    s = pd.read_csv(out / "summary.csv").iloc[0]
    assert s.cases == 0 and math.isnan(s.lesion_f1) and s.criterion == "iou"


@pytest.mark.parametrize(
    "criterion, case_cols, lesion_cols, summary_cols",
    [
        ("iou", ("rq", "sq", "pq"), ("iou",), ("rq", "sq", "pq")),
        ("brats", ("lesion_dice",), ("lesion_dice",), ("lesion_dice", "lesion_dice_mean")),
        ("anima", (), (), ()),
    ],
)
def test_criterion_columns(tmp_path, criterion, case_cols, lesion_cols, summary_cols):
    cfg = EvaluateConfig(criterion=criterion)
    evals = [evaluate_case(t, p, (1.0, 1.0, 2.0), cfg, case) for case, (t, p) in CASES.items()]
    out = write_reports(evals, tmp_path / "r", cfg)
    cases, summary = pd.read_csv(out / "cases.csv"), pd.read_csv(out / "summary.csv")
    lesions = pd.read_csv(out / "lesions.csv")
    assert set(case_cols) <= set(cases.columns) and set(lesion_cols) <= set(lesions.columns)
    assert set(summary_cols) <= set(summary.columns)
    assert (summary.criterion == criterion).all()
    if criterion == "anima":  # 3 mm³ default: the 2-voxel (4 mm³) lesion C stays, min 2 voxels
        assert summary.min_lesion_mm3.iloc[0] == 3.0 and (cases.min_lesion_vox == 2).all()
    if criterion == "iou":  # pooled: TP 2 (c1: A, c3: A), FP 1, FN 1
        s = summary.iloc[0]
        assert s.rq == pytest.approx(2 / 3) and s.sq == pytest.approx(1.0) and s.pq == pytest.approx(2 / 3)
    if criterion == "brats":  # pooled: Σ lesion Dice (1 + 0 + 1) / (GT 3 + FP 1)
        s = summary.iloc[0]
        assert s.lesion_dice == pytest.approx(2 / 4)
        assert s.lesion_dice_mean == pytest.approx((1 / 3 + 1.0 + 1.0) / 3)


# ---------------------------------------------------------------------------- lesionseg evaluate


def test_cli_evaluate_end_to_end(tmp_path, capsys):
    data, pred = write_dataset(tmp_path)
    out = tmp_path / "runs" / "demo" / "report"
    code, _, err = run_cli(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(out)], capsys)
    assert code == 0, err
    cases = pd.read_csv(out / "cases.csv").set_index("case")
    assert list(cases.index) == ["c1", "c2", "c3"]
    assert cases.loc["c1", ["GT", "TP", "FN", "FP"]].tolist() == [2, 1, 1, 1]
    assert cases.loc["c3", "lesion_f1"] == 1.0 and cases.loc["c3", "dice"] == 1.0
    assert cases.loc["c1", "gt_volume_mm3"] == 12.0  # 6 voxels of 2 mm³, zooms from the header
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    assert (summary.GT, summary.TP, summary.FP, summary.FN) == (3, 2, 1, 1)
    lesions = pd.read_csv(out / "lesions.csv")
    assert len(lesions) == 6 and set(lesions.source) == {"truth", "pred"}
    assert not (out / "overlays").exists()


def test_cli_evaluate_settings_and_overlays(tmp_path, capsys):
    data, pred = write_dataset(tmp_path)
    out = tmp_path / "report_iou"
    args = ["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(out), "--overlays",
            "--set", "evaluate.criterion=iou", "--set", "evaluate.connectivity=6"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    cases = pd.read_csv(out / "cases.csv")
    assert (cases.criterion == "iou").all() and (cases.connectivity == 6).all() and "pq" in cases
    pngs = sorted(p.name for p in (out / "overlays").iterdir())
    assert pngs == ["c1.png", "c2.png", "c3.png"]
    assert (out / "overlays" / "c1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def assert_one_line_error(code, err, *needles):
    assert code == 1
    lines = [line for line in err.strip().splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_evaluate_missing_prediction_leaves_nothing(tmp_path, capsys):
    data, pred = write_dataset(tmp_path)
    (pred / "c2_pred.nii.gz").unlink()
    out = tmp_path / "report"
    args = ["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(out), "--overlays"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "c2_pred.nii.gz", "missing prediction")
    assert not out.exists()


def test_cli_evaluate_failure_midway_leaves_no_partial_report(tmp_path, capsys):
    data, pred = write_dataset(tmp_path)
    # the last case's prediction is on another grid: found only after c1 and c2 are done
    write_nifti(pred / "c3_pred.nii.gz", np.zeros((12, 12, 11), np.uint8), AFFINE)
    out = tmp_path / "report"
    out.mkdir()
    args = ["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(out), "--overlays"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "pred/c3_pred.nii.gz", "shape (12, 12, 11)", "c3/lesion_mask.nii.gz")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "problem, needles",
    [
        ("affine", ("c1_pred.nii.gz", "affine differs")),
        ("probabilities", ("c1_pred.nii.gz", "not in {0, 1}", "0.5")),
        ("no predictions", ("no <case>_pred.nii.gz",)),
        ("no folder", ("prediction folder not found",)),
    ],
)
def test_cli_evaluate_bad_predictions(tmp_path, capsys, problem, needles):
    data, pred = write_dataset(tmp_path)
    if problem == "affine":
        shifted = AFFINE.copy()
        shifted[0, 3] += 1.0
        write_nifti(pred / "c1_pred.nii.gz", CASES["c1"][1], shifted)
    elif problem == "probabilities":
        write_nifti(pred / "c1_pred.nii.gz", CASES["c1"][1] * np.float32(0.5), AFFINE)
    elif problem == "no predictions":
        for p in pred.iterdir():
            p.unlink()
    else:
        pred = tmp_path / "nowhere"
    out = tmp_path / "report"
    code, _, err = run_cli(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(out)], capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_extra_prediction_is_ignored_with_a_warning(tmp_path, capsys):
    data, pred = write_dataset(tmp_path)
    write_nifti(pred / "stray_pred.nii.gz", vol(A), AFFINE)
    out = tmp_path / "report"
    code, _, err = run_cli(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(out)], capsys)
    assert code == 0, err
    assert "without a truth case" in err and "stray" in err
    assert len(pd.read_csv(out / "cases.csv")) == 3


# ---------------------------------------------------------------------------- compare


def make_report(tmp_path, name, cfg=EvaluateConfig(), cases=CASES):
    evals = [evaluate_case(t, p, (1.0, 1.0, 1.0), cfg, c) for c, (t, p) in cases.items()]
    return write_reports(evals, tmp_path / name, cfg)


def test_compare_reports_table_and_markdown(tmp_path, capsys):
    r1 = make_report(tmp_path, "runs/unet_dice/report")
    r2 = make_report(tmp_path, "baseline", cases={"c1": CASES["c1"]})
    out_csv = tmp_path / "table.csv"
    code, out, err = run_cli(["compare", str(r1), str(r2), "--out", str(out_csv)], capsys)
    assert code == 0, err
    table = pd.read_csv(out_csv)
    contract_columns_first(table, lesionseg.evaluation.compare.COMPARE_COLUMNS)
    assert table.run.tolist() == ["unet_dice", "baseline"]
    assert table.loc[0, ["GT", "TP", "FP", "FN"]].tolist() == [3, 2, 1, 1]
    assert table.loc[1, ["GT", "TP", "FP", "FN"]].tolist() == [2, 1, 1, 1]
    assert table.loc[1, "lesion_f1"] == pytest.approx(0.5)
    lines = out.strip().splitlines()
    assert lines[0].startswith("| run ") and lines[1].startswith("|:") and len(lines) == 4
    assert "| unet_dice " in lines[2] and "0.667" in lines[2]


def test_compare_names_and_errors(tmp_path, capsys):
    a = make_report(tmp_path, "a/report")
    b = make_report(tmp_path, "b/report")
    c = make_report(tmp_path, "c/x/report")
    d = make_report(tmp_path, "d/x/report")
    table = compare_reports([a, b, c, d], tmp_path / "t.csv")
    assert table.run.tolist()[:2] == ["a", "b"]
    assert table.run[2] != table.run[3]  # same folder names: told apart by their paths
    assert run_name(tmp_path / "runs" / "x" / "validation") == "x"
    code, _, err = run_cli(["compare", str(tmp_path / "a"), "--out", str(tmp_path / "t2.csv")], capsys)
    assert_one_line_error(code, err, "summary.csv", "missing")
    assert not (tmp_path / "t2.csv").exists()


def test_to_markdown_formats_nan_and_ints():
    df = pd.DataFrame({"run": ["x|y", "z"], "GT": [3, 0], "lesion_recall": [0.5, math.nan]})
    text = to_markdown(df)
    assert "x\\|y" in text and "n/a" in text and "0.500" in text
    assert len({len(line) for line in text.splitlines()}) == 1  # aligned columns
