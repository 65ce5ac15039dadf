"""`osteo-edge predict`: torch-free predictions for files, folders (recursively) and DICOM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import _output as out
from ._steps import after_predict
from ._common import TRUSTED_KEY_HELP, handle_errors, trust_store, usage_error


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

    Every input gets an answer: ok (a result, nothing to act on), refer (uncertain, or low BMD
    suspected: refer for DEXA) or rejected (not a usable knee radiograph, with the reason). Exit 0
    when every input was answered, rejections included; exit 2 when no input is given or a path does not exist.
    A screening aid, not a diagnosis.
    """
    from ..artifact import DISCLAIMER
    from ..edge_runtime import EdgeClassifier, scan_inputs
    from ..edge_runtime.report import predictions_csv
    from ..errors import ConfigError

    paths = paths or []
    if not paths:  # a usage error, like a missing path: exit 2
        raise usage_error("no input given; pass image files or folders, e.g. osteo-edge predict knee.png scans/")
    if threads is not None and threads < 1:
        raise usage_error(f"--threads must be at least 1, got {threads}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:  # a typo in a clinic's script must not pass silently: exit 2 (rejected files that exist: 0)
        out.error(f"no such file or folder: {', '.join(missing)}")
        raise typer.Exit(code=2)
    clf = EdgeClassifier.load(model, threads=threads, trust=trust_store(trusted_key))
    inputs, skipped = scan_inputs(paths)
    if skipped:  # counted, never silent (stderr: --json keeps stdout to one object per input)
        kinds = ", ".join(sorted({f.suffix.lower() or f.name for f in skipped}))
        out.line(f"skipped {len(skipped)} non-image or hidden file{'s' if len(skipped) != 1 else ''} in the folders ({kinds})", stderr=True)
    if not inputs:
        raise ConfigError(f"no image files found in {', '.join(str(p) for p in paths)}")
    preds = []
    for pred in clf.predict_many(inputs):
        preds.append(pred)
        if as_json:
            typer.echo(json.dumps(pred.record()))
    if csv_out is not None:
        predictions_csv(preds, clf.labels, csv_out)
    if record is not None:
        from ..dicom.record import record_predictions

        out.line(f"recorded {record_predictions(record, preds, clf)} answers in {record}", stderr=True)
    if as_json:
        if csv_out is not None:
            out.wrote([csv_out], stderr=True)
        return
    _render(preds, clf, csv_out, DISCLAIMER, model)


def _render(preds, clf, csv_out, disclaimer: str, model=None) -> None:
    from ..edge_runtime.classifier import SHORT_DISCLAIMER

    cols = [out.Col("file"), out.Col("status"), out.Col("label"), *(out.Col(f"P({lab})", right=True) for lab in clf.labels),
            out.Col("P(low BMD)", right=True), out.Col("message", wrap=True)]
    rows = []
    for p in preds:
        probs = [f"{p.probabilities[lab]:.2f}" if lab in p.probabilities else "-" for lab in clf.labels]
        low = f"{p.low_bmd_probability:.2f}" if p.low_bmd_probability is not None else "-"
        rows.append([p.path, p.status, p.label or "-", *probs, low, p.message.replace(SHORT_DISCLAIMER, "").strip()])
    out.table(f"osteo-edge predict ({clf.bundle.format}, {clf.runner.backend} {clf.runner.version})", cols, rows)
    counts = {s: sum(1 for p in preds if p.status == s) for s in ("ok", "refer", "rejected")}
    out.line(f"{len(preds)} inputs: {counts['ok']} ok, {counts['refer']} refer, {counts['rejected']} rejected.")
    out.line("status: ok = a result, nothing to act on; refer = uncertain or low BMD suspected, refer for DEXA; "
             "rejected = not a usable knee radiograph (reason given).", dim=True)
    if clf.gate.ood is None:
        out.line("note: this bundle has no calibrated out-of-distribution gate; only the rule checks ran.")
    if csv_out is not None:
        out.wrote([csv_out])
    out.line(disclaimer, style="bold")
    out.next_step(after_predict(model))


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
