"""Site validation and site calibration (issue 28) on a tiny ONNX bundle and real Wani radiographs.

The trust file of every test here is under tmp_path (``OSTEO_EDGE_TRUST_FILE``), never the user's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from osteo_edge.artifact import load_bundle
from osteo_edge.artifact.signing import TRUST_FILE_ENV, TRUST_ENV, generate_keypair
from osteo_edge.cli import app
from osteo_edge.core.stats import Estimate
from osteo_edge.errors import BundleError, ConfigError
from osteo_edge.edge_runtime.site import Target, calibrate_site, parse_require, read_labels, validate_site, who_class
from osteo_edge.edge_runtime.site.calibrate import fit_temperature, make_folds
from osteo_edge.edge_runtime.site.validate import judge
from test_runtime_fixtures import DATA, LABELS, make_onnx_bundle

runner = CliRunner()
WANI = DATA / "knee" / "wani-mendeley"


@pytest.fixture(autouse=True)
def _no_machine_trust(monkeypatch):
    """No test here reads this machine's real trust file or trusted keys."""
    monkeypatch.setenv(TRUST_FILE_ENV, "")
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture(scope="module")
def site_csv(tmp_path_factory) -> Path:
    """7 Normal, 5 Osteopenia, 4 Osteoporosis real Wani films; rows name files relative to the Wani folder."""
    if not WANI.is_dir():
        pytest.skip(f"shared data not found at {WANI}")
    rows = []
    for label, n in (("Normal", 7), ("Osteopenia", 5), ("Osteoporosis", 4)):
        files = sorted((WANI / label).iterdir())[:n]
        rows += [(f"{label}/{f.name}", label) for f in files]
    path = tmp_path_factory.mktemp("site") / "labels.csv"
    path.write_text("file,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("b") / "tiny", thresholds={"min_confidence": 0.4, "low_bmd": 0.5})


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    site_key, site_pub = generate_keypair(d, "site")
    other_key, other_pub = generate_keypair(d, "other")
    return {"site": site_key, "site_pub": site_pub, "other": other_key, "other_pub": other_pub}


@pytest.fixture(scope="module")
def site_bundle(tmp_path_factory, bundle, site_csv, keys) -> Path:
    out = tmp_path_factory.mktemp("sb") / "site-bundle"
    calibrate_site(WANI, site_csv, bundle, out=out, key=keys["site"], site="test-clinic", folds=3, n_boot=100,
                   target=Target(target_sensitivity=0.9))
    return out


# ------------------------------------------------------------------------------------------------
# labels


def test_who_classes_from_tscore():
    assert [who_class(t) for t in (0.5, -1.0, -1.01, -2.49, -2.5, -3.2)] == [
        "Normal", "Normal", "Osteopenia", "Osteopenia", "Osteoporosis", "Osteoporosis"]


def test_tscore_column_gives_who_labels(tmp_path, site_csv):
    rows = site_csv.read_text().splitlines()[1:]
    t = {"Normal": "-0.4", "Osteopenia": "-1.7", "Osteoporosis": "-2.5"}
    csv = tmp_path / "t.csv"
    csv.write_text("file,tscore,group\n" + "".join(f"{r.split(',')[0]},{t[r.split(',')[1]]},p{i // 2}\n" for i, r in enumerate(rows)))
    s = read_labels(WANI, csv, LABELS)
    assert s.truth_from == "tscore" and s.counts() == {"Normal": 7, "Osteopenia": 5, "Osteoporosis": 4}
    assert len(set(s.groups.tolist())) == 8


@pytest.mark.parametrize("body,match", [
    ("file,label\nNormal/N1.JPEG,Osteopena\n", "unknown label 'Osteopena' (line 2); valid: Normal, Osteopenia, Osteoporosis"),
    ("file,tscore\nNormal/N1.JPEG,low\n", "'tscore' must be a number"),
    ("file,label\nNormal/nope.png,Normal\n", "1 file(s) not found"),
    ("file,label\nNormal/N1.JPEG,Normal\nNormal/N1.JPEG,Normal\n", "file listed twice"),
    ("name,diagnosis\nNormal/N1.JPEG,Normal\n", "needs a 'file' column and a 'label' or 'tscore' column"),
])
def test_bad_labels_files_are_refused_in_one_line(tmp_path, body, match):
    if not WANI.is_dir():
        pytest.skip("no shared data")
    csv = tmp_path / "l.csv"
    csv.write_text(body)
    with pytest.raises(ConfigError, match=None) as exc:
        read_labels(WANI, csv, LABELS)
    assert match in str(exc.value) and "\n" not in str(exc.value)


def test_too_few_per_class_and_unreadable_files_are_refused(tmp_path, bundle, site_csv):
    rows = site_csv.read_text().splitlines()
    few = tmp_path / "few.csv"
    few.write_text("\n".join(rows[:5] + rows[8:10]) + "\n")  # 4 Normal, 2 low BMD
    with pytest.raises(ConfigError, match="too few images per class: 4 Normal and 2 low-BMD"):
        validate_site(WANI, few, bundle, n_boot=0)
    images = tmp_path / "imgs"
    (images / "Normal").mkdir(parents=True)
    for r in rows[1:]:
        f = r.split(",")[0]
        (images / f).parent.mkdir(parents=True, exist_ok=True)
        (images / f).write_bytes((WANI / f).read_bytes())
    (images / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows + ["Normal/broken.png,Normal"]) + "\n")
    with pytest.raises(ConfigError, match=r"1 labelled file\(s\) cannot be read as images: Normal/broken.png"):
        validate_site(images, bad, bundle, n_boot=0)


# ------------------------------------------------------------------------------------------------
# validation


def test_validate_writes_report_and_matches_the_runtime(tmp_path, bundle, site_csv):
    from osteo_edge.edge_runtime import EdgeClassifier

    r = validate_site(WANI, site_csv, bundle, out=tmp_path / "rep", n_boot=200, require={"sensitivity": 0.85, "auroc": 0.75})
    rep = r.report
    assert rep["counts"] == {"Normal": 7, "Osteopenia": 5, "Osteoporosis": 4} and rep["images"] == 16
    assert rep["verdict"] in ("pass", "fail", "insufficient")
    for name in ("accuracy", "macro_f1", "sensitivity", "specificity", "auroc", "ece", "gate_acceptance", "referral_rate"):
        m = rep["metrics"][name]
        assert set(m) >= {"value", "ci95"}
    auc = rep["metrics"]["auroc"]
    assert auc["ci95"][0] <= auc["value"] <= auc["ci95"][1]
    assert rep["claims"]["figures"]["macro_f1"]["value"] == 0.5  # the tiny bundle's manifest claim, beside
    assert "AUROC interval" in rep["sample_size"]["text"] or "could not" in rep["sample_size"]["text"]
    files = {p.name for p in r.written}
    assert {"report.md", "report.json"} <= files
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"**Verdict: {rep['verdict']}**" in md and "low-BMD AUROC" in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["verdict"] == rep["verdict"]
    # every answer is the runtime's own
    clf = EdgeClassifier.load(bundle)
    for row in rep["per_image"]:
        p = clf.predict(WANI / row["file"])
        assert p.status == row["status"]
        if p.low_bmd_probability is not None:
            assert math.isclose(p.low_bmd_probability, row["p_low_bmd"], abs_tol=1e-5)


def test_verdict_is_judged_on_the_interval():
    est = {"sensitivity": Estimate(0.9, 0.86, 0.95), "auroc": Estimate(0.8, 0.7, 0.9), "referral_rate": Estimate(0.5, 0.4, 0.6)}
    assert judge(est, {"sensitivity": 0.85})[0] == "pass"
    assert judge(est, {"sensitivity": 0.85, "auroc": 0.75})[0] == "insufficient"  # 0.7 < 0.75 < 0.9
    assert judge(est, {"auroc": 0.95})[0] == "fail"  # the whole interval is below
    assert judge(est, {"referral_rate": 0.7})[0] == "pass" and judge(est, {"referral_rate": 0.3})[0] == "fail"
    assert judge({"auroc": Estimate(0.8)}, {"auroc": 0.5})[0] == "insufficient"  # no interval, no pass
    assert parse_require("sens=0.8, auroc=0.7") == {"sensitivity": 0.8, "auroc": 0.7}
    with pytest.raises(ConfigError, match="unknown requirement 'sharpness'"):
        parse_require("sharpness=0.9")
    with pytest.raises(ConfigError, match="at least one criterion"):
        parse_require("")


def test_five_perfect_films_per_side_never_pass():
    """A bootstrap on 5 + 5 perfectly separated films gives [1, 1]; the small-sample guard keeps the
    verdict from certifying a model on them."""
    from osteo_edge.edge_runtime.site.labels import SiteLabels
    from osteo_edge.edge_runtime.site.scoring import Operating, SiteScores, answer
    from osteo_edge.edge_runtime.site.validate import estimates

    y = np.array([0] * 5 + [2] * 5)
    logits = np.where(np.eye(3)[y] > 0, 4.0, 0.0)
    site = SiteLabels(Path("."), tuple(f"f{i}.png" for i in range(10)), y, np.array([f"f{i}" for i in range(10)], dtype=object),
                      tuple(LABELS), "label", "l.csv", "0" * 64)
    n = len(y)
    scores = SiteScores(site, list(LABELS), "Normal", logits, np.ones(n, bool), [None] * n, np.full(n, np.nan), np.full(n, np.nan))
    ans = answer(scores, Operating(1.0, {"low_bmd": 0.5}))
    est = estimates(scores, ans, n_boot=200)
    assert est["auroc"].value == 1.0 and est["sensitivity"].value == 1.0
    assert est["auroc"].low < 0.6 and est["sensitivity"].low < 0.6  # Wilson(5, 5) = [0.57, 1]
    assert judge(est, {"sensitivity": 0.85, "auroc": 0.75})[0] == "insufficient"


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 3)) * 3
    p = np.exp(z / 2.5)
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert abs(fit_temperature(z, y) - 2.5) < 0.25


# ------------------------------------------------------------------------------------------------
# calibration


def test_site_bundle_records_its_origin_and_cross_validated_report(site_bundle, bundle, site_csv, keys):
    from osteo_edge.artifact.signing import public_key_of, key_id

    b = load_bundle(site_bundle)
    base = load_bundle(bundle)
    site = b.manifest["site"]
    assert site["name"] == "test-clinic" and site["base"]["seal"] == base.seal
    assert site["counts"] == {"Normal": 7, "Osteopenia": 5, "Osteoporosis": 4}
    import hashlib

    assert site["labels_file"] == {"name": "labels.csv", "sha256": hashlib.sha256(site_csv.read_bytes()).hexdigest(), "truth_from": "label"}
    cv = site["cross_validated"]
    assert cv["verdict"] in ("pass", "fail", "insufficient") and "3-fold cross-validation" in cv["protocol"]
    assert b.signature.key_id == key_id(public_key_of(keys["site_pub"]))
    assert b.temperature == pytest.approx(site["fitted"]["temperature"]) and b.thresholds["low_bmd"] == site["fitted"]["thresholds"]["low_bmd"]
    assert b.metrics.split("site_cv").raw["headline"]["low_bmd_auroc"]["value"] == cv["metrics"]["auroc"]["value"]
    assert (site_bundle / "site-validation" / "report.md").is_file() and "site-validation/report.md" in b.manifest["files"]
    assert "per_image" not in json.loads((site_bundle / "site-validation" / "report.json").read_text())
    assert b.provenance.parent is not None and b.provenance.parent.seal == base.seal
    # the site bundle is a bundle like any other: the runtime loads it
    from osteo_edge.edge_runtime import EdgeClassifier

    assert EdgeClassifier.load(site_bundle).predict(WANI / "Normal" / "N1.JPEG").status in ("ok", "refer")
    # and validating it shows its own cross-validated claims beside
    r = validate_site(WANI, site_csv, site_bundle, n_boot=0)
    assert r.report["claims"]["split"] == "site_cv"


def test_cross_validation_never_scores_an_image_it_was_fitted_on(monkeypatch, bundle, site_csv, keys, tmp_path):
    import osteo_edge.edge_runtime.site.calibrate as cal

    seen = []
    real = cal.fit_operating

    def spy(scores, idx, *a, **kw):
        seen.append(set(np.asarray(idx).tolist()))
        return real(scores, idx, *a, **kw)

    monkeypatch.setattr(cal, "fit_operating", spy)
    from osteo_edge.edge_runtime.site import score
    from osteo_edge.edge_runtime.site.scoring import bundle_operating

    clf, scores = score(WANI, site_csv, bundle)
    folds = make_folds(scores, 4, seed=1)
    assert len(set(folds.tolist())) == 4
    answers, details = cal.cross_validate(scores, bundle_operating(clf), Target(target_sensitivity=0.9), folds=4, seed=1)
    assert len(seen) == 4
    for f, fitted_on in enumerate(seen):
        held_out = set(np.flatnonzero(folds == f).tolist())
        assert held_out and not (held_out & fitted_on) and held_out | fitted_on == set(range(scores.n))


def test_max_referral_operating_point_caps_referrals(bundle, site_csv, tmp_path, keys):
    r = calibrate_site(WANI, site_csv, bundle, out=tmp_path / "sb", key=keys["site"], target=Target(max_referral=0.5), folds=3, n_boot=0)
    fit = r.report["fitted_on_all"]["fit"]
    assert fit["cap_met"] is False or fit["fitted_referral_rate"] <= 0.5
    assert load_bundle(tmp_path / "sb").manifest["site"]["operating_point"] == {"max_referral": 0.5}
    with pytest.raises(ConfigError, match="not both"):
        Target(0.9, 0.3)


def test_edited_site_bundle_is_refused(site_bundle, tmp_path):
    import shutil

    from osteo_edge.edge_runtime import EdgeClassifier

    copy = tmp_path / "edited"
    shutil.copytree(site_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["thresholds"]["low_bmd"] = 0.99  # a clinic "tuning" its bundle by hand
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="edited after sealing"):
        EdgeClassifier.load(copy)
    res = runner.invoke(app, ["predict", str(WANI / "Normal" / "N1.JPEG"), "--model", str(copy)])
    assert res.exit_code == 1 and "edited after sealing" in res.output and "Traceback" not in res.output


def test_trust_file_refuses_foreign_and_unsigned_bundles_everywhere(site_bundle, bundle, keys, tmp_path, monkeypatch):
    import shutil

    from osteo_edge.artifact import sign_bundle
    from osteo_edge.edge_runtime import EdgeClassifier

    foreign = tmp_path / "foreign"
    shutil.copytree(site_bundle, foreign)
    sign_bundle(foreign, keys["other"])  # re-signed by a key this clinic never trusted
    knee = str(WANI / "Normal" / "N1.JPEG")
    # no trust configured: the foreign copy loads (trust is opt-in) ...
    EdgeClassifier.load(foreign)
    # ... a trusted key given per command refuses it
    from osteo_edge.artifact.signing import TrustStore

    with pytest.raises(BundleError, match="not among this runtime's trusted keys"):
        EdgeClassifier.load(foreign, trust=TrustStore.from_paths([keys["site_pub"]]))
    res = runner.invoke(app, ["predict", knee, "--model", str(foreign), "--trusted-key", str(keys["site_pub"])])
    assert res.exit_code == 1 and "not among this runtime's trusted keys" in res.output
    # ... one step: the clinic's trust file (the shipped publisher + the site)
    trust = tmp_path / "trusted-keys.pem"
    res = runner.invoke(app, ["site", "trust", "--key", str(keys["site"]), "--file", str(trust)])
    assert res.exit_code == 0 and trust.is_file(), res.output
    monkeypatch.setenv(TRUST_FILE_ENV, str(trust))
    EdgeClassifier.load(site_bundle)  # the site's own bundle is trusted
    with pytest.raises(BundleError, match="not among this runtime's trusted keys"):
        EdgeClassifier.load(foreign)
    with pytest.raises(BundleError, match="unsigned"):
        EdgeClassifier.load(bundle)
    for args in (["predict", knee, "--model", str(foreign)], ["verify", str(foreign)], ["predict", knee, "--model", str(bundle)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and "trust file" in res.output and "Traceback" not in res.output, (args, res.output)
    res = runner.invoke(app, ["verify", str(site_bundle)])
    assert res.exit_code == 0 and "signer trusted" in res.output
    # a trust file that names a missing path is an error, never a silently open door
    monkeypatch.setenv(TRUST_FILE_ENV, str(tmp_path / "typo.pem"))
    with pytest.raises(ConfigError, match="no such trust file"):
        EdgeClassifier.load(site_bundle)


def test_shipped_default_still_loads_under_the_clinic_trust_file(keys, tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    from osteo_edge.edge_runtime import EdgeClassifier, default_bundle_path
    from osteo_edge.edge_runtime.site.trust import write_clinic_trust

    import shutil

    if not (default_bundle_path() / "manifest.json").is_file():
        pytest.skip("no shipped bundle in this install")
    path, ids = write_clinic_trust(tmp_path / "t.pem", private_keys=[keys["site"]])
    assert len(ids) >= 2
    monkeypatch.setenv(TRUST_FILE_ENV, str(path))
    # a byte-for-byte copy (same seal and signature): the trust policy is what is tested here, not the
    # lineage check against a training run that may sit at the bundle's recorded parent path
    copy = tmp_path / "default"
    shutil.copytree(default_bundle_path(), copy)
    EdgeClassifier.load(copy)
    write_clinic_trust(tmp_path / "t.pem", private_keys=[keys["site"]], package=False)
    with pytest.raises(BundleError, match="not among this runtime's trusted keys"):
        EdgeClassifier.load(copy)


# ------------------------------------------------------------------------------------------------
# the command line


def test_cli_validate_and_refusals(tmp_path, bundle, site_csv):
    res = runner.invoke(app, ["site", "validate", str(WANI), "--labels", str(site_csv), "--model", str(bundle), "--out",
                              str(tmp_path / "r"), "--bootstrap", "100", "--require", "auroc=0.6"])
    verdict = json.loads((tmp_path / "r" / "report.json").read_text())["verdict"]
    assert res.exit_code == (0 if verdict == "pass" else 1), res.output  # a script must not go on after fail / insufficient
    assert f"verdict: {verdict}" in res.output and "low-BMD AUROC" in res.output and (tmp_path / "r" / "report.md").is_file()
    res = runner.invoke(app, ["site", "validate", str(WANI), "--labels", str(site_csv), "--model", str(bundle), "--out",
                              str(tmp_path / "r3"), "--bootstrap", "100", "--require", "gate_acceptance=0.5"])
    assert res.exit_code == 0 and "verdict: pass" in res.output, res.output  # every film accepted: lower bound 1.0 >= 0.5
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nNormal/N1.JPEG,osteo\n")
    res = runner.invoke(app, ["site", "validate", str(WANI), "--labels", str(bad), "--model", str(bundle), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 1 and res.output.strip().startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert "unknown label 'osteo'" in res.output


@pytest.mark.parametrize("extra,match", [
    (["--require", "sharpness=0.9"], "unknown requirement 'sharpness'"),
    (["--min-per-class", "1"], "--min-per-class must be at least 2"),
    (["--target-sensitivity", "0.9", "--max-referral", "0.3"], "not both"),
])
def test_cli_option_errors_are_usage_errors(tmp_path, bundle, site_csv, keys, extra, match):
    res = runner.invoke(app, ["site", "calibrate", str(WANI), "--labels", str(site_csv), "--model", str(bundle), "--out", str(tmp_path / "sb"),
                              "--key", str(keys["site"]), *extra])
    assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "sb").exists()


def test_cli_calibrate_writes_a_signed_bundle_and_trust_file(tmp_path, bundle, site_csv, keys):
    trust = tmp_path / "trust.pem"
    res = runner.invoke(app, ["site", "calibrate", str(WANI), "--labels", str(site_csv), "--model", str(bundle), "--out", str(tmp_path / "sb"),
                              "--key", str(keys["site"]), "--site", "clinic-a", "--folds", "3", "--bootstrap", "50", "--trust-file", str(trust)])
    assert res.exit_code == 0, res.output
    assert "cross-validated" in res.output and trust.is_file()
    b = load_bundle(tmp_path / "sb")
    assert b.manifest["site"]["name"] == "clinic-a"
    assert not [p for _, p in __import__("osteo_edge.artifact", fromlist=["build_machine_paths"]).build_machine_paths(b.manifest)
                if str(tmp_path) in p]


def test_site_modules_are_torch_free():
    code = ("import sys, osteo_edge.edge_runtime.site, osteo_edge.edge_runtime.site.trust, osteo_edge.edge_runtime.site.head, "
            "osteo_edge.cli.site, osteo_edge.export.embedding; "
            "print(','.join(m for m in ('torch', 'timm', 'tensorflow', 'sklearn', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------------------------
# a bundle with one low-BMD label: site labels it lacks are mapped onto its low-BMD question


@pytest.fixture(scope="module")
def binary_bundle(tmp_path_factory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("bin") / "tiny2", labels=["Normal", "LowBMD"], seed=3,
                            thresholds={"min_confidence": 0.0, "low_bmd": 0.5})


def test_binary_bundle_maps_osteopenia_and_osteoporosis_onto_its_low_bmd_label(tmp_path, binary_bundle, site_csv):
    s = read_labels(WANI, site_csv, ["Normal", "LowBMD"], "Normal")
    assert s.counts() == {"Normal": 7, "LowBMD": 9} and s.site_counts() == {"Normal": 7, "Osteopenia": 5, "Osteoporosis": 4}
    assert dict(s.mapping) == {"Osteopenia": "LowBMD", "Osteoporosis": "LowBMD"} and "mapped onto its low-BMD label" in s.mapping_note()
    r = validate_site(WANI, site_csv, binary_bundle, out=tmp_path / "rep", n_boot=50)
    assert r.report["counts"] == {"Normal": 7, "LowBMD": 9}
    assert r.report["label_mapping"]["site_counts"]["Osteopenia"] == 5
    assert "Labels mapped" in (tmp_path / "rep" / "report.md").read_text()
    # the same through the CLI: the note is printed, no refusal
    res = runner.invoke(app, ["site", "validate", str(WANI), "--labels", str(site_csv), "--model", str(binary_bundle),
                              "--out", str(tmp_path / "cli"), "--bootstrap", "20", "--no-plots"], env={"COLUMNS": "200"})
    assert res.exit_code in (0, 1) and "mapped onto its low-BMD label" in res.output, res.output
    # a T-score column maps the same way; a label that is not a low-BMD name is still refused
    t = tmp_path / "t.csv"
    t.write_text("file,tscore\n" + "".join(f"{r.split(',')[0]},{'-0.3' if r.endswith('Normal') else '-2.0'}\n"
                                            for r in site_csv.read_text().splitlines()[1:]))
    assert read_labels(WANI, t, ["Normal", "LowBMD"], "Normal").counts() == {"Normal": 7, "LowBMD": 9}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nNormal/N1.JPEG,Arthritis\n")
    with pytest.raises(ConfigError, match=r"unknown label .Arthritis. \(line 2\); valid: Normal, LowBMD, Osteopenia \(as LowBMD\)"):
        read_labels(WANI, bad, ["Normal", "LowBMD"], "Normal")


def test_three_label_bundle_does_not_map_a_coarser_site_label(tmp_path):
    if not WANI.is_dir():
        pytest.skip("no shared data")
    csv = tmp_path / "l.csv"
    csv.write_text("file,label\nNormal/N1.JPEG,LowBMD\n")
    with pytest.raises(ConfigError, match="unknown label 'LowBMD'"):
        read_labels(WANI, csv, LABELS, "Normal")


# ------------------------------------------------------------------------------------------------
# --head: a linear head on the model file's embedding output


def _two_output_bundle(root: Path, seed: int = 0) -> Path:
    """The tiny model exported with a second output (its pooled embedding), as 'export --embedding-output' does."""
    import warnings

    import torch

    from osteo_edge.artifact import seal
    from osteo_edge.export.embedding import with_embedding
    from osteo_edge.preprocess import PreprocessSpec
    from test_runtime_fixtures import SIZE, tiny_torch_model

    root.mkdir(parents=True, exist_ok=True)
    wrapped = with_embedding(tiny_torch_model(seed, 3), (1, 3, SIZE, SIZE))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, torch.zeros(1, 3, SIZE, SIZE), str(root / "model.onnx"), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits", "embedding"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}})
    seal(root, format="onnx", model_file="model.onnx", labels=LABELS, spec=PreprocessSpec(input_size=SIZE, resize="center_crop"),
         temperature=1.0, thresholds={"min_confidence": 0.4, "low_bmd": 0.5}, metrics={"test": {"accuracy": 0.6}},
         provenance={"command": "tests"})
    return root


def test_fit_head_separates_what_the_embedding_separates():
    from osteo_edge.core.stats import auroc
    from osteo_edge.edge_runtime.site.head import cross_fitted_logits, fit_head

    rng = np.random.default_rng(0)
    u = rng.normal(size=200)
    u /= np.linalg.norm(u)  # the low-BMD question lies along one direction of the 200-wide embedding
    y = np.repeat([0, 1, 2], 12)
    emb = rng.normal(size=(36, 200)) + 4.0 * (y > 0)[:, None] * u
    head = fit_head(emb, y, 3)
    y_new = np.repeat([0, 1, 2], 30)
    new = rng.normal(size=(90, 200)) + 4.0 * (y_new > 0)[:, None] * u
    z = head(new)
    p_low = 1 - np.exp(z[:, 0]) / np.exp(z).sum(axis=1)
    assert auroc((y_new > 0).astype(int), p_low) > 0.85
    oof = cross_fitted_logits(emb, y, 3)
    assert oof.shape == (36, 3) and not np.allclose(oof, head(emb))  # out of fold, not the in-sample fit
    noise = fit_head(rng.normal(size=(36, 200)), y, 3)  # no signal: near-flat logits on new data
    assert np.ptp(noise(new), axis=0).max() < 3.0


def test_head_site_bundle_answers_from_its_head(tmp_path, site_csv, keys):
    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.edge_runtime.backends import open_backend

    base = _two_output_bundle(tmp_path / "emb")
    r1 = open_backend(base / "model.onnx", "onnx")
    assert r1.embedding_dim == 8
    from test_runtime_fixtures import SIZE

    x = np.random.default_rng(1).random((2, 3, SIZE, SIZE), dtype=np.float32)
    z, e = r1.run_with_embedding(x)
    assert np.allclose(r1.run(x), z) and e.shape == (2, 8)  # .run still returns the logits of a two-output file
    out = tmp_path / "site-head"
    res = calibrate_site(WANI, site_csv, base, out=out, key=keys["site"], site="head-clinic", folds=3, n_boot=50, head_l2=1.0)
    assert "a linear head on the embedding" in res.report["protocol"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["site"]["head"]["dim"] == 8 and np.asarray(m["site"]["head"]["weights"]).shape == (8, 3)
    clf = EdgeClassifier.load(out)
    assert clf.head is not None
    assert np.allclose(clf.logits(x), clf.head(e), atol=1e-5) and not np.allclose(clf.logits(x), z)
    pred = clf.predict(WANI / site_csv.read_text().splitlines()[1].split(",")[0])
    assert pred.status in ("ok", "refer") and abs(sum(pred.probabilities.values()) - 1) < 1e-5
    # recalibrated without --head, a head bundle keeps its head (the logits its figures were computed from)
    again = calibrate_site(WANI, site_csv, out, out=tmp_path / "again", key=keys["site"], folds=3, n_boot=0)
    assert np.allclose(EdgeClassifier.load(tmp_path / "again").head(e), clf.head(e)) and again.operating.head is None
    # a one-output base is refused for --head in one line, before any film is scored
    one = make_onnx_bundle(tmp_path / "one")
    with pytest.raises(ConfigError, match="--head needs the model's embedding"):
        calibrate_site(WANI, site_csv, one, out=tmp_path / "x", key=keys["site"], head_l2=1.0, n_boot=0)
    # a head whose shapes do not fit the model file, or a head on a one-output file, is refused at load
    from osteo_edge.edge_runtime.classifier import LinearHead

    bad = json.loads(json.dumps(m))
    bad["site"]["head"]["bias"] = [0.0, 0.0]
    with pytest.raises(BundleError, match="shapes do not fit"):
        LinearHead.from_manifest(bad, 3, r1, out)
    with pytest.raises(BundleError, match="no embedding output"):
        LinearHead.from_manifest(m, 3, open_backend(one / "model.onnx", "onnx"), out)


def test_shipped_default_on_a_small_never_seen_wani_sample_does_not_pass(tmp_path):
    """The issue's check: the shipped bundle, on Wani films it never saw (benchmarks/site/wani_pool.csv:
    3 Normal among them), gives no 'pass': refused at the default minimum, not 'pass' below it."""
    import shutil

    from osteo_edge.artifact.signing import TrustStore
    from osteo_edge.edge_runtime import default_bundle_path

    pool = Path(__file__).resolve().parents[1] / "benchmarks" / "site" / "wani_pool.csv"
    if not (default_bundle_path() / "manifest.json").is_file() or not WANI.is_dir():
        pytest.skip("no shipped bundle or no shared data")
    rows = pool.read_text().splitlines()[1:]
    normal = [r for r in rows if r.split(",")[1] == "Normal"]
    sample = normal + [r for r in rows if r.split(",")[1] != "Normal"][: 20 - len(normal)]
    csv = tmp_path / "wani20.csv"
    csv.write_text("file,label,group\n" + "\n".join(sample) + "\n")
    copy = tmp_path / "default"  # a byte-for-byte copy, checked against the package key (as benchmarks/site does)
    shutil.copytree(default_bundle_path(), copy)
    with pytest.raises(ConfigError, match="too few images per class"):
        validate_site(WANI.parent, csv, copy, trust=TrustStore.package(), n_boot=0)
    r = validate_site(WANI.parent, csv, copy, trust=TrustStore.package(), n_boot=300, min_per_class=2)
    assert r.report["counts"]["Normal"] == len(normal) and r.report["verdict"] in ("fail", "insufficient")


@pytest.mark.slow  # two onnx2tf conversions: about 60 s here
@pytest.mark.tflite
def test_tflite_embedding_export_feeds_a_site_head(tmp_path, site_csv, keys):
    """export --embedding-output: an fp32 TFLite file with two outputs; the runtime's logits are the
    model's (golden parity passed), the embedding is the classifier's input, and --head uses it."""
    pytest.importorskip("onnx2tf")
    from test_export_fixtures import make_run, make_split

    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.errors import ExportError
    from osteo_edge.export import export_model
    from osteo_edge.export.embedding import embedding_output

    run, split = make_run(tmp_path / "run"), make_split(tmp_path / "split")
    with embedding_output():
        res = export_model(run, "tflite", tmp_path / "emb", split=split, golden_size=4, evaluate=False)
        with pytest.raises(ExportError, match="--embedding-output is for the fp32 tflite export"):
            export_model(run, "tflite-int8", tmp_path / "i8", split=split, golden_size=4, calib_size=8, evaluate=False)
    assert res.golden["passed"] and res.bundle.manifest["export"]["embedding_output"]["dim"] > 0
    export_model(run, "tflite", tmp_path / "plain", split=split, golden_size=4, evaluate=False)
    a, b = EdgeClassifier.load(tmp_path / "emb"), EdgeClassifier.load(tmp_path / "plain")
    assert a.runner.embedding_dim == res.bundle.manifest["export"]["embedding_output"]["dim"] and b.runner.embedding_dim is None
    x = np.random.default_rng(0).random((3, *a.spec.input_shape[1:]), dtype=np.float32)
    assert np.allclose(a.logits(x), b.logits(x), atol=1e-4)  # the second output leaves the logits as they were
    r = calibrate_site(WANI, site_csv, tmp_path / "emb", out=tmp_path / "site", key=keys["site"], folds=3, n_boot=30, head_l2=10.0)
    assert EdgeClassifier.load(tmp_path / "site").head is not None and r.operating.head is not None
