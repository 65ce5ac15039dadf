"""Spreadsheet formula injection: every CSV the product writes neutralises formula-like text cells
through the one helper, osteo_edge.core.csvsafe."""

from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

import numpy as np
import pytest

from osteo_edge.core.csvsafe import csv_text, safe_cell, safe_frame
from osteo_edge.edge_runtime import Prediction
from osteo_edge.edge_runtime.report import predictions_csv

SRC = Path(__file__).resolve().parents[1] / "src" / "osteo_edge"
EVIL = ["=SUM(1+1)cmd.jpg", "+1+1.png", "-2+3.png", "@SUM(1+1)cmd.jpg", "\t=1.png", "\r=1.png", "=HYPERLINK(\"http://x\")"]


@pytest.mark.parametrize("cell", EVIL)
def test_formula_cells_get_a_quote(cell):
    assert safe_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["knee.png", "", "a=b", "'=already", "-0.5", "+3", "-1e-3", "12", ".5", -0.5, 3, None, 1.5])
def test_numbers_and_plain_text_are_untouched(cell):
    assert safe_cell(cell) == cell


def test_csv_text_round_trip_shows_text_not_formulas():
    text = csv_text(["path", "p"], [[e, "-0.25"] for e in EVIL])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert [r[0] for r in rows[1:]] == ["'" + e for e in EVIL]
    assert all(r[1] == "-0.25" for r in rows[1:])  # a negative number is data


def test_predictions_csv_neutralises_file_names_and_messages(tmp_path):
    preds = [
        Prediction(path="@SUM(1+1)cmd.jpg", status="ok", label="Normal", probabilities={"Normal": 0.9, "Low": 0.1},
                   message="Normal (90%)", latency_ms=1.0, low_bmd_probability=0.1),
        Prediction(path="=cmd|' /C calc'!A0.png", status="rejected", label=None, probabilities={},
                   message="-rejected: not an image", reason="invalid_image"),
    ]
    out = predictions_csv(preds, ["Normal", "Low"], tmp_path / "p.csv")
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert rows[0]["path"] == "'@SUM(1+1)cmd.jpg" and rows[0]["p_Normal"] == "0.900000"
    assert rows[1]["path"] == "'=cmd|' /C calc'!A0.png" and rows[1]["message"] == "'-rejected: not an image"
    assert not any(v.startswith(("=", "+", "@")) for r in rows for v in r.values())


def test_safe_frame_neutralises_text_columns_only():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"id": ["=1+1", "-3", "ok"], "p": [-0.5, 0.25, 1.0], "=col": ["a", "b", "c"]})
    out = safe_frame(df)
    assert list(out["id"]) == ["'=1+1", "-3", "ok"] and list(out["p"]) == [-0.5, 0.25, 1.0]
    assert list(out.columns) == ["id", "p", "'=col"] and list(df["id"]) == ["=1+1", "-3", "ok"]  # input untouched


def test_tabular_outputs_are_neutralised(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    pytest.importorskip("skops")
    from osteo_edge.tabular.train import TrainOptions, train_tabular

    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame(rng.normal(size=(n, 4)), columns=[f"f{i}" for i in range(4)])
    df["y"] = (np.arange(n) < 40).astype(int)
    df["pid"] = [f"=HYPERLINK(\"x{i}\")" if i % 2 else f"@P{i}" for i in range(n)]
    src = tmp_path / "t.csv"
    df.to_csv(src, index=False)
    opts = TrainOptions(target="y", id_column="pid", models=("logreg",), folds=3, trees=5, bootstrap=20, importance_repeats=0, plots=False)
    out = tmp_path / "run"
    train_tabular(src, out, opts, command="test")
    written = sorted(out.glob("*.csv"))
    assert any(p.name == "oof_predictions.csv" for p in written)
    for p in written:
        for row in csv.reader(p.read_text().splitlines()):
            for cell in row:
                assert not cell.startswith(("=", "@", "+", "\t", "\r")), (p.name, cell)
                if cell.startswith("-"):
                    float(cell)  # only numbers may start with a minus
    oof = (out / "oof_predictions.csv").read_text()
    assert "'@P0" in oof and "'=HYPERLINK" in oof
    from osteo_edge.tabular.store import load_run, predict_frame, write_predictions_csv

    pred = write_predictions_csv(predict_frame(load_run(out), df), tmp_path / "risk.csv")
    cells = [c for row in csv.reader(pred.read_text().splitlines()) for c in row]
    assert "'@P0" in cells and not any(c.startswith(("=", "@", "+")) for c in cells)


def _calls(path: Path) -> list[str]:
    """Every ``X.to_csv(...)``/``csv.writer(...)`` call in a file, as the source of its receiver."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("to_csv", "writer", "DictWriter"):
            found.append(f"{node.func.attr}:{ast.unparse(node.func.value)}")
    return found


def test_every_product_csv_writer_goes_through_csvsafe():
    """New writers in the runtime, the demo, tabular, the DICOM record or the CLI must use core.csvsafe
    (a guard for later edits; cli/tabular.py once wrote risk estimates with a plain to_csv)."""
    bad = []
    for sub in ("edge_runtime", "demo", "tabular", "dicom", "cli"):
        for f in sorted((SRC / sub).rglob("*.py")):
            for call in _calls(f):
                if call.startswith("to_csv:") and not call.startswith("to_csv:safe_frame("):
                    bad.append(f"{f.relative_to(SRC)}: {call}")
                if call.startswith(("writer:csv", "DictWriter:csv")):
                    bad.append(f"{f.relative_to(SRC)}: {call} (use core.csvsafe.csv_text)")
    assert bad == []
