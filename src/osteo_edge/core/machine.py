"""Machine facts, one home: which CPU, which vector ISA, whether it has int8 dot-product
instructions, cores, OS, Python and package versions. Every benchmark, report and comparison that
names the machine its figures came from reads them here (standard library only)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Iterable

DEFAULT_PACKAGES = ("osteo-edge", "numpy", "pillow", "onnxruntime", "ai-edge-litert", "torch")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("model name", "hardware", "cpu model") and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_isa(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's vector ISA and whether it has int8 dot-product instructions, which decide whether an
    int8 file is faster than fp32 at all (x86 AVX-512 VNNI / AVX-VNNI, ARM dotprod). ``cpuinfo``: the
    text of /proc/cpuinfo (read here when None)."""
    flags = cpu_flags(cpuinfo)
    dot = [name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8"),
                                   ("asimddp", "ARM dotprod")) if flag in flags]
    vec = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"), ("sse4_2", "SSE4.2"))
                if flag in flags), "unknown")
    if not flags and platform.machine() == "arm64":  # macOS on Apple silicon has dotprod
        vec, dot = "NEON", ["ARM dotprod"]
    text = f"{vec}, " + (f"int8 dot product: {' + '.join(dot)}" if dot else "no int8 dot product (int8 buys size, not speed)")
    return {"vector": vec, "int8_dot_product": dot, "text": text}


def cpu_ghz(cpuinfo: str | None = None) -> float | None:
    """The clock /proc/cpuinfo reports now (``cpu MHz``), in GHz; None where it reports none."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.lower().startswith("cpu mhz") and ":" in line:
            try:
                return float(line.split(":", 1)[1]) / 1000
            except ValueError:
                return None
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not on every OS
        return None


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """Everything a figure needs to name its machine: CPU, cores (all and available to us), ISA,
    OS, Python, package versions and the load average when measured."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = os.cpu_count()
    cpuinfo = _cpuinfo()  # read once for the model name and the flags
    return {
        "cpu": cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "arch": platform.machine(),
        "isa": cpu_isa(cpuinfo),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(packages),
        "load_average": load_average(),
    }
