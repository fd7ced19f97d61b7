"""report.html: the page's data checked in Python, and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_case

from lesionseg.cli import main
from lesionseg.evaluation.html_report import (
    FILES_DIR,
    STATUS_COLOURS,
    crop_box,
    lesion_rows,
    niivue_available,
    window_uint8,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"


def _labelled(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases (LAS affine in one) and predictions: one TP, one FN, one FP lesion each."""
    data, pred = tmp_path / "data", tmp_path / "pred"
    pred.mkdir()
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[:3, 3] = [30.0, -10.0, 5.0]
    for n, affine in enumerate((None, las, None)):
        case = make_case(data, f"c{n}", shape=(30, 28, 26), lesions=((8, 8, 8, 2), (20, 18, 14, 2)), affine=affine,
                         seed=n)
        mask_img = nib.load(case / "lesion_mask.nii.gz")
        p = np.asarray(mask_img.dataobj).copy()
        p[18:23, 16:21, 12:17] = 0  # the second lesion missed (FN)
        p[3:6, 22:25, 20:23] = 1  # a false lesion (FP)
        nib.save(nib.Nifti1Image(p.astype(np.uint8), mask_img.affine), pred / f"c{n}_pred.nii.gz")
    return data, pred


def _payload(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text.split("] = ", 1)[1].rstrip().rstrip(";"))


def test_page_data_status_colours_and_coordinates(tmp_path):
    data, pred = _labelled(tmp_path)
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(report)]) == 0
    assert (report / "report.html").is_file()
    lesions = pd.read_csv(report / "lesions.csv")
    for case in ("c0", "c1", "c2"):
        payload = _payload(report / FILES_DIR / f"{case}.js")
        status = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(payload["status"])))
        image = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(payload["image"])))
        values = np.asarray(status.dataobj)
        assert set(np.unique(values)) == {0, 1, 2, 3}  # TP, FN and FP voxels all painted
        assert image.shape == status.shape and np.asarray(image.dataobj).dtype == np.uint8
        # the cropped volumes sit where the case's voxels are in the world
        truth = nib.load(data / case / "lesion_mask.nii.gz")
        offset = np.asarray(payload["offset"], float)
        np.testing.assert_allclose(status.affine[:3, 3], truth.affine[:3, :3] @ offset + truth.affine[:3, 3])
        # each lesion's centroid voxel lies in its status colour
        rows = lesions[lesions.case == case]
        for r in rows.itertuples():
            code = {"TP": 1, "FN": 2, "FP": 3}[r.status]
            v = np.round([r.centroid_i, r.centroid_j, r.centroid_k] - offset).astype(int)
            assert values[tuple(v)] == code, (case, r.source, r.lesion_id)
    html = (report / "report.html").read_text()
    assert "c1" in html
    assert ("open 3D viewer" in html) == niivue_available()


def test_lesion_rows_world_and_view_coordinates():
    lesions = pd.DataFrame([{"case": "a", "source": "truth", "lesion_id": 1, "volume_mm3": 12.0,
                             "centroid_i": 10.0, "centroid_j": 5.0, "centroid_k": 2.0, "status": "FN",
                             "matched_ids": float("nan"), "split": False, "merge": False},
                            {"case": "a", "source": "pred", "lesion_id": 2, "volume_mm3": 3.0,
                             "centroid_i": 1.0, "centroid_j": 1.0, "centroid_k": 1.0, "status": "TP",
                             "matched_ids": 4.0, "split": False, "merge": True}])
    affine = np.diag([-2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [100.0, 0.0, -10.0]
    rows = lesion_rows(lesions, {"a": affine}, {"a": [1, 1, 0]})
    assert rows[0]["world_mm"] == [80.0, 5.0, -4.0]
    assert rows[0]["view_voxel"] == [9.0, 4.0, 2.0]
    assert rows[0]["colour"] == STATUS_COLOURS["FN"] and rows[1]["colour"] == STATUS_COLOURS["TP"]
    assert rows[0]["matched"] == "" and rows[1]["matched"] == "4" and rows[1]["merge"] is True


def test_crop_and_window():
    a = np.zeros((10, 10, 10), np.uint8)
    a[3, 4, 5] = 1
    assert crop_box(a, margin=1) == (slice(2, 5), slice(3, 6), slice(4, 7))
    x = np.zeros((4, 4, 4), np.float32)
    x[1:3, 1:3, 1:3] = np.arange(8).reshape(2, 2, 2)
    x[1, 1, 1] = 0.5
    w = window_uint8(x)
    assert w.dtype == np.uint8 and w[0, 0, 0] == 0 and w.max() == 255 and w[x != 0].min() >= 1


def test_report_command_rebuilds_the_page(tmp_path, capsys):
    data, pred = _labelled(tmp_path)
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(report)]) == 0
    (report / "report.html").unlink()
    assert main(["report", str(report)]) == 0
    assert (report / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 1
    assert "is " + str(tmp_path) + " a report of lesionseg evaluate?" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["summary header only", "cases empty", "cases no TP", "volume file garbage"])
def test_report_names_a_damaged_file_and_keeps_the_page(tmp_path, capsys, damage):
    data, pred = _labelled(tmp_path)
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(report)]) == 0
    page = (report / "report.html").read_bytes()
    target = {"summary header only": report / "summary.csv", "cases empty": report / "cases.csv",
              "cases no TP": report / "cases.csv", "volume file garbage": report / FILES_DIR / "c1.js"}[damage]
    if damage == "summary header only":
        target.write_text(target.read_text().splitlines()[0] + "\n")
    elif damage == "cases empty":
        target.write_text("")
    elif damage == "cases no TP":
        pd.read_csv(target).drop(columns="TP").to_csv(target, index=False)
    else:
        target.write_text("garbage")
    capsys.readouterr()
    assert main(["report", str(report)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR {target}: ") and err.count("\n") == 1
    assert (report / "report.html").read_bytes() == page


@pytest.mark.slow
def test_report_in_headless_chromium(samples_dir, tmp_path):
    """The demo's report opened from disk: no console error, a drawn WebGL canvas, a row click moves the crosshair."""
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    if not niivue_available():
        pytest.skip("NiiVue is not installed (make install fetches it with npm)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    from matplotlib.image import imread

    report = tmp_path / "report"
    # the samples' own masks as predictions, one lesion removed (FN) and one added (FP)
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in sorted(samples_dir.iterdir())[:2]:
        m = nib.load(case / "lesion_mask.nii.gz")
        p = np.asarray(m.dataobj).copy()
        p[10:13, 30:33, 30:33] = 1
        nib.save(nib.Nifti1Image(p, m.affine), pred / f"{case.name}_pred.nii.gz")
    data = tmp_path / "data"
    for case in sorted(samples_dir.iterdir())[:2]:
        shutil.copytree(case, data / case.name)
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(report)]) == 0

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto((report / "report.html").as_uri())
        page.click("button.open >> nth=0")
        page.wait_for_function("() => Object.keys(window.lesionseg.viewers).length === 1", timeout=60000)
        page.wait_for_timeout(500)
        viewer = "Object.values(window.lesionseg.viewers)[0]"
        before = page.evaluate(f"() => Array.from({viewer}.scene.crosshairPos)")
        page.click("table.lesions >> nth=0 >> tbody tr >> nth=1")
        page.wait_for_function("() => window.lesionseg.lastTarget !== undefined")
        after = page.evaluate(f"() => Array.from({viewer}.scene.crosshairPos)")
        expected = page.evaluate(f"() => Array.from({viewer}.vox2frac(window.lesionseg.lastTarget.voxel))")
        shot = tmp_path / "report_canvas.png"
        page.locator("canvas >> nth=0").screenshot(path=str(shot))
        page.screenshot(path=str(tmp_path / "report_page.png"))
        errors = page.evaluate("() => window.lesionseg.errors")
        browser.close()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "report_page.png", ARTEFACTS / "report_page.png")
    assert not problems and not errors, problems + errors
    np.testing.assert_allclose(after, expected, atol=1e-6)
    assert not np.allclose(after, before)
    pixels = imread(str(shot))[..., :3]
    assert pixels.std() > 0.05  # the slices are drawn, not a blank canvas
    green = (pixels[..., 1] > 0.5) & (pixels[..., 0] < 0.4) & (pixels[..., 2] < 0.4)
    assert green.sum() > 10  # TP lesions painted in green


def test_compare_page_links_each_runs_report(tmp_path):
    data, pred = _labelled(tmp_path)
    for name in ("run_a", "run_b"):
        assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(tmp_path / name / "report")]) == 0
    out = tmp_path / "tables" / "compare.csv"
    assert main(["compare", str(tmp_path / "run_a" / "report"), str(tmp_path / "run_b" / "report"),
                 "--out", str(out)]) == 0
    page = (tmp_path / "tables" / "compare.html").read_text()
    assert 'href="../run_a/report/report.html"' in page and 'href="../run_b/report/report.html"' in page
