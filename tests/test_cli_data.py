"""The CLI surface of the foundation: help, data audit/split, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from osteo_edge.cli import app

runner = CliRunner()


def test_help_lists_commands_and_disclaimer():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "data" in res.output and "screening aid" in res.output.lower()


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys; from osteo_edge.cli import app; "
        "heavy = [m for m in ('torch', 'tensorflow', 'gradio', 'timm', 'sklearn') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_audit_and_split_cli(mini_sources, tmp_path):
    audit_dir = tmp_path / "audit"
    res = runner.invoke(app, ["data", "audit", *map(str, mini_sources), "--out", str(audit_dir)])
    assert res.exit_code == 0, res.output
    assert json.loads((audit_dir / "audit.json").read_text())["distinct_groups"] == 7
    assert "osteo-edge data split" in res.output  # the next command to run
    split_dir = tmp_path / "split"
    res = runner.invoke(
        app,
        ["data", "split", *map(str, mini_sources), "--out", str(split_dir), "--val", "0.2", "--test", "0.2",
         "--groups", str(audit_dir / "groups.csv"), "--seed", "3"],
    )
    assert res.exit_code == 0, res.output
    assert (split_dir / "split.csv").read_text().startswith("path,label,orig_label,source,group,split,fold,sha256")
    info = json.loads((split_dir / "split.json").read_text())
    assert info["options"]["seed"] == 3 and "group-aware" in info["protocol"]


def test_user_errors_are_one_line_exit_1(tmp_path):
    res = runner.invoke(app, ["data", "audit", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert res.output.strip().startswith("error:") and "does not exist" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["data", "split", str(tmp_path), "--out", str(tmp_path / "o"), "--conflicts", "vote"])
    assert res.exit_code == 2 and "vote" in res.output  # usage error from the enum


def test_console_script_error_is_one_line(tmp_path):
    exe = [sys.executable, "-c", "from osteo_edge.cli import main; main()"]
    proc = subprocess.run([*exe, "data", "audit", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
