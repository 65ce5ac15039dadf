"""`osteo-edge demo`: the offline clinic demo (Gradio) on this computer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import TRUSTED_KEY_HELP, console, err_console, handle_errors, trust_store, usage_error


@handle_errors
def demo(
    model: Annotated[Optional[Path], typer.Option("--model", help="Model bundle directory (default: the bundle shipped with the package).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. 127.0.0.1 = this computer only; 0.0.0.0 = every network interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = 7860,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Inference threads (default: the backend's choice).")] = None,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP)] = None,
) -> None:
    """Start the offline web demo: upload a knee radiograph, see the class, calibrated probabilities, status (ok / refer for DEXA / rejected), an occlusion heat map, latency and the model card.

    Offline by construction (no analytics, no share link, no CDN); listens on 127.0.0.1 unless told otherwise. Uploads and results live in a private folder under $OSTEO_EDGE_DEMO_TMP (default: the system temp folder) and are deleted when it stops. Stop it with Ctrl+C. A screening aid, not a diagnosis.
    """
    from ..artifact import DISCLAIMER
    from ..demo.app import browse_url, build_app, host_warning, launch_app, network_note, port_problem
    from ..edge_runtime import EdgeClassifier
    from ..errors import ConfigError

    if not 1 <= port <= 65535:  # usage errors: exit 2
        raise usage_error(f"--port must be in [1, 65535], got {port}")
    if threads is not None and threads < 1:
        raise usage_error(f"--threads must be at least 1, got {threads}")
    busy = port_problem(host, port)  # before the URL is printed: a busy port must not show a dead link
    if busy:
        raise ConfigError(f"{busy}; pick another --port (e.g. --port {port + 1}) or stop what is using it")
    warning = host_warning(host)
    if warning:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    clf = EdgeClassifier.load(model, threads=threads, trust=trust_store(trusted_key))
    app = build_app(clf)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up probes of its local URL
    note = network_note(host, port)
    console.print(
        f"osteo-edge demo: model {clf.bundle.path} ({clf.bundle.format}); open {browse_url(host, port)} in a browser"
        f"{'; ' + note if note else ''}. Ctrl+C stops it.\n{DISCLAIMER}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        launch_app(app, host, port, block=True, quiet=True, warn=False)
    except OSError as exc:  # port taken, address not available
        raise ConfigError(f"cannot listen on {host}:{port} (in use, or not an address of this computer); pick another --port or --host") from exc


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
