"""A structural check of a TFLite flatbuffer before LiteRT opens it.

LiteRT's interpreter trusts the file: a truncated or hand-edited flatbuffer whose offsets point past
its end makes it read out of bounds and crash the process (SIGSEGV), which a verified seal cannot
rule out when nobody signs the bundle. Walking the model's tables with the flatbuffers reader that
ships with ai-edge-litert (``schema_py_generated``) is bounds-checked in Python: every table, vector
and index the interpreter will follow is read here first, in a few milliseconds, and anything out of
range is a one-line :class:`~osteo_edge.errors.BundleError` instead of a crash.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from ..errors import BundleError


def _vector_end(table: Any, field: int) -> int:
    """Byte position just past a table's vector field (0 when absent)."""
    o = table._tab.Offset(field)
    if not o:
        return 0
    start = table._tab.Vector(o)
    return start + table._tab.VectorLen(o)  # byte vectors: one byte an element


def _check_subgraph(sg: Any, n_buffers: int, n_codes: int) -> None:
    n_tensors = sg.TensorsLength()
    for t in range(n_tensors):
        tensor = sg.Tensors(t)
        tensor.ShapeAsNumpy()
        tensor.Type()
        if not 0 <= tensor.Buffer() < max(n_buffers, 1):
            raise ValueError(f"tensor {t} names buffer {tensor.Buffer()} of {n_buffers}")
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if not 0 <= op.OpcodeIndex() < n_codes:
            raise ValueError(f"operator {i} names operator code {op.OpcodeIndex()} of {n_codes}")
        for idx in (*op.InputsAsNumpy().tolist(), *op.OutputsAsNumpy().tolist()):
            if not -1 <= int(idx) < n_tensors:
                raise ValueError(f"operator {i} names tensor {idx} of {n_tensors}")
    for idx in (*sg.InputsAsNumpy().tolist(), *sg.OutputsAsNumpy().tolist()):
        if not 0 <= int(idx) < n_tensors:
            raise ValueError(f"the subgraph's input/output names tensor {idx} of {n_tensors}")


def check_tflite(path: Path) -> None:
    """Refuse, in one line, a file whose flatbuffer does not hold together (truncated, edited, not TFLite)."""
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415
    except ImportError:  # an older LiteRT without the schema: the interpreter's own checks only
        return
    with open(path, "rb") as fh:
        if fh.read(8)[4:8] != b"TFL3":
            raise BundleError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
        # mapped, not read: the walk touches the tables, never the weights' pages
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _walk(schema, data, len(data), path)


def _walk(schema: Any, data: Any, size: int, path: Path) -> None:
    try:
        model = schema.Model.GetRootAs(data, 0)
        n_buffers, n_codes = model.BuffersLength(), model.OperatorCodesLength()
        for c in range(n_codes):
            model.OperatorCodes(c).BuiltinCode()
        for b in range(n_buffers):
            buf = model.Buffers(b)
            end = _vector_end(buf, 4)  # Buffer.data: a byte vector
            if end > size or (buf.Offset() > 1 and buf.Offset() + buf.Size() > size):
                raise ValueError(f"buffer {b} runs past the end of the file")
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraph")
        for g in range(model.SubgraphsLength()):
            _check_subgraph(model.Subgraphs(g), n_buffers, n_codes)
    except (struct.error, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise BundleError(f"{path}: the TFLite file is damaged or truncated ({str(exc).splitlines()[0][:160]}); "
                          "rebuild or re-download the bundle") from None
