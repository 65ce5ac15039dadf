"""`osteo-edge evaluate`: metrics with intervals, screening view, calibration, per-source/subgroup metrics."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import console, handle_errors, next_step
from .train import command_line


class Subset(str, Enum):
    test = "test"
    val = "val"


@handle_errors
def evaluate_cmd(
    model: Annotated[Path, typer.Option("--model", help="Run directory from 'osteo-edge train' (or a --folds directory).")],
    split: Annotated[Optional[Path], typer.Option("--split", help="split.csv.", show_default="the run's own split")] = None,
    subset: Annotated[Subset, typer.Option(help="Which split to evaluate.")] = Subset.test,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory.", show_default="RUN/eval/SUBSET")] = None,
    metadata: Annotated[Optional[Path], typer.Option(help="Metadata CSV for subgroup metrics (joined on the image file stem).")] = None,
    key: Annotated[Optional[str], typer.Option(help="Metadata column holding the image file stem, e.g. 'Patient Id'.")] = None,
    subgroups: Annotated[Optional[str], typer.Option(help="Comma-separated metadata columns, e.g. age,sex (age is banded).")] = None,
    folds: Annotated[int, typer.Option(help="Evaluate a k-fold directory (OUT/fold<k>) and report mean ± sd.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 2,
) -> None:
    """Evaluate a trained run; writes metrics.json, report.md, predictions.csv and PNGs, and stores the
    validation-fitted temperature and low-BMD threshold in the bundle."""
    from ..core.stats import fmt_ci
    from ..train.cv import evaluate_folds, fold_dirs, is_cv_dir
    from ..train.evaluate import evaluate_run, fmt_mean_sd

    command = command_line("evaluate", dict(model=model, split=split, subset=subset, out=out, metadata=metadata, key=key,
                                            subgroups=subgroups, folds=folds or None, bootstrap=bootstrap, seed=seed))
    kw = dict(split=split, metadata=metadata, key=key, subgroups=[s.strip() for s in (subgroups or "").split(",") if s.strip()],
              n_boot=bootstrap, seed=seed, device=device, threads=threads, command=command)
    if folds or is_cv_dir(model):
        found = len(fold_dirs(model))
        if folds and found != folds:
            from ..errors import ConfigError

            raise ConfigError(f"{model}: {found} trained fold runs found, --folds {folds} given")
        s = evaluate_folds(model, subset=subset.value, out=out, **kw)
        console.print(f"{s['folds']}-fold CV on the {s['subset']} split (mean ± sd over folds):", highlight=False)
        for k, v in s["summary"].items():
            console.print(f"  {k}: {fmt_mean_sd(v)}", highlight=False)
        console.print(f"protocol: {s['protocol']}", highlight=False, soft_wrap=True)
        console.print(f"wrote {(Path(out) if out else Path(model) / 'eval' / subset.value) / 'cv_report.md'}", highlight=False)
        return
    r = evaluate_run(model, subset=subset.value, out=out, **kw)
    from rich.table import Table

    m = r.metrics
    t = Table(title=f"{Path(model).name}: {subset.value} split, n = {m['n']} (95% bootstrap CI)")
    t.add_column("metric")
    t.add_column("pooled", justify="right")
    for src in m["per_source"]:
        t.add_column(src, justify="right")
    for k in ("accuracy", "macro_f1", "auroc_macro", "low_bmd_auroc", "low_bmd_sensitivity", "low_bmd_specificity", "ece"):
        if k in m["headline"]:
            t.add_row(k, fmt_ci(m["headline"][k]), *[fmt_ci(m["per_source"][s].get(k)) for s in m["per_source"]])
    console.print(t)
    console.print(f"protocol: {m['protocol']}", highlight=False, soft_wrap=True)
    console.print(f"temperature {m['temperature']:.3f}, thresholds {m['thresholds']} (fitted on validation, stored in {model})", highlight=False)
    console.print(f"wrote {', '.join(str(p) for p in r.files.values())}", highlight=False, soft_wrap=True)
    next_step(f"osteo-edge compare {model} OTHER_RUN --out COMPARE_DIR")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
