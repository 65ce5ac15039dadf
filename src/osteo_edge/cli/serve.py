"""`osteo-edge serve`: the DICOM node a clinic's X-ray machine or PACS sends radiographs to."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import TRUSTED_KEY_HELP, console, handle_errors, trust_store, verbose


@handle_errors
def serve(
    record: Annotated[Path, typer.Option("--record", help="Clinic record database (SQLite, append-only; created 0600).", show_default=False)],
    port: Annotated[int, typer.Option("--port", help="TCP port of the DICOM node (0: any free port).", show_default=True)] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.", show_default=True)] = "OSTEOEDGE",
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on; anything but loopback is reachable from the network.", show_default=True)] = "127.0.0.1",
    allow_ae: Annotated[Optional[List[str]], typer.Option("--allow-ae", help="Calling AE title allowed to connect (repeatable); others are refused at association.", show_default="any AE title")] = None,
    forward: Annotated[Optional[str], typer.Option("--forward", help="Send each result (a DICOM SR) by C-STORE to AE@HOST:PORT, e.g. PACS@10.0.0.5:104.", show_default="not sent")] = None,
    results: Annotated[Optional[Path], typer.Option("--results", help="Keep each result SR in this folder for pick-up.", show_default="not kept")] = None,
    spool: Annotated[Optional[Path], typer.Option("--spool", help="Spool folder for received instances (0700).", show_default="RECORD.spool")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Model bundle directory.", show_default="the shipped bundle")] = None,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP, show_default="none")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Inference threads.", show_default="the backend's choice")] = None,
    max_mb: Annotated[float, typer.Option("--max-mb", help="Largest dataset accepted, in MB (bigger: refused, status A700).", show_default=True)] = 200.0,
    forward_timeout: Annotated[float, typer.Option("--forward-timeout", help="Seconds the forwarder waits for the PACS (connect, association, each C-STORE) before it retries later.", show_default=True)] = 10.0,
    retry_max: Annotated[float, typer.Option("--retry-max", help="Longest pause between delivery attempts, in seconds (backoff from 1 s, doubling).", show_default=True)] = 60.0,
) -> None:
    """Run a DICOM node: C-ECHO, and C-STORE of CR/DX/Secondary Capture radiographs, each answered.

    A received image is spooled durably before 'stored' goes back, answered by the edge runtime,
    appended to the clinic record once per SOP Instance UID, and its result (a Structured Report
    referencing the image) kept and/or delivered from a durable outbox (retried until the PACS takes
    it). One log line per image on stderr (received, answered, delivered). One node per record.
    Stop with Ctrl-C or SIGTERM. A screening aid, not a diagnosis.
    """
    from ..dicom.node import Destination, Node, NodeConfig, is_loopback

    config = NodeConfig(
        record=record, spool=spool, results=results, port=port, ae_title=ae_title, bind=bind, allow_ae=list(allow_ae or []),
        forward=Destination.parse(forward) if forward else None, model=model, trust=trust_store(trusted_key),
        threads=threads, max_bytes=int(max_mb * 1024 * 1024), forward_timeout=forward_timeout, retry_max=retry_max,
    )
    node_logging()
    node = Node(config).start()
    signal.signal(signal.SIGTERM, _interrupt)
    where = f"{config.ae_title}@{bind}:{node.port}"
    console.print(f"listening: {where}" + ("" if is_loopback(bind) else " (not loopback: reachable from the network)"), highlight=False)
    console.print(f"test it:   {echo_hint(config, node.port)}", highlight=False)
    try:
        node.wait()  # stops the node (finishing the spool) however it ends
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)


def echo_hint(config: object, port: int) -> str:
    """A dcmtk echoscu line that passes this node's checks: the called AE title, and a calling AE
    title it allows (the first --allow-ae); 127.0.0.1 for a node bound to every address."""
    host = "127.0.0.1" if config.bind in ("0.0.0.0", "::") else config.bind
    aet = f"-aet {config.allow_ae[0]} " if config.allow_ae else ""
    return f"echoscu {aet}-aec {config.ae_title} {host} {port}"


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


def node_logging() -> None:
    """The node's log: one line per image and event at the default level (received, answered,
    delivered, refusals), each with a UTC time stamp; pynetdicom's association chatter only with -v,
    and then at INFO (its DEBUG dumps every PDU)."""
    logging.getLogger("osteo_edge.dicom").setLevel(logging.DEBUG if verbose() else logging.INFO)
    if verbose():  # their INFO, not their DEBUG (a dump of every PDU, every attribute copied)
        for name in ("pynetdicom", "highdicom"):
            logging.getLogger(name).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(message)s"))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
