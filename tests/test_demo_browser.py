"""The demo in a real headless browser (Debian's chromium driven by playwright; no browser download).

Starts ``osteo-edge demo`` as a separate process, uploads a real radiograph from ../shared/data,
waits for the verdict, checks the label and the probabilities, clicks the bundled DICOM example,
uploads two bad files and checks the messages, runs a small batch, saves a screenshot, and asserts
that no request the browser made left 127.0.0.1.

Needs: ``apt-get install -y chromium`` and ``pip install playwright`` (the ``browser`` extra).
Run with ``pytest -m browser tests/test_demo_browser.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_runtime_fixtures import knee_images, make_onnx_bundle, png_bytes

pytestmark = pytest.mark.browser

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    # Resolve nothing but the loopback address: Chromium's own services cannot reach out either.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--no-first-run",
    "--no-pings",
    "--safebrowsing-disable-auto-update",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
]


def _chromium() -> str:
    for c in CHROMIUM_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    found = shutil.which("chromium")
    if found:
        return found
    msg = "Debian's chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_for_test(tmp_path: Path) -> Path:
    """The shipped bundle when this checkout has one, else a tiny bundle made here."""
    from osteo_edge.edge_runtime import default_bundle_path

    shipped = default_bundle_path()
    if (shipped / "manifest.json").is_file():
        return shipped
    return make_onnx_bundle(tmp_path / "bundle")


@pytest.fixture()
def demo_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "OSTEO_EDGE_DEMO_TMP": str(tmp_path / "demo-tmp")}
    model = _model_for_test(tmp_path)
    cmd = [sys.executable, "-c", "from osteo_edge.cli import main; main()", "demo", "--model", str(model), "--port", str(port)]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("demo did not answer within 120 s")
            time.sleep(0.2)
        yield url, model, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_status(page, text: str, timeout: float = 60_000) -> str:
    page.wait_for_function(
        "t => { const e = document.querySelector('#status'); return e && e.innerText.includes(t); }",
        arg=text,
        timeout=timeout,
    )
    return page.locator("#status").inner_text()


def _upload(page, path: Path) -> None:
    """Put one file in the single-image input, clearing the previous one first."""
    clear = page.locator("#single-file button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
        page.locator("#single-file input[type=file]").wait_for(state="attached", timeout=30_000)
    page.locator("#single-file input[type=file]").set_input_files(str(path))


def test_demo_in_headless_chromium(demo_server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from osteo_edge.artifact import load_bundle

    url, model, proc = demo_server
    labels = load_bundle(model).labels
    chromium = _chromium()
    knees = knee_images(3)
    bad_text = tmp_path / "report.png"
    bad_text.write_bytes(b"this is a text file with a .png name\n" * 20)
    colour = tmp_path / "holiday_photo.png"
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[..., 2], rgb[..., 1] = 220, np.linspace(40, 200, 320).astype(np.uint8)[None, :]
    colour.write_bytes(png_bytes(rgb))

    requests: list[str] = []
    host = urllib.parse.urlsplit(url).netloc
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 1100})
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        page.on("websocket", lambda ws: requests.append(ws.url))
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        refused: list[str] = []
        page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status == 403 else None)
        page.goto(url, wait_until="networkidle")
        assert "osteo-edge" in page.title()
        headers = page.request.get(url).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"

        # 1. a real radiograph: verdict, label and probabilities appear
        _upload(page, knees[0])
        status = _wait_status(page, "Status:")
        assert knees[0].name in status
        if "rejected" not in status:
            probs = page.locator("#probs").inner_text()
            assert all(lab in probs for lab in labels), (labels, probs)
            assert probs.count("%") >= len(labels)
            assert any(lab in status.splitlines()[0] for lab in labels)
            page.wait_for_selector("#heatmap img")
            assert "Latency" in page.locator("#timing").inner_text()
        else:  # the shipped gate may refuse an unusual file; the next radiograph must pass
            _upload(page, knees[1])
            status = _wait_status(page, knees[1].name)
            assert "rejected" not in status
        page.screenshot(path=str(tmp_path / "demo_result.png"), full_page=True)

        # 2. a file that is not an image: a clear message, the app carries on
        _upload(page, bad_text)
        status = _wait_status(page, bad_text.name)
        assert "Input rejected" in status and "not a recognised image" in status
        assert page.locator("#heatmap img").count() == 0

        # 3. a colour photograph: refused by the input gate with its reason
        _upload(page, colour)
        status = _wait_status(page, colour.name)
        assert "Input rejected" in status and "colour" in status
        page.screenshot(path=str(tmp_path / "demo_rejected.png"), full_page=True)

        # 4. the bundled DICOM example, by clicking it
        page.get_by_role("button", name="Synthetic knee B (DICOM)").click()
        status = _wait_status(page, "synthetic_knee_b.dcm")
        assert "Status:" in status

        # 5. a batch: table rows and a CSV to download
        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-files input[type=file]").set_input_files([str(knees[0]), str(knees[2]), str(colour)])
        page.wait_for_function("() => document.querySelectorAll('#batch-files .file-preview tr, #batch-files tbody tr').length >= 3", timeout=30_000)
        page.locator("#batch-run").click()
        page.wait_for_function("() => /3 images: .* rejected\\./.test(document.querySelector('#batch-summary')?.innerText || '')", timeout=60_000)
        summary = page.locator("#batch-summary").inner_text()
        rejected = int(re.search(r"(\d+) rejected", summary).group(1))
        assert 1 <= rejected <= 3, summary  # the colour photo always; a knee only if the bundle's gate refuses it
        table = page.locator("#batch-table").inner_text()
        assert knees[0].name in table and colour.name in table
        csv_link = page.locator("#batch-csv a").first
        csv_link.wait_for(timeout=30_000)
        assert ".csv" in (csv_link.get_attribute("href") or "")
        page.screenshot(path=str(tmp_path / "demo_batch.png"), full_page=True)

        # 5b. a whole folder: side files (notes) are skipped, every image gets a row
        folder = tmp_path / "clinic_folder"
        (folder / "sub").mkdir(parents=True)
        (folder / "a.png").write_bytes(knees[1].read_bytes())
        (folder / "sub" / "b.jpg").write_bytes(knees[2].read_bytes())
        (folder / "notes.txt").write_text("not an image")
        page.locator("#batch-files button[aria-label='Clear']").first.click()
        page.locator("#batch-folder input[type=file]").set_input_files(str(folder))
        page.wait_for_function("() => document.querySelectorAll('#batch-folder tbody tr').length >= 3", timeout=30_000)
        page.locator("#batch-run").click()
        page.wait_for_function("() => /2 images: .* rejected\\./.test(document.querySelector('#batch-summary')?.innerText || '')", timeout=60_000)
        table = page.locator("#batch-table").inner_text()
        assert "a.png" in table and "b.jpg" in table and "notes.txt" not in table

        # 6. the model card
        page.get_by_role("tab", name="Model card").click()
        card = page.locator("#model-card").inner_text()
        assert "Split protocol" in card and "not a diagnosis" in card

        # 7. the page works under its Content-Security-Policy and the Host/Origin guard
        violations = [c for c in console if "Content Security Policy" in c or "Refused to" in c]
        assert violations == [] and refused == [], (violations, refused)
        browser.close()

    # 8. stopped with SIGTERM, the demo leaves no upload, heat map or CSV behind
    demo_tmp = tmp_path / "demo-tmp"
    assert any(p.suffix == ".csv" for p in demo_tmp.rglob("*")), "the batch CSV should be in the private folder"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert [p for p in demo_tmp.rglob("*") if p.is_file()] == []

    assert (tmp_path / "demo_result.png").stat().st_size > 10_000
    outside = [u for u in requests if not u.startswith(("data:", "blob:")) and urllib.parse.urlsplit(u).netloc != host]
    assert requests and outside == [], outside
