"""The one table of model formats, read by export, parity, bench and the edge runtime loader.

Torch-free on purpose: the edge runtime imports it. Adding a format is one record here plus one
export function registered under the same name in :mod:`osteo_edge.export`. Look records up by
name with :func:`get_format`, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import choice_error


@dataclass(frozen=True)
class ModelFormat:
    name: str  # manifest "format" value
    suffix: str  # model file suffix inside the bundle
    backend: str  # "torch" | "onnxruntime" | "litert"
    precision: str  # "fp32" | "int8"
    layout: str  # input layout the exported graph expects: NCHW | NHWC
    runtime: bool  # loadable by osteo_edge.edge_runtime (no torch)
    description: str


FORMATS: dict[str, ModelFormat] = {
    f.name: f
    for f in (
        ModelFormat("torch", ".pt", "torch", "fp32", "NCHW", False, "PyTorch state dict (training checkpoint)"),
        ModelFormat("onnx", ".onnx", "onnxruntime", "fp32", "NCHW", True, "ONNX fp32, run by ONNX Runtime"),
        ModelFormat("onnx-int8", ".onnx", "onnxruntime", "int8", "NCHW", True, "ONNX int8 QDQ, run by ONNX Runtime"),
        ModelFormat("tflite", ".tflite", "litert", "fp32", "NHWC", True, "TFLite fp32, run by LiteRT"),
        ModelFormat("tflite-int8", ".tflite", "litert", "int8", "NHWC", True, "TFLite int8, run by LiteRT (full-integer, or int8 weights with float activations: the manifest says which)"),
    )
}


def get_format(name: str) -> ModelFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise choice_error("model format", name, FORMATS) from None
