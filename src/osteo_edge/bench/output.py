"""The bench report's files: the JSON report and the latency-vs-accuracy picture."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..artifact import atomic_write_json
from .local import ARCH_REFERENCE

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
    several = isinstance(report.get("settings", {}).get("threads"), list)
    for r in sorted(rows, key=lambda r: (r.get("accuracy") or {}).get("value", 0) if has_acc else r["p50_ms"]):
        mb = r.get("file_mb") or 0.0
        y = r["accuracy"]["value"] if has_acc and r.get("accuracy") else (None if has_acc else mb)
        if y is None and r.get("reference_kind") == ARCH_REFERENCE:  # latency only: a line, no accuracy
            ax.axvline(r["p50_ms"], color="tab:gray", ls="--", lw=1)
            ax.annotate(f"{r.get('name')} ({r.get('threads')} thr)\n{ARCH_REFERENCE}", (r["p50_ms"], 0.02), xycoords=("data", "axes fraction"),
                        textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:gray")
        if y is None:
            continue
        colour = "tab:gray" if r.get("role") == "reference" else "tab:blue"
        ax.scatter([r["p50_ms"]], [y], s=40 + 25 * mb, alpha=0.6, color=colour, edgecolors="black")
        label = f"{r.get('name')} ({r.get('format')})" + (f" {r.get('threads')} thr" if several else "") + f"\n{mb:.1f} MB"
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
