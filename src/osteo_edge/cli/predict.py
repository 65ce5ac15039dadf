"""`osteo-edge predict`: torch-free predictions for files, folders (recursively) and DICOM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import TRUSTED_KEY_HELP, console, err_console, handle_errors, trust_store

STATUS_STYLE = {"ok": "green", "refer": "yellow", "rejected": "red"}


@handle_errors
def predict(
    paths: Annotated[Optional[List[Path]], typer.Argument(help="Image files (PNG, JPEG, TIFF, BMP, DICOM) or folders (searched recursively).", show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Model bundle directory (default: the bundle shipped with the package).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input per line on stdout, nothing else.")] = False,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write every answer to this CSV file.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Inference threads (default: the backend's choice).")] = None,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP)] = None,
    record: Annotated[Optional[Path], typer.Option("--record", help="Also append every answer to this clinic record (SQLite, append-only).")] = None,
) -> None:
    """Classify knee radiographs: Normal / Osteopenia / Osteoporosis with calibrated probabilities.

    Every input gets an answer: ok, refer (uncertain: refer for DEXA) or rejected (with the reason).
    Exit 0 when every input was answered, rejections included. A screening aid, not a diagnosis.
    """
    from ..artifact import DISCLAIMER
    from ..edge_runtime import EdgeClassifier, expand_inputs
    from ..edge_runtime.report import predictions_csv
    from ..errors import ConfigError

    paths = paths or []
    if not paths:
        raise ConfigError("no input given; pass image files or folders, e.g. osteo-edge predict knee.png scans/")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    clf = EdgeClassifier.load(model, threads=threads, trust=trust_store(trusted_key))
    inputs = expand_inputs(paths)
    if not inputs:
        raise ConfigError(f"no files found in {', '.join(str(p) for p in paths)}")
    preds = []
    for pred in clf.predict_many(inputs):
        preds.append(pred)
        if as_json:
            row = {"path": pred.path, "status": pred.status, "label": pred.label, "probabilities": pred.probabilities, "message": pred.message,
                   "low_bmd_probability": pred.low_bmd_probability, "reason": pred.reason, "latency_ms": round(pred.latency_ms or 0.0, 3)}
            typer.echo(json.dumps(row))
    if csv_out is not None:
        predictions_csv(preds, clf.labels, csv_out)
    if record is not None:
        from ..dicom.record import record_predictions

        err_console.print(f"recorded {record_predictions(record, preds, clf)} answers in {record}", highlight=False, soft_wrap=True)
    if as_json:
        if csv_out is not None:
            err_console.print(f"wrote {csv_out}", highlight=False, soft_wrap=True)
        return
    _render(preds, clf, csv_out, DISCLAIMER)


def _render(preds, clf, csv_out, disclaimer: str) -> None:
    from rich.table import Table

    from ..edge_runtime.classifier import SHORT_DISCLAIMER

    table = Table(title=f"osteo-edge predict ({clf.bundle.format}, {clf.runner.backend} {clf.runner.version})")
    table.add_column("file", overflow="fold", ratio=3)
    table.add_column("status", no_wrap=True)
    table.add_column("label", no_wrap=True)
    table.add_column("probabilities", no_wrap=True)
    table.add_column("P(low BMD)", justify="right", no_wrap=True)
    table.add_column("message", overflow="fold", ratio=4)
    for p in preds:
        style = STATUS_STYLE.get(p.status, "")
        probs = "\n".join(f"{lab} {p.probabilities[lab]:.2f}" for lab in clf.labels if lab in p.probabilities) or "-"
        low = f"{p.low_bmd_probability:.2f}" if p.low_bmd_probability is not None else "-"
        msg = p.message.replace(SHORT_DISCLAIMER, "").strip()
        table.add_row(p.path, f"[{style}]{p.status}[/{style}]", p.label or "-", probs, low, msg)
    console.print(table)
    counts = {s: sum(1 for p in preds if p.status == s) for s in ("ok", "refer", "rejected")}
    console.print(
        f"{len(preds)} inputs: {counts['ok']} ok, {counts['refer']} refer, {counts['rejected']} rejected. "
        "Status: ok = a result; refer = uncertain, refer for DEXA; rejected = not a usable knee radiograph (reason given).",
        highlight=False, soft_wrap=True,
    )
    if clf.gate.ood is None:
        console.print("note: this bundle has no calibrated out-of-distribution gate; only the rule checks ran.", highlight=False)
    if csv_out is not None:
        console.print(f"wrote {csv_out}", highlight=False, soft_wrap=True)
    console.print(f"[bold]{disclaimer}[/bold]", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
