"""Measuring one model in the current process: load time, latency percentiles, throughput, peak RSS.

Run once per model in a fresh subprocess (``python -m osteo_edge.bench.measure``), so that peak
RSS and load time belong to that model alone. Runtime bundles are measured torch-free (this module
imports torch only for the fp32 reference: a torch training run, or a model rebuilt from a bundle's
``arch`` record with random weights when the run is not at hand).

Latency: ``time.perf_counter`` around the backend call for one image (batch 1), after ``warmup``
untimed runs; p50/p90/p99 over ``runs`` timed runs; threads set explicitly. ``e2e`` latency adds
decoding and preprocessing of an in-memory 8-bit image (the runtime's ``predict``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024, 1)


def timings(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ts = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        ts[i] = (time.perf_counter() - t0) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ts, 50)), 4),
        "p90_ms": round(float(np.percentile(ts, 90)), 4),
        "p99_ms": round(float(np.percentile(ts, 99)), 4),
        "mean_ms": round(float(ts.mean()), 4),
        "min_ms": round(float(ts.min()), 4),
        "throughput_ips": round(1000.0 / float(ts.mean()), 2),
    }


def sample_image(size: int = 512, seed: int = 0) -> np.ndarray:
    """A deterministic 8-bit grey test image with radiograph-like structure (for end-to-end timing)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.25 + 0.5 * np.exp(-((xx - 0.5) ** 2) / 0.02) * (0.6 + 0.4 * np.cos(6 * yy)) + 0.05 * rng.random((size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_bundle(bundle_dir: str | os.PathLike, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Measure a runtime bundle (ONNX / TFLite) with the edge runtime, torch-free."""
    from ..edge_runtime import EdgeClassifier
    from ..formats import get_format
    from ..preprocess import decode_image

    t0 = time.perf_counter()
    clf = EdgeClassifier.load(bundle_dir, threads=threads)
    load_ms = (time.perf_counter() - t0) * 1000
    fmt = get_format(clf.bundle.format)
    img = sample_image()
    x = clf.input_for(decode_image(img))[None]
    out = {
        "format": fmt.name,
        "precision": fmt.precision,
        "backend": clf.runner.backend,
        "backend_version": clf.runner.version,
        "input_dtype": clf.runner.input_dtype,
        "threads": threads,
        "load_ms": round(load_ms, 2),
        "file_bytes": clf.bundle.model_path.stat().st_size,
        "bundle_bytes": _dir_bytes(Path(bundle_dir)),
        **timings(lambda: clf.logits(x), runs, warmup),
    }
    e2e = timings(lambda: clf.predict(img), max(5, runs // 5), max(1, warmup // 5))
    out["e2e_p50_ms"] = e2e["p50_ms"]
    out["logits_sample"] = [float(v) for v in clf.logits(x)[0]]
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _time_torch(model: Any, spec: Any, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Latency of a torch model (fp32 eager, CPU, inference mode) on the sample image through ``spec``."""
    import torch

    from ..preprocess import decode_image, finalize, resize, to_gray

    spec = spec.with_layout("NCHW")  # torch takes NCHW whatever layout the export used
    x = torch.from_numpy(finalize(resize(to_gray(decode_image(sample_image())), spec), spec)[None])

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    out = {"format": "torch", "precision": "fp32", "backend": "torch", "backend_version": torch.__version__,
           "input_dtype": "float32", "threads": threads, **timings(run, runs, warmup)}
    out["logits_sample"] = [float(v) for v in run()[0].tolist()]
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def measure_torch(run_dir: str | os.PathLike, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Measure a torch training run (fp32 eager, CPU), the reference of the speed-ups."""
    t0 = time.perf_counter()
    import torch

    from ..modeling.loading import load_run  # any torch run, pruned ones too

    torch.set_num_threads(threads)
    model, bundle = load_run(run_dir)
    load_ms = (time.perf_counter() - t0) * 1000
    size = bundle.model_path.stat().st_size
    return {"load_ms": round(load_ms, 2), "file_bytes": size, "bundle_bytes": size, **_time_torch(model, bundle.spec, threads, runs, warmup)}


def measure_arch(bundle_dir: str | os.PathLike, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Measure a torch fp32 model of a bundle's architecture (its ``arch`` record), random weights.

    The latency reference when the bundle's parent training run is not at hand: the same network,
    so the same work per image; its outputs mean nothing. ``file_bytes`` is the size of its fp32
    state dict, which does not depend on the weights' values either.
    """
    import io

    t0 = time.perf_counter()
    import torch

    from ..artifact import load_bundle
    from ..errors import BundleError
    from ..modeling.models import build_model

    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_dir)
    arch = bundle.arch
    if arch is None:
        raise BundleError(f"{bundle_dir}: the manifest has no arch record to rebuild the network from")
    torch.manual_seed(0)
    model = build_model(arch.name, arch.num_classes, weights="none", **arch.options).eval()
    load_ms = (time.perf_counter() - t0) * 1000
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    out = {"load_ms": round(load_ms, 2), "file_bytes": buf.tell(), "bundle_bytes": buf.tell(), "weights": "random",
           "arch_record": arch.to_dict(), **_time_torch(model, bundle.spec, threads, runs, warmup)}
    return out


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry: measure one model and print one JSON object on stdout."""
    ap = argparse.ArgumentParser(prog="python -m osteo_edge.bench.measure")
    ap.add_argument("path")
    ap.add_argument("--torch", action="store_true", help="the path is a torch training run")
    ap.add_argument("--torch-arch", action="store_true", help="time a torch fp32 model of the bundle's arch record (random weights)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    a = ap.parse_args(argv)
    from ..errors import OsteoEdgeError

    try:
        measure = measure_torch if a.torch else measure_arch if a.torch_arch else measure_bundle
        res = measure(a.path, a.threads, a.runs, a.warmup)
        res["status"] = "ok"
    except OsteoEdgeError as exc:
        res = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # a backend crash is a result ("failed") of the benchmark, not a traceback
        res = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    res["python"] = platform.python_version()
    res["arch"] = platform.machine()
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
