"""Do QAT's trained weight quantization parameters reach the int8 TFLite file? (issue 22)

For each convolution of a ``quantize --method qat`` run (``nncf_state.pt``: NNCF's trained per-channel
weight ranges; ``model.pt``: the weights baked on that grid), the TFLite weight tensor of an int8
bundle holding the same weights (matched by values, any layout) and, per output channel, NNCF's step
(range / 127: symmetric, narrow range) against the file's weight scale. A layer NNCF quantized to
half the range (its overflow fix, 7-bit weights in the first layer for CPUs without VNNI) cannot be
carried by TFLite's max|w| / 127 grid: it is flagged ``nncf_half_range`` and left out of the share
(the faithful export keeps the shipped model's stem float, where the baked weights reach the file
exactly). Channels whose baked weights
are all zero have no scale to carry and are not counted. Activation ranges are recalibrated by the
converter (no route carries NNCF's into a TFLite file; docs/export.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def nncf_steps(qrun: Path) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(qrun / "nncf_state.pt", weights_only=True, map_location="cpu")
    out = {}
    for k, v in state.items():
        m = re.match(r"__nncf_hooks\.pre_hooks\.(.+)/conv2d/0__1\.0\.scale$", k)
        if m:  # weight quantizers hook the conv's weight input (port 1)
            out[m.group(1).replace("/", ".")] = v.detach().abs().flatten().numpy().astype(np.float64) / 127.0
    return out


def tflite_weights(model_path: Path) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path))
    it.allocate_tensors()
    out = []
    for d in it.get_tensor_details():
        qp = d.get("quantization_parameters") or {}
        scales = np.asarray(qp.get("scales", []), np.float64)
        if np.dtype(d["dtype"]) == np.int8 and len(scales) > 1:  # per-channel int8 = a weight tensor
            q = it.get_tensor(d["index"]).astype(np.float64)
            axis = int(qp.get("quantized_dimension", 0))
            shape = [1] * q.ndim
            shape[axis] = -1
            out.append({"name": d["name"], "scales": scales, "values": q * scales.reshape(shape), "axis": axis})
    return out


def compare(qrun: Path, bundle: Path) -> dict:
    import torch

    steps = nncf_steps(qrun)
    sd = torch.load(qrun / "model.pt", weights_only=True, map_location="cpu")
    files = tflite_weights(bundle / "model.tflite")
    layers, agree, total = [], 0, 0
    for name, step in steps.items():
        w = sd[f"{name}.weight"].numpy().astype(np.float64)  # (out, in/groups, kh, kw), baked on NNCF's grid
        best = None
        for f in files:
            v = np.moveaxis(f["values"], f["axis"], 0)
            if v.shape[0] != w.shape[0] or v.size != w.size:
                continue
            err = np.abs(np.sort(v.reshape(len(v), -1), 1) - np.sort(w.reshape(len(w), -1), 1)).max()
            if best is None or err < best[0]:
                best = (err, f)
        if best is None or best[0] > 0.02 * np.abs(w).max():
            layers.append({"layer": name, "in_file": "float (kept float, or folded)"})
            continue
        live = np.abs(w.reshape(len(w), -1)).max(1) > 0  # an all-zero channel has no scale to carry
        rel = np.abs(best[1]["scales"] - step)[live] / step[live]
        # NNCF's overflow fix quantizes the first layer to half the int8 range (7 bits, for CPUs without
        # VNNI); TFLite's per-channel grid is max|w| / 127, so such a layer cannot carry NNCF's grid
        half = bool(len(step) and np.median(np.abs(w.reshape(len(w), -1)).max(1)[live] / (127 * step[live])) < 0.6)
        ok = int(np.sum(rel <= 0.01))
        layers.append({"layer": name, "channels": int(len(rel)), "all_zero_channels": int((~live).sum()), "within_1pct": ok,
                       "max_rel_diff": float(rel.max()) if len(rel) else 0.0, "nncf_half_range": half})
        if not half:
            agree += ok
            total += len(rel)
    return {"qrun": str(qrun), "bundle": str(bundle), "channels": total, "within_1pct": agree,
            "share": agree / total if total else float("nan"), "layers": layers}


__all__ = ["compare", "nncf_steps", "tflite_weights"]
