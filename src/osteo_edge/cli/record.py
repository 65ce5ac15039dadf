"""`osteo-edge record`: export and summarise the clinic record (the SQLite file serve and predict append to)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import console, handle_errors

record_app = typer.Typer(help="The clinic record: export it as CSV, count answers by status, label and day, show the node's status.",
                         no_args_is_help=True)

RECORD_HELP = "The clinic record database (written by serve --record / predict --record)."
SINCE_HELP = ("Only answers recorded at or after this time: ISO 8601, e.g. 2026-12-07, 2026-12-07T08:00, "
              "2026-12-07T08:00+01:00 (no time zone: UTC).")
UNTIL_HELP = "Only answers recorded at or before this time (ISO 8601 as for --since; a date alone: to the end of that day)."


@record_app.command("export")
@handle_errors
def export(
    record: Annotated[Path, typer.Option("--record", help=RECORD_HELP, show_default=False)],
    csv_out: Annotated[Path, typer.Option("--csv", help="CSV file to write (cells a spreadsheet would run as formulas are quoted).", show_default=False)],
    since: Annotated[Optional[str], typer.Option("--since", help=SINCE_HELP, show_default="everything")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help=UNTIL_HELP, show_default="now")] = None,
) -> None:
    """Write the record's rows (answers and corrections, with when each result was delivered) to a CSV file (0600)."""
    from ..dicom.record import ClinicRecord, export_csv, time_bounds

    time_bounds(since, until)  # a time it cannot read is refused before the record is opened
    with ClinicRecord(record, create=False) as rec:
        out, n = export_csv(rec, csv_out, since, until)
    console.print(f"wrote {n} rows to {out}", highlight=False, soft_wrap=True)


@record_app.command("stats")
@handle_errors
def stats(
    record: Annotated[Path, typer.Option("--record", help=RECORD_HELP, show_default=False)],
    since: Annotated[Optional[str], typer.Option("--since", help=SINCE_HELP, show_default="everything")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help=UNTIL_HELP, show_default="now")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Chart of answers per day (needs matplotlib).", show_default="RECORD.stats.png")] = None,
) -> None:
    """Count the answers by status, by label and per day; draw them per day as a PNG."""
    from rich.table import Table

    from ..dicom.record import ClinicRecord, stats as record_stats, stats_png

    with ClinicRecord(record, create=False) as rec:
        st = record_stats(rec, since, until)
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
    if not st.total:
        return
    written = stats_png(st, png or record.with_name(record.name + ".stats.png"))
    if written is not None:
        console.print(f"wrote {written}", highlight=False, soft_wrap=True)
    else:
        console.print("no PNG written: matplotlib is not installed (pip install matplotlib)", highlight=False, soft_wrap=True)


@record_app.command("status")
@handle_errors
def status(
    record: Annotated[Path, typer.Option("--record", help=RECORD_HELP, show_default=False)],
    spool: Annotated[Optional[Path], typer.Option("--spool", help="The node's spool folder.", show_default="the running node's, else RECORD.spool")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object instead of lines.")] = False,
) -> None:
    """Is a node serving this record, since when; images waiting (backlog), results not yet delivered
    (outbox), images that failed, the last error. Exit code 0 when healthy, 2 when something waits too
    long (oldest undelivered result over 10 minutes) or failed."""
    import dataclasses
    import json

    from ..dicom.nodelock import node_status

    st = node_status(record, spool)
    problem = st.failed > 0 or (st.oldest_waiting_s or 0) > 600
    if json_out:
        d = dataclasses.asdict(st)
        d["record"] = str(st.record)
        typer.echo(json.dumps(d))
    else:
        lines = [
            ("node", f"running (pid {st.pid}, {st.listening}, up {_duration(st.uptime_s)})" if st.running else "not running"),
            ("forward", st.forward or "-"),
            ("answered", str(st.answered)), ("delivered", str(st.delivered)),
            ("backlog", f"{st.backlog} images waiting for an answer"),
            ("outbox", f"{st.outbox} results not yet delivered" + (f" (oldest {_duration(st.oldest_waiting_s)})" if st.outbox else "")),
            ("failed", f"{st.failed} images could not be answered (spool/failed)"),
            ("last error", f"{st.last_error['recorded_at']} {st.last_error['event']}: {st.last_error['detail']}" if st.last_error else "none"),
        ]
        for k, v in lines:
            console.print(f"{k + ':':<11} {v}", highlight=False, soft_wrap=True)
    if problem:
        raise typer.Exit(code=2)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {s}s"


def register(app: typer.Typer) -> None:
    app.add_typer(record_app, name="record")
