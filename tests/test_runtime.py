"""Edge runtime: backends, EdgeClassifier, bundle verification, calibrated probabilities and status."""

from __future__ import annotations

import json

import numpy as np
import pytest

from osteo_edge.artifact import load_bundle
from osteo_edge.edge_runtime import BACKENDS, EdgeClassifier, Prediction, default_bundle_path, open_backend
from osteo_edge.edge_runtime.backends import dequantize, quantize
from osteo_edge.errors import BundleError, ConfigError
from osteo_edge.formats import FORMATS
from osteo_edge.preprocess import preprocess

from test_runtime_fixtures import LABELS, SIZE, export_onnx, knee_images, make_onnx_bundle, tiny_torch_model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_onnx_bundle(tmp_path_factory.mktemp("b") / "bundle", temperature=2.0, thresholds={"min_confidence": 0.0, "low_bmd": 0.5})


def test_backend_table_matches_formats():
    runtime_backends = {f.backend for f in FORMATS.values() if f.runtime}
    assert runtime_backends <= set(BACKENDS)
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, rec in BACKENDS.items():
        assert rec.name == name and any(req.startswith(rec.package) for req in extras[rec.extra]), (name, rec.extra)
    # the runtime extra is the shipped bundle's backend (LiteRT) and DICOM decoding; ONNX Runtime is its own extra
    assert BACKENDS["litert"].extra == "runtime" and BACKENDS["onnxruntime"].extra == "onnx"
    assert not [r for r in extras["runtime"] if r.startswith(("onnxruntime", "torch"))]
    assert "osteo-edge[train,runtime,onnx]" in extras["export"]


def test_missing_backend_names_its_extra_in_one_line(tmp_path, monkeypatch):
    from osteo_edge.edge_runtime import backends
    from osteo_edge.errors import DependencyError

    path = export_onnx(tiny_torch_model(3), tmp_path / "m.onnx")
    monkeypatch.setattr(backends.BackendRecord, "available", lambda self: False)
    with pytest.raises(DependencyError) as err:
        open_backend(path, "onnx", threads=1)
    assert "pip install '.[onnx]'" in str(err.value) and "\n" not in str(err.value)  # never a registry name


def test_onnx_backend_matches_torch(tmp_path):
    import torch

    model = tiny_torch_model(3)
    for dynamic in (True, False):
        path = export_onnx(model, tmp_path / f"m{dynamic}.onnx", dynamic=dynamic)
        runner = open_backend(path, "onnx", threads=1)
        x = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = runner.run(x)  # a fixed batch-1 graph runs a batch of 3 one image at a time
        assert out.dtype == np.float32 and out.shape == (3, 3)
        np.testing.assert_allclose(out, ref, atol=1e-5)
        np.testing.assert_allclose(runner.run(x[0]), ref[:1], atol=1e-5)  # no batch dim: one image


def test_open_backend_errors(tmp_path):
    path = export_onnx(tiny_torch_model(), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="valid: onnx"):
        open_backend(path, "torch")
    with pytest.raises(ConfigError, match="unknown model format"):
        open_backend(path, "coreml")
    with pytest.raises(ConfigError, match="threads"):
        open_backend(path, "onnx", threads=0)
    with pytest.raises(BundleError, match="expects a .tflite"):
        open_backend(path, "tflite")
    with pytest.raises(ConfigError, match="does not match the model input"):
        open_backend(path, "onnx").run(np.zeros((1, SIZE, SIZE, 3), np.float32))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BundleError, match="cannot load"):
        open_backend(bad, "onnx")


def test_quantize_round_trip():
    x = np.linspace(-3, 3, 101).astype(np.float32)
    for dtype, zp in ((np.int8, -3), (np.uint8, 128)):
        q = quantize(x, 0.05, zp, np.dtype(dtype))
        assert q.dtype == dtype
        back = dequantize(q, 0.05, zp)
        inside = (x / 0.05 + zp >= np.iinfo(dtype).min) & (x / 0.05 + zp <= np.iinfo(dtype).max)
        assert np.abs(back - x)[inside].max() <= 0.025 + 1e-6


def test_classifier_reads_everything_from_manifest(bundle):
    clf = EdgeClassifier.load(bundle, threads=1)
    m = json.loads((bundle / "manifest.json").read_text())
    assert clf.labels == m["labels"] == LABELS
    assert clf.spec.to_dict() == m["spec"]
    assert clf.temperature == 2.0 and clf.thresholds == {"min_confidence": 0.0, "low_bmd": 0.5}
    assert clf.runner.threads == 1 and clf.bundle.format == "onnx"


def test_probabilities_are_temperature_scaled(bundle):
    clf = EdgeClassifier.load(bundle)
    x = np.random.default_rng(1).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    z = clf.logits(x).astype(np.float64) / 2.0
    expected = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(clf.probabilities(x), expected, atol=1e-6)


def test_predict_real_image_matches_reference_preprocess(bundle):
    clf = EdgeClassifier.load(bundle)
    img = knee_images(1)[0]
    pred = clf.predict(img)
    assert isinstance(pred, Prediction) and pred.status in ("ok", "refer") and pred.path == str(img)
    assert set(pred.probabilities) == set(LABELS) and abs(sum(pred.probabilities.values()) - 1) < 1e-5
    ref = clf.probabilities(preprocess(img, load_bundle(bundle).spec)[None])[0]
    assert pred.probabilities == pytest.approx(dict(zip(LABELS, ref.tolist())), abs=1e-6)
    assert pred.label == LABELS[int(np.argmax(ref))]
    assert pred.low_bmd_probability == pytest.approx(1 - pred.probabilities["Normal"])
    assert "not a diagnosis" in pred.message and pred.latency_ms > 0


def test_status_refer_and_low_bmd_message(tmp_path):
    img = knee_images(1)[0]
    refer = EdgeClassifier.load(make_onnx_bundle(tmp_path / "r", thresholds={"min_confidence": 0.99, "low_bmd": 0.0}))
    p = refer.predict(img)
    assert p.status == "refer" and "refer for DEXA" in p.message and "uncertain" in p.message
    assert "low BMD suspected" in p.message
    calm = EdgeClassifier.load(make_onnx_bundle(tmp_path / "c", thresholds={"min_confidence": 0.0, "low_bmd": 1.01}))
    q = calm.predict(img)
    assert q.status == "ok" and "low BMD suspected" not in q.message


def test_binary_labels_without_normal(tmp_path):
    clf = EdgeClassifier.load(make_onnx_bundle(tmp_path / "b2", labels=["A", "B"]))
    p = clf.predict(knee_images(1)[0])
    assert p.low_bmd_probability is None and p.label in ("A", "B")


def test_rejections_are_answers(bundle, tmp_path):
    clf = EdgeClassifier.load(bundle)
    (tmp_path / "empty.png").write_bytes(b"")
    for src, code in ((tmp_path / "empty.png", "invalid_image"), (tmp_path, "invalid_image"), (np.full((300, 300), 0.5, np.float32), "blank")):
        p = clf.predict(src)
        assert p.status == "rejected" and p.reason == code and p.label is None and p.probabilities == {}
        assert p.message.startswith("rejected: ") and "\n" not in p.message


def test_tampered_bundle_refused(tmp_path):
    b = make_onnx_bundle(tmp_path / "t")
    data = bytearray((b / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        EdgeClassifier.load(b)


def test_bundle_label_count_must_match_model(tmp_path):
    b = make_onnx_bundle(tmp_path / "w", labels=["A", "B", "C", "D"])  # model has 4 outputs: fine
    assert EdgeClassifier.load(b).labels == ["A", "B", "C", "D"]
    from osteo_edge.artifact import reseal

    reseal(b, step="test", labels=["A", "B"])
    with pytest.raises(BundleError, match="2 labels"):
        EdgeClassifier.load(b)


def test_torch_bundle_and_missing_default(tmp_path):
    b = make_onnx_bundle(tmp_path / "x", fmt="torch")
    with pytest.raises(ConfigError, match="not run by the edge runtime"):
        EdgeClassifier.load(b)
    assert default_bundle_path().name == "default" and default_bundle_path().parent.name == "models"
    if not (default_bundle_path() / "manifest.json").exists():
        with pytest.raises(BundleError, match="--model"):
            EdgeClassifier.load()


def test_shipped_bundle_when_present():
    if not (default_bundle_path() / "manifest.json").exists():
        pytest.skip("no shipped bundle in this checkout (src/osteo_edge/models/default)")
    clf = EdgeClassifier.load(threads=1)
    assert clf.bundle.format in FORMATS and FORMATS[clf.bundle.format].runtime
    p = clf.predict(knee_images(1)[0])
    assert p.status in ("ok", "refer") and set(p.probabilities) == set(clf.labels)
    spine = sorted((knee_images(1)[0].parents[3] / "spine" / "sriher").rglob("*.jpg"))[:1]
    if clf.gate.ood is not None and spine:
        assert clf.gate.ood.calibration.get("test_sets")  # the measured rates travel with the bundle
