"""`osteo-edge compare`: one table and one PNG across runs."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from osteo_edge.cli import app  # noqa: E402
from osteo_edge.train.compare import count_macs  # noqa: E402
from osteo_edge.train.config import TrainConfig  # noqa: E402
from osteo_edge.train.engine import train  # noqa: E402
from osteo_edge.train.evaluate import evaluate_run  # noqa: E402
from osteo_edge.modeling.models import build_model  # noqa: E402

from test_train import KNEE, make_tiny_split  # noqa: E402

pytestmark = pytest.mark.skipif(not KNEE.is_dir(), reason="shared data not available")


def test_macs_of_a_known_layer():
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5, bias=False))
    assert count_macs(lin, (1, 3, 2, 2)) == 60
    conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 1, 8, 8)) == 8 * 8 * 4 * 9
    assert count_macs(build_model("cnn", 3).eval(), (1, 1, 32, 32)) > 0


def test_cli_compare_two_runs(tmp_path):
    split = make_tiny_split(tmp_path / "split")
    runs = []
    for name, size in (("a", 32), ("b", 40)):
        cfg = TrainConfig(split=str(split), arch="cnn", img_size=size, epochs=1, batch_size=6, weights="none", threads=1)
        train(cfg, tmp_path / name)
        runs.append(tmp_path / name)
    evaluate_run(runs[0], n_boot=50, threads=1, plots=False)
    r = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(tmp_path / "cmp"), "--latency-runs", "3", "--threads", "1"])
    assert r.exit_code == 0, r.output
    for name in ("compare.md", "compare.csv", "compare.json", "compare.png"):
        assert (tmp_path / "cmp" / name).is_file(), name
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a, b = res["runs"]
    assert a["params"] == b["params"] and b["macs"] > a["macs"]  # same weights, larger input
    assert a["test"]["macro_f1"]["ci95"][0] <= a["test"]["macro_f1"]["value"] and b["test"] == {}
    assert res["same_split"] and res["machine"]["cores"]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "tiny test split" in md and "| a | cnn |" in md
