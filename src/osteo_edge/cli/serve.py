"""`osteo-edge serve`: the DICOM node a clinic's X-ray machine or PACS sends radiographs to."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import TRUSTED_KEY_HELP, console, handle_errors, trust_store


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
) -> None:
    """Run a DICOM node: C-ECHO, and C-STORE of CR/DX/Secondary Capture radiographs, each answered.

    A received image is spooled durably before 'stored' goes back, answered by the edge runtime,
    appended to the clinic record once per SOP Instance UID, and its result (a Structured Report
    referencing the image) forwarded and/or kept. Stop with Ctrl-C. A screening aid, not a diagnosis.
    """
    from ..dicom.node import Destination, Node, NodeConfig, is_loopback

    config = NodeConfig(
        record=record, spool=spool, results=results, port=port, ae_title=ae_title, bind=bind, allow_ae=list(allow_ae or []),
        forward=Destination.parse(forward) if forward else None, model=model, trust=trust_store(trusted_key),
        threads=threads, max_bytes=int(max_mb * 1024 * 1024),
    )
    node = Node(config).start()
    signal.signal(signal.SIGTERM, _interrupt)
    where = f"{config.ae_title}@{bind}:{node.port}"
    console.print(f"listening: {where}" + ("" if is_loopback(bind) else " (not loopback: reachable from the network)"), highlight=False)
    console.print(f"test it:   echoscu -aec {config.ae_title} {bind} {node.port}", highlight=False)
    try:
        node.wait()  # stops the node (finishing the spool) however it ends
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
