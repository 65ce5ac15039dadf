"""`osteo-edge predict`: table, --json (one object per input per line), --csv, exit codes, no tracebacks."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from osteo_edge.cli import app

from test_runtime_fixtures import LABELS, knee_images, make_onnx_bundle, png_bytes

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_onnx_bundle(tmp_path_factory.mktemp("pb") / "bundle")


@pytest.fixture()
def mixed(tmp_path):
    """A folder mixing good radiographs (nested, DICOM too) and bad files."""
    from test_gate import dicom_bytes

    root = tmp_path / "mixed"
    (root / "nested" / "deeper").mkdir(parents=True)
    good = knee_images(2)
    shutil.copy(good[0], root / good[0].name)
    shutil.copy(good[1], root / "nested" / "deeper" / good[1].name)
    base = np.asarray(Image.open(good[0]).convert("L")).astype(np.uint16) * 16
    (root / "nested" / "scan").write_bytes(dicom_bytes(base))  # DICOM without an extension
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    (root / "truncated.png").write_bytes(png_bytes(np.asarray(Image.open(good[0]).convert("L")))[:300])
    (root / "tiny.png").write_bytes(png_bytes(np.full((20, 20), 100, np.uint8)))
    (root / "blank.png").write_bytes(png_bytes(np.zeros((300, 300), np.uint8)))
    colour = np.random.default_rng(0).integers(0, 255, (200, 200, 3)).astype(np.uint8)
    (root / "photo.png").write_bytes(png_bytes(colour))
    (root / ".hidden.png").write_bytes(b"")  # hidden files are skipped
    (root / "index.csv").write_text("a,b\n")  # side files are skipped
    return root


def test_json_one_line_per_input(bundle, mixed):
    res = runner.invoke(app, ["predict", str(mixed), "--model", str(bundle), "--json"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 9
    for r in rows:
        assert {"path", "status", "label", "probabilities", "message"} <= set(r)
    by = {r["path"].split("/")[-1]: r for r in rows}
    assert {by[n]["status"] for n in ("empty.png", "notes.jpg", "truncated.png", "tiny.png", "blank.png", "photo.png")} == {"rejected"}
    assert by["tiny.png"]["reason"] == "too_small" and by["blank.png"]["reason"] == "blank" and by["photo.png"]["reason"] == "colour"
    assert "empty" in by["empty.png"]["message"]
    ok = [r for r in rows if r["status"] != "rejected"]
    assert len(ok) == 3  # 2 images + the DICOM
    for r in ok:
        assert set(r["probabilities"]) == set(LABELS) and r["label"] in LABELS
    assert by["scan"]["status"] in ("ok", "refer")
    assert "Traceback" not in res.output


def test_table_and_csv(bundle, mixed, tmp_path):
    out = tmp_path / "out" / "preds.csv"
    res = runner.invoke(app, ["predict", str(mixed), "--model", str(bundle), "--csv", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "rejected" in res.stdout and "not a diagnosis" in res.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9 and rows[0].keys() >= {"path", "status", "label", "p_Normal", "low_bmd_probability", "message"}


def test_missing_path_exits_2_with_one_line(bundle, tmp_path):
    res = runner.invoke(app, ["predict", str(tmp_path / "nope.png"), "--model", str(bundle), "--json"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip() == f"error: no such file or folder: {tmp_path / 'nope.png'}"
    (tmp_path / "empty.png").write_bytes(b"")  # a file that exists but is unusable: answered, exit 0
    res = runner.invoke(app, ["predict", str(tmp_path / "empty.png"), "--model", str(bundle), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "rejected"


@pytest.mark.parametrize(
    "args,match,code",
    [  # README exit codes: 2 usage (checked before the model loads), 1 a model that does not load
        (["predict"], "no input", 2),
        (["predict", "{knee}", "--model", "/nonexistent/bundle"], "no such model bundle", 1),
        (["predict", "{knee}", "--model", "{bundle}", "--threads", "0"], "--threads", 2),
    ],
)
def test_usage_and_model_errors_exit_codes(bundle, args, match, code):
    args = [a.replace("{bundle}", str(bundle)).replace("{knee}", str(knee_images(1)[0])) for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == code, res.output
    assert match in res.output and "Traceback" not in res.output


def test_tampered_model_exit_1(tmp_path):
    b = make_onnx_bundle(tmp_path / "t")
    (b / "model.onnx").write_bytes(b"tampered")
    res = runner.invoke(app, ["predict", str(knee_images(1)[0]), "--model", str(b)])
    assert res.exit_code == 1 and "checksum" in res.output
