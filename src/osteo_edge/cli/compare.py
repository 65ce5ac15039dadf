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
    runs: Annotated[List[Path], typer.Argument(help="Run directories (sealed bundles from 'osteo-edge train'); with --paired: two scores files A B from 'evaluate --cv'.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for compare.md, compare.csv, compare.json and compare.png (--paired: paired.json).")] = Path("compare"),
    latency_runs: Annotated[int, typer.Option("--latency-runs", help="Timed forward passes per run (0: skip latency).")] = 30,
    threads: Annotated[int, typer.Option(help="CPU threads for the latency measurement.")] = 2,
    paired: Annotated[bool, typer.Option("--paired", help="Two recipes' out-of-fold scores (evaluate --cv): within-source low-BMD AUROC of B minus A, paired bootstrap over radiographs.")] = False,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="--paired: bootstrap replicates.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="--paired: bootstrap seed.")] = 0,
) -> None:
    """Compare runs: arch, params, MACs, host latency, validation and test metrics with CIs, training time.
    With --paired: two recipes on the same out-of-fold radiographs."""
    if paired:
        _paired(runs, out, bootstrap, seed)
        return
    if runs and all(Path(r).is_file() and Path(r).suffix.lower() == ".json" for r in runs):
        raise typer.BadParameter("these are files, not run directories; scores files from 'evaluate --cv' are compared with --paired",
                                 param_hint="RUNS")
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


def _paired(files: List[Path], out: Path, n_boot: int, seed: int) -> None:
    import shlex
    import sys

    from ..artifact import atomic_write_json
    from ..release.oof import paired_comparison, read_scores

    if len(files) != 2:
        raise typer.BadParameter(f"--paired compares two scores files A B, got {len(files)}", param_hint="RUNS")
    if n_boot < 1:
        raise typer.BadParameter(f"must be at least 1, got {n_boot}", param_hint="--bootstrap")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file; give a folder for paired.json", param_hint="--out")
    a, b = (read_scores(f) for f in files)
    res = paired_comparison(a, b, n_boot=n_boot, seed=seed)
    res["command"] = "osteo-edge " + " ".join(shlex.quote(x) for x in sys.argv[1:])

    def f(v: float) -> str:
        return "-" if v != v else f"{v:.3f}"

    rows = [[src, str(r["n"]), f(r["auroc_a"]), f(r["auroc_b"]), f"{r['difference']:+.3f}" if r["difference"] == r["difference"] else "-",
             f"[{f(r['ci95'][0])}, {f(r['ci95'][1])}]"] for src, r in res["by_source"].items()]
    o.table(f"Low-BMD AUROC within each source: B ({res['b']}) minus A ({res['a']})",
            [o.Col("source"), *(o.Col(c, right=True) for c in ("n", "AUROC A", "AUROC B", "B - A", "95% CI (paired bootstrap)"))], rows)
    o.line(f"{n_boot} paired bootstrap draws over the radiographs both scored (seed {seed}); an interval that holds 0 is no difference.")
    o.wrote([atomic_write_json(out / "paired.json", res)])


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
