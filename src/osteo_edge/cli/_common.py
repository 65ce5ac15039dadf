"""Shared helpers for the thin CLI modules: error handling, console, small renderers."""

from __future__ import annotations

import functools
from enum import Enum
from typing import Any, Callable, Iterable, TypeVar

import typer
from rich.console import Console

from ..core.progress import progress_enabled  # noqa: F401 (re-exported for the command modules)
from ..errors import OsteoEdgeError

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


def handle_errors(fn: F) -> F:
    """Turn a library OsteoEdgeError into one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OsteoEdgeError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def choices(name: str, names: Iterable[str]) -> Any:
    """A ``str`` enum of ``names`` (in table order) for a Typer option: the CLI's choices come from
    the library's table, never retyped here."""
    return Enum(name, {n: n for n in names}, type=str)


def next_step(text: str) -> None:
    console.print(f"[bold]next:[/bold] {text}", highlight=False, soft_wrap=True)


TRUSTED_KEY_HELP = (
    "Trusted publisher public key (PEM file, or a folder of *.pub; repeatable; also read from "
    "OSTEO_EDGE_TRUSTED_KEYS). With any trusted key, unsigned bundles and bundles signed by other keys are refused."
)


def trust_store(paths: Any) -> Any:
    """The runtime's trust policy: ``--trusted-key`` paths plus ``OSTEO_EDGE_TRUSTED_KEYS``."""
    from ..artifact.signing import TrustStore

    return TrustStore.from_env(list(paths or []))
