"""The edge runtime is torch-free: importing it (and predicting) never imports torch & co.

A second check runs the runtime and ``osteo-edge predict`` in a subprocess where torch, timm,
tensorflow, gradio, sklearn and matplotlib cannot be imported at all, as in a runtime-only
install. (A real fresh venv with only the runtime extra: benchmarks/runtime/fresh_venv.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from test_runtime_fixtures import knee_images, make_onnx_bundle

HEAVY = ("torch", "timm", "tensorflow", "gradio", "sklearn", "matplotlib", "torchvision", "tf_keras", "nncf")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_leaves_torch_unimported():
    r = _run(f"""
        import sys, json
        import osteo_edge.edge_runtime
        import osteo_edge.edge_runtime.backends, osteo_edge.edge_runtime.gate, osteo_edge.edge_runtime.report
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))
    """)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_runtime_and_cli_work_with_heavy_packages_blocked(tmp_path):
    bundle = make_onnx_bundle(tmp_path / "bundle")
    img = knee_images(1)[0]
    out = tmp_path / "p.csv"
    r = _run(f"""
        import sys, json
        for name in {HEAVY!r}:
            sys.modules[name] = None  # 'import torch' now raises ImportError, as in a runtime-only venv
        from osteo_edge.edge_runtime import EdgeClassifier
        p = EdgeClassifier.load({str(bundle)!r}, threads=1).predict({str(img)!r})
        assert p.status in ("ok", "refer"), p
        from typer.testing import CliRunner
        from osteo_edge.cli import app
        res = CliRunner().invoke(app, ["predict", {str(img)!r}, "--model", {str(bundle)!r}, "--json", "--csv", {str(out)!r}])
        assert res.exit_code == 0, res.output
        print("OK", json.loads(res.stdout.strip().splitlines()[0])["status"])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] in ("OK ok", "OK refer")
    assert out.read_text().startswith("path,status,label")


def test_help_works_without_torch():
    r = _run(f"""
        import sys
        for name in {HEAVY!r}:
            sys.modules[name] = None
        from typer.testing import CliRunner
        from osteo_edge.cli import app
        for cmd in (["--help"], ["predict", "--help"], ["bench", "--help"], ["train", "--help"], ["export", "--help"]):
            res = CliRunner().invoke(app, cmd)
            assert res.exit_code == 0, (cmd, res.output)
        print("OK")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("OK")
