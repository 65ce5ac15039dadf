"""The ``osteo-edge`` command line: thin Typer commands over the library.

Each command module exposes ``register(app)``. Heavy imports (torch, tensorflow, gradio) happen
inside the commands, so ``osteo-edge --help`` is fast and works with only the runtime installed.
A library :class:`~osteo_edge.errors.OsteoEdgeError` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from ..errors import OsteoEdgeError
from ._common import setup_logging, tidy_help
from ._output import error

# One module per command (group), registered in this order in --help.
COMMAND_MODULES = ("data", "train", "evaluate", "compare", "quantize", "prune", "export", "parity", "gate", "predict", "screen", "bench", "demo", "bundle", "release", "tabular", "serve", "record", "site", "locator")

app = typer.Typer(
    name="osteo-edge",
    help=(
        "Knee X-ray osteoporosis screening toolkit: data audit and leakage-safe splits, training, "
        "compression, export and a torch-free edge runtime. A screening aid, never a diagnosis: "
        "uncertain cases say 'refer for DEXA'."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _OwnRecordsOnly(logging.Filter):
    """Without --verbose only osteo_edge's own log records reach stderr. A third-party library's stay
    behind --verbose: pydicom, for one, logs a traceback at ERROR for every decoder that fails on a
    frame, beside the one-line answer that the runtime already gives for that file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "osteo_edge" or record.name.startswith("osteo_edge.")


_OWN_RECORDS_ONLY = _OwnRecordsOnly()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging and the logs of TensorFlow, LiteRT, NNCF, gradio and pydicom (hidden otherwise)."),
) -> None:
    setup_logging(verbose)
    for handler in logging.getLogger().handlers:  # configured here, when the CLI runs; never at import
        (handler.removeFilter if verbose else handler.addFilter)(_OWN_RECORDS_ONLY)


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a command module not written yet
        if _exc.name != f"{__name__}.{_name}":
            raise
        continue
    _mod.register(app)
tidy_help(app)


def main() -> None:
    """Console-script entry point. Commands already turn library errors into one line (see
    ``_common.handle_errors``); this is the last guard for anything raised outside a command."""
    try:
        app()
    except OsteoEdgeError as exc:
        error(str(exc))
        sys.exit(1)
