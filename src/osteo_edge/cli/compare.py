"""`osteo-edge compare`: one table and one PNG across trained runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from . import _output as o
from ._common import handle_errors
from ._steps import after_evaluate


@handle_errors
def compare_cmd(
    runs: Annotated[List[Path], typer.Argument(help="Run directories (sealed bundles from 'osteo-edge train').", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for compare.md, compare.csv, compare.json and compare.png.")] = Path("compare"),
    latency_runs: Annotated[int, typer.Option("--latency-runs", help="Timed forward passes per run (0: skip latency).")] = 30,
    threads: Annotated[int, typer.Option(help="CPU threads for the latency measurement.")] = 2,
) -> None:
    """Compare runs: arch, params, MACs, host latency, validation and test metrics with CIs, training time."""
    from ..train.compare import compare_runs
    from ..core.stats import fmt_ci

    res = compare_runs(runs, out, latency_runs=latency_runs, threads=threads)
    rows = [[r["run"], str(r["arch"]), f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e6:.0f}", f"{r['latency_ms_p50']:.1f}",
             fmt_ci(r["test"].get("macro_f1")), fmt_ci(r["test"].get("low_bmd_auroc")), f"{r['train_seconds'] / 60:.1f}"] for r in res["runs"]]
    cols = [o.Col("run"), o.Col("arch"), *(o.Col(c, right=True) for c in ("params (M)", "MMACs", "p50 ms", "test macro-F1", "test low-BMD AUROC", "train min"))]
    o.table(f"Runs ({res['machine'].get('cpu')}, {threads} threads)", cols, rows)
    if not res["same_split"]:
        o.line("warning: the runs were trained on different splits; metrics are not comparable.", style="yellow")
    o.wrote(res["files"].values())
    o.next_step(after_evaluate(runs[0], None), "export the run you choose (first one shown)")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
