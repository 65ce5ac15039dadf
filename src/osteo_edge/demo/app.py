"""The offline clinic demo: a Gradio Blocks app over :class:`osteo_edge.edge_runtime.EdgeClassifier`.

Offline by construction:

- ``GRADIO_ANALYTICS_ENABLED=False`` is set before gradio is first imported (by :func:`import_gradio`,
  called from :func:`build_app`, never at ``import osteo_edge``) and ``Blocks(analytics_enabled=False)``;
- no share link, no server-side rendering (no Node), no MCP server, no run history kept in the browser;
- a built-in theme whose fonts are served by the app itself (no CDN), no Markdown LaTeX (no KaTeX);
- binds 127.0.0.1 unless told otherwise, and :func:`host_warning` says so when it is told otherwise;
- answers only its own page (:mod:`.guard`: Host and Origin checks, security headers);
- keeps uploads and results in one private, swept folder per process (:mod:`.workspace`), deleted
  when the demo stops;
- bounded work: every analysis shares :data:`CONCURRENCY` workers; other requests wait in gradio's
  queue (the page shows their place), at most :data:`QUEUE_SIZE` of them.

UI only: every number, label and threshold comes from the classifier's bundle.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from typing import Any, Callable, Sequence

from ..artifact import DISCLAIMER
from ..errors import OsteoEdgeError
from ..preprocess import MAX_FILE_BYTES
from .card import model_card_markdown
from .examples import EXAMPLES, examples_dir
from .service import STATUS_TEXT, DemoService, SingleResult, folder_images

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CONCURRENCY = 2  # analyses at once, all actions together; the machine this is meant for has 2-4 cores
QUEUE_SIZE = 64  # waiting jobs beyond this are refused with "queue full" instead of piling up
WORK = "analysis"  # gradio concurrency group shared by every action that decodes or runs the model
TITLE = "osteo-edge: knee X-ray screening aid (offline)"
CSS = """
#status h3 { margin-top: 0; }
.oe-disclaimer { font-size: 0.9em; opacity: 0.85; }
"""


def import_gradio() -> Any:
    """Import gradio with analytics switched off first (its env var is read at import and launch)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from ..errors import require

    return require("gradio", "demo")


def browse_url(host: str, port: int) -> str:
    """The URL a person on this computer can open: loopback when listening on every interface."""
    h = host.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return f"http://{h}:{port}/"
    if ip.is_unspecified:
        return f"http://{'[::1]' if ip.version == 6 else '127.0.0.1'}:{port}/"
    return f"http://[{h}]:{port}/" if ip.version == 6 else f"http://{h}:{port}/"


def port_problem(host: str, port: int) -> str | None:
    """Why the demo cannot listen on ``host:port`` (in use, or not an address of this computer), or None.

    Checked before anything is printed, so a busy port never shows a URL that leads nowhere (the
    server binds with SO_REUSEADDR, as here: a port in TIME_WAIT is not "in use")."""
    import socket

    h = host.strip().strip("[]")
    try:
        infos = socket.getaddrinfo(h, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"{host} is not an address of this computer ({exc.strerror})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    return None


def network_note(host: str, port: int) -> str | None:
    """How other computers reach a demo listening on every interface (None otherwise)."""
    from .guard import is_unspecified

    if not is_unspecified(host):
        return None
    return f"other computers on the network open http://<this computer's address>:{port}/ (its IP address or name)"


def host_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address (the demo would be reachable from the network)."""
    h = host.strip().strip("[]")
    if h in ("localhost",):
        return None
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return f"listening on {host!r}, which is not a loopback address: other computers may reach this demo and its uploads"
    if ip.is_loopback:
        return None
    if ip.is_unspecified:
        return (
            f"listening on all network interfaces ({host}): anyone on this network can open the demo and send images; "
            f"use --host {DEFAULT_HOST} unless that is what you want"
        )
    return f"listening on {host}, a non-loopback address: other computers may reach this demo and its uploads"


# ------------------------------------------------------------------------------------------------
# rendering one result


def status_markdown(result: SingleResult, thresholds: dict[str, float] | None = None) -> str:
    """The verdict block: label, status, the runtime's message, and the DEXA referral when it applies."""
    p = result.prediction
    thresholds = thresholds or {}
    if p.status == "rejected":
        reason = p.message[len("rejected: "):] if p.message.startswith("rejected: ") else p.message
        return (
            "### Input rejected\n"
            f"**Status: rejected.** `{p.path}`: {reason}\n\n"
            "Please upload a knee radiograph (JPEG, PNG, TIFF or DICOM)."
        )
    uncertain = "uncertain" in (p.reason or "")
    title = f"{p.label} (uncertain)" if uncertain else p.label
    lines = [f"### {title}", f"**Status: {STATUS_TEXT.get(p.status, p.status)}.** `{p.path}`: {p.message}"]
    low_thr = thresholds.get("low_bmd")
    if p.low_bmd_probability is not None:
        lines.append(f"\nP(low BMD) = 1 - P(Normal) = **{p.low_bmd_probability:.1%}**")
        if low_thr is not None and p.low_bmd_probability >= low_thr:
            lines.append(f"(at or above the operating threshold {low_thr:.0%}): **low BMD suspected, refer for DEXA.**")
    if uncertain:
        lines.append("\n**Uncertain: refer for DEXA.**")
    return "\n".join(lines)


def timing_markdown(result: SingleResult) -> str:
    p = result.prediction
    parts = []
    if p.latency_ms is not None:
        parts.append(f"prediction {p.latency_ms:.0f} ms (decode, gate, preprocess, inference)")
    if result.explanation is not None:
        e = result.explanation
        n = e.heat.size
        parts.append(f"heat map {e.elapsed_ms:.0f} ms ({n} occluded copies in one batch)")
    parts.append(f"total {result.total_ms:.0f} ms")
    text = "Latency: " + "; ".join(parts) + "."
    if result.explanation is not None:
        e = result.explanation
        text += (
            f"\n\nHeat map: how much P({p.label}) (= {e.base_probability:.1%}) drops when each of "
            f"{e.heat.shape[0]}x{e.heat.shape[1]} cells is hidden; brighter = the model relies on it more "
            f"(largest drop {max(float(e.heat.max()), 0.0):.1%}). It shows what the model looks at, not where disease is."
        )
    return text


def _message(text: str) -> str:
    return f"### Cannot analyse this input\n{text}\n\nThe app is still running: try another file."


# ------------------------------------------------------------------------------------------------
# the app


def build_app(classifier: Any, *, grid: int | None = None, service: DemoService | None = None) -> Any:
    """The demo as a ``gr.Blocks`` (queued, not launched). ``classifier``: an ``EdgeClassifier``."""
    from .workspace import active_workspace

    active_workspace()  # before gradio is imported: its upload cache goes into the private folder
    gr = import_gradio()
    svc = service or (DemoService(classifier) if grid is None else DemoService(classifier, grid=grid))
    labels = svc.labels
    bundle = svc.bundle
    thresholds = dict(getattr(classifier, "thresholds", None) or bundle.thresholds)
    no_latex: list[dict[str, Any]] = []

    # Uploads (gradio's cache) and results live in this process's private workspace: gradio and the
    # workspace's sweeper delete them KEEP_SECONDS after they were made, and the folder goes when
    # the demo stops, so patient images do not pile up on disk.
    from .workspace import KEEP_SECONDS, SWEEP_SECONDS

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(SWEEP_SECONDS, KEEP_SECONDS)) as app:
        gr.Markdown(
            "# osteo-edge: knee X-ray osteoporosis screening aid\n"
            f"**{DISCLAIMER}** Runs entirely on this computer; no image leaves it. "
            f"Classes: {', '.join(labels)} (from the model bundle).",
            latex_delimiters=no_latex,
        )
        with gr.Tabs():
            _single_tab(gr, labels, _predict_handler(svc, thresholds), no_latex)
            _batch_tab(gr, labels, _batch_handler(gr, svc), no_latex)
            with gr.Tab("Model card", id="card"):
                gr.Markdown(model_card_markdown(bundle), elem_id="model-card", latex_delimiters=no_latex)
        gr.Markdown(f"{DISCLAIMER}", elem_classes=["oe-disclaimer"], latex_delimiters=no_latex)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return app


def _predict_handler(svc: DemoService, thresholds: dict[str, float]) -> Callable[[str | None, bool], tuple[str, Any, Any, str]]:
    """The "One image" event: status, probabilities, input view with heat map, timing."""

    def predict(file: str | None, explain: bool) -> tuple[str, Any, Any, str]:
        if not file:
            return "Upload a knee radiograph or click an example.", None, None, ""
        try:
            result = svc.analyse(file, explain=bool(explain))
        except OsteoEdgeError as exc:
            return _message(str(exc)), None, None, ""
        except Exception as exc:  # the app must survive anything; the trace goes to the server log
            log.exception("unexpected error while analysing %s", file)
            return _message(f"unexpected error ({type(exc).__name__}); details are in the server log."), None, None, ""
        probs = dict(result.prediction.probabilities) if result.ok else None
        view_path = str(svc.view_file(result.view)) if result.view is not None else None
        return status_markdown(result, thresholds), probs, view_path, timing_markdown(result)

    return predict


def _batch_handler(gr: Any, svc: DemoService) -> Callable[..., tuple[str, Any, Any]]:
    """The "Batch" event: summary, results table, CSV path."""

    def run_batch(files: list[str] | None, folder: list[str] | None, progress: Any = gr.Progress()) -> tuple[str, Any, Any]:
        sources = [*(files or []), *folder_images(folder or [])]
        if not sources:
            return "Add radiographs (several files or a folder) first.", None, None

        def tick(label: str, done: int = 0, total: int | None = None, **info: Any) -> None:  # core.progress.Progress
            progress((done, total), desc=label, unit="images")

        try:
            preds, csv_path = svc.batch(sources, progress=tick)
        except OsteoEdgeError as exc:
            return _message(str(exc)), None, None
        except Exception as exc:
            log.exception("unexpected error in a batch of %d inputs", len(sources))
            return _message(f"unexpected error ({type(exc).__name__}); details are in the server log."), None, None
        headers, rows = svc.table(preds)
        counts = {s: sum(1 for p in preds if p.status == s) for s in ("ok", "refer", "rejected")}
        summary = (
            f"**{len(preds)} images**: {counts['ok']} ok, {counts['refer']} refer for DEXA, {counts['rejected']} rejected. "
            f"{DISCLAIMER}"
        )
        return summary, gr.update(value=rows, headers=headers), str(csv_path)

    return run_batch


def _single_tab(gr: Any, labels: Sequence[str], predict: Callable[..., Any], no_latex: list[dict[str, Any]]) -> None:
    with gr.Tab("One image", id="single"):
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(
                    label="Knee radiograph (JPEG, PNG, TIFF or DICOM)",
                    file_count="single",
                    type="filepath",
                    elem_id="single-file",
                )
                explain = gr.Checkbox(value=True, label="Explain (occlusion heat map, computed by the same runtime)")
                gr.Markdown(
                    f"When several people use the demo, {CONCURRENCY} images are analysed at a time; the others are "
                    "queued (busy: the result area shows your place in the queue).",
                    elem_classes=["oe-disclaimer"], latex_delimiters=no_latex,
                )
                examples = [[str(examples_dir() / e.file)] for e in EXAMPLES if (examples_dir() / e.file).is_file()]
                if examples:
                    gr.Examples(
                        examples=examples,
                        inputs=[file],
                        label="Examples (synthetic drawings, not patients)",
                        example_labels=[e.title for e in EXAMPLES if (examples_dir() / e.file).is_file()],
                        cache_examples=False,
                    )
            with gr.Column(scale=1):
                status = gr.Markdown("Upload a knee radiograph or click an example.", elem_id="status", latex_delimiters=no_latex)
                probs = gr.Label(num_top_classes=len(labels), label="Calibrated probabilities", elem_id="probs")
                view = gr.Image(
                    label="What the model sees (input view) with the occlusion heat map",
                    type="filepath",
                    interactive=False,
                    elem_id="heatmap",
                    buttons=["download", "fullscreen"],
                    format="png",
                )
                timing = gr.Markdown("", elem_id="timing", latex_delimiters=no_latex)
        outputs = [status, probs, view, timing]
        work = {"concurrency_limit": CONCURRENCY, "concurrency_id": WORK}
        file.change(predict, inputs=[file, explain], outputs=outputs, api_name="predict", **work)
        explain.change(predict, inputs=[file, explain], outputs=outputs, api_visibility="private", **work)


def _batch_tab(gr: Any, labels: Sequence[str], run_batch: Callable[..., Any], no_latex: list[dict[str, Any]]) -> None:
    with gr.Tab("Batch", id="batch"):
        gr.Markdown(
            "Several radiographs or a whole folder at once: a results table and a CSV to download.",
            latex_delimiters=no_latex,
        )
        with gr.Row():
            files = gr.File(label="Radiographs", file_count="multiple", type="filepath", elem_id="batch-files")
            folder = gr.File(label="... or a folder", file_count="directory", type="filepath", elem_id="batch-folder")
        run = gr.Button("Analyse all", variant="primary", elem_id="batch-run")
        summary = gr.Markdown("", elem_id="batch-summary", latex_delimiters=no_latex)
        table = gr.Dataframe(
            headers=["file", "status", "label", *[f"P({lab})" for lab in labels], "P(low BMD)", "latency ms", "message"],
            interactive=False,
            wrap=True,
            elem_id="batch-table",
            latex_delimiters=no_latex,
        )
        csv_out = gr.File(label="Results (CSV)", interactive=False, elem_id="batch-csv")
        run.click(run_batch, inputs=[files, folder], outputs=[summary, table, csv_out], api_name="batch",
                  concurrency_limit=CONCURRENCY, concurrency_id=WORK)


def launch_app(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, block: bool = True, quiet: bool = False,
               warn: bool = True, allowed_hosts: Sequence[str] = ()) -> str:
    """Serve a built app on ``host:port`` (offline settings); returns the local URL.

    It answers only requests addressed to ``host:port`` (or loopback names, ``allowed_hosts``) from
    its own page (:class:`.guard.LocalOnlyGuard`). ``block=True`` serves until Ctrl+C or SIGTERM,
    then stops and deletes the process's workspace; ``block=False`` returns once the server answers
    (tests, benchmarks); close it with ``app.close()``. ``warn=False``: the caller has already
    shown :func:`host_warning`.
    """
    from starlette.middleware import Middleware

    from .guard import LocalOnlyGuard

    gr = import_gradio()
    warning = host_warning(host) if warn else None
    if warning:
        log.warning(warning)
    guard = Middleware(LocalOnlyGuard, host=host, port=port, extra_hosts=tuple(allowed_hosts))
    stopper = _Stopper() if block else None  # signals caught before the server can answer
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            quiet=quiet,
            show_error=False,
            theme=gr.themes.Default(),
            css=CSS,
            allowed_paths=[str(examples_dir())],
            max_file_size=MAX_FILE_BYTES,
            footer_links=["api", "settings"],
            run_history=False,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            enable_monitoring=False,
            app_kwargs={"middleware": [guard]},
        )
        url = str(app.local_url)
        from .workspace import active_workspace

        active_workspace().tighten()  # example files gradio copied into its cache at build time
        if stopper is not None:
            stopper.wait(app)
    finally:
        if stopper is not None:
            stopper.finish(app)
    return url


class _Stopper:
    """Serve until Ctrl+C (SIGINT) or SIGTERM, then stop the server and delete the process's
    workspace (uploads, heat maps, CSVs). New files of this process are owner-only (umask 077)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.old_mask = os.umask(0o077)
        self.handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.handlers[sig] = signal.signal(sig, lambda signum, frame: self.stop.set())

    def wait(self, app: Any) -> None:
        while not self.stop.wait(0.25) and getattr(app, "is_running", True):
            pass

    def finish(self, app: Any) -> None:
        from .workspace import close_active

        try:
            app.close(verbose=False)
        except Exception:  # a launch that failed (port taken) has nothing to close; keep its error
            log.debug("closing the app failed", exc_info=True)
        finally:
            close_active()
            for sig, old in self.handlers.items():
                signal.signal(sig, old)
            os.umask(self.old_mask)


def serve(model: str | os.PathLike | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, threads: int | None = None, *, block: bool = True) -> tuple[Any, str]:
    """Load a bundle (``None`` = the shipped default), build the app and serve it; returns (app, url)."""
    from ..edge_runtime import EdgeClassifier

    classifier = EdgeClassifier.load(model, threads=threads)
    app = build_app(classifier)
    url = launch_app(app, host, port, block=block)
    return app, url
