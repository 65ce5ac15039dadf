"""Helpers for the DICOM tests: real third-party programs (dcmtk, GDCM, Orthanc) or a clear skip.

A missing program skips the test with the reason, except under CI (``CI`` set), where it fails:
CI installs them (README, the block after ``<!-- ci: system -->``).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KNEE_IMAGE = REPO.parent / "shared" / "data" / "knee" / "wani-mendeley" / "Normal" / "N1.JPEG"
KNEE_IMAGE_2 = REPO.parent / "shared" / "data" / "knee" / "multiclass-kaggle" / "Osteoporosis"


def require_programs(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        msg = f"needs {', '.join(missing)} (Debian: apt-get install dcmtk libgdcm-tools orthanc)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def require_knee() -> Path:
    if not KNEE_IMAGE.is_file():
        msg = f"real data not found at {KNEE_IMAGE}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return KNEE_IMAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=60.0, what="condition", step=0.05):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Orthanc:
    """A real Orthanc on loopback (its own storage under ``root``), optionally knowing DICOM modalities
    ({name: (AE, port)} at 127.0.0.1), driven through its REST API."""

    def __init__(self, root: Path, modalities: dict | None = None) -> None:
        import json
        import subprocess

        require_programs("Orthanc")
        self.dicom_port, http_port = free_port(), free_port()
        conf = {"Name": "osteo-edge-test", "StorageDirectory": str(root / "orthanc-db"), "IndexDirectory": str(root / "orthanc-db"),
                "DicomAet": "ORTHANC", "DicomPort": self.dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": [],
                "DicomModalities": {k: [ae, "127.0.0.1", port] for k, (ae, port) in (modalities or {}).items()}}
        (root / "orthanc.json").write_text(json.dumps(conf))
        self.proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{http_port}"

        def up():
            try:
                self.get("/system")
                return True
            except OSError:
                return False

        wait_until(up, 30, "Orthanc")

    def get(self, path):
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path, body, timeout=120):
        import json
        import urllib.request

        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data, method="POST"), timeout=timeout) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
