"""Where the error of a compressed file comes from (``osteo-edge parity --explain``), torch-free.

Two views, written as ``explain.json`` and ``explain.png``:

- **Per layer** (both models TFLite files converted from the same graph, for example
  ``models/default-fp32`` and the int8 default): LiteRT runs both with every intermediate tensor kept;
  tensors are matched by name (the converters keep the graph's op names) and shape; for each matched
  activation, the relative error of the candidate against the float reference on the same images,
  ``rmse / std(reference)``, in graph order. The error a layer adds is its error minus the largest
  error of the tensors feeding it; the layers that add most are named.
- **Flips against the top-2 margin** of the reference: which pool files changed top-1 answer, against
  how close the reference's two best classes were (a flip at a near tie is expected of any rounding;
  a flip at a wide margin is not), from the answers ``parity`` computed.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import Bundle, atomic_write_json
from ..errors import ConfigError, DependencyError

log = logging.getLogger(__name__)


def _interpreter(model_path: Path) -> Any:
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError as exc:  # pragma: no cover - the runtime extra brings it
        raise DependencyError("per-layer explain needs LiteRT: pip install 'osteo-edge[runtime]'") from exc
    import warnings

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": that is what this is
        warnings.simplefilter("ignore", UserWarning)
        it = litert.Interpreter(model_path=str(model_path), experimental_preserve_all_tensors=True, num_threads=1,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def _activations(it: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every float-valued (dequantized) intermediate tensor of one run, by name."""
    from ..edge_runtime.backends import dequantize, quantize

    inp = it.get_input_details()[0]
    q = inp.get("quantization", (0.0, 0))
    if np.dtype(inp["dtype"]) != np.float32 and q[0]:
        x = quantize(x, q[0], q[1], np.dtype(inp["dtype"]))
    it.set_tensor(inp["index"], x.astype(inp["dtype"]))
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
        if len(d["shape"]) < 2 or d["shape"][0] != 1:  # activations have batch 1; weights do not
            continue
        try:
            t = it.get_tensor(d["index"])
        except ValueError:
            continue
        scale, zero = d.get("quantization", (0.0, 0))
        if np.issubdtype(t.dtype, np.integer):
            if not scale:
                continue
            t = dequantize(t, scale, zero)
        out.setdefault(_key(d["name"]), np.asarray(t, np.float64))
    return out


def _key(name: str) -> str:
    """A tensor's match key: the first op of its (fused) name. Converters append different constant
    names after the ';' (``Const_731`` vs ``.../Add/y1``) to the same activation."""
    return _KERAS_SCOPE.sub("", name.split(";", 1)[0])


_KERAS_SCOPE = re.compile(r"^model(_\d+)?/")  # keras numbers its model scope per conversion in a process


def _op_order(it: Any) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """(output tensor names in execution order, the input names of each, the op of each)."""
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    order, inputs, ops = [], {}, {}
    try:
        details = it._get_ops_details()  # LiteRT's op list (name, inputs, outputs)
    except AttributeError:  # pragma: no cover
        return order, inputs, ops
    for op in details:
        for o in op.get("outputs", []):
            n = names.get(int(o))
            if n is None:
                continue
            n = _key(n)
            if n in inputs:
                continue
            order.append(n)
            inputs[n] = [_key(names[int(i)]) for i in op.get("inputs", []) if int(i) in names]
            ops[n] = op.get("op_name", "?")
    return order, inputs, ops


def layer_errors(reference_model: Path, candidate_model: Path, x_ref: np.ndarray, x_cand: np.ndarray) -> list[dict[str, Any]]:
    """Per matched activation, in the candidate's execution order: relative error and what it adds."""
    ri, ci = _interpreter(reference_model), _interpreter(candidate_model)
    order, inputs, ops = _op_order(ci)
    ref_name = _pairing(ri, ci, order, ops)
    sq: dict[str, float] = {}
    var: dict[str, float] = {}
    for k in range(len(x_ref)):
        ra = _activations(ri, x_ref[k : k + 1])
        ca = _activations(ci, x_cand[k : k + 1])
        for name, c in ca.items():
            r = ra.get(ref_name.get(name, name))
            if r is None or r.shape != c.shape:
                continue
            sq[name] = sq.get(name, 0.0) + float(np.mean((c - r) ** 2))
            var[name] = var.get(name, 0.0) + float(np.var(r))
    rel = {n: float(np.sqrt(sq[n] / max(var[n], 1e-30))) for n in sq}
    rows = []
    produced = set(order)  # activations; constant inputs (weights) are not "fed" errors
    for n in order:
        if n not in rel:
            continue
        fed = [rel[i] for i in inputs.get(n, []) if i in rel and i in produced and i != n]
        rows.append({"tensor": n, "op": ops.get(n, "?"), "relative_error": rel[n],
                     "added": rel[n] - (max(fed) if fed else 0.0)})
    return rows


_NOT_COMPUTE = {"QUANTIZE", "DEQUANTIZE", "DELEGATE"}


def _pairing(ri: Any, ci: Any, cand_order: list[str], cand_ops: dict[str, str]) -> dict[str, str]:
    """Candidate activation -> reference activation. By name when the converters kept the graph's op
    names (separate conversions do); else in execution order, op type and shape (two conversions in
    one process number TensorFlow's op names on from each other)."""
    ref_order, _, ref_ops = _op_order(ri)
    if len(set(cand_order) & set(ref_order)) >= len([n for n in cand_order if cand_ops[n] not in _NOT_COMPUTE]) // 2:
        return {}
    shapes_r = {_key(d["name"]): tuple(d["shape"]) for d in ri.get_tensor_details()}
    shapes_c = {_key(d["name"]): tuple(d["shape"]) for d in ci.get_tensor_details()}
    ref_seq = [n for n in ref_order if ref_ops[n] not in _NOT_COMPUTE]
    pairs, j = {}, 0
    for n in (n for n in cand_order if cand_ops[n] not in _NOT_COMPUTE):
        k = j
        while k < len(ref_seq) and (ref_ops[ref_seq[k]] != cand_ops[n] or shapes_r.get(ref_seq[k]) != shapes_c.get(n)):
            k += 1
        if k < len(ref_seq):
            pairs[n], j = ref_seq[k], k + 1
    return pairs


def flip_margins(ref_probs: np.ndarray, cand_probs: np.ndarray) -> dict[str, Any]:
    """Top-2 margin of the reference per file, and which files flipped."""
    ref = np.asarray(ref_probs, np.float64)
    srt = np.sort(ref, axis=1)
    margin = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else srt[:, -1]
    flips = ref.argmax(1) != np.asarray(cand_probs).argmax(1)
    dmax = np.abs(ref - np.asarray(cand_probs, np.float64)).max(axis=1)
    return {"margin": margin.tolist(), "flipped": flips.tolist(), "max_abs_dp": dmax.tolist(),
            "n_flips": int(flips.sum()), "largest_flip_margin": float(margin[flips].max()) if flips.any() else None}


def explain(reference: Bundle, candidate: Bundle, paths: Sequence[str], ref_probs: np.ndarray, cand_probs: np.ndarray,
            out_dir: str | os.PathLike, n_images: int = 16, top: int = 10) -> dict[str, Any]:
    """Write ``explain.json`` and ``explain.png`` into ``out_dir``; return the report."""
    from ..preprocess import preprocess

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"reference": str(reference.path), "candidate": str(candidate.path),
                              "flips": flip_margins(ref_probs, cand_probs)}
    tflite = {"tflite", "tflite-int8"}
    if reference.format in tflite and candidate.format in tflite:
        if not paths:
            raise ConfigError("--explain needs at least one pool image")
        pick = list(paths)[:: max(1, len(paths) // n_images)][:n_images]
        x_ref = np.stack([preprocess(p, reference.spec) for p in pick]).astype(np.float32)
        x_cand = np.stack([preprocess(p, candidate.spec) for p in pick]).astype(np.float32)
        rows = layer_errors(reference.model_path, candidate.model_path, x_ref, x_cand)
        report["layers"] = {"images": len(pick), "matched": len(rows), "in_order": rows,
                            "worst_added": sorted(rows, key=lambda r: -r["added"])[:top],
                            "method": "LiteRT with every tensor kept; activations matched by name and shape; "
                                      "relative error = rmse / std(reference activation); added = its error minus the "
                                      "largest error of its inputs"}
    else:
        report["layers"] = {"skipped": f"per-layer error needs two TFLite bundles (reference {reference.format}, "
                                       f"candidate {candidate.format}); use a TFLite fp32 reference such as models/default-fp32"}
    atomic_write_json(out / "explain.json", report)
    _plot(report, out / "explain.png")
    return report


def _plot(report: dict[str, Any], png: Path) -> None:
    try:
        from ..core.plots import new_figure, save_figure
    except ImportError:  # pragma: no cover
        return
    layers = report["layers"].get("in_order")
    fig = new_figure(11.0 if layers else 6.0, 4.2)
    ax = fig.add_subplot(1, 2 if layers else 1, 1)
    fl = report["flips"]
    m, f = np.asarray(fl["margin"]), np.asarray(fl["flipped"], bool)
    d = np.asarray(fl["max_abs_dp"])
    ax.scatter(m[~f], d[~f], s=8, alpha=0.5, label="same top-1")
    ax.scatter(m[f], d[f], s=24, color="red", label=f"flipped ({int(f.sum())})")
    ax.set_xlabel("reference top-2 margin")
    ax.set_ylabel("largest |delta p|")
    ax.set_title("Flips against the reference's margin", fontsize=10)
    ax.legend(fontsize=7)
    if layers:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.plot([r["relative_error"] for r in layers], marker=".", lw=1)
        worst = report["layers"]["worst_added"][:3]
        idx = {r["tensor"]: i for i, r in enumerate(layers)}
        for r in worst:
            i = idx[r["tensor"]]
            ax2.annotate(r["op"], (i, r["relative_error"]), fontsize=7, color="red")
        ax2.set_xlabel("layer (execution order)")
        ax2.set_ylabel("relative error vs float")
        ax2.set_title("Per-layer error of the candidate", fontsize=10)
    save_figure(fig, png)
