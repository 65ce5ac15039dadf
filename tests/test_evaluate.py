"""Evaluation: metrics, calibration, thresholds, files written, predictions contract, k-fold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from typer.testing import CliRunner  # noqa: E402

from osteo_edge.artifact import DISCLAIMER, load_bundle  # noqa: E402
from osteo_edge.cli import app  # noqa: E402
from osteo_edge.preprocess import preprocess  # noqa: E402
from osteo_edge.train.config import TrainConfig  # noqa: E402
from osteo_edge.train.engine import train  # noqa: E402
from osteo_edge.core.classification import (  # noqa: E402
    bootstrap_ci, choose_low_bmd_threshold, classification_metrics, ece_score, fast_headline, headline,
)
from osteo_edge.core.stats import softmax  # noqa: E402
from osteo_edge.modeling.calibration import fit_temperature  # noqa: E402
from osteo_edge.modeling.loading import load_run  # noqa: E402

from test_train import DATA, KNEE, LABELS, make_tiny_split  # noqa: E402

pytestmark = pytest.mark.skipif(not KNEE.is_dir(), reason="shared data not available")
WANI_TABLE = DATA / "tabular" / "wani_patient_details.csv"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    split = make_tiny_split(root / "split")
    cfg = TrainConfig(split=str(split), arch="cnn", img_size=32, epochs=2, batch_size=4, weights="none", threads=1)
    train(cfg, root / "run")
    return root / "run"


# ------------------------------------------------------------------------------------------------
# metric functions


def test_temperature_scaling_lowers_validation_nll():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(0, 1, (300, 3))
    logits[np.arange(300), y] += 1.5
    logits *= 4  # overconfident
    t = fit_temperature(logits, y)
    assert t > 1.5

    def nll(T):
        p = softmax(logits, T)
        return -np.mean(np.log(p[np.arange(300), y]))

    assert nll(t) < nll(1.0)
    assert ece_score(softmax(logits, t), y) < ece_score(softmax(logits, 1.0), y)


def test_low_bmd_threshold_meets_target_sensitivity_on_val():
    rng = np.random.default_rng(1)
    y_low = rng.integers(0, 2, 200)
    p = np.clip(0.5 * y_low + rng.normal(0.25, 0.2, 200), 0, 1)
    c = choose_low_bmd_threshold(y_low, p, 0.9)
    sens = (p[y_low == 1] >= c["threshold"]).mean()
    assert sens >= 0.9 and c["val_sensitivity"] == pytest.approx(sens)
    higher = np.unique(p[p > c["threshold"]])
    if len(higher):  # the next higher threshold would miss the target
        assert (p[y_low == 1] >= higher[0]).mean() < 0.9


def test_bootstrap_over_groups_and_fast_metrics_match():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60)
    probs[np.arange(60), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    slow, fast = headline(classification_metrics(y, probs, LABELS, 0.4)), fast_headline(y, probs, LABELS, 0.4)
    for k in slow:
        assert fast[k] == pytest.approx(slow[k]), k
    ci = bootstrap_ci(y, probs, LABELS, groups=np.arange(60) // 2, low_bmd_threshold=0.4, n_boot=200)
    for k, e in ci.items():
        lo, hi = e["ci95"]
        assert lo <= e["value"] <= hi, k
    assert ci["accuracy"]["ci95"][1] - ci["accuracy"]["ci95"][0] > 0.05


# ------------------------------------------------------------------------------------------------
# evaluate end to end


def test_cli_evaluate_writes_every_file_and_reseals(run, tmp_path):
    r = CliRunner().invoke(app, ["evaluate", "--model", str(run), "--bootstrap", "100", "--metadata", str(WANI_TABLE),
                                 "--key", "Patient Id", "--subgroups", "age,sex", "--threads", "1"])
    assert r.exit_code == 0, r.output
    out = run / "eval" / "test"
    for name in ("metrics.json", "report.md", "predictions.csv", "confusion.png", "roc.png", "reliability.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    b = load_bundle(run)  # resealed: every checksum still verifies, eval files included
    assert "eval/test/predictions.csv" in b.manifest["files"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["temperature"] == pytest.approx(b.temperature) and m["thresholds"] == b.thresholds
    assert b.metrics.test.macro_f1 == pytest.approx(m["headline"]["macro_f1"]["value"])
    assert [r.step for r in b.revisions] == ["evaluate"] and b.revisions[0].previous_seal
    assert set(m["per_source"]) == {"multiclass-kaggle", "wani-mendeley"}
    sg = m["subgroups"]
    assert sg["matched"] == 2 and set(sg["by"]) == {"age", "sex"} and sg["by"]["sex"]["column"] == "Gender"
    assert all(g in ("<50", "50-59", "60-69", "70+") for g in sg["by"]["age"]["groups"])
    report = (out / "report.md").read_text()
    assert "tiny test split" in report and DISCLAIMER in report and "Per source" in report and "Subgroups" in report

    # predictions.csv: contract columns and calibrated probabilities of the bundle's own model
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "source", "group", "split", "label", "pred", "p_Normal", "p_Osteopenia", "p_Osteoporosis",
                             "low_bmd_probability", "group_source"]
    # the per-source report beside the shortcut baselines (counted on the run's own training rows)
    src = m["sources"]
    assert src["baselines"]["basis"] == "training rows" and {v["source"] for v in src["verdicts"]} == set(m["per_source"])
    assert "shortcut" in report and "beats shortcut" in src["markdown"]
    assert len(rows) == 6 and {r["split"] for r in rows} == {"test"}
    model, bundle = load_run(run)
    x = torch.from_numpy(np.stack([preprocess(r["path"], bundle.spec) for r in rows]))
    with torch.no_grad():
        p = softmax(model(x).numpy(), bundle.temperature)
    got = np.array([[float(r[f"p_{lab}"]) for lab in LABELS] for r in rows])
    np.testing.assert_allclose(got, p, atol=2e-6)
    np.testing.assert_allclose([float(r["low_bmd_probability"]) for r in rows], 1 - p[:, 0], atol=2e-6)


def test_evaluate_val_subset_and_bad_options(run, tmp_path):
    r = CliRunner().invoke(app, ["evaluate", "--model", str(run), "--subset", "val", "--out", str(tmp_path / "v"), "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["subset"] == "val"
    load_bundle(run)
    r = CliRunner().invoke(app, ["evaluate", "--model", str(run), "--metadata", str(WANI_TABLE), "--key", "Nope", "--out", str(tmp_path / "w")])
    assert r.exit_code == 1 and "Patient Id" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no such model bundle" in r.output


def test_kfold_train_and_evaluate(tmp_path):
    split = make_tiny_split(tmp_path / "split")
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--split", str(split), "--out", str(tmp_path / "cv"), "--arch", "cnn", "--weights", "none",
                            "--img-size", "32", "--epochs", "1", "--batch-size", "6", "--folds", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cv" / "fold0" / "manifest.json").is_file() and (tmp_path / "cv" / "fold1" / "manifest.json").is_file()
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["folds"] == 2
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "cv"), "--folds", "2", "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "cv" / "eval" / "test" / "cv_metrics.json").read_text())
    assert s["folds"] == 2 and s["summary"]["accuracy"]["n"] == 2
    assert "±" in (tmp_path / "cv" / "eval" / "test" / "cv_report.md").read_text()
    b0 = load_bundle(tmp_path / "cv" / "fold0")
    assert "fold 0 of 2" in b0.manifest["provenance"]["protocol"]


def test_subgroup_bands_with_repeated_values():
    from osteo_edge.train.subgroups import subgroup_names

    ages = ["65", "54", "65", "70", "65", "49", "39", ""]
    assert subgroup_names("Age", ages) == {"65": "60-69", "54": "50-59", "70": "70+", "49": "40-49", "39": "<40", "": "missing"}
    assert subgroup_names("Gender", ["male", "female", "male"]) == {"male": "male", "female": "female"}
    bmi = [str(x) for x in np.linspace(18, 35, 30)] * 2
    assert len(set(subgroup_names("BMI:", bmi).values())) == 3  # tertiles of a numeric column


def test_age_bands_have_one_home():
    """Training's evaluation and the tabular bias analysis name ages with one definition (core.age_bands)."""
    from osteo_edge.core.age_bands import AGE_EDGES, age_band
    from osteo_edge.tabular import bias
    from osteo_edge.train.subgroups import subgroup_names

    ages = ["17", "40", "49.5", "50", "69", "70", "107"]
    assert list(subgroup_names("age", ages).values()) == [age_band(a) for a in ages] == [bias.age_band(a, AGE_EDGES) for a in ages]
    assert bias.parse_edges(None) == AGE_EDGES


def test_macro_f1_has_one_home_over_the_classes_present():
    """core.classification.macro_f1 serves the bootstrap headline and the per-source report; it is
    sklearn's macro-F1 over the classes present in y (a class only predicted does not count)."""
    import math

    from sklearn.metrics import f1_score

    from osteo_edge.core.classification import classification_metrics, fast_headline, macro_f1

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)  # class 2 never true
    pred = rng.integers(0, 3, 60)
    want = f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0)
    probs = np.full((60, 3), 0.1)
    probs[np.arange(60), pred] = 0.8
    assert macro_f1(y, pred) == pytest.approx(want)
    assert fast_headline(y, probs, LABELS)["macro_f1"] == macro_f1(y, pred)
    assert classification_metrics(y, probs, LABELS)["macro_f1"] == pytest.approx(want)
    assert math.isnan(macro_f1(np.array([], dtype=int), np.array([], dtype=int)))
