"""The parity gate: reference through torch, candidates through the edge runtime, exit code 1 on a failed gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_export_fixtures import KNEE, make_run, make_split

pytestmark = pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from osteo_edge.export import export_model

    root = tmp_path_factory.mktemp("parity")
    split = make_split(root / "split")
    run = make_run(root / "run")
    flipped = make_run(root / "flipped", flip=True)  # same labels and spec, opposite answers
    good = root / "good-onnx"
    export_model(run, "onnx", good, golden_size=2, evaluate=False)
    bad = root / "bad-onnx"
    export_model(flipped, "onnx", bad, golden_size=2, evaluate=False)
    return {"root": root, "split": split, "run": run, "good": good, "bad": bad}


def _invoke(*args: str):
    from osteo_edge.cli import app

    return CliRunner().invoke(app, ["parity", *args])


def test_parity_passes_for_a_faithful_export(setup: dict[str, Path]) -> None:
    out = setup["root"] / "pass.json"
    res = _invoke("--reference", str(setup["run"]), "--candidate", str(setup["good"]), "--split", str(setup["split"]), "--json", str(out))
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and "protocol" in res.output
    report = json.loads(out.read_text())
    assert report["passed"] and report["n_images"] == 6 and report["subset"] == "test"
    cand = report["candidates"][0]
    assert cand["agreement"] == 1.0 and cand["max_abs_dp"] < 1e-4 and cand["backend"].startswith("onnxruntime")
    assert cand["metrics"]["accuracy"] == pytest.approx(report["reference"]["accuracy"])
    assert "ci95" in cand["metrics"]["headline"]["macro_f1"]
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from osteo_edge.export.parity import read_parity_json, write_parity

    again = read_parity_json(out)  # the JSON round-trips into a report that redraws its chart
    assert again.passed and again.candidates[0].agreement == 1.0
    assert write_parity(again, None, setup["root"] / "redrawn.png")["png"].is_file()


def test_parity_exit_code_1_names_the_failed_gate(setup: dict[str, Path]) -> None:
    out = setup["root"] / "fail.json"
    res = _invoke("--reference", str(setup["run"]), "--candidate", str(setup["good"]), "--candidate", str(setup["bad"]),
                  "--split", str(setup["split"]), "--json", str(out))
    assert res.exit_code == 1, res.output
    assert "gate failed" in res.output and "bad-onnx" in res.output and "agreement" in res.output
    report = json.loads(out.read_text())
    assert not report["passed"]
    by_name = {c["name"]: c for c in report["candidates"]}
    assert by_name["good-onnx"]["failures"] == []
    assert by_name["bad-onnx"]["agreement"] == 0.0 and any("agreement" in f for f in by_name["bad-onnx"]["failures"])


def test_parity_refuses_a_corrupted_candidate(setup: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(setup["good"], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    original = (broken / "manifest.json").read_text()
    manifest["labels"] = list(reversed(manifest["labels"]))  # tampered manifest: files still verify
    (broken / "manifest.json").write_text(json.dumps(manifest))
    res = _invoke("--reference", str(setup["run"]), "--candidate", str(broken), "--split", str(setup["split"]))
    assert res.exit_code == 1 and "seal mismatch" in res.output
    (broken / "manifest.json").write_text(original)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    res = _invoke("--reference", str(setup["run"]), "--candidate", str(broken), "--split", str(setup["split"]))
    assert res.exit_code == 1 and "checksum" in res.output


def test_parity_options_are_validated(setup: dict[str, Path]) -> None:
    res = _invoke("--reference", str(setup["run"]), "--candidate", str(setup["good"]), "--split", str(setup["split"]), "--subset", "holdout")
    assert res.exit_code == 1 and "valid: train, val, test" in res.output
    res = _invoke("--reference", str(setup["run"]), "--candidate", str(setup["good"]), "--split", str(setup["split"]), "--max-drop", "2")
    assert res.exit_code == 1 and "--max-drop" in res.output
