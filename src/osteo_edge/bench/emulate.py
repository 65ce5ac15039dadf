"""The raspberrypi target without a device: the runtime under aarch64 emulation (qemu-user).

Proves that the bundle runs on ARM kernels and matches the x86 outputs. The timing is NOT a Pi
latency (emulation is hundreds of times slower) and is labelled so. A Pi 4 / Pi 5 latency estimate
comes from a documented model, marked as an estimate (:func:`pi_estimates`).

The emulation kit is a directory (``--emulator-dir``, else ``$OSTEO_EDGE_ARM64_EMU``, else
``~/.cache/osteo-edge/arm64-emu``) made by ``benchmarks/runtime/setup_arm64_emulation.sh``:
``qemu-aarch64`` (a static qemu-user >= 10 runs ONNX Runtime), ``sysroot/`` (arm64 Debian python3.11
and its libraries) and ``site/`` (aarch64 wheels of the runtime, installed with ``pip --target``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..artifact import load_bundle
from ..errors import ConfigError
from ..core.machine import cpu_flags, cpu_ghz, machine_info
from .local import BenchRequest, find_parent, make_report, measure_local

EMU_CPUS = {"pi4": "cortex-a72", "pi5": "cortex-a76"}

# The estimate model (documented in docs/runtime.md). Peak multiply-accumulates per cycle per core:
# Cortex-A72 (Pi 4, 1.8 GHz on current boards): 2 x 128-bit NEON FMA pipes -> 8 fp32 MAC/cycle;
#   no int8 dot-product instructions, so int8 convolutions get at most the same 8 MAC/cycle here.
# Cortex-A76 (Pi 5, 2.4 GHz): 2 x 128-bit pipes -> 8 fp32 MAC/cycle; SDOT -> 32 int8 MAC/cycle.
PI_MODELS = {
    "Raspberry Pi 4 (Cortex-A72, 1.8 GHz)": {"ghz": 1.8, "fp32": 8, "int8": 8, "cores": 4},
    "Raspberry Pi 5 (Cortex-A76, 2.4 GHz)": {"ghz": 2.4, "fp32": 8, "int8": 32, "cores": 4},
}
# Host peak per core from the CPU flags: AVX-512 FMA 16 fp32 lanes x 2 units = 32, AVX2 FMA 8 x 2 = 16;
# int8: AVX-512 VNNI 64 x 2 = 128, AVX2 (vpmaddubsw) 32 x 2 = 64.
HOST_PEAK = {"avx512": {"fp32": 32, "int8": 128}, "avx2": {"fp32": 16, "int8": 64}, "other": {"fp32": 4, "int8": 16}}


def kit_dir(req: BenchRequest) -> Path:
    if req.emulator_dir is not None:
        return Path(req.emulator_dir)
    env = os.environ.get("OSTEO_EDGE_ARM64_EMU")
    return Path(env) if env else Path.home() / ".cache" / "osteo-edge" / "arm64-emu"


def kit_problem(kit: Path) -> str | None:
    """One line saying why emulation cannot run, or None when the kit is complete."""
    if not kit.is_dir():
        return (f"no aarch64 emulation kit at {kit}: pass --emulator-dir DIR (qemu-aarch64, sysroot/, site/; how to "
                "build one: docs/runtime.md in the osteo-edge source), or measure a real Pi with --host user@address")
    if not os.access(kit / "qemu-aarch64", os.X_OK):
        return f"{kit}/qemu-aarch64 is missing or not executable"
    if not (kit / "sysroot" / "usr" / "bin" / "python3.11").exists():
        return f"{kit}/sysroot has no arm64 python3.11"
    if not (kit / "site").is_dir():
        return f"{kit}/site (aarch64 runtime wheels) is missing"
    return None


def count_macs(onnx_path: Path) -> int | None:
    """Multiply-accumulates of one image through an ONNX graph (Conv, Gemm, MatMul), or None.

    Tensor shapes are taken from one real run of the graph with ONNX Runtime (every Conv/Gemm/MatMul
    input and output is exposed as a graph output): static shape inference leaves them symbolic for
    graphs with computed padding (TF "same" padding in EfficientNet-Lite). Needs the onnx package.
    """
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import helper, numpy_helper
    except ImportError:
        return None
    model = onnx.load(str(onnx_path))
    g = model.graph
    weights = {i.name: list(numpy_helper.to_array(i).shape) for i in g.initializer}
    nodes = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    existing = {o.name for o in g.output}
    wanted = {t for n in nodes for t in (n.input[0], n.input[1], n.output[0]) if t and t not in weights}
    for t in sorted(wanted - existing):
        g.output.append(helper.make_empty_tensor_value_info(t))
    inp = g.input[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, {inp.name: np.zeros(dims, dtype=np.float32)})
    except Exception:  # an exotic graph: no estimate rather than a wrong one
        return None
    shapes = {n: list(o.shape) for n, o in zip(names, outs)}
    shapes.update(weights)
    total = 0
    for node in nodes:
        if node.op_type == "Conv":
            out, w = shapes.get(node.output[0]), shapes.get(node.input[1])
            if out and w and len(w) >= 3:
                total += int(np.prod(out)) * int(np.prod(w[1:]))
        else:
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if a and out:
                k = a[-1]
                if node.op_type == "Gemm" and any(x.name == "transA" and x.i == 1 for x in node.attribute):
                    k = a[0]
                total += int(np.prod(out)) * int(k)
    return int(total)


def _host_isa() -> str:
    flags = cpu_flags()
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "other"


def pi_estimates(host_row: dict[str, Any], macs: int, threads: int) -> list[dict[str, Any]]:
    """ESTIMATE of Pi latency: the efficiency (achieved / peak MAC rate) measured on this host is assumed on the Pi."""
    ghz = cpu_ghz()
    prec = "int8" if host_row.get("precision") == "int8" else "fp32"
    if not ghz or not host_row.get("p50_ms") or not macs:
        return []
    isa = _host_isa()
    host_peak = threads * ghz * 1e9 * HOST_PEAK[isa][prec]
    achieved = macs / (host_row["p50_ms"] / 1000)
    eff = achieved / host_peak
    out = []
    for name, pi in PI_MODELS.items():
        pi_peak = min(threads, pi["cores"]) * pi["ghz"] * 1e9 * pi[prec]
        ms = macs / (pi_peak * eff) * 1000
        out.append({
            "device": name, "model": host_row.get("name"), "format": host_row.get("format"), "precision": prec, "estimated_p50_ms": round(ms, 1),
            "macs": macs, "host_efficiency": round(eff, 3), "host_isa": isa,
            "text": f"{host_row.get('name')} ({prec}) on {name}: ~{ms:.3g} ms per image (estimate: {macs / 1e6:.0f} M MACs at the {eff:.0%} of peak measured on this host; not a measurement)",
        })
    return out


def run_emulated(req: BenchRequest) -> dict[str, Any]:
    kit = kit_dir(req)
    machine = machine_info()
    problem = kit_problem(kit)
    if problem is not None:  # emulation was asked for by name: not running it is an error, not a note
        raise ConfigError(f"aarch64 emulation cannot run: {problem}")
    notes: list[str] = []
    host_rows = measure_local(req, torch_reference=False)
    estimates: list[dict[str, Any]] = []
    # MACs are counted on an ONNX graph; a TFLite bundle borrows them from an ONNX bundle of the same parent run.
    macs_by_parent: dict[Any, int] = {}
    for r in host_rows:
        mp = Path(r["path"])
        try:
            parent = find_parent(load_bundle(mp))
        except Exception:  # a failed bundle has no manifest to read
            parent = None
        r["_parent_key"] = str(parent) if parent else r["path"]
        onnx_file = next(iter(sorted(mp.glob("*.onnx"))), None)
        macs = count_macs(onnx_file) if onnx_file else None
        if macs:
            macs_by_parent[r["_parent_key"]] = macs
        r["macs"] = macs
    for r in host_rows:
        macs = r.get("macs") or macs_by_parent.get(r.pop("_parent_key"))
        r["macs"] = macs
        if r.get("status") == "ok" and macs:
            estimates.extend(pi_estimates(r, macs, req.threads))
    results: list[dict[str, Any]] = []
    if problem is None:
        pkg_parent = Path(__file__).resolve().parent.parent.parent
        py = kit / "sysroot" / "usr" / "bin" / "python3.11"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update({"QEMU_LD_PREFIX": str(kit / "sysroot"), "PYTHONPATH": f"{kit / 'site'}{os.pathsep}{pkg_parent}", "PYTHONNOUSERSITE": "1"})
        emu_req = BenchRequest(bundles=req.bundles, threads=req.threads, runs=min(req.runs, 10), warmup=min(req.warmup, 1), torch_reference=False, timeout_s=req.timeout_s)
        host_by_path = {r["path"]: r for r in host_rows}
        for board, cpu in EMU_CPUS.items():
            env["QEMU_CPU"] = cpu
            rows = measure_local(emu_req, python=str(py), env=env, prefix=[str(kit / "qemu-aarch64")], torch_reference=False)
            for r in rows:
                r["emulated_cpu"] = cpu
                r["board_model"] = board
                r["latency_note"] = "emulated, not a Pi latency"
                h = host_by_path.get(r["path"])
                if h and h.get("logits_sample") and r.get("logits_sample"):
                    diff = max(abs(a - b) for a, b in zip(h["logits_sample"], r["logits_sample"]))
                    r["max_abs_diff_vs_host"] = diff
                results.append(r)
        notes.append("timings under qemu-user emulation are 300-1000x slower than a real core: proof that the model runs on ARM kernels and matches x86, never a latency")
    for r in host_rows:
        r["latency_note"] = "this host (x86), for the comparison"
    report = make_report("raspberrypi", "emulated", req, results + host_rows, machine, notes)
    report["estimates"] = estimates
    report["emulation_kit"] = str(kit)
    return report
