"""Measuring bundles on this machine: the request, each model in its own fresh subprocess
(:mod:`osteo_edge.bench.measure`), one after the other in the same invocation, so load time and
peak RSS belong to that model and speed-ups are ratios of latencies taken in one run; the torch
fp32 reference; the report every target returns (:func:`report`).

When torch is installed, a torch fp32 model is measured in the same run and is the reference of
``speedup_vs_torch_fp32`` (p50 of the reference / p50 of the model, at the same thread count): the
bundle's parent training run when its provenance names one that is present, else a model of the
same architecture rebuilt from the bundle's ``arch`` record with random weights (labelled "same
architecture, latency only": weights do not change latency, but that row has no accuracy). Several
thread counts (``threads_list``) are measured in one run, every model at every count.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..artifact import Bundle, load_bundle
from ..core.machine import load_average, machine_info
from ..errors import BundleError, ConfigError, install_hint

log = logging.getLogger(__name__)

ARCH_REFERENCE = "same architecture, latency only"  # the label of a torch reference with random weights

STATUS_LEGEND = {
    "ok": "measured",
    "failed": "could not be loaded or run (error shown)",
    "skipped": "not measurable here (reason shown)",
}


@dataclass(frozen=True)
class BenchRequest:
    bundles: Sequence[Path]
    threads: int = 2
    threads_list: Sequence[int] = ()  # several thread counts in one run (host only); empty: ``threads``
    runs: int = 100
    warmup: int = 10
    host: str | None = None  # user@addr for a real device over SSH
    ssh_options: Sequence[str] = ()
    remote_python: str | None = None  # use this interpreter on the device instead of a fresh venv
    remote_dir: str = "osteo-edge-bench"
    torch_reference: bool = True
    emulator_dir: Path | None = None
    emulate: bool = False  # raspberrypi without a host: aarch64 emulation here, asked for by name
    timeout_s: float = 1800.0

    def validate(self) -> None:
        if not self.bundles:
            raise ConfigError("no model bundle to benchmark; pass --model BUNDLE (repeatable) or ship a default bundle")
        if any(t < 1 for t in self.thread_counts):
            raise ConfigError(f"threads must be at least 1, got {', '.join(map(str, self.thread_counts))}")
        if self.runs < 5:
            raise ConfigError(f"runs must be at least 5 for percentiles, got {self.runs}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")

    @property
    def thread_counts(self) -> tuple[int, ...]:
        """The thread counts to measure, in order, without repeats."""
        return tuple(dict.fromkeys(self.threads_list or (self.threads,)))


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
    accuracy); otherwise each row's own recorded metric, with its path named. A latency-only
    reference (random weights) has no accuracy and is not counted."""
    rows = [r for r in results if r.get("status") in ("ok", "skipped") and r.get("reference_kind") != ARCH_REFERENCE]
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


def _measure_subprocess(path: Path, req: BenchRequest, torch_run: str | None = None, python: str | None = None, env: dict | None = None, prefix: Sequence[str] = ()) -> dict[str, Any]:
    """One model measured in a fresh process; ``torch_run``: None (a runtime bundle), "run" (a torch
    training run) or "arch" (a torch fp32 model rebuilt, random weights, from the bundle's arch record)."""
    cmd = [*prefix, python or sys.executable, "-m", "osteo_edge.bench.measure", str(path), "--threads", str(req.threads), "--runs", str(req.runs), "--warmup", str(req.warmup)]
    if torch_run:
        cmd.append({"run": "--torch", "arch": "--torch-arch"}[torch_run])
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
    """speedup_vs_torch_fp32 = p50 of the model's torch reference / p50 of the model, same run, same threads."""
    refs = {(r["path"], r.get("threads")): r for r in results if r.get("role") == "reference" and r.get("status") == "ok"}
    for r in results:
        ref = refs.get((r.get("parent") or "", r.get("threads")))
        if r.get("role") == "model" and r.get("status") == "ok" and ref is not None:
            r["speedup_vs_torch_fp32"] = round(ref["p50_ms"] / r["p50_ms"], 3)
            r["size_ratio_vs_torch_fp32"] = round(ref["file_bytes"] / r["file_bytes"], 3) if r.get("file_bytes") else None
            if ref.get("reference_kind"):
                r["speedup_reference"] = ref["reference_kind"]



@dataclass(frozen=True)
class Reference:
    """The torch fp32 model a bundle's speed-up is measured against.

    ``kind="run"``: the bundle's parent training run (``path``), its real weights. ``kind="arch"``: no
    parent run at hand; a torch model of the same architecture rebuilt from the bundle's own ``arch``
    record with random weights (weights do not change latency; its accuracy is not the bundle's).
    """

    key: str  # the reference row's "path"; model rows name it in "parent"
    kind: str  # run | arch
    path: Path  # the run directory, or the bundle whose arch record is rebuilt
    parent_accuracy: float | None = None


def reference_for(bundle: Bundle) -> tuple[Reference | None, str | None]:
    """The torch fp32 reference of a bundle, or None and the reason there is none."""
    parent = find_parent(bundle)
    if parent is not None:
        # vs_parent describes the DIRECT parent: only use it when that is the reference itself
        # (not when a QAT parent was walked past to its fp32 run)
        pa = parent_test_accuracy(bundle) if bundle.parent_dir() == parent else None
        return Reference(str(parent), "run", parent, pa), None
    arch = bundle.arch
    if arch is None:
        return None, f"{bundle.path.name}: no parent training run here and no architecture record to rebuild one from"
    ref = bundle.provenance.parent
    if bundle.pruning is not None or (ref is not None and ref.pruning is not None):
        return None, f"{bundle.path.name}: pruned, and its parent run is not here (its arch record is of the unpruned network)"
    key = f"{arch.name} torch fp32 ({ARCH_REFERENCE})" + (f" {json.dumps(dict(arch.options), sort_keys=True)}" if arch.options else "")
    return Reference(key, "arch", bundle.path), None


def _plan(req: BenchRequest, use_torch: bool) -> tuple[list[tuple[Path, Bundle | None, Reference | None, str | None]], dict[str, Reference]]:
    """(bundle path, bundle or None, its reference, load error or why there is no reference) per bundle."""
    planned: list[tuple[Path, Bundle | None, Reference | None, str | None]] = []
    refs: dict[str, Reference] = {}
    for b in map(Path, req.bundles):
        try:
            bundle = load_bundle(b)
        except BundleError as exc:
            planned.append((b, None, None, str(exc)))
            continue
        ref, why = reference_for(bundle) if use_torch else (None, None)
        if ref is not None:
            known = refs.setdefault(ref.key, ref)
            if known.parent_accuracy is None and ref.parent_accuracy is not None:
                refs[ref.key] = ref
        planned.append((b, bundle, ref, why))
    return planned, refs


def _reference_row(ref: Reference, req: BenchRequest) -> dict[str, Any]:
    if not torch_available():
        measured = {"status": "skipped", "error": f"torch is not installed here; {install_hint('train')}"}
    else:
        measured = _measure_subprocess(ref.path, req, torch_run=ref.kind)
    if ref.kind == "arch":
        row = _row(ref.path, None, measured, "reference")
        row.update(name=ref.key.split(" (")[0], format="torch", reference_kind=ARCH_REFERENCE, weights="random",
                   accuracy=None, test_metrics={}, arch_from=str(ref.path))
    else:
        row = _row(ref.path, load_bundle(ref.path), measured, "reference")
        if ref.parent_accuracy is not None and "accuracy" not in row["test_metrics"]:
            row["test_metrics"]["accuracy"] = ref.parent_accuracy  # same test split, from the export's evaluation
    row["path"] = ref.key
    row["threads"] = req.threads
    return row


def measure_local(req: BenchRequest, python: str | None = None, env: dict | None = None, prefix: Sequence[str] = (), torch_reference: bool | None = None) -> list[dict[str, Any]]:
    """Measure the torch references (when asked and possible) and then every bundle, each in its own
    subprocess, once per thread count.

    References first, then the models in the order given: one run, one machine state as far as a
    shared machine allows (the load average before and after is in the report).
    """
    use_torch = req.torch_reference if torch_reference is None else torch_reference
    planned, refs = _plan(req, use_torch)
    results: list[dict[str, Any]] = []
    for threads in req.thread_counts:
        r = replace(req, threads=threads, threads_list=())
        results.extend(_reference_row(ref, r) for ref in refs.values())
        for b, bundle, ref, note in planned:
            if bundle is None:
                results.append({"name": b.name, "path": str(b), "role": "model", "status": "failed", "error": note, "threads": threads})
                continue
            row = _row(b, bundle, _measure_subprocess(b, r, python=python, env=env, prefix=prefix), "model")
            row["threads"] = threads
            if use_torch:
                row["parent"] = ref.key if ref is not None else None
                if note:
                    row["no_reference"] = note
            results.append(row)
    add_speedups(results)
    choose_headline(results)
    return results


def reference_notes(req: BenchRequest, results: list[dict[str, Any]]) -> list[str]:
    """Plain sentences on the torch references: why there is none, and what an arch reference is."""
    notes = []
    if any(r.get("reference_kind") == ARCH_REFERENCE for r in results):
        notes.append(f"torch fp32 reference '{ARCH_REFERENCE}': the bundle's parent training run is not here, so a torch model of "
                     "the bundle's architecture (its arch record) with random weights was timed; weights do not change latency, "
                     "so the speed-up holds, but that row has no accuracy")
    skipped = next((r for r in results if r.get("role") == "reference" and r.get("status") == "skipped"), None)
    if skipped is not None:
        notes.append(f"no torch fp32 speed-up: {skipped.get('error')}")
    elif req.torch_reference and not any(r.get("role") == "reference" for r in results):
        whys = sorted({r["no_reference"] for r in results if r.get("no_reference")})
        notes.append("no torch fp32 reference: " + ("; ".join(whys) or "no bundle names a parent run or an architecture"))
    return notes


def make_report(target: str, kind: str, req: BenchRequest, results: list[dict[str, Any]], machine: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    if kind == "measured" and target == "host":
        notes = [*reference_notes(req, results), *notes]
    return {
        "target": target,
        "kind": kind,  # measured | emulated
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"threads": req.threads if len(req.thread_counts) == 1 else list(req.thread_counts), "runs": req.runs, "warmup": req.warmup, "batch": 1, "timer": "time.perf_counter"},
        "machine": machine,
        "results": results,
        "status_legend": STATUS_LEGEND,
        "notes": notes,
        "command": " ".join(["osteo-edge", *sys.argv[1:]]) if Path(sys.argv[0]).name == "osteo-edge" else " ".join(sys.argv),
    }


def run_host(req: BenchRequest) -> dict[str, Any]:
    machine = machine_info()
    results = measure_local(req)
    machine["load_average_after"] = load_average()
    return make_report("host", "measured", req, results, machine, [])


