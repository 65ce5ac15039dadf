"""Screenshots of the demo for the docs, taken in headless Debian chromium (no browser download).

    .venv/bin/python benchmarks/demo/screenshot.py [--model BUNDLE] [--example "Synthetic knee A (PNG)"] [--out docs/img]

Starts ``osteo-edge demo``, clicks a bundled example (synthetic drawings: licence-clean, unlike the
research-only radiographs in ../shared/data), waits for the verdict and saves ``demo.png`` (one
image: verdict, probabilities, heat map, latency) and ``demo_model_card.png``. Needs
``apt-get install -y chromium`` and ``pip install playwright``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="bundle directory (default: the shipped bundle)")
    ap.add_argument("--example", default="Synthetic knee A (PNG)", help="title of the bundled example to click")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from osteo_edge.edge_runtime import default_bundle_path

    model = args.model or default_bundle_path()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from osteo_edge.cli import main; main()", "demo", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}/"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"demo exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.monotonic() - t0 > 120:
                    raise SystemExit("demo did not answer within 120 s") from None
                time.sleep(0.2)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.goto(url, wait_until="networkidle")
            page.get_by_role("button", name=args.example).click()
            page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('Status:')", timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(args.out / "demo.png"), full_page=True)
            page.get_by_role("tab", name="Model card").click()
            page.wait_for_timeout(300)
            page.screenshot(path=str(args.out / "demo_model_card.png"), full_page=True)
            print(page.locator("#model-card").inner_text()[:400])
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for name in ("demo.png", "demo_model_card.png"):
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
