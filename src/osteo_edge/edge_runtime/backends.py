"""Inference backends of the edge runtime: one table, keyed by the backend name in osteo_edge.formats.

Torch-free. Each backend record knows its Python module, the install extra that provides it and
how to open a model file. :func:`open_backend` looks the format up in
:data:`osteo_edge.formats.FORMATS`, picks the backend record by name and returns a runner whose
``.run(x)`` takes a float32 batch in the spec layout (NCHW for ONNX, NHWC for TFLite) and returns
float32 logits ``(batch, classes)``.

A model file may have a second output, the pooled embedding (``export --embedding-output``): the
logits are then the output with the fewest values per image, the embedding the one with the most;
``.run`` still returns the logits, ``.run_with_embedding(x)`` returns ``(logits, embedding)`` and
``.embedding_dim`` is its width (None for a one-output file).

Full-integer TFLite models may have int8/uint8 input and output tensors: the runner quantizes the
float input with the input tensor's scale/zero-point and dequantizes the output with the output
tensor's, so callers always see float32.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..native import native_stderr_quiet
from ..errors import BundleError, ConfigError, DependencyError, first_line, install_hint, require
from ..formats import FORMATS, get_format

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What :func:`open_backend` returns."""

    backend: str
    version: str
    threads: int | None
    input_shape: tuple[int | None, ...]
    input_dtype: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


def _per_image(shape: Any) -> int:
    dims = [d for d in list(shape)[1:] if isinstance(d, (int, np.integer)) and d > 0]
    return int(np.prod(dims)) if dims else 0


def pick_outputs(outputs: list[Any], shape_of: Callable[[Any], Any]) -> tuple[Any, Any | None]:
    """``(logits output, embedding output or None)``: with several outputs, the fewest values per image are the logits."""
    if len(outputs) == 1:
        return outputs[0], None
    ranked = sorted(outputs, key=lambda o: _per_image(shape_of(o)))
    return ranked[0], ranked[-1]


def _both_in_chunks(x: np.ndarray, fixed_batch: int | None, run_one: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
                    ) -> tuple[np.ndarray, np.ndarray]:
    if fixed_batch is None or x.shape[0] == fixed_batch:
        return run_one(x)
    if fixed_batch != 1:
        raise ConfigError(f"model has a fixed batch size of {fixed_batch}; got a batch of {x.shape[0]}")
    parts = [run_one(x[i : i + 1]) for i in range(x.shape[0])]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _no_embedding(path: Path) -> BundleError:
    return BundleError(f"{path}: the model file has one output, no embedding; export it with --embedding-output")


def _check_threads(threads: int | None) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or None (backend default), got {threads!r}")
    return threads


def _as_batch(x: np.ndarray, expected: tuple[int | None, ...], model_path: Path) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim == len(expected) - 1:
        x = x[None]
    if x.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected[1:], x.shape[1:])):
        shown = "x".join("N" if e is None else str(e) for e in expected)
        raise ConfigError(
            f"{model_path.name}: input of shape {tuple(x.shape)} does not match the model input {shown} "
            "(is the spec layout right for this format?)"
        )
    return np.ascontiguousarray(x)


def _in_chunks(x: np.ndarray, fixed_batch: int | None, run_one: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Run a model with a fixed batch dimension over any batch size, one chunk at a time."""
    if fixed_batch is None or x.shape[0] == fixed_batch:
        return run_one(x)
    if fixed_batch != 1:
        raise ConfigError(f"model has a fixed batch size of {fixed_batch}; got a batch of {x.shape[0]}")
    return np.concatenate([run_one(x[i : i + 1]) for i in range(x.shape[0])], axis=0)


def _logits(out: np.ndarray) -> np.ndarray:
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 1:
        out = out[None]
    if out.ndim > 2:
        out = out.reshape(out.shape[0], -1)
    return out


# ------------------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxRuntimeRunner:
    backend = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None):
        ort = require("onnxruntime", BACKENDS["onnxruntime"].extra)
        self.version = str(ort.__version__)
        self.threads = threads
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise BundleError(f"{model_path}: ONNX Runtime cannot load the model ({type(exc).__name__}: {first_line(exc, 300)})") from exc
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        out, emb = pick_outputs(self._session.get_outputs(), lambda o: o.shape)
        self._output_name = out.name
        self._embedding_name = emb.name if emb is not None else None
        self.embedding_dim = _per_image(emb.shape) if emb is not None else None
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self.input_dtype = str(inp.type)
        self._path = model_path
        if inp.type != "tensor(float)":
            raise BundleError(f"{model_path}: ONNX input {inp.name!r} is {inp.type}; the runtime feeds tensor(float)")

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        return _logits(self._session.run([self._output_name], {self._input_name: x})[0])

    def run(self, x: np.ndarray) -> np.ndarray:
        x = _as_batch(x, self.input_shape, self._path)
        return _in_chunks(x, self.input_shape[0], self._run_one)

    def run_with_embedding(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._embedding_name is None:
            raise _no_embedding(self._path)
        x = _as_batch(x, self.input_shape, self._path)

        def one(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            z, e = self._session.run([self._output_name, self._embedding_name], {self._input_name: xb})
            return _logits(z), _logits(e)

        return _both_in_chunks(x, self.input_shape[0], one)


# ------------------------------------------------------------------------------------------------
# LiteRT (ai-edge-litert)


def _quant_params(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero_point) of a per-tensor quantized int8/uint8 tensor, else None."""
    dtype = np.dtype(detail["dtype"])
    if dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        return None
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), dtype=np.float64)
    zeros = np.asarray(qp.get("zero_points", []), dtype=np.int64)
    if scales.size == 0:
        scale, zero = detail.get("quantization", (0.0, 0))
        scales, zeros = np.asarray([scale], dtype=np.float64), np.asarray([zero], dtype=np.int64)
    if scales.size != 1 or not scales[0] > 0:
        raise BundleError(f"tensor {detail.get('name')!r} is {dtype} without a usable per-tensor scale")
    return float(scales[0]), int(zeros[0]) if zeros.size else 0


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x.astype(np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float64) - zero_point) * scale).astype(np.float32)




class LiteRTRunner:
    backend = "litert"

    def __init__(self, model_path: Path, threads: int | None):
        require("ai_edge_litert", BACKENDS["litert"].extra)
        from ai_edge_litert import interpreter as litert  # noqa: PLC0415

        try:
            from importlib.metadata import version

            self.version = version("ai-edge-litert")
        except Exception:  # pragma: no cover - metadata missing in odd installs
            self.version = "unknown"
        self.threads = threads
        self._path = model_path
        from .tflite_check import check_tflite

        check_tflite(Path(model_path))  # a damaged flatbuffer would crash the interpreter, not raise
        try:
            with native_stderr_quiet():  # LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate" here
                self._interp = litert.Interpreter(model_path=str(model_path), num_threads=threads)
                self._interp.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError for bad flatbuffers
            raise BundleError(f"{model_path}: LiteRT cannot load the model ({type(exc).__name__}: {first_line(exc, 300)})") from exc
        self._in = self._interp.get_input_details()[0]
        self._out, self._emb = pick_outputs(self._interp.get_output_details(), lambda o: o["shape"])
        self.embedding_dim = _per_image(self._emb["shape"]) if self._emb is not None else None
        self.input_shape = tuple(int(d) for d in self._in["shape"])
        sig = self._in.get("shape_signature")
        if sig is not None and len(sig) and int(sig[0]) == -1:
            self.input_shape = (None, *self.input_shape[1:])
        self._batch = int(self._in["shape"][0])
        self.input_dtype = np.dtype(self._in["dtype"]).name
        self._in_q = _quant_params(self._in)
        self._out_q = _quant_params(self._out)
        self._emb_q = _quant_params(self._emb) if self._emb is not None else None
        if self._in_q is None and np.dtype(self._in["dtype"]) != np.float32:
            raise BundleError(f"{model_path}: TFLite input is {self.input_dtype}; the runtime feeds float32, int8 or uint8")

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        return self._invoke(x)[0]

    def _invoke(self, x: np.ndarray, embedding: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        if x.shape[0] != self._batch:
            self._interp.resize_tensor_input(self._in["index"], list(x.shape))
            self._interp.allocate_tensors()
            self._batch = x.shape[0]
        if self._in_q is not None:
            x = quantize(x, *self._in_q, np.dtype(self._in["dtype"]))
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        out = self._interp.get_tensor(self._out["index"])
        if self._out_q is not None:
            out = dequantize(out, *self._out_q)
        if not embedding or self._emb is None:
            return _logits(out), None
        emb = self._interp.get_tensor(self._emb["index"])
        if self._emb_q is not None:
            emb = dequantize(emb, *self._emb_q)
        return _logits(out), _logits(emb)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = _as_batch(x, self.input_shape, self._path)
        # A dynamic batch dimension is resized per call; a fixed one is run one image at a time.
        fixed = None if self.input_shape[0] is None else self.input_shape[0]
        return _in_chunks(x, fixed, self._run_one)

    def run_with_embedding(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._emb is None:
            raise _no_embedding(self._path)
        x = _as_batch(x, self.input_shape, self._path)
        return _both_in_chunks(x, self.input_shape[0], lambda xb: self._invoke(xb, embedding=True))  # type: ignore[arg-type,return-value]



# ------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class BackendRecord:
    name: str  # the backend name used in osteo_edge.formats.FORMATS
    module: str  # Python module that must import
    package: str  # distribution name (for versions)
    extra: str  # install extra that provides it
    opener: Callable[[Path, int | None], Runner]
    description: str

    def available(self) -> bool:
        import importlib.util

        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


BACKENDS: dict[str, BackendRecord] = {
    b.name: b
    for b in (
        BackendRecord("onnxruntime", "onnxruntime", "onnxruntime", "onnx", OnnxRuntimeRunner, "ONNX Runtime, CPU execution provider"),
        BackendRecord("litert", "ai_edge_litert", "ai-edge-litert", "runtime", LiteRTRunner, "LiteRT (ai-edge-litert) interpreter, XNNPACK"),
    )
}


def backend_for(format_name: str) -> BackendRecord:
    """The backend record that runs a format, or a one-line error naming the runtime formats."""
    fmt = get_format(format_name)
    if not fmt.runtime or fmt.backend not in BACKENDS:
        runnable = [f.name for f in FORMATS.values() if f.runtime and f.backend in BACKENDS]
        raise ConfigError(
            f"format {format_name!r} is not run by the edge runtime (it needs {fmt.backend}); valid: {', '.join(runnable)}"
        )
    return BACKENDS[fmt.backend]


def open_backend(model_path: str | os.PathLike, format_name: str, threads: int | None = None) -> Runner:
    """Open ``model_path`` with the backend that runs ``format_name``; ``threads=None`` = backend default."""
    threads = _check_threads(threads)
    record = backend_for(format_name)
    path = Path(model_path)
    if not path.is_file():
        raise BundleError(f"{path}: model file not found")
    suffix = get_format(format_name).suffix
    if path.suffix != suffix:
        raise BundleError(f"{path}: format {format_name!r} expects a {suffix} file")
    if not record.available():
        raise DependencyError(f"format {format_name!r} runs on {record.description}, which is not installed here; "
                              f"{install_hint(record.extra)}")
    runner = record.opener(path, threads)
    log.debug("opened %s with %s %s (threads=%s)", path, record.name, runner.version, threads)
    return runner
