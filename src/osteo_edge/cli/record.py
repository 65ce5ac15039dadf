"""`osteo-edge record`: export and summarise the clinic record (the SQLite file serve and predict append to)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import console, handle_errors

record_app = typer.Typer(help="The clinic record: export it as CSV, count answers by status, label and day.", no_args_is_help=True)

RECORD_HELP = "The clinic record database (written by serve --record / predict --record)."
SINCE_HELP = "Only answers recorded on or after this UTC date or time (YYYY-MM-DD or ISO 8601)."


@record_app.command("export")
@handle_errors
def export(
    record: Annotated[Path, typer.Option("--record", help=RECORD_HELP, show_default=False)],
    csv_out: Annotated[Path, typer.Option("--csv", help="CSV file to write (cells a spreadsheet would run as formulas are quoted).", show_default=False)],
    since: Annotated[Optional[str], typer.Option("--since", help=SINCE_HELP, show_default="everything")] = None,
) -> None:
    """Write the record's rows (answers and corrections) to a CSV file."""
    from ..dicom.record import ClinicRecord, export_csv

    with ClinicRecord(record, create=False) as rec:
        out, n = export_csv(rec, csv_out, since)
    console.print(f"wrote {n} rows to {out}", highlight=False, soft_wrap=True)


@record_app.command("stats")
@handle_errors
def stats(
    record: Annotated[Path, typer.Option("--record", help=RECORD_HELP, show_default=False)],
    since: Annotated[Optional[str], typer.Option("--since", help=SINCE_HELP, show_default="everything")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Chart of answers per day (needs matplotlib).", show_default="RECORD.stats.png")] = None,
) -> None:
    """Count the answers by status, by label and per day; draw them per day as a PNG."""
    from rich.table import Table

    from ..dicom.record import ClinicRecord, stats as record_stats, stats_png

    with ClinicRecord(record, create=False) as rec:
        st = record_stats(rec, since)
    console.print(f"{st.total} answers", highlight=False)
    for title, counts in (("status", st.by_status), ("label", st.by_label)):
        table = Table(title=f"by {title}")
        table.add_column(title)
        table.add_column("answers", justify="right")
        for k, v in sorted(counts.items()):
            table.add_row(k, str(v))
        console.print(table)
    days = Table(title="per day (UTC)")
    for col in ("day", "ok", "refer", "rejected"):
        days.add_column(col, justify="right" if col != "day" else "left")
    for day, counts in st.per_day.items():
        days.add_row(day, *(str(counts.get(s, 0)) for s in ("ok", "refer", "rejected")))
    console.print(days)
    written = stats_png(st, png or record.with_name(record.name + ".stats.png")) if st.total else None
    if written is not None:
        console.print(f"wrote {written}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(record_app, name="record")
