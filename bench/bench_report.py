"""report.html in headless Chromium: how long a report takes to open, and one case's viewer.

    .venv/bin/python bench/bench_report.py REPORT [--case CASE] [--screenshot PNG]

Prints the page's size on disk (page, viewer, per case), the time until the page is usable
(``load`` event: tables filled, no volume loaded yet), the time to open one case's 3D viewer
(its volumes loaded and drawn), and with ``--screenshot`` saves the page with that case open and
its first false-positive lesion selected.  Needs Debian's ``chromium`` and ``playwright``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, nargs="?", default=Path("runs/lopo/threshold_baseline/report_html"),
                        help="a folder with report.html (default: the threshold baseline's leave-one-patient-out report)")
    parser.add_argument("--case", help="case whose viewer is opened (default: the first)")
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    if not (args.report / "report.html").is_file():
        print(f"bench_report: no {args.report / 'report.html'} (make one with lesionseg evaluate); nothing measured")
        return 0
    from playwright.sync_api import sync_playwright

    page_file = args.report / "report.html"
    files = sorted((args.report / "report_files").glob("*.js"))
    total = page_file.stat().st_size + sum(f.stat().st_size for f in files)
    print(f"report: {page_file} ({page_file.stat().st_size / 1e3:.0f} kB), {total / 1e6:.1f} MB in all")
    for f in files:
        print(f"  {f.name:<28}{f.stat().st_size / 1e6:6.2f} MB")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        t0 = time.perf_counter()
        page.goto(page_file.resolve().as_uri(), wait_until="load")
        opened = time.perf_counter() - t0
        button = page.locator(f'button.open[data-case="{args.case}"]' if args.case else "button.open").first
        case = button.get_attribute("data-case")
        t0 = time.perf_counter()
        button.click()
        page.wait_for_function(f"() => window.lesionseg.viewers[{case!r}] !== undefined", timeout=120000)
        page.wait_for_timeout(200)
        viewer = time.perf_counter() - t0
        print(f"page usable after {opened:.2f} s; {case}'s viewer drawn after {viewer:.2f} s (software WebGL)")
        if args.screenshot:
            table = page.locator(f'table.lesions[data-case="{case}"] tbody tr')
            fp = [i for i in range(table.count()) if "FP" in table.nth(i).inner_text()]
            table.nth(fp[0] if fp else 0).click()
            page.wait_for_timeout(500)
            page.locator(f"#case-{case}").scroll_into_view_if_needed()
            page.locator(f"#case-{case}").screenshot(path=str(args.screenshot))
            print(f"screenshot: {args.screenshot}")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
