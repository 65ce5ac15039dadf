"""Shared helpers for the thin CLI modules: error handling, consoles, help tidying, quiet native logs.

Rendering (tables, summaries, next steps) lives in :mod:`._output`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
import sys
import textwrap
from enum import Enum
from typing import Any, Callable, Iterable, Iterator, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..core.progress import progress_enabled  # noqa: F401 (re-exported for the command modules)
from ..errors import OsteoEdgeError
from . import _output
from ._output import next_step  # noqa: F401 (re-exported for the command modules)

F = TypeVar("F", bound=Callable[..., Any])

# Loggers of the libraries this CLI drives; their chatter is for --verbose only.
THIRD_PARTY_LOGGERS = ("tensorflow", "absl", "onnx2tf", "onnxruntime", "onnx", "nncf", "torch", "timm", "gradio",
                       "httpx", "httpcore", "uvicorn", "pydicom", "pynetdicom", "highdicom", "PIL", "matplotlib", "h5py",
                       "py.warnings", "urllib3")


_RESETS_ITS_LEVEL = ("pydicom", "pynetdicom", "highdicom")


class _LazyConsole:
    """A rich console made when used, so COLUMNS / NO_COLOR / the current stdout are read per command."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(_output.console(self._stderr), name)


console: Any = _LazyConsole(stderr=False)
err_console: Any = _LazyConsole(stderr=True)


class _CurrentStderr(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is now (CliRunner and :func:`quiet_native` swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    """Our warnings on stderr; third-party logs (TensorFlow, LiteRT, gradio, pydicom...) only with --verbose.

    Called by the CLI entry, never at import of the library. Native (C++) logs: TF_CPP_MIN_LOG_LEVEL
    and, around the conversion and interpreter start, file descriptor 2 (see :func:`quiet_native`).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        handlers=[_CurrentStderr()], force=True)
    logging.captureWarnings(not verbose)
    for name in THIRD_PARTY_LOGGERS:
        lib = logging.getLogger(name)
        lib.setLevel(logging.DEBUG if verbose else logging.ERROR)
        if name in _RESETS_ITS_LEVEL:  # pydicom sets its own level when imported: cut the path to stderr instead
            lib.propagate = verbose
            if not lib.handlers:
                lib.addHandler(logging.NullHandler())  # else logging's last-resort handler prints to stderr
    if verbose:
        os.environ["OSTEO_EDGE_NATIVE_LOGS"] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def verbose() -> bool:
    return os.environ.get("OSTEO_EDGE_NATIVE_LOGS") == "1"


def quiet_third_party() -> None:
    """Re-apply the --verbose policy after a heavy import: some libraries set their own logger's level
    when imported (NNCF sets ``nncf`` to INFO with a handler of its own on stdout)."""
    if not verbose():
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Native stderr (TensorFlow's absl lines, the CUDA probe, the TFLite converter) to /dev/null for
    the block unless --verbose. Our own progress bar keeps the real terminal (it gets a copy of it)."""
    from ..native import native_stderr_quiet

    keep = _stderr_copy()  # our own warnings (Python's sys.stderr) stay on the real stderr
    old = sys.stderr
    with native_stderr_quiet():
        if keep is not None:
            sys.stderr = keep
        try:
            yield
        finally:
            sys.stderr = old
            if keep is not None:
                keep.close()


def _stderr_copy() -> Any:
    """A text stream on a copy of file descriptor 2 when ``sys.stderr`` is fd 2 (else None)."""
    try:
        if sys.stderr.fileno() == 2:
            sys.stderr.flush()
            return os.fdopen(os.dup(2), "w", buffering=1)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both; CliRunner's stderr has no fd
        pass
    return None


def progress_console() -> Any:
    """A console on a copy of the real stderr, for a progress bar drawn inside :func:`quiet_native`."""
    from rich.console import Console

    copy = _stderr_copy()
    return Console(file=copy, highlight=False) if copy is not None else Console(stderr=True, highlight=False)


def handle_errors(fn: F) -> F:
    """Turn a library OsteoEdgeError into one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OsteoEdgeError as exc:
            _output.error(str(exc))
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def choices(name: str, names: Iterable[str]) -> Any:
    """A ``str`` enum of ``names`` (in table order) for a Typer option: the CLI's choices come from
    the library's table, never retyped here."""
    return Enum(name, {n: n for n in names}, type=str)


# -- help: a type word only where it helps ---------------------------------------------------------


def _tidy_param(p: Any, ctx: Any) -> None:
    show = getattr(p, "display_type", None)
    if show is None or getattr(p, "_tidied", False):
        return
    if isinstance(p, TyperOption) and p.is_flag:
        label = ""  # a flag takes no value: no <bool>
    else:
        label = show(ctx)
        if label.startswith("<list[") and label.endswith("]>"):  # repeatable: "<path>", the help says repeatable
            label = "<" + label[len("<list["):-2].lower() + ">"
        if isinstance(p, TyperArgument) and p.nargs != 1:
            label += "..."
    p.display_type_rich = lambda ctx, _l=label: _l  # type: ignore[method-assign]
    p._tidied = True  # type: ignore[attr-defined]


def reflow(text: str | None) -> str | None:
    """Join the hard line breaks inside each paragraph of a docstring (paragraphs: blank lines; a
    paragraph that starts with ``\\b`` is kept as written), so help wraps to the terminal, not to the
    source file's line length."""
    if not text:
        return text
    paras = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(ln.strip() for ln in p.splitlines()) for p in paras)


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    """Wrap between words only: never inside a word, a hyphenated word or a path."""
    lines: list[str] = []
    for i, para in enumerate(text.split("\n\n")):
        if i:
            lines.append("")
        if para.startswith("\b"):
            lines += [indent + ln for ln in para.strip("\b\n").splitlines()]
            continue
        lines += textwrap.wrap(" ".join(para.split()), width, initial_indent=indent, subsequent_indent=indent,
                               break_long_words=False, break_on_hyphens=False) or [indent]
    return lines


_SHOWN_DEFAULT = re.compile(r"\[default: \((.*)\)\]$")


class PlainHelpFormatter(TyperCommand.context_class.formatter_class):  # type: ignore[name-defined,misc]
    """click's plain help layout, wrapping between words only (click's own breaks at hyphens, so
    ``warm-up`` or ``[default: torch-reference]`` could be split across lines)."""

    def write_text(self, text: str) -> None:
        self.write("\n".join(_wrap(text, self.width, " " * self.current_indent)) + "\n")

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = [(a, _SHOWN_DEFAULT.sub(r"[default: \1]", b)) for a, b in rows]
        first_col = min(max((len(a) for a, _ in rows), default=0), col_max) + col_spacing
        pad = " " * (first_col + self.current_indent)
        for first, second in rows:
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            lines = _wrap(second, max(self.width - first_col - self.current_indent, 30))
            self.write(" " * (first_col - len(first)) if len(first) <= first_col - col_spacing else "\n" + pad)
            self.write(lines[0] + "\n" + "".join(pad + ln + "\n" if ln else "\n" for ln in lines[1:]))


RICH_HELP_MIN_WIDTH = 100  # below this, rich's option table squeezes its columns (cells cut, words split)


def _rich_layout(stderr: bool = False) -> bool:
    """Rich panels for help and usage errors: only on a terminal at least RICH_HELP_MIN_WIDTH wide."""
    con = _output.console(stderr)
    return bool(con.is_terminal and con.width >= RICH_HELP_MIN_WIDTH)


USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")  # typer's (vendored) click


def usage_error(message: str) -> Exception:
    """A usage error: ``Error: message`` on stderr, exit code 2 (raise it from a command)."""
    return USAGE_ERROR(message)


class _PlainContext(TyperCommand.context_class):  # type: ignore[name-defined,misc]  # typer's own click
    formatter_class = PlainHelpFormatter


class _Tidy:
    context_class = _PlainContext

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.help = reflow(self.help)  # type: ignore[has-type]

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            _tidy_param(p, ctx)
        return params

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Rich panels on a wide terminal; in a pipe, a file, a log or a terminal narrower than
        :data:`RICH_HELP_MIN_WIDTH`, click's plain layout (like pip's): nothing cut with an ellipsis, no
        choice list split inside a word, text wrapped between words."""
        if _rich_layout():
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        mode = self.rich_markup_mode  # type: ignore[attr-defined]
        self.rich_markup_mode = None  # type: ignore[attr-defined]
        try:
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            self.rich_markup_mode = mode  # type: ignore[attr-defined]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Report every missing required option in one message, not one per try (click stops at the first)."""
        given = list(args)  # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except typer.BadParameter as exc:
            if type(exc).__name__ != "MissingParameter":
                raise
            missing = self._missing(ctx, given)
            if len(missing) < 2:
                raise
            hints = [p.get_error_hint(ctx) for p in missing]
            kind = "options" if all(isinstance(p, TyperOption) for p in missing) else "parameters"
            raise type(exc)(ctx=ctx, param_hint=", ".join(hints[:-1]) + " and " + hints[-1], param_type=kind) from None

    def _missing(self, ctx: Any, given: list[str]) -> list[Any]:
        try:
            opts, _, _ = self.make_parser(ctx).parse_args(args=given)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - another usage error: click reports it as usual
            return []
        return [p for p in self.get_params(ctx) if p.required and p.expose_value and opts.get(p.name) in (None, (), [])
                and p.resolve_envvar_value(ctx) is None]

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[misc]
        except typer.BadParameter as exc:  # the validation library's "Value error, " prefix is not for users
            if isinstance(exc.message, str):
                exc.message = exc.message.replace("Value error, ", "")
            raise


class TidyCommand(_Tidy, TyperCommand):
    """A Typer command whose help shows no ``<bool>`` and plain ``<path>`` for repeatable options."""


class TidyGroup(_Tidy, TyperGroup):
    """The same for command groups (``osteo-edge``, ``data``, ``tabular``); in plain help each
    command's first paragraph is shown whole, wrapped, never cut with "..."."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Usage errors (exit 2) as click's plain ``Error: ...`` line, unwrapped, in a pipe or a
        narrow terminal; rich's boxed panel only on a wide terminal (as for help)."""
        if _rich_layout(stderr=True):
            return super().main(*args, **kwargs)
        mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            return super().main(*args, **kwargs)
        finally:
            self.rich_markup_mode = mode

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.short_help or (reflow(cmd.help) or "").split("\n\n")[0]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def tidy_help(app: typer.Typer) -> None:
    """Use :class:`TidyCommand` / :class:`TidyGroup` for every command of ``app`` (recursively)."""
    app.info.cls = TidyGroup
    for cmd in app.registered_commands:
        if cmd.cls in (None, TyperCommand):
            cmd.cls = TidyCommand
    for grp in app.registered_groups:
        if grp.typer_instance is not None:
            tidy_help(grp.typer_instance)
        grp.cls = TidyGroup


TRUSTED_KEY_HELP = (
    "Trusted publisher public key (PEM file, or a folder of *.pub; repeatable; also read from "
    "OSTEO_EDGE_TRUSTED_KEYS and from the clinic trust file written by 'site trust'). With any trusted key, "
    "unsigned bundles and bundles signed by other keys are refused."
)


def trust_store(paths: Any) -> Any:
    """The runtime's trust policy: ``--trusted-key`` paths plus ``OSTEO_EDGE_TRUSTED_KEYS``."""
    from ..artifact.signing import TrustStore

    return TrustStore.from_env(list(paths or []))
