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


def test_parity_measures_agreement_on_a_pool_with_a_wilson_interval(setup: dict[str, Path], tmp_path: Path) -> None:
    """A folder pool: byte copies of train/val rows are left out, an undecodable file is counted, every
    other image counts for agreement (no labels needed); the gate uses the pool."""
    import shutil

    from osteo_edge.core.stats import wilson_interval
    from test_export_fixtures import KNEE, ROWS

    pool = tmp_path / "pool"
    pool.mkdir()
    unlabelled = sorted((KNEE / "wani-mendeley" / "Normal").glob("N2*"))[:4]
    for f in unlabelled:
        shutil.copy(f, pool / f.name)
    shutil.copy(KNEE / ROWS[0][1], pool / "copy_of_a_train_row.png")  # used to train: left out
    (pool / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pool.json"
    res = _invoke("--reference", str(setup["run"]), "--candidate", str(setup["good"]), "--candidate", str(setup["bad"]),
                  "--split", str(setup["split"]), "--pool", str(pool), "--json", str(out))
    assert res.exit_code == 1, res.output  # the flipped export fails the gate on the pool
    report = json.loads(out.read_text())
    assert report["pool"]["excluded_as_used"] == 1 and report["pool"]["undecodable"] == 1
    assert report["pool"]["n_images"] == len(unlabelled) == 4
    by_name = {c["name"]: c for c in report["candidates"]}
    good, bad = by_name["good-onnx"]["pool"], by_name["bad-onnx"]["pool"]
    assert good["n"] == 4 and good["agree"] == 4 and good["agreement"] == 1.0 and good["ci_method"] == "wilson"
    assert good["ci95"] == pytest.approx(list(wilson_interval(4, 4))) and good["ci95"][0] < 0.6
    assert bad["agree"] == 0 and any("pool images" in f and "agreement" in f for f in by_name["bad-onnx"]["failures"])
    assert "pool: files under" in res.output and "percentile bootstrap over 4 radiographs" in " ".join(res.output.split())


def test_pool_from_an_audit_groups_csv_keeps_one_file_per_unused_group(setup: dict[str, Path], tmp_path: Path) -> None:
    import csv

    from osteo_edge.data.split import read_split
    from osteo_edge.export.pool import pool_from_groups, resolve_pool

    table = read_split(setup["split"])
    train = next(r for r in table.rows if r.split == "train")
    test = next(r for r in table.rows if r.split == "test")
    groups = tmp_path / "groups.csv"
    with open(groups, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "label", "group", "sha256", "phash", "readable"])
        w.writerow([train.path, "s", "Normal", 0, "sha-train", "", True])  # a train image ...
        w.writerow(["/data/near-copy-of-train.png", "s", "Normal", 0, "sha-near", "", True])  # ... and its near copy
        w.writerow([test.path, "s", "Normal", 1, "sha-test", "", True])
        w.writerow(["/data/conflict-b.png", "s", "Osteopenia", 2, "sha-b", "", True])  # a dropped (conflicting) group
        w.writerow(["/data/conflict-a.png", "s", "Normal", 2, "sha-a", "", True])
        w.writerow(["/data/unreadable.png", "s", "Normal", 3, "sha-u", "", False])
    pool = pool_from_groups(groups, table)
    assert pool.paths == tuple(sorted([test.path, "/data/conflict-a.png"])) and pool.excluded == 2
    assert resolve_pool(None, table).paths == tuple(r.path for r in table.subset("test"))
    with pytest.raises(Exception, match="folder of images or an audit groups.csv"):
        resolve_pool(tmp_path / "missing", table)
    every = pool_from_groups(groups, table, members="all")
    assert every.paths == tuple(sorted([test.path, "/data/conflict-a.png", "/data/conflict-b.png"]))
    assert every.describe()["n_radiographs"] == 2 and every.group_of()["/data/conflict-b.png"] == "2"


def test_pool_agreement_over_copies_takes_its_interval_over_radiographs() -> None:
    """Copies of one radiograph are not independent: with groups the interval is a bootstrap over
    radiographs, wider than Wilson's over files when the disagreements sit in one radiograph."""
    import numpy as np

    from osteo_edge.export.pool import pool_agreement

    ref = np.tile([[0.9, 0.1]], (40, 1))
    cand = ref.copy()
    cand[:4] = [[0.1, 0.9]] * 4  # four copies of radiograph 0 disagree
    groups = [str(i // 4) for i in range(40)]
    by_file, by_radiograph = pool_agreement(ref, cand), pool_agreement(ref, cand, groups)
    assert by_file["agreement"] == by_radiograph["agreement"] == 0.9
    assert by_file["ci_method"] == "wilson" and "bootstrap over 10 radiographs" in by_radiograph["ci_method"]
    assert by_radiograph["n_radiographs"] == 10
    assert by_radiograph["ci95"][0] < by_file["ci95"][0]
