"""Compare trained runs: architecture, size, compute, host latency, metrics with intervals, training time."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..artifact import atomic_write_json, atomic_write_text
from ..errors import ConfigError
from ..core.stats import Estimate, fmt_ci
from ..modeling.loading import load_run
from ..modeling.models import count_parameters

log = logging.getLogger(__name__)

TABLE_METRICS = ("accuracy", "macro_f1", "low_bmd_auroc", "low_bmd_sensitivity", "low_bmd_specificity", "ece")


def machine_info() -> dict[str, Any]:
    from ..core.machine import machine_info as host

    m = host(())
    info = {"cpu": m["cpu"], "cores": m["cores"], "arch": m["arch"], "isa": m["isa"]["text"], "python": m["python"]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def count_macs(model: Any, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass (torch.utils.flop_counter FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(*input_shape)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops() // 2)


def measure_latency(model: Any, input_shape: Sequence[int], runs: int = 30, warmup: int = 5, threads: int = 2) -> dict[str, float]:
    """torch eager latency, batch 1: p50/p90 over ``runs`` after ``warmup`` (time.perf_counter)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(*input_shape)
        times = []
        with torch.inference_mode():
            for i in range(warmup + runs):
                t = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - t) * 1000)
    finally:
        torch.set_num_threads(before)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)), "runs": runs, "threads": threads}


def describe_run(run: str | os.PathLike, latency_runs: int = 30, threads: int = 2) -> dict[str, Any]:
    model, bundle = load_run(run)
    spec = bundle.spec
    tr = bundle.training
    shape = spec.input_shape
    lat = measure_latency(model, shape, runs=latency_runs, threads=threads) if latency_runs > 0 else {"p50": float("nan"), "p90": float("nan")}
    metrics = bundle.metrics.raw

    def ci_dict(block: Mapping[str, Any] | None) -> dict[str, Any]:
        out = {}
        for k, v in (block or {}).items():
            if isinstance(v, Mapping):
                out[k] = dict(v)
            elif isinstance(v, (int, float)) and k != "n":
                out[k] = Estimate(float(v)).to_dict()
        return out

    cfg = {}
    cfg_path = Path(run) / "config.yaml"
    if cfg_path.is_file():
        from .config import read_config_yaml

        cfg = read_config_yaml(cfg_path)
    return {
        "run": Path(run).name, "path": str(Path(run).resolve()), "arch": bundle.arch.name if bundle.arch else None, "weights": cfg.get("weights"),
        "img_size": spec.input_size, "params": count_parameters(model), "macs": count_macs(model, shape),
        "latency_ms_p50": lat["p50"], "latency_ms_p90": lat["p90"], "train_seconds": float(tr.get("train_seconds", float("nan"))),
        "epochs_run": tr.get("epochs_run"), "best_epoch": tr.get("best_epoch"), "temperature": bundle.temperature,
        "val": ci_dict(metrics.get("val")), "test": ci_dict(metrics.get("test")),
        "test_n": (metrics.get("test") or {}).get("n"), "protocol": bundle.provenance.protocol,
        "split_sha256": bundle.provenance.split_sha256, "training_device": tr.get("device"),
    }


def compare_runs(runs: Sequence[str | os.PathLike], out: str | os.PathLike, latency_runs: int = 30, threads: int = 2, plots: bool = True) -> dict[str, Any]:
    if not runs:
        raise ConfigError("give at least one run directory to compare")
    rows = [describe_run(r, latency_runs, threads) for r in runs]
    machine = machine_info()
    machine["threads"] = threads
    splits = {r["split_sha256"] for r in rows}
    result = {"runs": rows, "machine": machine, "same_split": len(splits) == 1,
              "latency": f"torch eager fp32, batch 1, {threads} threads, {latency_runs} runs after 5 warm-up, p50/p90 (time.perf_counter)"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"compare.json": atomic_write_json(out / "compare.json", result)}
    files["compare.csv"] = atomic_write_text(out / "compare.csv", _csv(rows))
    files["compare.md"] = atomic_write_text(out / "compare.md", render_compare(result))
    if plots:
        from .plots import compare_png

        files["compare.png"] = compare_png(rows, out / "compare.png")
    result["files"] = {k: str(v) for k, v in files.items()}
    return result


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["run", "arch", "weights", "img_size", "params", "macs", "latency_ms_p50", "latency_ms_p90", "train_seconds", "epochs_run", "best_epoch"]
    mcols = [f"{s}_{k}{suf}" for s in ("val", "test") for k in TABLE_METRICS for suf in ("", "_lo", "_hi")]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols + mcols)
    for r in rows:
        vals = [r.get(c) for c in cols]
        for s in ("val", "test"):
            for k in TABLE_METRICS:
                e = Estimate.from_dict(r.get(s, {}).get(k))
                vals += [None, None, None] if e is None else [e.value, e.low, e.high]
        w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in vals])
    return buf.getvalue()


def render_compare(result: Mapping[str, Any]) -> str:
    from ..artifact import DISCLAIMER

    rows = result["runs"]
    m = result["machine"]
    lines = ["# Run comparison", "", f"> {DISCLAIMER}", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores, {m.get('arch')}), torch {m.get('torch', '?')}. Latency: {result['latency']}.", ""]
    if not result["same_split"]:
        lines += ["**Warning:** these runs were not trained on the same split; their metrics are not comparable.", ""]
    protos = sorted({str(r.get("protocol")) for r in rows})
    lines += [f"**Protocol:** {p}." for p in protos] + [""]
    lines += ["| run | arch | weights | px | params (M) | MMACs | latency p50 / p90 (ms) | train time (min) | epochs (best) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['arch']} | {r['weights']} | {r['img_size']} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e6:.0f} | "
                     f"{r['latency_ms_p50']:.1f} / {r['latency_ms_p90']:.1f} | {r['train_seconds'] / 60:.1f} | {r['epochs_run']} ({r['best_epoch']}) |")
    for split in ("test", "val"):
        n = {r.get("test_n") for r in rows} if split == "test" else None
        lines += ["", f"## {split} split (value [95% bootstrap CI])" + (f", n = {', '.join(str(x) for x in n)}" if n else ""), "",
                  "| run | accuracy | macro-F1 | low-BMD AUROC | low-BMD sensitivity | low-BMD specificity | ECE |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            e = r.get(split, {})
            lines.append(f"| {r['run']} | " + " | ".join(fmt_ci(e.get(k)) for k in TABLE_METRICS) + " |")
    lines += ["", "Validation metrics were used for early stopping, temperature and threshold choice: only the test split is untouched.", ""]
    return "\n".join(lines)
