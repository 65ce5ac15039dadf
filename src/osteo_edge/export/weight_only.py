"""Weight-only int8 TFLite: int8 weights, float activations: the float model's answers at int8 size.

Full-integer int8 quantizes activations with ranges calibrated once on sample images; on our knee
model that is where the remaining error lives (p95 |dp| 0.035 after QAT, 0.022 with 16 layers kept
float, and 2.5% of held-out films changing their low-BMD flag). Weight-only int8 quantizes just the
weights (symmetric, per output channel, 8 bits) and stores each as an int8 tensor feeding a
``DEQUANTIZE`` op; LiteRT's XNNPACK delegate unpacks those constants to float once, at load, so the
model then runs float kernels: the size of int8 (3.7 MB for EfficientNet-Lite0), the speed of fp32
and |dp| around 1e-3 against the float graph.

Which is faster depends on the CPU: without int8 dot-product instructions (x86 AVX2 without VNNI,
the Raspberry Pi 4's Cortex-A72) full int8 is not faster than fp32, so nothing is lost; with them
(AVX-512 VNNI / AVX-VNNI, ARM dotprod as on the Pi 5) full int8 is faster and the fidelity-budgeted
full-integer route remains the choice when its decisions hold (`osteo-edge parity`).

Weights with fewer than ``min_elements`` values stay float (the converter's own rule for dynamic-range
quantization): the stem and a few small depthwise kernels, whose rounding costs the most and saves
almost nothing. Built by rewriting the fp32 file's flatbuffer with TensorFlow's own schema and
flatbuffer utilities (builtin ops only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, require

MIN_ELEMENTS = 1024


def _ops() -> tuple[Any, Any, dict[int, int]]:
    require("tensorflow", "tflite")
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    bo = schema.BuiltinOperator
    # the quantized axis of each op's weight tensor: output channels
    return schema, flatbuffer_utils, {bo.CONV_2D: 0, bo.DEPTHWISE_CONV_2D: 3, bo.FULLY_CONNECTED: 0}


def _opcode(codes: list[Any], schema: Any) -> int:
    """Index of the DEQUANTIZE operator code, added when the model has none."""
    deq = schema.BuiltinOperator.DEQUANTIZE
    for i, c in enumerate(codes):
        if max(c.builtinCode, c.deprecatedBuiltinCode) == deq:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = deq
    code.version = 4  # int8 per-channel input
    codes.append(code)
    return len(codes) - 1


def quantize_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit per-channel quantization (values in [-127, 127]): ``(int8 values, scales)``."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    scale = np.maximum(np.abs(w).max(axis=other), 1e-12) / 127.0
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _quantize_weight(model: Any, graph: Any, schema: Any, op: Any, axis: int, deq: int) -> Any:
    """Turn ``op``'s float weight tensor into int8 + DEQUANTIZE; the new op, or None when left float."""
    index = op.inputs[1]
    tensor = graph.tensors[index]
    buf = model.buffers[tensor.buffer]
    if tensor.type != schema.TensorType.FLOAT32 or buf.data is None or len(buf.data) // 4 < MIN_ELEMENTS:
        return None
    w = np.frombuffer(bytes(buf.data), np.float32).reshape(tensor.shape)
    q, scale = quantize_per_channel(w, axis)
    dequantized = schema.TensorT()
    dequantized.shape, dequantized.type, dequantized.buffer = list(tensor.shape), schema.TensorType.FLOAT32, 0
    dequantized.name = (tensor.name or b"weight") + b"/dequantized"
    graph.tensors.append(dequantized)
    params = schema.QuantizationParametersT()
    params.scale, params.zeroPoint, params.quantizedDimension = scale.tolist(), [0] * len(scale), axis
    tensor.type, tensor.quantization = schema.TensorType.INT8, params
    buf.data = np.frombuffer(q.tobytes(), np.uint8)
    op.inputs[1] = len(graph.tensors) - 1
    new = schema.OperatorT()
    new.opcodeIndex, new.inputs, new.outputs = deq, [index], [len(graph.tensors) - 1]
    return new


def weight_only_int8(fp32_tflite: Path, out: Path) -> dict[str, Any]:
    """Write the weight-only int8 version of ``fp32_tflite`` to ``out``; what was quantized."""
    schema, fb, weight_axis = _ops()
    try:
        model = fb.read_model(str(fp32_tflite))
    except Exception as exc:  # a flatbuffer it cannot parse
        raise ExportError(f"{fp32_tflite}: not a TFLite model the weight-only rewrite can read ({type(exc).__name__})") from exc
    deq = _opcode(model.operatorCodes, schema)
    quantized, kept = 0, 0
    for graph in model.subgraphs:
        ops = []
        for op in graph.operators:
            c = model.operatorCodes[op.opcodeIndex]
            axis = weight_axis.get(max(c.builtinCode, c.deprecatedBuiltinCode))
            if axis is not None and len(op.inputs) > 1:
                new = _quantize_weight(model, graph, schema, op, axis, deq)
                if new is not None:
                    ops.append(new)
                quantized, kept = quantized + (new is not None), kept + (new is None)
            ops.append(op)
        graph.operators = ops
    if not quantized:
        raise ExportError(f"{fp32_tflite}: no weight tensor of {MIN_ELEMENTS} values or more to quantize")
    fb.write_model(model, str(out))
    return {"quantized_weights": quantized, "float_weights": kept, "min_elements": MIN_ELEMENTS}
