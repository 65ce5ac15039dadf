"""`osteo-edge gate calibrate`: fit the input gate on a split and write it into bundles."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import _output as o
from ._common import handle_errors

gate_app = typer.Typer(help="The input gate that refuses what is not a knee radiograph: fit it on a split, write it into bundles.",
                       no_args_is_help=True)


@gate_app.command("calibrate")
@handle_errors
def calibrate(
    split: Annotated[Path, typer.Option("--split", help="split.csv: train rows fit, val rows choose the threshold, test rows report (--crossfit: its folds).")],
    bundle: Annotated[Optional[List[Path]], typer.Option("--bundle", help="Bundle to write the gate into (repeatable; re-sealed, sign it again).")] = None,
    crossfit: Annotated[bool, typer.Option("--crossfit", help="Thresholds on out-of-fold scores of every non-test knee (the split's folds), plus a knee-vs-other score.")] = False,
    non_knee: Annotated[Optional[List[Path]], typer.Option("--non-knee", help="Folder of non-knee images (e.g. spine radiographs); repeatable.")] = None,
    synthetic: Annotated[int, typer.Option("--synthetic", help="Seeded synthetic grey non-radiographs added to the non-knee sets.")] = 120,
    package_images: Annotated[bool, typer.Option(help="Add the photographs and MRI slice shipped inside matplotlib/gradio (grey).")] = True,
    min_accept: Annotated[float, typer.Option("--min-accept", help="Smallest knee acceptance, within every source.")] = 0.99,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for gate.json and gate_calibration.json.")] = None,
) -> None:
    """Fit the input gate (out-of-distribution score) on a split's knees and non-knee images; report its rates."""
    from ..release.gate import calibrate_gate_from_split

    res = calibrate_gate_from_split(split, bundles=bundle or [], crossfit=crossfit, non_knee=non_knee or [], synthetic=synthetic,
                                    package_images=package_images, min_accept=min_accept, out=out,
                                    command="osteo-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    cal = res.gate.ood.calibration if res.gate.ood else {}
    rows = []
    for name, sets in (("calibration", cal.get("calibration_sets") or {}), ("test", cal.get("test_sets") or {})):
        if not sets:
            continue
        i = sets["in_distribution"]
        rows.append([name, "knee radiographs (accepted)", f"{i['accepted']}/{i['n']}", _rate(i["accept_rate"])])
        for src, r in sets.get("in_distribution_by_source", {}).items():
            rows.append([name, f"  {src} (accepted)", f"{r['accepted']}/{r['n']}", _rate(r["accept_rate"])])
        for k, v in sets.get("out_of_distribution", {}).items():
            rows.append([name, f"{k} (rejected)", f"{v['rejected']}/{v['n']}", _rate(v["reject_rate"])])
    o.table(f"Input gate: threshold {res.report['threshold']:.3f} ({'cross-fitted' if crossfit else 'val rows'})",
            [o.Col("set"), o.Col("images"), o.Col("count", right=True), o.Col("rate", right=True)], rows)
    o.wrote([*res.files.values(), *res.bundles])
    if res.bundles:
        o.next_step(f"osteo-edge sign {shlex.quote(str(res.bundles[0]))} --key KEY", "writing the gate re-sealed the bundle: sign it again")


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def register(app: typer.Typer) -> None:
    app.add_typer(gate_app, name="gate")
