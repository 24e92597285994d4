#!/usr/bin/env python3
"""Screenshot a `segtool docs` report in headless Chromium (for docs/report.md).

    python scripts/report_screenshot.py examples/ecommerce/target/report/index.html docs/img/report.png

Uses playwright's Chromium when `python -m playwright install chromium` has
fetched one, else a system Chromium (`apt-get install chromium`, or
SEGTOOL_CHROMIUM=/path/to/chrome). The page is cut at --height pixels so the
image stays small enough for a README.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def launch(p):
    try:
        return p.chromium.launch()
    except Exception as exc:  # noqa: BLE001 - playwright's own browser is not installed
        for exe in (
            os.environ.get("SEGTOOL_CHROMIUM"),
            shutil.which("chromium"),
            shutil.which("chromium-browser"),
        ):
            if exe:
                return p.chromium.launch(executable_path=exe)
        raise SystemExit(
            "no Chromium: apt-get install chromium, or playwright install chromium"
        ) from exc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400, help="cut the page here (pixels)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(args.report.resolve().as_uri(), wait_until="load")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=False)
        finally:
            browser.close()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
