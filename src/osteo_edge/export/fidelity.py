"""Faithful int8: the gray stem fold, float ops chosen to a fidelity budget, and the |dp| summary.

Why (measured on the shipped Lite0, issue 22): the error of a full-int8 TFLite file against its float
graph comes from weight rounding in the first layers, above all the stem. The input is a gray image
replicated into three channels, so only the sum of each stem filter's three slices matters; filters
whose slices cancel on gray input are rounded per channel at the scale of their largest slice, and
that rounding becomes a large part of the effective gray filter.

- :func:`fold_gray_stem` sums the stem's three input slices into one (torch, before export) and makes
  the exported model take one channel: exact on gray input (the three planes are identical), and the
  int8 weight scale is then the scale of the filter the image actually meets.
- :func:`budgeted_int8` converts to int8 with TFLite's QuantizationDebugger, ranks the quantized
  layers by their own error (RMSE over the quantization step, float input to each layer), and keeps
  the smallest prefix of that ranking in float for which the int8 file stays within the fidelity
  budget against the float graph on the check images (p95 and max |delta p|). Builtin ops only; the
  file has float input and output (the runtime feeds either).
- :func:`dp_summary` is the one definition of the |delta p| figures used by export and ``parity``:
  mean over every (image, class), p95 over the images of each image's largest |delta p|, max.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..core.progress import Progress, no_progress
from ..core.stats import softmax
from ..errors import ConfigError, ExportError, require
from ..preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def dp_summary(ref_probs: np.ndarray, cand_probs: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and the |delta p| distribution of a candidate against its reference."""
    ref = np.asarray(ref_probs, np.float64)
    cand = np.asarray(cand_probs, np.float64)
    if ref.shape != cand.shape:
        raise ConfigError(f"probabilities of shape {cand.shape} cannot be compared with {ref.shape}")
    if not ref.size:
        return {"n": 0, "agreement": float("nan"), "mean_abs_dp": 0.0, "p95_abs_dp": 0.0, "max_abs_dp": 0.0}
    delta = np.abs(ref - cand)
    return {
        "n": int(len(ref)),
        "agreement": float(np.mean(ref.argmax(1) == cand.argmax(1))),
        "mean_abs_dp": float(delta.mean()),
        "p95_abs_dp": float(np.percentile(delta.max(axis=1), 95)),
        "max_abs_dp": float(delta.max()),
    }


# ------------------------------------------------------------------------------------------------
# the gray stem fold


def gray_foldable(spec: PreprocessSpec) -> bool:
    """True when the model input is one gray plane copied into identical channels."""
    return (spec.grayscale == "replicate" and spec.channels == 3 and len(set(spec.mean)) == 1
            and len(set(spec.std)) == 1)


def folded_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """The one-channel spec of a folded model (same values as any one of the replicated planes)."""
    return dataclasses.replace(spec, grayscale="single", channels=1, mean=(spec.mean[0],), std=(spec.std[0],))


def _stem(model: Any) -> tuple[str, Any]:
    import torch

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            return name, mod
    raise ExportError("no convolution in the model: nothing to fold the gray input into")


def fold_gray_stem(model: Any, spec: PreprocessSpec, tolerance: float = 1e-3) -> tuple[Any, PreprocessSpec, dict[str, Any]]:
    """A copy of ``model`` whose first convolution takes one gray channel, its spec, and what was done.

    The stem's weights become the sum of their three input slices. The copy is checked on gray
    inputs against the original (max |delta logit| must stay below ``tolerance``); a model whose
    input feeds anything but that convolution fails the check and is refused.
    """
    import copy

    import torch

    if not gray_foldable(spec):
        raise ConfigError("the gray stem fold needs a replicated gray input with equal mean/std per channel")
    folded = copy.deepcopy(model).eval()
    name, stem = _stem(folded)
    if stem.in_channels != 3 or stem.groups != 1:
        raise ExportError(f"first convolution {name!r} takes {stem.in_channels} channels (groups {stem.groups}); cannot fold")
    with torch.no_grad():
        w = stem.weight.sum(dim=1, keepdim=True)
        stem.weight = torch.nn.Parameter(w.contiguous(), requires_grad=False)
        stem.in_channels = 1
    g = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (4, 1, spec.input_size, spec.input_size)).astype(np.float32))
    with torch.no_grad():
        ref = model.eval()(g.repeat(1, 3, 1, 1)).float().numpy()
        got = folded(g).float().numpy()
    err = float(np.abs(ref - got).max())
    scale = float(np.abs(ref).max()) or 1.0
    if not err <= tolerance * max(1.0, scale):
        raise ExportError(f"gray stem fold of {name!r} changed the logits by {err:.3g} on gray input; the input feeds more than the stem")
    info = {"layer": name, "input_channels": "3 -> 1", "max_abs_dlogit_on_gray": err,
            "why": "the input is one gray plane replicated: only the sum of each stem filter's slices matters"}
    log.debug("folded the gray input into %s (max |dlogit| %.2e)", name, err)
    return folded, folded_spec(spec), info


# ------------------------------------------------------------------------------------------------
# float ops chosen to a fidelity budget


@dataclass(frozen=True)
class FidelityBudget:
    """How far the int8 file may move calibrated probabilities from its float graph (check images)."""

    max_p95_dp: float = 0.04
    max_abs_dp: float = 0.12
    max_float_ops: int = 24
    weights_only: bool = False  # int8 weights, float activations (export/weight_only.py): no layer search

    def __post_init__(self) -> None:
        if not (0 < self.max_p95_dp <= 1 and 0 < self.max_abs_dp <= 1):
            raise ConfigError(f"fidelity budget must be in (0, 1], got p95 {self.max_p95_dp} and max {self.max_abs_dp}")
        if self.max_float_ops < 0:
            raise ConfigError(f"--max-float-ops must be >= 0, got {self.max_float_ops}")

    def met(self, s: dict[str, float]) -> bool:
        return s["p95_abs_dp"] <= self.max_p95_dp + 1e-12 and s["max_abs_dp"] <= self.max_abs_dp + 1e-12

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _schedule(n_layers: int, cap: int) -> list[int]:
    """How many of the worst layers to keep in float, in the order tried (few first)."""
    top = min(cap, n_layers - 1)  # at least one layer stays int8 (all float is the fp32 file)
    ks = [k for k in (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64) if k < top]
    return ks + [top]  # the last try keeps every layer allowed in float


def layer_errors(debugger: Any) -> list[dict[str, Any]]:
    """Per quantized layer: op, output tensor, RMSE of its int8 output over its quantization step
    (the layer run on float inputs, TFLite's QuantizationDebugger), worst first."""
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        try:
            mse, scale = float(r["mean_squared_error"]), float(r["scale"])
        except (KeyError, ValueError):
            continue
        if not np.isfinite(mse) or not scale > 0:
            continue
        rows.append({"op": r["op_name"], "tensor": r["tensor_name"], "rmse_over_scale": float(np.sqrt(mse) / scale)})
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return rows


def representative_dataset(calib_nhwc: np.ndarray) -> Callable[[], Iterator[list[Any]]]:
    """The TFLite converter's calibration callback: one image at a time, float32."""

    def representative() -> Iterator[list[Any]]:
        for i in range(len(calib_nhwc)):
            yield [calib_nhwc[i : i + 1].astype(np.float32)]

    return representative


def run_tflite(model_bytes: bytes, x: np.ndarray, workdir: Path, name: str) -> np.ndarray:
    from ..edge_runtime.backends import open_backend

    path = workdir / name
    path.write_bytes(model_bytes)
    return open_backend(path, "tflite-int8", threads=None).run(x)


def budgeted_int8(
    saved_model: Path,
    calib_nhwc: np.ndarray,
    check_nhwc: np.ndarray,
    float_logits: np.ndarray,
    temperature: float,
    budget: FidelityBudget,
    workdir: Path,
    progress: Progress | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """An int8 TFLite file (float I/O, builtins) within ``budget`` against ``float_logits`` on
    ``check_nhwc``, keeping as few of the worst layers in float as the budget allows."""
    tf = require("tensorflow", "tflite")
    progress = progress or no_progress
    representative = representative_dataset(calib_nhwc)

    def converter() -> Any:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.representative_dataset = representative
        return conv

    def quantized(denylist: list[str]) -> bytes:
        opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist) if denylist else None
        dbg = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=representative, debug_options=opts)
        return bytes(dbg.get_nondebug_quantized_model())

    progress("measuring per-layer int8 error")
    try:
        dbg = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=representative)
        dbg.run()
        layers = layer_errors(dbg)
    except Exception as exc:  # ConverterError and friends
        raise ExportError(f"int8 conversion (QuantizationDebugger) failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
    ref = softmax(float_logits, temperature)
    trials, chosen = [], None
    for k in _schedule(len(layers), budget.max_float_ops):
        progress(f"int8 with {k} float op(s)")
        deny = [r["tensor"] for r in layers[:k]]
        try:
            model = quantized(deny)
        except Exception as exc:  # a denylist the converter cannot honour: say so, try the next
            log.info("int8 with %d float op(s) not converted: %s", k, " ".join(str(exc).split())[:200])
            continue
        s = dp_summary(ref, softmax(run_tflite(model, check_nhwc, workdir, f"int8-{k}.tflite"), temperature))
        trials.append({"float_ops": k, **{key: s[key] for key in ("agreement", "mean_abs_dp", "p95_abs_dp", "max_abs_dp")}})
        log.info("int8 with %d float op(s): p95 |dp| %.4f, max %.4f, agreement %.4f", k, s["p95_abs_dp"], s["max_abs_dp"], s["agreement"])
        if budget.met(s):
            chosen = (k, model, deny)
            break
    info: dict[str, Any] = {"budget": budget.to_dict(), "check_images": int(len(check_nhwc)), "trials": trials,
                            "worst_layers": layers[:10], "n_quantized_layers": len(layers)}
    if chosen is None and not trials:
        raise ExportError("no int8 file could be converted within the fidelity budget's search")
    if chosen is None:
        best = min(trials, key=lambda t: t["p95_abs_dp"])
        raise ExportError(
            f"no int8 file within the fidelity budget (p95 |dp| <= {budget.max_p95_dp}, max <= {budget.max_abs_dp}) with up to "
            f"{budget.max_float_ops} float ops: the best kept {best['float_ops']} float (p95 {best['p95_abs_dp']:.4f}, max "
            f"{best['max_abs_dp']:.4f}); raise --max-float-ops or --max-p95-dp, or export --weights-only (int8 weights, float activations)")
    k, model, deny = chosen
    info.update({"float_ops": k, "float_layers": [{"op": r["op"], "tensor": r["tensor"]} for r in layers[:k]],
                 "achieved": trials[-1]})
    return model, info


__all__ = ["FidelityBudget", "budgeted_int8", "dp_summary", "fold_gray_stem", "folded_spec", "gray_foldable", "layer_errors",
           "representative_dataset"]
