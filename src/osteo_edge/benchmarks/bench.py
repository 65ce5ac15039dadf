"""`osteo-edge bench`: one table of targets, one report format.

Every model is measured in its own fresh subprocess (:mod:`osteo_edge.benchmarks.measure`), one
after the other in the same invocation, so load time and peak RSS belong to that model and
speed-ups are ratios of latencies taken in one run. When torch is installed and a bundle's
provenance names its parent training run, that torch fp32 model is measured in the same run and
is the reference of ``speedup_vs_torch_fp32`` (p50 of the parent / p50 of the model).

Targets (:data:`TARGETS`, looked up by name):

- ``host``: this machine.
- ``raspberrypi``: with ``host="user@addr"``, the bundles and the runtime are copied to the Pi over
  SSH, the runtime extra is installed there (no torch), the benchmark runs there and its JSON comes
  back (:mod:`osteo_edge.benchmarks.remote`). Without a host: the runtime runs under aarch64
  emulation (:mod:`osteo_edge.benchmarks.emulate`); that timing is labelled "emulated, not a Pi
  latency" and comes with an estimate for Pi 4 / Pi 5 from a documented model, marked as such.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..artifact import Bundle, atomic_write_json, load_bundle
from ..errors import BundleError, ConfigError, choice_error

log = logging.getLogger(__name__)

STATUS_LEGEND = {
    "ok": "measured",
    "failed": "could not be loaded or run (error shown)",
    "skipped": "not measurable here (reason shown)",
}


@dataclass(frozen=True)
class BenchRequest:
    bundles: Sequence[Path]
    threads: int = 2
    runs: int = 100
    warmup: int = 10
    host: str | None = None  # user@addr for a real device over SSH
    ssh_options: Sequence[str] = ()
    remote_python: str | None = None  # use this interpreter on the device instead of a fresh venv
    remote_dir: str = "osteo-edge-bench"
    torch_reference: bool = True
    emulator_dir: Path | None = None
    timeout_s: float = 1800.0

    def validate(self) -> None:
        if not self.bundles:
            raise ConfigError("no model bundle to benchmark; pass --model BUNDLE (repeatable) or ship a default bundle")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.runs < 5:
            raise ConfigError(f"runs must be at least 5 for percentiles, got {self.runs}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    run: Callable[[BenchRequest], dict[str, Any]]


# ------------------------------------------------------------------------------------------------
# machine and model facts


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for name in ("osteo-edge", "numpy", "pillow", "onnxruntime", "ai-edge-litert", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "arch": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not on every OS
        return None


def find_parent(bundle: Bundle, depth: int = 0) -> Path | None:
    """The torch fp32 run a bundle descends from, when its provenance names one that is present.

    A QAT run is not an fp32 model: its own parent is the reference. The lineage of every bundle on
    the way is verified (:meth:`Bundle.verify_lineage`) when it is loaded.
    """
    pdir = bundle.parent_dir()
    if pdir is None or depth > 3:
        return None
    try:
        parent = load_bundle(pdir)
    except BundleError as exc:
        log.warning("%s: parent %s not usable as a reference (%s)", bundle.path, pdir, exc)
        return None
    if parent.format != "torch":
        return find_parent(parent, depth + 1)
    if parent.compression is not None:
        return find_parent(parent, depth + 1) or pdir
    return pdir


def accuracy_of(bundle: Bundle) -> dict[str, Any] | None:
    """The headline metric recorded in a bundle: test macro-F1, else test accuracy, else validation's."""
    found = bundle.metrics.headline()
    return {"metric": found[0], "value": found[1]} if found else None


def test_metrics(bundle: Bundle) -> dict[str, float]:
    """Test-split accuracy and macro-F1 recorded in a bundle, when present."""
    t = bundle.metrics.test
    if t is None:
        return {}
    return {k: v for k, v in (("accuracy", t.accuracy), ("macro_f1", t.macro_f1)) if v is not None}


def parent_test_accuracy(child: Bundle) -> float | None:
    """The direct parent's accuracy on the same test split, as the child's evaluation recorded it."""
    t = child.metrics.test
    return t.vs_parent.parent_accuracy if t is not None and t.vs_parent is not None else None


def choose_headline(results: list[dict[str, Any]]) -> None:
    """One accuracy column for every row: the first test metric that all rows carry (macro-F1, then
    accuracy); otherwise each row's own recorded metric, with its path named."""
    rows = [r for r in results if r.get("status") in ("ok", "skipped")]
    for key in ("macro_f1", "accuracy"):
        if rows and all(key in (r.get("test_metrics") or {}) for r in rows):
            for r in results:
                v = (r.get("test_metrics") or {}).get(key)
                r["accuracy"] = {"metric": f"test.{key}", "value": v} if v is not None else None
            return


def torch_available() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------
# running the measurements


def _measure_subprocess(path: Path, req: BenchRequest, torch_run: bool = False, python: str | None = None, env: dict | None = None, prefix: Sequence[str] = ()) -> dict[str, Any]:
    cmd = [*prefix, python or sys.executable, "-m", "osteo_edge.benchmarks.measure", str(path), "--threads", str(req.threads), "--runs", str(req.runs), "--warmup", str(req.warmup)]
    if torch_run:
        cmd.append("--torch")
    run_env = dict(os.environ if env is None else env)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        run_env[var] = str(req.threads)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=req.timeout_s, env=run_env)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {req.timeout_s:.0f} s"}
    lines = [l for l in proc.stdout.strip().splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "error": f"measurement process exited {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _row(path: Path, bundle: Bundle | None, measured: dict[str, Any], role: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": path.name,
        "path": str(path),
        "role": role,  # model | reference
        "format": bundle.format if bundle is not None else measured.get("format"),
        "status": measured.get("status", "failed"),
    }
    row.update({k: v for k, v in measured.items() if k not in ("status",)})
    if bundle is not None:
        row["accuracy"] = accuracy_of(bundle)
        row["test_metrics"] = test_metrics(bundle)
    if "file_bytes" in row:
        row["file_mb"] = round(row["file_bytes"] / 1e6, 3)
    return row


def add_speedups(results: list[dict[str, Any]]) -> None:
    """speedup_vs_torch_fp32 = p50 of the model's torch parent / p50 of the model, same run."""
    refs = {r["path"]: r for r in results if r.get("role") == "reference" and r.get("status") == "ok"}
    for r in results:
        ref = refs.get(r.get("parent") or "")
        if r.get("role") == "model" and r.get("status") == "ok" and ref is not None:
            r["speedup_vs_torch_fp32"] = round(ref["p50_ms"] / r["p50_ms"], 3)
            r["size_ratio_vs_torch_fp32"] = round(ref["file_bytes"] / r["file_bytes"], 3) if r.get("file_bytes") else None


def measure_local(req: BenchRequest, python: str | None = None, env: dict | None = None, prefix: Sequence[str] = (), torch_reference: bool | None = None) -> list[dict[str, Any]]:
    """Measure the torch parents (when asked and possible) and then every bundle, each in its own subprocess.

    References first, then the models in the order given: one run, one machine state as far as a
    shared machine allows (the load average before and after is in the report).
    """
    use_torch = req.torch_reference if torch_reference is None else torch_reference
    planned: list[tuple[Path, Bundle | None, Path | None, str | None]] = []
    parents: dict[str, Path] = {}
    parent_acc: dict[str, float] = {}
    for b in req.bundles:
        b = Path(b)
        try:
            bundle = load_bundle(b)
        except BundleError as exc:
            planned.append((b, None, None, str(exc)))
            continue
        parent = find_parent(bundle) if use_torch else None
        if parent is not None:
            parents[str(parent)] = parent
            pa = parent_test_accuracy(bundle)
            # vs_parent describes the DIRECT parent: only use it when that is the reference itself
            # (not when a QAT parent was walked past to its fp32 run)
            if pa is not None and bundle.parent_dir() == parent:
                parent_acc[str(parent)] = pa
        planned.append((b, bundle, parent, None))
    results: list[dict[str, Any]] = []
    for key, parent in parents.items():
        pb = load_bundle(parent)
        if not torch_available():
            row = _row(parent, pb, {"status": "skipped", "error": "torch is not installed here"}, "reference")
        else:
            row = _row(parent, pb, _measure_subprocess(parent, req, torch_run=True), "reference")
        row["path"] = key
        if key in parent_acc and "accuracy" not in row["test_metrics"]:
            row["test_metrics"]["accuracy"] = parent_acc[key]  # same test split, from the export's evaluation
        results.append(row)
    for b, bundle, parent, error in planned:
        if bundle is None:
            results.append({"name": b.name, "path": str(b), "role": "model", "status": "failed", "error": error})
            continue
        row = _row(b, bundle, _measure_subprocess(b, req, python=python, env=env, prefix=prefix), "model")
        if use_torch:
            row["parent"] = str(parent) if parent is not None else None
        results.append(row)
    add_speedups(results)
    choose_headline(results)
    return results


def _report(target: str, kind: str, req: BenchRequest, results: list[dict[str, Any]], machine: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    refs = [r for r in results if r.get("role") == "reference"]
    if req.torch_reference and not refs and kind == "measured" and target == "host":
        notes.append("no torch fp32 reference: no bundle's provenance names an existing parent training run")
    return {
        "target": target,
        "kind": kind,  # measured | emulated
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"threads": req.threads, "runs": req.runs, "warmup": req.warmup, "batch": 1, "timer": "time.perf_counter"},
        "machine": machine,
        "results": results,
        "status_legend": STATUS_LEGEND,
        "notes": notes,
        "command": " ".join(["osteo-edge", *sys.argv[1:]]) if Path(sys.argv[0]).name == "osteo-edge" else " ".join(sys.argv),
    }


def run_host(req: BenchRequest) -> dict[str, Any]:
    machine = machine_info()
    results = measure_local(req)
    machine["load_average_after"] = _loadavg()
    return _report("host", "measured", req, results, machine, [])


def run_raspberrypi(req: BenchRequest) -> dict[str, Any]:
    if req.host:
        from .remote import run_over_ssh

        report = run_over_ssh(req)
        report["target"] = "raspberrypi"
        return report
    from .emulate import run_emulated

    return run_emulated(req)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("host", "this machine, measured", run_host),
        Target("raspberrypi", "Raspberry Pi 4/5 (aarch64): over SSH with --host user@addr, else aarch64 emulation (not a latency)", run_raspberrypi),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise choice_error("benchmark target", name, TARGETS) from None


def run_bench(target: str, req: BenchRequest) -> dict[str, Any]:
    req.validate()
    return get_target(target).run(req)


# ------------------------------------------------------------------------------------------------
# outputs


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_write_json(path, report)


def plot_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: p50 latency (x, log) vs accuracy (y; file size when no accuracy is recorded); marker area = file size."""
    from ..core.plots import new_figure, save_figure

    rows = [r for r in report["results"] if r.get("status") == "ok" and r.get("p50_ms")]
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    has_acc = any(r.get("accuracy") for r in rows)
    metric_names = sorted({r["accuracy"]["metric"] for r in rows if r.get("accuracy")})
    placed = 0
    for r in sorted(rows, key=lambda r: (r.get("accuracy") or {}).get("value", 0) if has_acc else r["p50_ms"]):
        mb = r.get("file_mb") or 0.0
        y = r["accuracy"]["value"] if has_acc and r.get("accuracy") else (None if has_acc else mb)
        if y is None:
            continue
        colour = "tab:gray" if r.get("role") == "reference" else "tab:blue"
        ax.scatter([r["p50_ms"]], [y], s=40 + 25 * mb, alpha=0.6, color=colour, edgecolors="black")
        label = f"{r.get('name')} ({r.get('format')})\n{mb:.1f} MB"
        if r.get("speedup_vs_torch_fp32"):
            label += f", x{r['speedup_vs_torch_fp32']:.1f} vs torch"
        # neighbours alternate above / below their marker so that labels do not overlap
        ax.annotate(label, (r["p50_ms"], y), textcoords="offset points", xytext=(7, 6 if placed % 2 == 0 else -24), fontsize=7.5)
        placed += 1
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("p50 latency per image, ms (log scale)" + (" — EMULATED, not a Pi latency" if report.get("kind") == "emulated" else ""))
    ax.set_ylabel(", ".join(metric_names) if has_acc else "model file size, MB")
    m = report.get("machine", {})
    s = report.get("settings", {})
    ax.set_title(f"{report.get('target')}: {m.get('cpu', '?')} ({m.get('arch', '?')}), {s.get('threads')} threads; marker area = file size", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, Path(path))
