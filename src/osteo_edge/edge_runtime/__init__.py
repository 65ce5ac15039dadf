"""Torch-free inference: backends (ONNX Runtime, LiteRT), the classifier and the input gate.

Imports only numpy, Pillow, osteo_edge.preprocess/artifact/errors/formats and, when a model is
opened, one backend. Never torch, timm, tensorflow or gradio::

    from osteo_edge.edge_runtime import EdgeClassifier
    clf = EdgeClassifier.load()            # the shipped bundle, or EdgeClassifier.load("path/to/bundle")
    pred = clf.predict("knee.png")         # Prediction(status="ok" | "refer" | "rejected", ...)
"""

from .backends import BACKENDS, open_backend
from .classifier import STATUSES, EdgeClassifier, Prediction, default_bundle_path, expand_inputs, scan_inputs
from .gate import Gate, GateResult
from .gate_fit import calibrate_gate, write_gate

__all__ = [
    "BACKENDS",
    "STATUSES",
    "EdgeClassifier",
    "Gate",
    "GateResult",
    "Prediction",
    "calibrate_gate",
    "default_bundle_path",
    "expand_inputs",
    "scan_inputs",
    "open_backend",
    "write_gate",
]
