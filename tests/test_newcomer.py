"""A newcomer's first hour (issue 23, item 11): predict and demo say what happened and exit as the
README says (0 ok, 1 a gate or check failed, 2 usage)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osteo_edge.cli import app
from test_runtime_fixtures import make_onnx_bundle

KNEE = Path(__file__).resolve().parents[2] / "shared" / "data" / "knee"
needs_data = pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")
PIPED = {"COLUMNS": "80", "TTY_COMPATIBLE": "0"}


def test_predict_without_input_is_a_usage_error_like_a_missing_path(tmp_path) -> None:
    none = CliRunner().invoke(app, ["predict"], env=PIPED)
    missing = CliRunner().invoke(app, ["predict", str(tmp_path / "nope.png")], env=PIPED)
    assert none.exit_code == missing.exit_code == 2, (none.output, missing.output)
    assert "no input given" in none.output


@needs_data
def test_predict_folder_counts_the_files_it_skips(tmp_path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(KNEE / "multiclass-kaggle" / "Normal" / "normal_0001.png", folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "list.csv").write_text("a,b\n")
    (folder / ".DS_Store").write_bytes(b"\0")
    bundle = make_onnx_bundle(tmp_path / "bundle")  # not the shipped one: this test is about the folder
    res = CliRunner().invoke(app, ["predict", str(folder), "--model", str(bundle)], env=PIPED)
    assert res.exit_code == 0, res.output
    assert "skipped 3 non-image or hidden files in the folders (.DS_Store, .csv, .txt)" in res.output, res.output
    assert "1 inputs:" in res.output
    # a clinic user's next step is the offline demo, not a benchmark
    assert f"next: osteo-edge demo --model {bundle}" in res.output and "bench" not in res.output


def test_demo_on_a_busy_port_fails_before_printing_a_url(monkeypatch) -> None:
    import osteo_edge.demo.app as demo_app

    monkeypatch.setattr(demo_app, "launch_app", lambda *a, **k: pytest.fail("the demo tried to launch on a busy port"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["demo", "--port", str(port)], env=PIPED)
    assert res.exit_code == 1, res.output
    assert f"cannot listen on 127.0.0.1:{port}" in res.output and "--port" in res.output
    assert "http://" not in res.output and len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output
    assert demo_app.port_problem("127.0.0.1", port) is None  # free again once closed
