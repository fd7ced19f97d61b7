"""``REPORT/report.html``: the evaluation as a page to look at, with a 3D viewer per case.

``lesionseg evaluate`` writes, beside the CSVs::

    REPORT/report.html              summary, per-case plots and sortable lesion tables
    REPORT/report_files/niivue.js   the NiiVue viewer (WebGL2), a pinned release (see NIIVUE_VERSION)
    REPORT/report_files/<case>.js   the case's image and lesion-status volumes (gzipped NIfTI, base64)

The page works opened straight from disk, offline: no server, no CDN.  A case's volumes are loaded
only when its viewer is opened (a ``<script>`` added on demand, which browsers allow from
``file://``), so a report of hundreds of exams opens at once.  Volumes are cropped to the brain
(plus every lesion) and stored as uint8: the image windowed to its 0.5–99.5 percentiles, the
status as labels 1 TP (green), 2 FN (red), 3 FP (yellow).  Clicking a lesion row moves the
viewer's crosshair to that lesion.  ``lesionseg report REPORT`` rebuilds the page from the CSVs
and the case files.

NiiVue is a dependency, not copied code: ``make install`` takes ``dist/niivue.umd.js`` from the
npm package ``@niivue/niivue`` at the pinned version (checked against its SHA-512) into
``lesionseg/evaluation/assets/``; without it the page has the tables and plots but no viewer.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lesionseg.data.writing import atomic_path
from lesionseg.errors import LesionsegError

log = logging.getLogger(__name__)

NIIVUE_VERSION = "0.69.0"
#: npm's integrity field of that release's tarball (``npm view @niivue/niivue@0.69.0 dist.integrity``).
NIIVUE_INTEGRITY = "sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA=="
ASSETS = Path(__file__).resolve().parent / "assets"
NIIVUE_FILE = ASSETS / f"niivue-{NIIVUE_VERSION}.umd.js"
FILES_DIR = "report_files"
PAGE = "report.html"
STATUS_COLOURS = {"TP": "#2ca02c", "FN": "#d62728", "FP": "#e6c619"}
MARGIN = 4


def niivue_available() -> bool:
    """The pinned NiiVue bundle is installed (``make install`` fetches it)."""
    return NIIVUE_FILE.is_file()


def crop_box(*volumes: np.ndarray, margin: int = MARGIN) -> tuple[slice, slice, slice]:
    """Bounding box of the non-zero voxels of all volumes, grown by ``margin`` (the whole volume if empty)."""
    shape = volumes[0].shape
    any_nonzero = np.zeros(shape, bool)
    for v in volumes:
        if v is not None:
            any_nonzero |= np.asarray(v) != 0
    if not any_nonzero.any():
        return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]
    idx = np.nonzero(any_nonzero)
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin))
                 for i, n in zip(idx, shape))  # type: ignore[return-value]


def window_uint8(image: np.ndarray) -> np.ndarray:
    """An image as uint8, windowed to the 0.5–99.5 percentiles of its non-zero voxels."""
    x = np.asarray(image, np.float32)
    values = x[x != 0]
    if values.size == 0:
        return np.zeros(x.shape, np.uint8)
    lo, hi = np.percentile(values, (0.5, 99.5))
    scaled = (np.clip(x, lo, hi) - lo) / max(float(hi - lo), 1e-6) * 254.0 + 1.0
    scaled[x == 0] = 0
    return scaled.astype(np.uint8)


def _nifti_base64(volume: np.ndarray, affine: np.ndarray) -> str:
    img = nib.Nifti1Image(np.asarray(volume, np.uint8), affine)
    img.header.set_xyzt_units("mm", "sec")
    raw = img.to_bytes()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def write_case_data(report_dir: Path, case_id: str, status: np.ndarray, background: np.ndarray | None,
                    affine: np.ndarray) -> Path:
    """``REPORT/report_files/<case>.js``: the cropped image and status volumes of one case.

    Parameters
    ----------
    report_dir : Path
        The report folder.
    case_id : str
        The case.
    status : numpy.ndarray
        (D, H, W) uint8 lesion status (1 TP, 2 FN, 3 FP;
        :func:`lesionseg.evaluation.lesions.lesion_status_map`).
    background : numpy.ndarray or None
        (D, H, W) image shown under the lesions (the first channel), or ``None``.
    affine : numpy.ndarray
        The case's voxel-to-world matrix.

    Returns
    -------
    Path
        The file written (atomically).
    """
    box = crop_box(status, background)
    offset = [int(s.start) for s in box]
    shift = np.eye(4)
    shift[:3, 3] = offset
    cropped_affine = np.asarray(affine, float) @ shift
    image = window_uint8(background[box]) if background is not None else np.zeros(status[box].shape, np.uint8)
    payload = {
        "image": _nifti_base64(image, cropped_affine),
        "status": _nifti_base64(status[box], cropped_affine),
        "offset": offset,
        "shape": list(status[box].shape),
    }
    path = Path(report_dir) / FILES_DIR / f"{case_id}.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("window.LESIONSEG_DATA = window.LESIONSEG_DATA || {};\n"
                       f"window.LESIONSEG_DATA[{json.dumps(case_id)}] = {json.dumps(payload)};\n")
    return path


def lesion_rows(lesions: pd.DataFrame, affine_of: dict[str, np.ndarray], offsets: dict[str, list[int]]) -> list[dict]:
    """The page's lesion rows: ids, status, volume, matched ids, split/merge, centroid in voxels (cropped) and mm."""
    rows = []
    for r in lesions.itertuples(index=False):
        case = str(r.case)
        vox = np.array([r.centroid_i, r.centroid_j, r.centroid_k], float)
        affine = affine_of.get(case)
        world = (affine[:3, :3] @ vox + affine[:3, 3]).round(1).tolist() if affine is not None else None
        offset = np.asarray(offsets.get(case, [0, 0, 0]), float)
        matched = _ids(r.matched_ids)
        rows.append({
            "case": case, "source": str(r.source), "id": int(r.lesion_id), "status": str(r.status),
            "volume_mm3": round(float(r.volume_mm3), 1), "matched": matched,
            "split": bool(r.split), "merge": bool(r.merge),
            "voxel": vox.round(1).tolist(), "view_voxel": (vox - offset).round(1).tolist(), "world_mm": world,
            "colour": STATUS_COLOURS.get(str(r.status), "#888888"),
        })
    return rows


def _ids(value: object) -> str:
    """Matched lesion ids as written by the CSV ("3", 3.0, "2;5" or empty) → "3", "2;5", ""."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def _case_svg(row: pd.Series) -> str:
    """A small inline SVG: TP/FP/FN bars and truth against predicted volume."""
    counts = [("TP", int(row.TP)), ("FP", int(row.FP)), ("FN", int(row.FN))]
    top = max([c for _, c in counts] + [1])
    bars = []
    for n, (name, c) in enumerate(counts):
        h = 50 * c / top
        bars.append(f'<rect x="{10 + n * 34}" y="{60 - h:.1f}" width="26" height="{h:.1f}" fill="{STATUS_COLOURS[name]}"/>'
                    f'<text x="{23 + n * 34}" y="74" font-size="10" text-anchor="middle">{name} {c}</text>')
    gt, pr = float(row.gt_volume_mm3) / 1000, float(row.pred_volume_mm3) / 1000
    vmax = max(gt, pr, 1e-6)
    vol = (f'<rect x="130" y="15" width="{100 * gt / vmax:.1f}" height="14" fill="#555"/>'
           f'<text x="132" y="12" font-size="10">truth {gt:.2f} ml</text>'
           f'<rect x="130" y="48" width="{100 * pr / vmax:.1f}" height="14" fill="#1f77b4"/>'
           f'<text x="132" y="45" font-size="10">predicted {pr:.2f} ml</text>')
    return f'<svg width="250" height="80" role="img">{"".join(bars)}{vol}</svg>'


def _fmt(x: object) -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return html.escape(str(x))
    if np.isnan(v):
        return "n/a"
    return f"{int(v)}" if v == int(v) and abs(v) >= 1 else f"{v:.3f}"


CASE_COLUMNS = ("case", "GT", "TP", "FP", "FN", "lesion_f1", "dice")
LESION_COLUMNS = ("case", "source", "lesion_id", "volume_mm3", "status", "centroid_i", "centroid_j", "centroid_k")


def read_report_table(path: Path, columns: tuple[str, ...], allow_empty: bool = False) -> pd.DataFrame:
    """One CSV of a report, with the columns the page needs; a one-line error naming it otherwise."""
    hint = "rerun lesionseg evaluate to rewrite the report"
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LesionsegError(f"{path}: not a readable report table ({reason}); {hint}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise LesionsegError(f"{path}: no column {', '.join(missing)}; {hint}")
    if table.empty and not allow_empty:
        raise LesionsegError(f"{path}: no row; {hint}")
    return table


def _read_case_file(path: Path) -> tuple[list, np.ndarray]:
    """The voxel offset and world affine stored in a case's volume file of the report."""
    try:
        payload = json.loads(path.read_text().split("] = ", 1)[1].rstrip().rstrip(";"))
        img = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(payload["status"])))
        offset = list(payload["offset"])
        shift = np.eye(4)
        shift[:3, 3] = np.asarray(offset, float)
    except Exception as exc:  # a damaged file fails in json, base64, gzip or nibabel, each its own way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LesionsegError(f"{path}: not a report volume file ({reason[:120]}); rerun lesionseg evaluate") from None
    return offset, img.affine @ np.linalg.inv(shift)


def build_report(report_dir: Path) -> Path:
    """Write ``REPORT/report.html`` from the report's CSVs and case files; its path.

    Raises
    ------
    LesionsegError
        A table of the report unreadable, empty or without the columns the page shows, or a
        damaged volume file (one line naming it).
    """
    report_dir = Path(report_dir)
    summary = read_report_table(report_dir / "summary.csv", ("GT", "TP", "FP", "FN")).iloc[0]
    cases = read_report_table(report_dir / "cases.csv", CASE_COLUMNS, allow_empty=True)
    lesions = read_report_table(report_dir / "lesions.csv", LESION_COLUMNS, allow_empty=True)
    files = report_dir / FILES_DIR
    offsets, affines, sizes = {}, {}, {}
    for case in cases.case.astype(str):
        data_file = files / f"{case}.js"
        if data_file.is_file():
            sizes[case] = data_file.stat().st_size
            offsets[case], affines[case] = _read_case_file(data_file)
    viewer = niivue_available()
    if viewer:
        files.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NIIVUE_FILE, files / "niivue.js")
    rows = lesion_rows(lesions, affines, offsets)
    settings = {k: summary[k] for k in ("criterion", "connectivity", "min_lesion_mm3") if k in summary}
    head = ["GT", "TP", "FP", "FN", "lesion_precision", "lesion_recall", "lesion_f1", "dice_mean"]
    summary_html = "".join(f"<th>{h}</th>" for h in head)
    summary_vals = "".join(f"<td>{_fmt(summary.get(h))}</td>" for h in head)
    sections = []
    for r in cases.itertuples(index=False):
        case = str(r.case)
        size = f"{sizes[case] / 1e6:.1f} MB" if case in sizes else "no volumes"
        button = (f'<button class="open" data-case="{html.escape(case)}">open 3D viewer ({size})</button>'
                  if viewer and case in sizes else
                  f'<p class="note">{"viewer unavailable: NiiVue is not installed (make install fetches it)" if not viewer else "no volumes for this case"}</p>')
        sections.append(f"""
<section class="case" id="case-{html.escape(case)}">
  <h2>{html.escape(case)}</h2>
  <p>GT {int(r.GT)} · TP {int(r.TP)} · FP {int(r.FP)} · FN {int(r.FN)} · lesion F1 {_fmt(r.lesion_f1)} · Dice {_fmt(r.dice)}</p>
  {_case_svg(pd.Series(r._asdict()))}
  {button}
  <div class="case-body">
  <div class="table-box"><table class="lesions" data-case="{html.escape(case)}"><thead><tr>
    <th data-key="id">id</th><th data-key="source">source</th><th data-key="volume_mm3">volume mm³</th>
    <th data-key="status">status</th><th data-key="matched">matched ids</th><th data-key="split">split</th>
    <th data-key="merge">merge</th><th data-key="voxel">centroid voxel</th><th data-key="world_mm">centroid mm</th>
  </tr></thead><tbody></tbody></table></div>
  <div class="viewer"><canvas id="gl-{html.escape(case)}" width="560" height="480"></canvas></div>
  </div>
</section>""")
    page = _TEMPLATE.format(
        title=html.escape(report_dir.name),
        settings=html.escape(", ".join(f"{k} {v}" for k, v in settings.items())),
        summary_head=summary_html,
        summary_vals=summary_vals,
        n_cases=len(cases),
        sections="".join(sections),
        niivue_script=f'<script src="{FILES_DIR}/niivue.js"></script>' if viewer else "",
        rows=json.dumps(rows),
        niivue_version=NIIVUE_VERSION,
    )
    path = report_dir / PAGE
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("report page: %s (%d case(s)%s)", path, len(cases), "" if viewer else ", no 3D viewer: NiiVue not installed")
    return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lesionseg report {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th[data-key] {{ cursor: pointer; background: #f3f3f3; }}
tbody tr {{ cursor: pointer; }} tbody tr:hover {{ background: #eef; }}
.swatch {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px; }}
.case-body {{ display: flex; gap: 1em; align-items: flex-start; }}
.table-box {{ max-height: 480px; overflow-y: auto; }}
.viewer canvas {{ width: 560px; height: 480px; display: none; background: #000; }}
.case {{ border-top: 1px solid #aaa; margin-top: 1.5em; }}
.note {{ color: #a60; }}
</style>
{niivue_script}
</head><body>
<h1>lesionseg evaluation report: {title}</h1>
<p>{n_cases} case(s); {settings}. Colours: <span class="swatch" style="background:#2ca02c"></span>TP
<span class="swatch" style="background:#d62728"></span>FN <span class="swatch" style="background:#e6c619"></span>FP.
Viewer: NiiVue {niivue_version}. Click a lesion row to move the crosshair to it; click a column header to sort.</p>
<table id="summary"><thead><tr>{summary_head}</tr></thead><tbody><tr>{summary_vals}</tr></tbody></table>
{sections}
<script>
"use strict";
const ROWS = {rows};
window.lesionseg = {{ viewers: {{}}, errors: [] }};
function cellText(v) {{ return Array.isArray(v) ? v.join(", ") : (typeof v === "boolean" ? (v ? "yes" : "") : String(v)); }}
function fillTable(table) {{
  const tbody = table.querySelector("tbody");
  tbody.innerHTML = "";
  const rows = ROWS.filter(r => r.case === table.dataset.case);
  const key = table.dataset.sortKey, dir = Number(table.dataset.sortDir || 1);
  if (key) rows.sort((a, b) => (a[key] > b[key] ? 1 : a[key] < b[key] ? -1 : 0) * dir);
  for (const r of rows) {{
    const tr = document.createElement("tr");
    tr.dataset.voxel = JSON.stringify(r.view_voxel);
    tr.dataset.case = r.case;
    for (const k of ["id", "source", "volume_mm3", "status", "matched", "split", "merge", "voxel", "world_mm"]) {{
      const td = document.createElement("td");
      if (k === "status") {{ const s = document.createElement("span"); s.className = "swatch"; s.style.background = r.colour; td.appendChild(s); }}
      td.appendChild(document.createTextNode(cellText(r[k])));
      tr.appendChild(td);
    }}
    tr.addEventListener("click", () => goTo(r.case, r.view_voxel));
    tbody.appendChild(tr);
  }}
}}
for (const table of document.querySelectorAll("table.lesions")) {{
  fillTable(table);
  for (const th of table.querySelectorAll("th[data-key]")) {{
    th.addEventListener("click", () => {{
      table.dataset.sortDir = table.dataset.sortKey === th.dataset.key ? -Number(table.dataset.sortDir || 1) : 1;
      table.dataset.sortKey = th.dataset.key;
      fillTable(table);
    }});
  }}
}}
const STATUS_LUT = {{ R: [0, 44, 214, 230], G: [0, 160, 39, 198], B: [0, 44, 40, 25], A: [0, 255, 255, 255],
                     I: [0, 1, 2, 3], labels: ["", "TP", "FN", "FP"] }};
function loadCaseData(caseId) {{
  return new Promise((resolve, reject) => {{
    if (window.LESIONSEG_DATA && window.LESIONSEG_DATA[caseId]) return resolve(window.LESIONSEG_DATA[caseId]);
    const s = document.createElement("script");
    s.src = "{files_dir}/" + encodeURIComponent(caseId) + ".js";
    s.onload = () => resolve(window.LESIONSEG_DATA[caseId]);
    s.onerror = () => reject(new Error("cannot load " + s.src));
    document.head.appendChild(s);
  }});
}}
async function openViewer(caseId) {{
  if (window.lesionseg.viewers[caseId]) return window.lesionseg.viewers[caseId];
  const data = await loadCaseData(caseId);
  const canvas = document.getElementById("gl-" + caseId);
  canvas.style.display = "block";
  const nv = new niivue.Niivue({{ show3Dcrosshair: true, backColor: [0, 0, 0, 1], crosshairColor: [0.2, 0.6, 1, 1] }});
  await nv.attachToCanvas(canvas);
  const image = await niivue.NVImage.loadFromBase64({{ base64: data.image, name: caseId + "_image.nii.gz", colormap: "gray" }});
  const status = await niivue.NVImage.loadFromBase64({{ base64: data.status, name: caseId + "_status.nii.gz", colormap: "gray", opacity: 0.8 }});
  status.setColormapLabel(STATUS_LUT);
  nv.addVolume(image);
  nv.addVolume(status);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.updateGLVolume();
  window.lesionseg.viewers[caseId] = nv;
  return nv;
}}
async function goTo(caseId, voxel) {{
  const nv = await openViewer(caseId);
  nv.scene.crosshairPos = nv.vox2frac(voxel);
  nv.updateGLVolume();
  nv.drawScene();
  window.lesionseg.lastTarget = {{ case: caseId, voxel: voxel }};
}}
for (const b of document.querySelectorAll("button.open")) {{
  b.addEventListener("click", () => openViewer(b.dataset.case).catch(e => {{ window.lesionseg.errors.push(String(e)); console.error(e); }}));
}}
</script>
</body></html>
""".replace("{files_dir}", FILES_DIR)
