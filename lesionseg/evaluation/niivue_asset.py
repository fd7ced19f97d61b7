"""Fetch the pinned NiiVue viewer into ``lesionseg/evaluation/assets/`` (run by ``make install``).

``python -m lesionseg.evaluation.niivue_asset`` packs ``@niivue/niivue@NIIVUE_VERSION`` from the npm
registry (``npm pack``), checks the tarball against the pinned SHA-512 integrity, and extracts its
``dist/niivue.umd.js`` (the browser bundle, a global ``niivue``) as ``niivue-<version>.umd.js``.
Exit 0 when the file is there (already or now), 1 with one line saying why not (no npm, no
network, a tarball that is not the pinned release); reports are then written without the viewer.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lesionseg.evaluation.html_report import NIIVUE_FILE, NIIVUE_INTEGRITY, NIIVUE_VERSION


def fetch(target: Path = NIIVUE_FILE) -> Path:
    """Download, verify and extract the bundle to ``target``; its path (nothing done if present)."""
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js/npm to get the 3D viewer of report.html")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([npm, "pack", f"@niivue/niivue@{NIIVUE_VERSION}", "--pack-destination", tmp],
                              capture_output=True, text=True, timeout=300)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            first = (proc.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise RuntimeError(f"npm pack @niivue/niivue@{NIIVUE_VERSION} failed: {first}")
        data = tarballs[0].read_bytes()
        digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if digest != NIIVUE_INTEGRITY:
            raise RuntimeError(f"{tarballs[0].name}: integrity {digest[:24]}... is not the pinned {NIIVUE_INTEGRITY[:24]}...")
        with tarfile.open(tarballs[0]) as tar:
            member = tar.extractfile("package/dist/niivue.umd.js")
            if member is None:
                raise RuntimeError(f"{tarballs[0].name}: no package/dist/niivue.umd.js")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            partial.write_bytes(member.read())
            partial.replace(target)
    return target


def main() -> int:
    try:
        path = fetch()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"WARNING NiiVue {NIIVUE_VERSION} not installed ({exc}); report.html will have no 3D viewer",
              file=sys.stderr)
        return 1
    print(f"NiiVue {NIIVUE_VERSION}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
