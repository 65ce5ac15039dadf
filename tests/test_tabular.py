"""Clinical risk models: leakage guard, SMOTE inside folds, schema check, metrics, skops runs, bias, fusion."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")
pytest.importorskip("imblearn")
pytest.importorskip("skops")

from osteo_edge.errors import BundleError, ConfigError, DataError  # noqa: E402
from osteo_edge.tabular import metrics as M  # noqa: E402
from osteo_edge.tabular.leakage import LeakageError, density_measurement, find_identifiers  # noqa: E402
from osteo_edge.tabular.table import TableSchema, infer_schema, read_table, resolve_column  # noqa: E402
from osteo_edge.tabular.train import TrainOptions, cross_validate, prepare, train_tabular  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WANI = DATA / "tabular" / "wani_patient_details.csv"
LIFE = DATA / "tabular" / "lifestyle_osteoporosis.csv"
WANI_IMAGES = DATA / "knee" / "wani-mendeley"
SAFE_DROP = ("S.No", "T-score Value", "Z-Score Value")


def fast(**kw) -> TrainOptions:
    base = dict(models=("logreg",), folds=3, trees=10, bootstrap=50, importance_repeats=0, plots=False)
    base.update(kw)
    return TrainOptions(**base)


# ------------------------------------------------------------------------------------------------
# leakage guard


def test_guard_refuses_tscore_and_zscore_on_wani():
    df = read_table(WANI)
    with pytest.raises(LeakageError) as ei:
        prepare(df, fast(target="Diagnosis", id_column="Patient Id", drop=("S.No",)))
    msg = str(ei.value)
    assert "\n" not in msg
    assert "'T-score Value'" in msg and "'Z-Score Value'" in msg
    assert '--drop "T-score Value,Z-Score Value"' in msg
    assert "Age" not in msg  # a real risk factor is not refused


def test_guard_catches_a_proxy_by_its_values_not_its_name():
    df = read_table(WANI).rename(columns={"T-score Value": "measurement_7"})
    with pytest.raises(LeakageError, match=r"'measurement_7': single-feature CV ROC-AUC 0\.9\d+ >= 0\.95"):
        prepare(df, fast(target="Diagnosis", id_column="Patient Id", drop=("S.No", "Z-Score Value")))
    assert density_measurement("T-score Value") and density_measurement("BMD (g/cm2)") and not density_measurement("Age")


def test_guard_allows_on_purpose_with_a_loud_warning(caplog):
    df = read_table(WANI)
    with caplog.at_level(logging.WARNING):
        data = prepare(df, fast(target="Diagnosis", id_column="Patient Id", drop=("S.No", "Z-Score Value"), allow_leaky=("t-score value",)))
    assert "T-score Value" in data.schema.feature_names
    assert data.leakage.allowed == ["T-score Value"]
    assert any("LEAKAGE ALLOWED ON PURPOSE" in r.message and "T-score Value" in r.message for r in caplog.records)


def test_guard_refuses_identifiers():
    df = read_table(LIFE)
    with pytest.raises(LeakageError, match=r"\['Id'\] look like row identifiers .*--id-col 'Id'"):
        prepare(df, fast(target="Osteoporosis"))
    wani = read_table(WANI)
    assert set(find_identifiers(wani, list(wani.columns))) == {"S.No", "Patient Id"}
    ok = prepare(df, fast(target="Osteoporosis", id_column="Id"))
    assert "Id" not in ok.schema.feature_names and ok.ids[0] == df["Id"].iloc[0]


# ------------------------------------------------------------------------------------------------
# SMOTE inside the training folds only


def _noise_table(seed: int, n: int = 240, minority: int = 40) -> "pd.DataFrame":
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    df["y"] = (np.arange(n) < minority).astype(int)
    return df


def test_smote_sees_only_training_fold_rows(monkeypatch):
    """Instrument the sampler: every call gets exactly one training fold, never a validation row."""
    import imblearn.over_sampling as ov
    from sklearn.model_selection import StratifiedKFold

    calls: list[tuple[int, tuple[int, ...]]] = []

    class RecordingSMOTE(ov.SMOTE):
        def _fit_resample(self, X, y):
            calls.append((len(y), tuple(np.bincount(np.asarray(y), minlength=2))))
            Xr, yr = super()._fit_resample(X, y)
            assert len(yr) > len(y)  # it did make synthetic samples
            return Xr, yr

    monkeypatch.setattr(ov, "SMOTE", RecordingSMOTE)
    df = _noise_table(0)
    opts = TrainOptions(target="y", models=("logreg", "rf"), smote=True, folds=4, trees=10, importance_repeats=0, bootstrap=0)
    data = prepare(df, opts)
    oof, fold_of, _, _ = cross_validate(data, opts)
    expected = []
    for tr, _ in StratifiedKFold(4, shuffle=True, random_state=0).split(np.zeros(len(data.y)), data.y):
        expected.append((len(tr), tuple(np.bincount(data.y[tr], minlength=2))))
    assert calls == expected * 2  # one call per fold per model, each on that fold's training rows only
    assert all(n < len(df) for n, _ in calls)
    for p in oof.values():  # validation folds are the untouched original rows: one prediction each
        assert p.shape == (len(df), 2) and not np.isnan(p).any()
    assert sorted(np.bincount(fold_of).tolist()) == [60, 60, 60, 60]


def test_smote_before_the_split_would_be_caught():
    """On pure noise, SMOTE inside the folds gives chance AUC; SMOTE before the split inflates it."""
    from imblearn.over_sampling import SMOTE
    from sklearn.model_selection import StratifiedKFold

    from osteo_edge.tabular.models import build_pipeline

    df = _noise_table(1)
    opts = TrainOptions(target="y", models=("rf",), smote=True, folds=5, trees=50, importance_repeats=0, bootstrap=0)
    data = prepare(df, opts)
    oof, _, _, _ = cross_validate(data, opts)
    honest = M.roc_auc(data.y, oof["rf"], 2)
    Xs, ys = SMOTE(random_state=0).fit_resample(data.X, data.y)  # the leaky order, for contrast
    Xs = pd.DataFrame(Xs, columns=data.X.columns)
    p = np.zeros((len(ys), 2))
    for tr, va in StratifiedKFold(5, shuffle=True, random_state=0).split(Xs, ys):
        p[va] = build_pipeline("rf", data.schema, trees=50).fit(Xs.iloc[tr], ys[tr]).predict_proba(Xs.iloc[va])
    leaky = M.roc_auc(ys, p, 2)
    assert honest < 0.7 < 0.8 < leaky


# ------------------------------------------------------------------------------------------------
# schema


def _schema_and_frame():
    df = read_table(LIFE).head(60)
    feats = [c for c in df.columns if c not in ("Id", "Osteoporosis")]
    return infer_schema(df, feats, "Osteoporosis", ["0", "1"], id_column="Id"), df


def test_schema_round_trip_and_accepts_target_and_id():
    schema, df = _schema_and_frame()
    again = TableSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema
    X = schema.check(df)
    assert list(X.columns) == schema.feature_names
    assert X["Age"].dtype == "float64" and schema.numeric == ["Age"]
    assert "Female" in next(c for c in schema.features if c.name == "Gender").categories
    schema.check(df.drop(columns=["Id", "Osteoporosis"]))  # neither is needed at prediction time


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.drop(columns=["Smoking"]), r"missing columns \['Smoking'\]"),
        (lambda d: d.assign(Shoe_size=1), r"unexpected columns \['Shoe_size'\]"),
        (lambda d: d.assign(Age=d["Age"].astype(str).where(d.index != 3, "sixty")), r"column 'Age' must be numeric .* found 'sixty' in data row 4"),
    ],
)
def test_schema_mismatch_is_one_clear_error(mutate, pattern):
    schema, df = _schema_and_frame()
    with pytest.raises(DataError, match=pattern) as ei:
        schema.check(mutate(df), source="new.csv")
    assert "\n" not in str(ei.value)


def test_unseen_category_is_logged_not_fatal(caplog):
    schema, df = _schema_and_frame()
    with caplog.at_level(logging.WARNING):
        X = schema.check(df.assign(Gender="Other"))
    assert (X["Gender"] == "Other").all()
    assert any("never seen in training" in r.message for r in caplog.records)


def test_resolve_column_is_whitespace_and_case_tolerant():
    cols = ["Weight (KG) ", "BMI: ", "Age"]
    assert resolve_column("weight (kg)", cols) == "Weight (KG) "
    with pytest.raises(ConfigError, match="unknown column 'Height'; valid: "):
        resolve_column("Height", cols)


def test_read_table_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="no such CSV"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "hdr.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(tmp_path / "hdr.csv")


# ------------------------------------------------------------------------------------------------
# metrics


def test_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet(np.ones(3), 300)
    p[:, 0] = np.round(p[:, 0], 1)  # ties
    p /= p.sum(1, keepdims=True)
    assert M.roc_auc(y, p, 3) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    yb = (y == 1).astype(int)
    pb = np.c_[1 - np.round(p[:, 1], 1), np.round(p[:, 1], 1)]
    assert M.roc_auc(yb, pb, 2) == pytest.approx(roc_auc_score(yb, pb[:, 1]))
    assert M.f1_macro(y, p.argmax(1), 3) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    est = M.bootstrap(y, p, 3, n_boot=200, seed=0)
    for e in est.values():
        assert e.low <= e.value <= e.high and e.valid_resamples == 200
    assert np.isnan(M.roc_auc(np.zeros(5, int), np.full((5, 2), 0.5), 2))  # one class only: undefined


# ------------------------------------------------------------------------------------------------
# run directory: skops files, checksums, trust allowlist


@pytest.fixture(scope="module")
def wani_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "wani"
    opts = TrainOptions(
        target="Diagnosis", id_column="Patient Id", drop=SAFE_DROP, models=("logreg", "rf", "xgboost"), smote=True,
        folds=3, trees=8, bootstrap=50, importance_repeats=1, plots=True,
    )
    train_tabular(WANI, out, opts, command="test")
    return out


def test_run_has_everything_and_every_model_loads(wani_run):
    from osteo_edge.tabular.store import load_run, predict_frame

    run = load_run(wani_run)
    m = run.manifest
    assert m["kind"] == "osteo-edge-tabular-run" and "not a diagnosis" in m["intended_use"]
    assert m["schema"]["id_column"] == "Patient Id" and "T-score Value" in m["schema"]["ignored"]
    assert "SMOTE (k=" in m["protocol"] and "inside each training fold only" in m["protocol"]
    for f in ("roc.png", "importance.png", "report.md", "metrics.csv", "leakage.csv", "oof_predictions.csv"):
        assert (wani_run / f).is_file()
    oof = run.oof()
    assert len(oof) == 3 * 208 and set(oof["model"]) == {"logreg", "rf", "xgboost"}
    df = read_table(WANI).head(7)
    for name in run.model_names:  # every pipeline type round-trips through the skops allowlist
        res = predict_frame(run, df, name)
        p = res[[f"p_{lab}" for lab in run.labels]].to_numpy()
        assert p.shape == (7, 3) and np.allclose(p.sum(1), 1)
        assert list(res["id"]) == list(df["Patient Id"]) and res["note"].str.contains("not a diagnosis").all()


def test_tampered_or_untrusted_model_is_refused(wani_run, tmp_path):
    import shutil

    import skops.io as sio

    from osteo_edge.tabular.store import load_model, load_run

    copy = tmp_path / "run"
    shutil.copytree(wani_run, copy)
    f = copy / "models" / "logreg.skops"
    f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(BundleError, match="checksum mismatch for models/logreg.skops"):
        load_run(copy)
    bad = tmp_path / "evil.skops"
    sio.dump({"payload": _Untrusted()}, bad)
    with pytest.raises(BundleError, match=r"refusing to load a model with untrusted types \['test_tabular._Untrusted'\]"):
        load_model(bad)


class _Untrusted:
    pass


def test_an_edited_run_manifest_is_refused_like_a_bundle(wani_run, tmp_path):
    """tabular.json is sealed like a model bundle's manifest: an edited metric or label list is
    refused although every file still matches its checksum."""
    import json
    import shutil

    from osteo_edge.tabular.store import load_run

    assert load_run(wani_run).manifest["seal"]["digest"]
    copy = tmp_path / "run"
    shutil.copytree(wani_run, copy)
    m = json.loads((copy / "tabular.json").read_text())
    m["selected"] = [name for name in m["models"] if name != m["selected"]][0]  # another model claimed as the chosen one
    (copy / "tabular.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="edited after the run was written"):
        load_run(copy)
    del m["seal"]
    (copy / "tabular.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="no valid seal"):
        load_run(copy)


# ------------------------------------------------------------------------------------------------
# fusion and bias (synthetic image predictions in the evaluate contract)


def write_image_predictions(path: Path, seed: int = 0, strength: float = 1.5, train_share: float = 0.6) -> Path:
    rng = np.random.default_rng(seed)
    labs = ["Normal", "Osteopenia", "Osteoporosis"]
    rows = []
    for i, lab in enumerate(labs):
        for f in sorted((WANI_IMAGES / lab).iterdir()):
            if f.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            split = rng.choice(["train", "val", "test"], p=[train_share, (1 - train_share) / 2, (1 - train_share) / 2])
            logit = rng.normal(0, 1, 3)
            logit[i] += strength
            p = np.exp(logit) / np.exp(logit).sum()
            rows.append({"path": str(f), "source": "wani-mendeley", "group": len(rows), "split": split, "label": lab,
                         "pred": labs[int(p.argmax())], **{f"p_{lab2}": p[j] for j, lab2 in enumerate(labs)},
                         "low_bmd_probability": 1 - p[0]})
    rows.append({"path": "/elsewhere/normal_0001.png", "source": "2class-kaggle", "group": 10**6, "split": "test", "label": "Normal",
                 "pred": "Normal", "p_Normal": 0.9, "p_Osteopenia": 0.05, "p_Osteoporosis": 0.05, "low_bmd_probability": 0.1})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fusion_uses_only_held_out_wani_images_and_reports_paired_cis(wani_run, tmp_path):
    from osteo_edge.tabular.fusion import fuse, read_image_predictions

    pred = write_image_predictions(tmp_path / "predictions.csv", strength=6.0)  # a near-perfect image model
    img, labels, counts = read_image_predictions(pred)
    raw = pd.read_csv(pred)
    held = raw[(raw["source"] == "wani-mendeley") & raw["split"].isin(["val", "test"])]
    assert counts["rows_of_source"] == len(held) and set(img["id"]) == {Path(p).stem for p in held["path"]}
    res = fuse(wani_run, pred, tmp_path / "fuse", n_boot=300)
    assert res.n_patients == len(img) and sum(res.class_counts.values()) == res.n_patients
    d = res.diffs[("fused_mean", "clinical")]["roc_auc"]
    assert d.low > 0  # a near-perfect image model must lift the clinical one
    text = (tmp_path / "fuse" / "report.md").read_text()
    assert f"n = {res.n_patients} patients" in text and "better (CI above 0)" in text
    with pytest.raises(DataError, match="no rows of source 'nope'"):
        read_image_predictions(pred, source="nope")
    # evaluate writes one predictions.csv per subset: val + test files give the same patients
    for sp in ("val", "test"):
        raw[raw["split"] == sp].to_csv(tmp_path / f"{sp}.csv", index=False)
    both, _, _ = read_image_predictions([tmp_path / "val.csv", tmp_path / "test.csv"])
    assert sorted(both["id"]) == sorted(img["id"])


def test_held_out_copies_in_other_sources_map_to_their_wani_patient(tmp_path):
    """A --members one split may keep another source's copy of a Wani knee: --duplicates maps it back."""
    from osteo_edge.tabular.fusion import read_image_predictions

    pred = write_image_predictions(tmp_path / "predictions.csv")
    raw = pd.read_csv(pred)
    train_normal = raw[(raw["source"] == "wani-mendeley") & (raw["split"] == "train") & (raw["label"] == "Normal")]["path"].iloc[0]
    cols = ["path", "label", "orig_label", "source", "group", "split", "fold", "sha256"]
    split = pd.DataFrame([
        [train_normal, "Normal", "Normal", "wani-mendeley", 7, "test", -1, ""],
        ["/elsewhere/normal_0001.png", "Normal", "Normal", "2class-kaggle", 7, "test", -1, ""],
        [str(WANI_IMAGES / "Osteopenia" / "OP1.jpg"), "Osteopenia", "Osteopenia", "wani-mendeley", 8, "train", -1, ""],
    ], columns=cols)
    split.to_csv(tmp_path / "split.csv", index=False)
    plain, _, _ = read_image_predictions(pred)
    mapped, _, counts = read_image_predictions(pred, duplicates=tmp_path / "split.csv")
    stem = Path(train_normal).stem
    assert stem not in set(plain["id"])  # its own file was a training image of the image model
    row = mapped[mapped["id"] == stem].iloc[0]
    assert row["via"] == "copy" and row["label"] == "Normal" and row["p_Normal"] == pytest.approx(0.9 / 1.0)
    assert counts["rows_mapped_from_copies"] == 1 and len(mapped) == len(plain) + 1


def test_fusion_refuses_different_classes(wani_run, tmp_path):
    from osteo_edge.tabular.fusion import fuse

    pred = write_image_predictions(tmp_path / "p.csv")
    df = pd.read_csv(pred).rename(columns={"p_Osteopenia": "p_LowBMD"})
    df.to_csv(pred, index=False)
    with pytest.raises(DataError, match="labels .* differ"):
        fuse(wani_run, pred, tmp_path / "f", n_boot=10)


def test_age_bands_and_small_groups():
    from osteo_edge.tabular.bias import age_band, parse_edges, small_reason

    edges = parse_edges("40,50,60,70")
    assert [age_band(a, edges) for a in (17, 40, 49.5, 69, 70, 107, None, float("nan"))] == [
        "<40", "40-49", "40-49", "60-69", "70+", "70+", "unknown", "unknown"]
    assert small_reason(np.array([0, 1] * 10), ["a", "b"], 30, 5) == "n=20 < 30"
    assert "b 2" in small_reason(np.array([0] * 40 + [1] * 2), ["a", "b"], 30, 5)
    assert small_reason(np.array([0, 1] * 20), ["a", "b"], 30, 5) == ""
    with pytest.raises(ConfigError):
        parse_edges("60,40")


def test_bias_report_for_tabular_and_image_models(wani_run, tmp_path):
    from osteo_edge.tabular.bias import bias_report, image_cohort, tabular_cohort

    pred = write_image_predictions(tmp_path / "predictions.csv")
    cohorts = [tabular_cohort(wani_run, WANI, None, None), image_cohort(pred, WANI, "Patient Id", None, None)]
    res = bias_report(tmp_path / "bias", cohorts, n_boot=50)
    text = (tmp_path / "bias" / "report.md").read_text()
    assert "too small to conclude" in text and "### xgboost" in text and "### image" in text
    table = pd.read_csv(tmp_path / "bias" / "bias.csv")
    female = table[(table["predictor"] == "logreg") & (table["group"] == "female")]
    assert int(female["n"].iloc[0]) == int((read_table(WANI)["Gender"] == "female").sum())
    seventy = table[(table["predictor"] == "logreg") & (table["group"] == "70+")]
    assert bool(seventy["too_small"].iloc[0])
    assert len(list((tmp_path / "bias").glob("*.png"))) == 8
    other = tmp_path / "other.csv"
    other.write_text(WANI.read_text() + "\n")
    with pytest.raises(DataError, match="not the CSV the run"):
        tabular_cohort(wani_run, other, None, None)
    assert res.rows


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_train_refuses_leakage_then_trains_predicts(tmp_path):
    from typer.testing import CliRunner

    from osteo_edge.cli import app

    runner = CliRunner()
    out = tmp_path / "trun"
    base = ["tabular", "train", "--csv", str(WANI), "--target", "Diagnosis", "--id-col", "Patient Id", "--out", str(out),
            "--models", "logreg", "--folds", "3", "--bootstrap", "30", "--importance-repeats", "0", "--no-plots"]
    r = runner.invoke(app, [*base, "--drop", "S.No"])
    assert r.exit_code == 1 and "T-score Value" in r.output and "--drop" in r.output and "Traceback" not in r.output
    assert not out.exists()
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    args = [str(other) if a == str(out) else a for a in base]
    r = runner.invoke(app, [*args, "--drop", "S.No,T-score Value,Z-Score Value"])
    assert r.exit_code == 1 and "is not a tabular run" in r.output and (other / "keep.txt").read_text() == "mine"
    r = runner.invoke(app, [*base, "--drop", "S.No", "--drop", "T-score Value,Z-Score Value", "--smote"])
    assert r.exit_code == 0, r.output
    assert (out / "tabular.json").is_file() and "not a diagnosis" in r.output
    new = tmp_path / "new.csv"
    read_table(WANI).head(5).drop(columns=["Diagnosis", "T-score Value", "Z-Score Value"]).to_csv(new, index=False)
    r = runner.invoke(app, ["tabular", "predict", "--model", str(out), "--csv", str(new), "--out", str(tmp_path / "risk.csv")])
    assert r.exit_code == 0, r.output
    risk = pd.read_csv(tmp_path / "risk.csv")
    assert len(risk) == 5 and {"id", "pred", "p_normal", "p_osteopenia", "p_osteoporosis", "note"} <= set(risk.columns)
    bad = tmp_path / "bad.csv"
    read_table(WANI).head(5).drop(columns=["Age"]).to_csv(bad, index=False)
    r = runner.invoke(app, ["tabular", "predict", "--model", str(out), "--csv", str(bad)])
    assert r.exit_code == 1 and "missing columns ['Age']" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["tabular", "predict", "--model", str(out), "--csv", str(new), "--estimator", "svm"])
    assert r.exit_code == 1 and "unknown model 'svm'" in r.output


def test_cli_bias_and_fuse(wani_run, tmp_path):
    from typer.testing import CliRunner

    from osteo_edge.cli import app

    runner = CliRunner()
    pred = write_image_predictions(tmp_path / "predictions.csv")
    r = runner.invoke(app, ["tabular", "bias", "--run", str(wani_run), "--csv", str(WANI), "--image-predictions", str(pred),
                            "--clinical", str(WANI), "--out", str(tmp_path / "bias"), "--bootstrap", "30"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "bias" / "report.md").is_file()
    r = runner.invoke(app, ["tabular", "fuse", "--run", str(wani_run), "--predictions", str(pred), "--out", str(tmp_path / "fuse"),
                            "--bootstrap", "50", "--splits", "test"])
    assert r.exit_code == 0, r.output
    assert "fused_mean - image" in r.output
    r = runner.invoke(app, ["tabular", "fuse", "--run", str(wani_run), "--predictions", str(pred), "--out", str(tmp_path / "f2"),
                            "--splits", "holdout"])
    assert r.exit_code == 1 and "valid: train, val, test" in r.output


def test_cli_module_and_package_import_nothing_heavy():
    code = (
        "import sys, osteo_edge.tabular, osteo_edge.cli.tabular\n"
        "heavy = [m for m in ('sklearn', 'pandas', 'xgboost', 'imblearn', 'skops', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
