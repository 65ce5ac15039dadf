"""`osteo-edge screen`: answer a whole archive (folder tree, CSV file list or PACS query) into the clinic record."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from . import _output as out
from ._common import TRUSTED_KEY_HELP, choices, handle_errors, progress_console, progress_enabled, quiet_native, verbose

Engine = choices("Engine", ("local", "ray"))


class ProgressLines:
    """Progress for a log (stderr not a terminal): one plain line every ``every`` seconds."""

    def __init__(self, every: float) -> None:
        self.every, self.last = every, time.monotonic()

    def __call__(self, label: str, done: int = 0, total: int | None = None, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        of = f"/{total}" if total else ""
        extra = "".join(f", {k} {v}" for k, v in info.items())
        out.line(f"{label}: {done}{of} images{extra}", stderr=True)


@handle_errors
def screen(
    source: Annotated[Optional[Path], typer.Argument(help="A folder tree of images (searched recursively) or a CSV list of files (a 'path' column; optional patient_id, accession_number, study_instance_uid, film_date). Or use --pacs.", show_default=False)] = None,
    record: Annotated[Path, typer.Option("--record", help="The clinic record (SQLite) the answers go into; created if absent.", show_default=False)] = ...,  # type: ignore[assignment]
    workers: Annotated[int, typer.Option("--workers", help="Worker processes (local) or Ray actors (ray), one CPU and one runtime each.")] = 1,
    engine: Annotated[Engine, typer.Option("--engine", help="local: processes on this machine; ray: a Ray cluster (the cluster extra; docs/screen-cluster.md).")] = "local",  # type: ignore[valid-type,assignment]
    model: Annotated[Optional[Path], typer.Option("--model", help="Model bundle directory (default: the bundle shipped with the package).")] = None,
    pacs: Annotated[Optional[str], typer.Option("--pacs", help="Screen a PACS instead: AE@HOST:PORT (C-FIND, then C-GET: no inbound port needed here).")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="PACS: first study date (YYYY-MM-DD).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="PACS: last study date (YYYY-MM-DD).")] = None,
    modality: Annotated[Optional[List[str]], typer.Option("--modality", help="PACS: modalities (repeatable). [default: CR, DX]")] = None,
    body_part: Annotated[str, typer.Option("--body-part", help="PACS: Body Part Examined of the series ('any': no filter).")] = "KNEE",
    ae_title: Annotated[str, typer.Option("--ae-title", help="PACS: our calling AE title.")] = "OSTEOEDGE-SCREEN",
    spool: Annotated[Optional[Path], typer.Option("--spool", help="PACS: a folder of its own for fetched images, emptied as answers are recorded. [default: screen-spool beside the record]")] = None,
    batch: Annotated[int, typer.Option("--batch", help="PACS: images fetched per C-GET association (the spool holds at most this plus the images in flight).")] = 32,
    worklist: Annotated[Optional[Path], typer.Option("--worklist", help="Referral worklist CSV. [default: RECORD-referrals.csv beside the record]")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="ray: the cluster to join (auto, ray://HOST:10001); default RAY_ADDRESS, else a local Ray instance.")] = None,
    progress_every: Annotated[float, typer.Option("--progress-every", help="Seconds between progress lines when stderr is not a terminal (a log).")] = 10.0,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP)] = None,
) -> None:
    """Screen a whole archive: every image answered once per model into the clinic record; resumable.

    A rerun (or a run after a crash or kill) skips the images the record already answers with this
    model's seal and records nothing twice. At the end: counts by status, the referral worklist
    (refer for DEXA) as CSV and the throughput. A screening aid, not a diagnosis.
    """
    from ..artifact import DISCLAIMER
    from ..core.progress import TerminalProgress
    from ..screen.pacs import PacsQuery
    from ..screen.run import ScreenJob, screen as run_screen

    if batch < 1:
        raise typer.BadParameter(f"--batch must be at least 1, got {batch}")
    query = PacsQuery(since, until, tuple(modality or ("CR", "DX")), None if body_part.lower() == "any" else body_part)
    eng = getattr(engine, "value", engine)
    job = ScreenJob(record=record, source=source, pacs=pacs, query=query, model=None if model is None else str(model), workers=workers,
                    engine=eng, worklist=worklist, trusted_keys=tuple(str(k) for k in trusted_key or ()), ray_address=ray_address,
                    spool=spool, batch=batch, calling_ae=ae_title)
    quiet = eng == "ray" and not verbose()  # Ray's native and Python logs: only with --verbose
    if quiet:
        _quiet_ray()
    main = threading.current_thread() is threading.main_thread()  # signal handlers: the main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None  # kill PID, systemd, a timeout: as Ctrl+C
    try:
        with quiet_native() if quiet else contextlib.nullcontext():
            if progress_enabled():
                with TerminalProgress("screening", console=progress_console()) as bar:
                    res = run_screen(job, progress=bar)
            else:
                res = run_screen(job, progress=ProgressLines(progress_every))
    except KeyboardInterrupt:  # Ctrl+C: the answers already back are recorded; say so, and how to finish
        out.error(f"interrupted: the answers already back are in {record}; run the same command again to answer "
                  "the rest (nothing is recorded twice) and write the worklist")
        raise typer.Exit(code=130) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    _render(res, record)
    out.line(DISCLAIMER, style="bold")
    out.next_step(f"osteo-edge record stats --record {shlex.quote(str(record))}")  # a path with a space: still one argument


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: stop as Ctrl+C does (the answers back are recorded, the worker processes end)."""
    raise KeyboardInterrupt


def _quiet_ray() -> None:
    """Ray Data sets up its loggers when imported: import it first, then keep them to errors."""
    import logging

    try:
        import ray.data  # noqa: F401
    except ImportError:  # the library says which extra to install, in one line
        return
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _render(res: Any, record: Path) -> None:
    statuses = ("ok", "refer", "rejected")
    rows = [[s, res.answered.get(s, 0), res.already.get(s, 0), res.answered.get(s, 0) + res.already.get(s, 0)] for s in statuses]
    rows.append(["total", sum(res.answered.values()), sum(res.already.values()), sum(res.answered.values()) + sum(res.already.values())])
    cols = [out.Col("status"), out.Col("answered now", right=True), out.Col("answered before", right=True), out.Col("in the record", right=True)]
    out.table(f"osteo-edge screen ({res.inputs} inputs, engine {res.engine}, {res.workers} worker{'s' if res.workers != 1 else ''})", cols, rows)
    eg = f", e.g. {', '.join(res.missing_examples)}" if res.missing_examples else ""
    notes = [(res.missing, f"listed but not found (not recorded{eg})"),
             (res.unreadable, "found but not readable: permissions or I/O errors (not recorded; a rerun tries again)"), (res.not_fetched, "not delivered by the PACS (a rerun tries again)"),
             (res.duplicates, "the same image again under another name (recorded once)"), (res.left_out, "hidden or side files left out")]
    for n, what in notes:
        if n:
            out.line(f"{n} {what}")
    out.line(f"recorded {res.recorded} new answers in {record}")
    n = sum(res.answered.values())
    if n:
        out.line(f"throughput: {res.images_per_second:.2f} images/s ({n} answered in {res.seconds:.1f} s wall, the first after "
                 f"{res.startup_seconds:.1f} s; per image in a worker: {res.ms_per_image:.1f} ms, {res.cpu_ms_per_image:.1f} ms CPU "
                 "for hashing, decoding and inference)")
    else:
        out.line("nothing new to answer: every input is already in the record for this model")
    out.line(f"referral worklist: {res.referrals} image{'s' if res.referrals != 1 else ''} to refer for DEXA -> {res.worklist}")
    out.line("status: ok = a result, nothing to act on; refer = uncertain or low BMD suspected, refer for DEXA; "
             "rejected = not a usable knee radiograph (reason in the record).", dim=True)


def register(app: typer.Typer) -> None:
    app.command("screen")(screen)
