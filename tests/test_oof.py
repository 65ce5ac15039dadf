"""osteo-edge evaluate --cv (out-of-fold per-source scoring of a k-fold run directory) and
osteo-edge compare --paired (two recipes on the same radiographs, paired bootstrap)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from test_export_fixtures import KNEE, make_run

pytestmark = pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from test_train import make_tiny_split

    root = tmp_path_factory.mktemp("oof")
    split = make_tiny_split(root / "split", {"train": 4, "val": 2, "test": 2})  # non-test rows in folds 0 and 1
    a, c = root / "A", root / "C"
    make_run(a / "fold0", seed=0)
    make_run(a / "fold1", seed=1)
    make_run(c / "fold0", seed=0)  # C: the same fold-0 model as A, another fold-1 model
    make_run(c / "fold1", seed=1, flip=True)
    return {"root": root, "split": split, "A": a, "C": c}


def _invoke(*args: str):
    from osteo_edge.cli import app

    return CliRunner().invoke(app, list(args))


def test_evaluate_cv_scores_every_radiograph_by_the_model_that_did_not_train_on_it(cv: dict[str, Path]) -> None:
    from osteo_edge.data.split import read_split

    ja, jc = cv["root"] / "a.json", cv["root"] / "c.json"
    res = _invoke("evaluate", "--cv", str(cv["A"]), "--split", str(cv["split"]), "--json", str(ja), "--name", "A")
    assert res.exit_code == 0, res.output
    assert "out of fold" in res.output and "wani-mendeley" in res.output and "multiclass-kaggle" in res.output
    res = _invoke("evaluate", "--cv", str(cv["C"]), "--split", str(cv["split"]), "--json", str(jc), "--name", "C")
    assert res.exit_code == 0, res.output
    a, c = json.loads(ja.read_text()), json.loads(jc.read_text())
    table = read_split(cv["split"])
    non_test = [r for r in table.rows if r.split != "test"]
    assert a["n"] == len(non_test) == len(a["oof"]["probs"]) and a["lever"] == "A"
    assert {s["source"] for s in a["report"]["per_source"]} == {"multiclass-kaggle", "wani-mendeley"}
    assert "accuracy_ci95" in a["report"]["per_source"][0] and "2-fold group CV" in a["protocol"]
    fold = {r.group: r.fold for r in non_test}
    pa, pc = np.array(a["oof"]["probs"]), np.array(c["oof"]["probs"])
    assert a["oof"]["group"] == c["oof"]["group"]
    in_fold0 = np.array([fold[g] == 0 for g in a["oof"]["group"]])
    # fold-0 radiographs were scored by fold 0's model (the same in A and C), fold-1 ones by fold 1's (different)
    assert np.allclose(pa[in_fold0], pc[in_fold0]) and not np.allclose(pa[~in_fold0], pc[~in_fold0])
    assert ja.with_suffix(".md").is_file()
    # an ensemble of A with itself is A; the mirror average is another answer
    from osteo_edge.release.oof import score_cv

    twice = score_cv([cv["A"], cv["A"]], cv["split"])
    assert np.allclose(twice["oof"]["probs"], pa, atol=1e-5) and twice["runs"] == [str(cv["A"])] * 2
    flipped = score_cv([cv["A"]], cv["split"], flip=True)
    assert flipped["flip"] and np.abs(np.array(flipped["oof"]["probs"]) - pa).max() > 1e-4  # near-uniform random models: small, not zero


def test_compare_paired_differences_with_an_interval(cv: dict[str, Path]) -> None:
    ja, jc = cv["root"] / "a.json", cv["root"] / "c.json"
    if not ja.is_file():
        test_evaluate_cv_scores_every_radiograph_by_the_model_that_did_not_train_on_it(cv)
    res = _invoke("compare", "--paired", str(ja), str(jc), "--out", str(cv["root"] / "cmp"), "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    out = json.loads((cv["root"] / "cmp" / "paired.json").read_text())
    assert out["a"] == "A" and out["b"] == "C" and out["n_boot"] == 200
    kag = out["by_source"]["multiclass-kaggle"]
    assert kag["n"] == 12 and kag["difference"] == pytest.approx(kag["auroc_b"] - kag["auroc_a"])
    same = _invoke("compare", "--paired", str(ja), str(ja), "--out", str(cv["root"] / "same"), "--bootstrap", "200")
    assert same.exit_code == 0, same.output
    k = json.loads((cv["root"] / "same" / "paired.json").read_text())["by_source"]["multiclass-kaggle"]
    assert k["difference"] == 0 and k["ci95"] == [0, 0]


def test_cv_and_paired_refuse_bad_input_in_one_line(cv: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("evaluate")
    assert res.exit_code == 2 and "--model" in res.output and "Traceback" not in res.output
    res = _invoke("evaluate", "--cv", str(cv["A"]))
    assert res.exit_code == 2 and "--split" in res.output
    res = _invoke("evaluate", "--cv", str(tmp_path), "--split", str(cv["split"]))
    assert res.exit_code == 1 and "fold0" in res.output and "Traceback" not in res.output
    flat = tmp_path / "flat.csv"
    lines = cv["split"].read_text().splitlines()
    head = lines[0].split(",")
    i = head.index("fold")
    flat.write_text("\n".join([lines[0], *(",".join(c if j != i else "-1" for j, c in enumerate(row.split(","))) for row in lines[1:])]) + "\n")
    res = _invoke("evaluate", "--cv", str(cv["A"]), "--split", str(flat))
    assert res.exit_code == 1 and "no folds" in res.output
    not_scores = tmp_path / "x.json"
    not_scores.write_text("{}")
    res = _invoke("compare", "--paired", str(not_scores), str(not_scores), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and "out-of-fold" in res.output
    res = _invoke("compare", "--paired", str(not_scores), "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "two scores files" in res.output and "Traceback" not in res.output


def test_paired_and_cv_refuse_damaged_scores_and_bad_destinations(cv: dict[str, Path], tmp_path: Path) -> None:
    """A damaged oof block was an IndexError/TypeError traceback; --bootstrap 0 or -5 printed a table
    built on no draws; --json naming a folder failed after the scoring, --out naming a file on mkdir."""
    ja = cv["root"] / "a.json"
    if not ja.is_file():
        test_evaluate_cv_scores_every_radiograph_by_the_model_that_did_not_train_on_it(cv)
    a = json.loads(ja.read_text())
    for i, change in enumerate(({"probs": a["oof"]["probs"][:3]}, {"group": None}, {"probs": [[0.1]] * len(a["oof"]["group"])})):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(json.dumps({**a, "oof": {**a["oof"], **change}}))
        res = _invoke("compare", "--paired", str(ja), str(bad), "--out", str(tmp_path / "o"))
        assert res.exit_code == 1 and "damaged" in res.output and "Traceback" not in res.output, res.output
    bad.write_text(json.dumps({**a, "oof": None}))
    res = _invoke("compare", "--paired", str(ja), str(bad), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and "damaged" in res.output
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")  # an image given by mistake: was a UnicodeDecodeError traceback
    res = _invoke("compare", "--paired", str(ja), str(bad), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and "not JSON" in res.output and "Traceback" not in res.output
    for n in ("0", "-5"):
        res = _invoke("compare", "--paired", str(ja), str(ja), "--out", str(tmp_path / "o"), "--bootstrap", n)
        assert res.exit_code == 2 and "--bootstrap" in res.output
    res = _invoke("compare", "--paired", str(ja), str(ja), "--out", str(ja), "--bootstrap", "10")
    assert res.exit_code == 2 and "is a file" in res.output
    assert not (tmp_path / "o").exists()
    res = _invoke("evaluate", "--cv", str(cv["A"]), "--split", str(cv["split"]), "--json", str(tmp_path))
    assert res.exit_code == 2 and "is a folder" in res.output and "Traceback" not in res.output
    res = _invoke("evaluate", "--cv", str(cv["A"]), "--split", str(cv["split"]), "--json", str(ja / "x.json"))
    assert res.exit_code == 2 and "is a file" in res.output
    # options of the other mode were silently ignored
    res = _invoke("evaluate", "--cv", str(cv["A"]), "--split", str(cv["split"]), "--model", str(cv["A"]), "--out", str(tmp_path / "e"))
    assert res.exit_code == 2 and "--model, --out not used with --cv" in res.output and not (tmp_path / "e").exists()
    res = _invoke("compare", str(ja), str(ja), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--paired" in res.output and not (tmp_path / "o").exists()


def test_paired_accepts_a_rewritten_split_file_with_the_same_radiographs_only() -> None:
    from osteo_edge.errors import ConfigError
    from osteo_edge.release.oof import paired_comparison

    oof = {"labels": ["Normal", "Osteoporosis"], "group": [1, 2, 3, 4], "source": ["s"] * 4, "label": ["Normal", "Osteoporosis"] * 2,
           "probs": [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]}
    a = {"lever": "A", "eval_split_sha256": "1" * 64, "oof": oof}
    b = {"lever": "B", "eval_split_sha256": "2" * 64, "oof": {**oof, "probs": [[0.5, 0.5]] * 4}}
    out = paired_comparison(a, b, n_boot=50)  # same rows, another file (e.g. relative paths): paired, and said so
    assert "eval_split_note" in out and out["by_source"]["s"]["n"] == 4
    other = {**b, "oof": {**b["oof"], "label": ["Osteoporosis", "Normal"] * 2}}
    with pytest.raises(ConfigError, match="different evaluation splits"):
        paired_comparison(a, other, n_boot=50)
