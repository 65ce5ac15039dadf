"""TFLite exporters: fp32 and full-integer int8, through ONNX and onnx2tf.

The route (measured, see docs/export.md): torch -> ONNX fp32 (batch 1, opset 17) ->
``onnxruntime.quantization.quant_pre_process`` -> onnx2tf (NCHW graph rewritten to NHWC, with
onnxsim) -> a TF SavedModel and its fp32 ``.tflite``. For int8 the SavedModel goes through the TFLite
converter with ``TFLITE_BUILTINS_INT8`` only (no Flex ops: LiteRT cannot run them), per-channel
weights and our own calibration images (training split, shared preprocessing); input and output
tensors are int8 and the edge runtime quantizes/dequantizes them with their scale and zero point.

onnx2tf would otherwise download a sample image file from the internet, for a numerical self-check
(and for calibration when none is given); offline that fails, so the download is replaced by our
golden/calibration images for the duration of the call.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ExportError, require
from .context import ExportContext, register_exporter
from .onnx_export import INPUT_NAME, to_onnx

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _onnx2tf_environment(sample: np.ndarray) -> Iterator[None]:
    """onnx2tf calls the ``onnxsim`` console script and downloads a sample: make both local, for this call only."""
    onnx2tf_mod = sys.modules["onnx2tf.onnx2tf"]
    bindir = str(Path(sys.executable).parent)
    old_path = os.environ.get("PATH", "")
    patched = bindir not in old_path.split(os.pathsep)
    original = onnx2tf_mod.download_test_image_data
    onnx2tf_mod.download_test_image_data = lambda: sample
    if patched:
        os.environ["PATH"] = bindir + os.pathsep + old_path
    try:
        yield
    finally:
        onnx2tf_mod.download_test_image_data = original
        if patched:
            os.environ["PATH"] = old_path


def saved_model_from_onnx(ctx: ExportContext) -> tuple[Path, Path]:
    """(SavedModel dir, fp32 .tflite) for ``ctx.model`` via ONNX and onnx2tf."""
    require("tensorflow", "tflite")
    onnx2tf = require("onnx2tf", "tflite")
    if shutil.which("onnxsim", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")) is None:
        from ..errors import DependencyError

        raise DependencyError("the onnxsim command is not installed (onnx2tf needs it); install it with: pip install 'osteo-edge[tflite]'")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = to_onnx(ctx.model, ctx, ctx.workdir / "model.fp32.onnx", batch=1)
    pre = ctx.workdir / "model.pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    tf_dir = ctx.workdir / "tf"
    spec = ctx.torch_spec
    # onnx2tf's self-check wants NHWC images in [0, 1]-ish range; golden-like synthetic ones do.
    from .golden import synthetic_inputs

    sample = synthetic_inputs(spec.with_layout("NHWC"), n=2).x
    log_buf = io.StringIO()
    try:
        with _onnx2tf_environment(sample), contextlib.redirect_stdout(log_buf):
            onnx2tf.convert(
                input_onnx_file_path=str(pre),
                output_folder_path=str(tf_dir),
                output_signaturedefs=True,
                non_verbose=True,
                overwrite_input_shape=[f"{INPUT_NAME}:1,{spec.channels},{spec.input_size},{spec.input_size}"],
            )
    except SystemExit as exc:  # onnx2tf calls sys.exit on errors
        raise ExportError(f"onnx2tf failed (exit {exc.code}): {_tail(log_buf.getvalue())}") from None
    except Exception as exc:
        raise ExportError(f"onnx2tf failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} {_tail(log_buf.getvalue())}") from exc
    flt = tf_dir / f"{pre.stem}_float32.tflite"
    if not (tf_dir / "saved_model.pb").is_file() or not flt.is_file():
        raise ExportError(f"onnx2tf wrote no SavedModel/float32 TFLite in {tf_dir}: {_tail(log_buf.getvalue())}")
    ctx.info["converter"] = (
        f"torch ONNX exporter (opset 17) -> onnxruntime quant_pre_process -> onnx2tf {getattr(onnx2tf, '__version__', '?')} "
        f"-> tensorflow {sys.modules['tensorflow'].__version__} TFLiteConverter"
    )
    return tf_dir, flt


def _tail(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text[-n:] if text else "(no output)"


@register_exporter("tflite")
def export_tflite(ctx: ExportContext) -> None:
    from .embedding import wrap_context

    wrap_context(ctx)  # export --embedding-output: a second output, the pooled embedding (issue 28 site --head)
    _, flt = saved_model_from_onnx(ctx)
    shutil.copyfile(flt, ctx.out_file)


def full_integer_tflite(saved_model: Path, calib_nhwc: np.ndarray, io_dtype: str = "int8") -> bytes:
    """Full-integer int8 TFLite from a SavedModel: per-channel weights, builtins only, int8 I/O."""
    from .fidelity import representative_dataset

    tf = require("tensorflow", "tflite")
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.representative_dataset = representative_dataset(calib_nhwc)
    conv.inference_input_type = getattr(tf, io_dtype)
    conv.inference_output_type = getattr(tf, io_dtype)
    try:
        return bytes(conv.convert())
    except Exception as exc:  # ConverterError and friends
        raise ExportError(f"full-integer TFLite conversion failed: {type(exc).__name__}: {_tail(str(exc), 300)}") from exc


@register_exporter("tflite-int8")
def export_tflite_int8(ctx: ExportContext) -> None:
    from .embedding import requested

    if requested():
        raise ExportError("--embedding-output is for the fp32 tflite export (the int8 routes' fidelity checks know one output)")
    if ctx.budget is not None and ctx.budget.weights_only:
        return _weight_only(ctx)
    tf_dir, _ = saved_model_from_onnx(ctx)
    calib = ctx.calibration().as_layout(ctx.spec)  # NHWC, already normalised by the spec
    common = {"weights": "int8 symmetric per-channel", "activations": "int8 asymmetric per-tensor",
              "calibration_method": "min/max over the representative images"}
    if ctx.budget is None:
        ctx.out_file.write_bytes(full_integer_tflite(tf_dir, calib))
        ctx.info["quantization"] = {"quantizer": "TFLiteConverter full-integer (TFLITE_BUILTINS_INT8)", **common,
                                    "io": "int8 input and output (the runtime quantizes/dequantizes)", "float_ops": 0}
        return
    from .context import torch_logits
    from .fidelity import budgeted_int8

    check = ctx.check_inputs()
    float_logits = torch_logits(ctx.model, check.as_layout(ctx.torch_spec))
    model, info = budgeted_int8(tf_dir, calib, check.as_layout(ctx.spec), float_logits, ctx.parent.temperature, ctx.budget,
                                ctx.workdir, progress=ctx.progress)
    ctx.out_file.write_bytes(model)
    ctx.info["quantization"] = {
        "quantizer": "TFLiteConverter int8 (TFLITE_BUILTINS + TFLITE_BUILTINS_INT8) with the QuantizationDebugger's "
                     "denylist: the fewest worst layers kept float within the fidelity budget", **common,
        "io": "float32 input and output", "fidelity": {**info, "check_source": check.source,
                                                      "reference": "the float graph (torch) on the check images"},
        "float_ops": info["float_ops"],
    }


def _weight_only(ctx: ExportContext) -> None:
    """int8 weights, float activations (:mod:`.weight_only`), checked against the fidelity budget."""
    from ..core.stats import softmax
    from .context import torch_logits
    from .fidelity import dp_summary, run_tflite
    from .weight_only import weight_only_int8

    _, flt = saved_model_from_onnx(ctx)
    info = weight_only_int8(flt, ctx.out_file)
    check = ctx.check_inputs()
    t = ctx.parent.temperature
    ref = softmax(torch_logits(ctx.model, check.as_layout(ctx.torch_spec)), t)
    s = dp_summary(ref, softmax(run_tflite(ctx.out_file.read_bytes(), check.as_layout(ctx.spec), ctx.workdir, "wo.tflite"), t))
    achieved = {k: s[k] for k in ("agreement", "mean_abs_dp", "p95_abs_dp", "max_abs_dp")}
    if not ctx.budget.met(s):
        raise ExportError(f"weight-only int8 is outside the fidelity budget (p95 |dp| {s['p95_abs_dp']:.4f} <= "
                          f"{ctx.budget.max_p95_dp}, max {s['max_abs_dp']:.4f} <= {ctx.budget.max_abs_dp})")
    ctx.info["quantization"] = {
        "quantizer": "weight-only int8: the fp32 TFLite file's weights rewritten to int8 + DEQUANTIZE (builtins only)",
        "scheme": "weight-only", "weights": f"int8 symmetric per-channel (tensors of {info['min_elements']}+ values)",
        "activations": "float32 (XNNPACK unpacks the int8 weights to float at load)", "io": "float32 input and output",
        "fidelity": {"budget": ctx.budget.to_dict(), "check_images": int(len(check.x)), "check_source": check.source,
                     "reference": "the float graph (torch) on the check images", "achieved": achieved,
                     "float_ops": "all (activations float)", **info},
        "float_ops": "all",
    }
