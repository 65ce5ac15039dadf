"""Shared helpers for the edge-runtime tests: tiny sealed bundles made inside the tests.

Imported by test_runtime*.py, test_predict*.py, test_bench*.py and test_gate*.py
(``from test_runtime_fixtures import ...``). The one test here checks the helpers themselves.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteo_edge.artifact import seal
from osteo_edge.preprocess import PreprocessSpec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELS = ["Normal", "Osteopenia", "Osteoporosis"]
SIZE = 32


def knee_images(n: int = 6, source: str = "wani-mendeley") -> list[Path]:
    """A few real knee radiographs from the shared data, spread over the classes."""
    root = DATA / "knee" / source
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def tiny_torch_model(seed: int = 0, classes: int = 3):
    import torch

    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, classes),
    )
    return m.eval()


def export_onnx(model, path: Path, size: int = SIZE, dynamic: bool = True) -> Path:
    import torch

    x = torch.zeros(1, 3, size, size)
    kw = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, still the one that works
        torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"], **kw)
    return path


def make_onnx_bundle(root: Path, *, seed: int = 0, temperature: float = 1.0, thresholds=None, gate=None,
                     labels=LABELS, provenance=None, fmt: str = "onnx", dynamic: bool = True,
                     resize: str = "center_crop") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    export_onnx(tiny_torch_model(seed, len(labels)), root / "model.onnx", dynamic=dynamic)
    spec = PreprocessSpec(input_size=SIZE, resize=resize, interpolation="bilinear")
    extra = {"gate": gate} if gate is not None else None
    seal(root, format=fmt, model_file="model.onnx", labels=labels, spec=spec, temperature=temperature,
         thresholds=thresholds if thresholds is not None else {"min_confidence": 0.0, "low_bmd": 0.5},
         metrics={"test": {"macro_f1": 0.5, "accuracy": 0.6}}, provenance=provenance or {"command": "tests"}, extra=extra)
    return root


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_tiny_bundle_is_sealed(tmp_path):
    from osteo_edge.artifact import load_bundle

    b = load_bundle(make_onnx_bundle(tmp_path / "b"))
    assert b.format == "onnx" and b.labels == LABELS and b.spec.input_size == SIZE
