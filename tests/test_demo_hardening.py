"""Clinic hardening of the demo: nothing left on disk, only its own page can drive it.

- the demo as a separate process (``osteo-edge demo``) with its own base folder
  (``OSTEO_EDGE_DEMO_TMP``): uploads through the HTTP API, then SIGTERM / SIGINT leave no image,
  CSV or DICOM file; a start after SIGKILL sweeps the leftovers (the browser version is in
  test_demo_browser.py, marker ``browser``);
- Host and Origin checks, security headers, owner-only files;
- the workspace sweeper and the banner.
"""

from __future__ import annotations

import http.client
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_runtime_fixtures import knee_images, make_onnx_bundle

from osteo_edge.demo.guard import SECURITY_HEADERS, HostPolicy, LocalOnlyGuard

PATIENT_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".csv", ".bmp", ".webp"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("hardening") / "bundle")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None, body: bytes | None = None,
             host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body or b"")
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _multipart(name: str, data: bytes) -> tuple[dict[str, str], bytes]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


def _files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*") if p.is_file())


def _patient_files(base: Path) -> list[Path]:
    return [p for p in _files(base) if p.suffix.lower() in PATIENT_SUFFIXES]


class DemoProcess:
    """``osteo-edge demo`` in a subprocess with its own base folder."""

    def __init__(self, bundle: Path, base: Path, log: Path):
        self.port = _free_port()
        self.base = base
        env = {**os.environ, "OSTEO_EDGE_DEMO_TMP": str(base), "HF_HUB_OFFLINE": "1"}
        env.pop("GRADIO_TEMP_DIR", None)
        cmd = [sys.executable, "-c", "from osteo_edge.cli import main; main()", "demo", "--model", str(bundle),
               "--port", str(self.port), "--threads", "1"]
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"demo exited with {self.proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if _request(self.port)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                pytest.fail("demo did not answer within 120 s")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=30)
        self._fh.close()
        return rc

    def use(self, tmp: Path, images: list[Path]) -> None:
        """One prediction with the heat map and a batch, through the API (gradio_client)."""
        from gradio_client import Client, handle_file

        client = Client(self.url, verbose=False, analytics_enabled=False, download_files=str(tmp / "client"))
        status, *_ = client.predict(handle_file(str(images[0])), True, api_name="/predict")
        assert "Status:" in status, status
        from osteo_edge.demo.examples import examples_dir

        batch = [*images, examples_dir() / "synthetic_knee_b.dcm"]  # a DICOM upload too
        summary, _table, csv_path = client.predict([handle_file(str(p)) for p in batch], None, api_name="/batch")
        assert f"{len(batch)} images" in summary and csv_path


def _run_folders(base: Path) -> list[Path]:
    return sorted(base.glob("run-*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_demo_leaves_no_patient_file(bundle_dir, tmp_path, sig):
    base = tmp_path / "base"
    demo = DemoProcess(bundle_dir, base, tmp_path / "server.log")
    try:
        demo.use(tmp_path, knee_images(2))
        (run,) = _run_folders(base)
        kept = _patient_files(run)
        # the uploads, the heat-map image and the CSV are all inside the one private folder
        assert {p.suffix.lower() for p in kept} >= {".csv", ".png", ".dcm"}, kept
        assert any(p.is_relative_to(run / "gradio") for p in kept) and any(p.is_relative_to(run / "views") for p in kept)
        assert stat.S_IMODE(base.stat().st_mode) == 0o700 and stat.S_IMODE(run.stat().st_mode) == 0o700
        modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in kept}
        assert set(modes.values()) == {"0o600"}, modes
    finally:
        rc = demo.stop(sig)
    assert rc == 0, demo.log.read_text()[-3000:]
    assert _files(base) == [] and _run_folders(base) == [], _files(base)


def test_a_start_after_sigkill_sweeps_the_leftovers(bundle_dir, tmp_path):
    base = tmp_path / "base"
    demo = DemoProcess(bundle_dir, base, tmp_path / "first.log")
    demo.use(tmp_path, knee_images(1))
    demo.stop(signal.SIGKILL)
    (left,) = _run_folders(base)
    assert _patient_files(left), "a killed demo cannot clean up; the next start must"
    again = DemoProcess(bundle_dir, base, tmp_path / "second.log")
    try:
        assert not left.exists()
        from osteo_edge.demo.examples import EXAMPLES

        assert len(_run_folders(base)) == 1
        assert {p.name for p in _patient_files(base)} <= {e.file for e in EXAMPLES}  # only the bundled drawings
    finally:
        again.stop(signal.SIGTERM)
    assert _files(base) == []


# ------------------------------------------------------------------------------------------------
# only its own page


@pytest.fixture(scope="module")
def served(bundle_dir):
    from osteo_edge.demo import build_app, launch_app
    from osteo_edge.demo.workspace import active_workspace
    from osteo_edge.edge_runtime import EdgeClassifier

    app = build_app(EdgeClassifier.load(bundle_dir, threads=1), grid=2)
    port = _free_port()
    launch_app(app, "127.0.0.1", port, block=False, quiet=True)
    yield port, active_workspace()
    app.close()


def test_foreign_host_header_is_refused(served):
    port, _ = served
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1:{port + 1}", "192.168.1.7:%d" % port, ""):
        status, headers, body = _request(port, host=host)
        assert status == 403, host
        assert b"not allowed" in body and headers["x-frame-options"] == "DENY"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert _request(port, host=host)[0] == 200, host


def test_cross_origin_upload_is_refused_and_not_written(served):
    port, ws = served
    before = set(_files(ws.gradio_dir))
    headers, body = _multipart("evil.png", b"\x89PNG not really" * 1000)
    for origin in ("http://evil.example", f"http://attacker.example:{port}", "null", f"https://127.0.0.1:{port}"):
        status, _, text = _request(port, "POST", "/gradio_api/upload", {**headers, "Origin": origin}, body)
        assert status == 403, (origin, text)
    assert set(_files(ws.gradio_dir)) == before  # nothing reached the disk
    status, _, _ = _request(port, "POST", "/gradio_api/upload", {**headers, "Origin": "null", "Sec-Fetch-Site": "cross-site"}, body)
    assert status == 403
    # the page's own origin (what a browser sends from the demo page) and API clients (no Origin) work
    status, _, text = _request(port, "POST", "/gradio_api/upload", {**headers, "Origin": f"http://127.0.0.1:{port}"}, body)
    assert status == 200, text
    status, _, text = _request(port, "POST", "/gradio_api/upload", headers, body)
    assert status == 200, text
    # a cross-origin API call (the queue) is refused as well
    status, _, _ = _request(port, "POST", "/gradio_api/queue/join", {"Origin": "http://evil.example", "Content-Type": "application/json"}, b"{}")
    assert status == 403


def test_security_headers_on_every_response(served):
    port, _ = served
    for method, path in (("GET", "/"), ("GET", "/config"), ("GET", "/gradio_api/info"), ("GET", "/no/such/page"), ("GET", "/theme.css")):
        status, headers, _ = _request(port, method, path)
        for k, v in SECURITY_HEADERS.items():
            assert headers.get(k) == v, (path, status, k, headers.get(k))
    csp = SECURITY_HEADERS["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert SECURITY_HEADERS["x-content-type-options"] == "nosniff" and SECURITY_HEADERS["referrer-policy"] == "no-referrer"


def test_host_policy():
    local = HostPolicy("127.0.0.1", 7860)
    assert local.allows("127.0.0.1:7860") and local.allows("localhost:7860") and local.allows("[::1]:7860")
    assert not local.allows("127.0.0.1:7861") and not local.allows("evil.example:7860") and not local.allows(None)
    assert not local.allows("10.0.0.5:7860")
    everywhere = HostPolicy("0.0.0.0", 80)
    assert everywhere.allows("10.0.0.5") and everywhere.allows("[fe80::1]:80") and everywhere.allows("0.0.0.0:80")
    assert not everywhere.allows("attacker.example") and not everywhere.allows("10.0.0.5:81")
    named = HostPolicy("clinic-pc.local", 7860, extra=["reception"])
    assert named.allows("clinic-pc.local:7860") and named.allows("reception:7860") and not named.allows("10.0.0.5:7860")


def test_websocket_from_a_foreign_origin_is_closed():
    import asyncio

    sent: list[dict] = []

    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("reached the app")

    async def send(message):
        sent.append(message)

    guard = LocalOnlyGuard(app, "127.0.0.1", 7860)
    scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"127.0.0.1:7860"), (b"origin", b"http://evil.example")]}
    asyncio.run(guard(scope, None, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


# ------------------------------------------------------------------------------------------------
# the workspace


def test_workspace_is_private_swept_and_closed(tmp_path):
    from osteo_edge.demo.workspace import Workspace, sweep_old

    ws = Workspace(tmp_path / "base", keep_seconds=60)
    assert ws.path.name.startswith(f"run-{os.getpid()}-") and stat.S_IMODE(ws.path.stat().st_mode) == 0o700
    old, new = ws.folder("views") / "old.png", ws.folder("results") / "new.csv"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert sweep_old(ws.path, 60) == 1 and not old.exists() and new.exists()
    ws.close()
    assert not ws.path.exists()
    (tmp_path / "evil").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "evil")
    from osteo_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="not a plain folder"):
        Workspace(tmp_path / "link")


def test_banner_url_and_network_note():
    from osteo_edge.demo.app import browse_url, network_note

    assert browse_url("0.0.0.0", 7860) == "http://127.0.0.1:7860/"
    assert browse_url("::", 7860) == "http://[::1]:7860/"
    assert browse_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert browse_url("::1", 8000) == "http://[::1]:8000/"
    assert "this computer's address" in network_note("0.0.0.0", 7860) and network_note("127.0.0.1", 7860) is None


def test_cli_on_all_interfaces_prints_an_openable_url_and_one_warning(bundle_dir, tmp_path):
    port = _free_port()
    env = {**os.environ, "OSTEO_EDGE_DEMO_TMP": str(tmp_path / "base")}
    cmd = [sys.executable, "-c", "from osteo_edge.cli import main; main()", "demo", "--model", str(bundle_dir), "--host", "0.0.0.0",
           "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _request(port)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert f"http://127.0.0.1:{port}/" in out and "0.0.0.0:" not in out.replace("(0.0.0.0)", ""), out
    assert out.lower().count("all network interfaces") == 1, out
    assert "this computer's address" in out
