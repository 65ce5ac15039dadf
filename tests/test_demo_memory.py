"""Memory on a 36 Mpx knee radiograph (slow): the numbers of benchmarks/demo/memory.py, as a guard.

Runs the benchmark script (shipped bundle, API uploads, no answer-change section) into tmp and
checks its targets: ``osteo-edge predict`` peaks at or below 350 MB RSS (a fresh child process),
the demo at or below 1 GB after one upload with the heat map on and under 1.5 GB after five at
once, every upload is answered and nothing is left in the demo's folder after SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_36_megapixel_knee_stays_within_the_memory_targets(shared_data, tmp_path):
    from osteo_edge.edge_runtime import default_bundle_path

    if not (default_bundle_path() / "manifest.json").is_file():
        pytest.skip("no shipped bundle in this checkout")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "benchmarks" / "demo" / "memory.py"), "--no-browser", "--skip-answer-change", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    r = json.loads((tmp_path / "memory.json").read_text())
    p, d = r["predict"], r["demo"]
    assert p["exit_codes"] == [0, 0] and p["status_36mpx"] in ("ok", "refer", "rejected")
    assert p["knee_36mpx_peak_mb"] <= 350, p
    assert d["one_upload"]["answered"] and d["one_upload"]["VmHWM"] <= 1024, d["one_upload"]
    assert d["five_uploads"]["answered"] == 5 and d["five_uploads"]["VmHWM"] < 1536, d["five_uploads"]
    assert d["files_left_after_stop"] == []
    assert "pass" in (tmp_path / "MEMORY.md").read_text()
