"""`osteo-edge compare`: one table and one PNG across trained runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from ._common import console, handle_errors


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
    from rich.table import Table

    t = Table(title=f"Runs ({res['machine'].get('cpu')}, {threads} threads)")
    for col in ("run", "arch", "params (M)", "MMACs", "p50 ms", "test macro-F1", "test low-BMD AUROC", "train min"):
        t.add_column(col)
    for r in res["runs"]:
        t.add_row(r["run"], str(r["arch"]), f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e6:.0f}", f"{r['latency_ms_p50']:.1f}",
                  fmt_ci(r["test"].get("macro_f1")), fmt_ci(r["test"].get("low_bmd_auroc")), f"{r['train_seconds'] / 60:.1f}")
    console.print(t)
    if not res["same_split"]:
        console.print("[yellow]warning:[/yellow] the runs were trained on different splits; metrics are not comparable.")
    console.print(f"wrote {', '.join(res['files'].values())}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
