"""The DICOM side keeps the layering: no torch, nothing from train/compress/export; `serve --help` is fast."""

from __future__ import annotations

import subprocess
import sys


def test_dicom_modules_import_no_training_stack():
    heavy = "m.split('.')[0] in ('torch', 'timm', 'tensorflow', 'gradio')"
    code = (
        "import sys; import osteo_edge.dicom.node, osteo_edge.dicom.record, osteo_edge.dicom.sr, osteo_edge.dicom.spool, "
        "osteo_edge.dicom.decode, osteo_edge.dicom.samples; "
        f"bad = [m for m in sys.modules if {heavy} "
        "or m.startswith(('osteo_edge.train', 'osteo_edge.compress', 'osteo_edge.export', 'osteo_edge.modeling'))]; print(bad); "
        # the CLI package registers every command (their option tables are light): still no heavy library
        f"import osteo_edge.cli.serve, osteo_edge.cli.record; print([m for m in sys.modules if {heavy}])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "[]"]


def test_serve_and_record_help_show_defaults():
    code = "import sys; from osteo_edge.cli import main; sys.argv = ['osteo-edge', *sys.argv[1:]]; main()"
    for args in (["serve", "--help"], ["record", "export", "--help"], ["record", "stats", "--help"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                             env={"COLUMNS": "200", "PATH": "", "PYTHONPATH": ":".join(sys.path)})
        assert out.returncode == 0, out.stderr
        if args[0] == "serve":
            for default in ("11112", "OSTEOEDGE", "127.0.0.1", "RECORD.spool", "200.0"):
                assert default in out.stdout, default
