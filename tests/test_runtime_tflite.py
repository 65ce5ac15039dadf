"""LiteRT path of the edge runtime on a real full-integer TFLite (int8 input/output tensors).

The tiny model is exported by the project's own exporter (osteo_edge.export, onnx2tf + TFLite
converter), so this needs tensorflow/onnx2tf: marked ``tflite``.
"""

from __future__ import annotations

import numpy as np
import pytest

from osteo_edge.artifact import seal
from osteo_edge.preprocess import PreprocessSpec, preprocess

from test_runtime_fixtures import LABELS, knee_images

pytestmark = pytest.mark.tflite


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")
    from osteo_edge.export import export_model
    from osteo_edge.modeling.models import build_model

    root = tmp_path_factory.mktemp("tfl")
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = build_model("cnn", 3, weights="none", width=4).eval()
    torch.save(model.state_dict(), run / "model.pt")
    spec = PreprocessSpec(input_size=32, grayscale="single", channels=1, mean=(0.5,), std=(0.5,))
    seal(run, format="torch", model_file="model.pt", labels=LABELS, spec=spec, thresholds={"min_confidence": 0.0, "low_bmd": 0.5},
         extra={"arch": {"name": "cnn", "num_classes": 3, "width": 4}})
    out = root / "tflite-int8"
    # the full-integer route (--all-int8: int8 I/O), calibrated on synthetic images by name (no split here)
    export_model(run, "tflite-int8", out, golden_size=4, calib_size=16, evaluate=False, calibration="synthetic", budget=None)
    return model, out


def test_int8_io_is_quantized_by_the_runtime(int8_bundle):
    import torch

    from osteo_edge.edge_runtime import EdgeClassifier

    model, bundle = int8_bundle
    clf = EdgeClassifier.load(bundle, threads=1)
    assert clf.runner.backend == "litert" and clf.runner.input_dtype in ("int8", "uint8")
    assert clf.spec.layout == "NHWC"
    imgs = knee_images(4)
    x = np.stack([preprocess(p, clf.spec) for p in imgs])  # NHWC float32
    logits = clf.logits(x)  # batch of 4 through a batch-1 graph, quantized in, dequantized out
    assert logits.dtype == np.float32 and logits.shape == (4, 3)
    with torch.no_grad():
        ref = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    scale = float(np.abs(ref).max()) + 1e-6
    assert np.abs(logits - ref).max() / scale < 0.25  # int8 drift, relative to the output scale
    pred = clf.predict(imgs[0])
    assert pred.status in ("ok", "refer") and set(pred.probabilities) == set(LABELS)


def test_bench_measures_tflite_int8(int8_bundle):
    from osteo_edge.bench.local import BenchRequest
    from osteo_edge.bench.targets import run_bench

    _, bundle = int8_bundle
    report = run_bench("host", BenchRequest(bundles=[bundle], runs=10, warmup=1, threads=1))
    rows = {r["role"]: r for r in report["results"]}
    assert rows["model"]["status"] == "ok" and rows["model"]["precision"] == "int8" and rows["model"]["backend"] == "litert"
    assert rows["reference"]["status"] == "ok" and rows["model"]["speedup_vs_torch_fp32"] > 0


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -64])
def test_a_truncated_tflite_file_resealed_is_one_line_not_a_crash(tmp_path, keep):
    """A bundle whose model file was cut short and re-sealed (nobody signed it) used to crash the
    interpreter (SIGSEGV, exit 139); the structural check refuses it in one line first."""
    import shutil
    import subprocess
    import sys

    from osteo_edge.artifact import reseal
    from osteo_edge.edge_runtime.classifier import default_bundle_path

    pytest.importorskip("ai_edge_litert")
    b = tmp_path / "b"
    shutil.copytree(default_bundle_path(), b)
    model = b / "model.tflite"
    data = model.read_bytes()
    model.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    reseal(b, step="truncated on purpose", changed=["model.tflite"])
    code = f"import osteo_edge; osteo_edge.load_bundle({str(b)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])  # a Python exception, not a signal
    assert "damaged or truncated" in r.stderr or "cannot load the model" in r.stderr, r.stderr[-500:]
