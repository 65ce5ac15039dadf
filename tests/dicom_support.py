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
