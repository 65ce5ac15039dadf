"""ONNX exporters: fp32 (torch TorchScript exporter, opset 17) and int8 QDQ (ONNX Runtime quantize_static).

int8 choices (measured, see docs/export.md): QDQ format, per-channel symmetric int8 weights,
asymmetric uint8 activations, MinMax calibration on training-split images through the shared
preprocessing, after ``quant_pre_process`` (shape inference + graph optimisation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, require
from .context import ExportContext, register_exporter

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def to_onnx(model: Any, ctx: ExportContext, path: Path, batch: int | None = None) -> Path:
    """Write the fp32 ONNX graph of ``model`` (NCHW input, raw logits) with the spec in its metadata.

    ``batch=None`` gives a dynamic batch dimension; an int fixes it (the TFLite route wants 1).
    """
    torch = require("torch", "train")
    onnx = require("onnx", "export")
    spec = ctx.torch_spec
    example = torch.zeros((batch or 1, spec.channels, spec.input_size, spec.input_size), dtype=torch.float32)
    dynamic = None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), opset_version=OPSET, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=dynamic, do_constant_folding=True)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    add_metadata(path, ctx)
    ctx.info.setdefault("converter", f"torch {torch.__version__} onnx exporter (TorchScript, opset {OPSET}) + onnx {onnx.__version__}")
    return path


def add_metadata(path: Path, ctx: ExportContext) -> None:
    """Labels, spec (NCHW) and temperature in the ONNX ``metadata_props`` (the manifest is the authority)."""
    onnx = require("onnx", "export")
    m = onnx.load(str(path))
    props = {
        "osteo_edge.labels": json.dumps(ctx.parent.labels),
        "osteo_edge.spec": ctx.torch_spec.to_json(),
        "osteo_edge.temperature": repr(ctx.parent.temperature),
        "osteo_edge.intended_use": "screening aid, not a diagnosis",
    }
    del m.metadata_props[:]
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(m, str(path))


@register_exporter("onnx")
def export_onnx(ctx: ExportContext) -> None:
    to_onnx(ctx.model, ctx, ctx.out_file)


class _Reader:
    """onnxruntime CalibrationDataReader over an array, one image per call."""

    def __init__(self, x: np.ndarray, name: str):
        self.x, self.name, self.i = x, name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.x):
            return None
        item = {self.name: self.x[self.i : self.i + 1]}
        self.i += 1
        return item

    def rewind(self) -> None:
        self.i = 0


def quantize_onnx(fp32: Path, out: Path, calib: np.ndarray, workdir: Path) -> dict[str, Any]:
    """Static QDQ int8 quantization of an fp32 ONNX file (per-channel s8 weights, u8 activations)."""
    require("onnxruntime", "onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / "model.pre.onnx"
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
    except Exception as exc:
        log.warning("quant_pre_process failed (%s); quantizing the raw graph", exc)
        pre = fp32
    try:
        quantize_static(
            str(pre), str(out), _Reader(calib, INPUT_NAME), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    except Exception as exc:
        raise ExportError(f"onnxruntime quantize_static failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    return {"quantizer": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ", "per_channel": True,
            "activations": "uint8 asymmetric", "weights": "int8 symmetric per-channel", "calibration_method": "MinMax",
            "pre_process": pre != fp32}


@register_exporter("onnx-int8")
def export_onnx_int8(ctx: ExportContext) -> None:
    fp32 = to_onnx(ctx.model, ctx, ctx.workdir / "model.fp32.onnx")
    calib = ctx.calibration().x
    ctx.info["quantization"] = quantize_onnx(fp32, ctx.out_file, calib, ctx.workdir)
    add_metadata(ctx.out_file, ctx)
