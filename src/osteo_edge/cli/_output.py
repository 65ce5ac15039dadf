"""The CLI's one output layer: tables, key-value summaries, lines and the next command.

Output fits where it lands:

- a terminal wide enough for the table: a full rich table (only columns marked ``wrap`` wrap, and
  only between words);
- a narrower terminal: the same table as one block per row (``column: value`` lines);
- not a terminal (a pipe, a file, a CI log): plain lines, columns aligned with spaces, never wrapped.

Nothing here wraps inside a word: a path or a header is always on one line (a terminal may still
fold a line longer than itself, but no newline is ever inserted into it). Text is printed
literally (no rich markup), so ``[default: ...]``, ``[0.61, 0.88]`` or a path with brackets shows
as typed. Consoles are made per call, so ``COLUMNS``, ``NO_COLOR`` and ``TTY_COMPATIBLE`` are read
when the command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from rich.console import Console

STATUS_STYLES = {"ok": "green", "refer": "yellow", "rejected": "red", "failed": "red", "skipped": "yellow",
                 "PASS": "green", "FAIL": "red"}


def console(stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr), reading the environment now."""
    return Console(stderr=stderr, highlight=False)


@dataclass(frozen=True)
class Col:
    """A table column: ``wrap`` columns (free text) may wrap between words on a wide terminal."""

    name: str
    right: bool = False
    wrap: bool = False


def _cols(columns: Sequence[Col | str]) -> list[Col]:
    return [c if isinstance(c, Col) else Col(c) for c in columns]


def _text(v: Any) -> str:
    return "-" if v is None else " ".join(str(v).split("\n"))


def _natural_width(cols: list[Col], rows: list[list[str]]) -> int:
    """Width of a rich table where no cell breaks inside a word (wrap columns at their longest word)."""
    total = 1 + 3 * len(cols)
    for i, c in enumerate(cols):
        cells = [r[i] for r in rows]
        if c.wrap:
            words = [w for cell in cells for w in cell.split()] + c.name.split()
            total += max([len(w) for w in words] + [12])
        else:
            total += max([len(c.name)] + [len(x) for x in cells])
    return total


def table(title: str | None, columns: Sequence[Col | str], rows: Iterable[Sequence[Any]], caption: str | None = None,
          stderr: bool = False) -> None:
    """Print a table in the layout that fits (see the module docstring)."""
    con = console(stderr)
    cols = _cols(columns)
    body = [[_text(v) for v in r] for r in rows]
    if not con.is_terminal:
        _plain_table(con, title, cols, body)
    elif _natural_width(cols, body) <= con.width:
        _rich_table(con, title, cols, body)
    else:
        _vertical_table(con, title, cols, body)
    if caption:
        line(caption, stderr=stderr, dim=True)


def _style(value: str) -> str:
    return STATUS_STYLES.get(value, "")


def _rich_table(con: Console, title: str | None, cols: list[Col], body: list[list[str]]) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title) if title else None)
    for c in cols:
        t.add_column(Text(c.name), justify="right" if c.right else "left", no_wrap=not c.wrap, overflow="fold" if c.wrap else "ellipsis",
                     min_width=len(c.name))
    for r in body:
        t.add_row(*(Text(v, style=_style(v)) for v in r))
    con.print(t)


def _vertical_table(con: Console, title: str | None, cols: list[Col], body: list[list[str]]) -> None:
    if title:
        con.print(title, style="bold", markup=False, soft_wrap=True)
    key_w = max(len(c.name) for c in cols[1:]) if len(cols) > 1 else 0
    for r in body:
        con.print(f"{cols[0].name}: {r[0]}", style="bold", markup=False, soft_wrap=True)
        for c, v in zip(cols[1:], r[1:]):
            con.print(f"  {c.name + ':':<{key_w + 1}} {v}", style=_style(v) or None, markup=False, soft_wrap=True)


def _plain_table(con: Console, title: str | None, cols: list[Col], body: list[list[str]]) -> None:
    widths = [max([len(c.name)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]

    def fmt(cells: Sequence[str]) -> str:
        out = [v.rjust(w) if c.right else v.ljust(w) for c, v, w in zip(cols, cells, widths)]
        return "  ".join(out).rstrip()

    if title:
        con.print(title, markup=False, soft_wrap=True)
    con.print(fmt([c.name for c in cols]), markup=False, soft_wrap=True)
    for r in body:
        con.print(fmt(r), markup=False, soft_wrap=True)


def summary(title: str | None, pairs: Iterable[tuple[str, Any]] | Mapping[str, Any], stderr: bool = False) -> None:
    """Key-value lines (``key: value``), keys aligned; values never wrapped."""
    items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
    con = console(stderr)
    if title:
        con.print(title, style="bold", markup=False, soft_wrap=True)
    w = max((len(k) for k, _ in items), default=0)
    for k, v in items:
        con.print(f"  {k + ':':<{w + 1}} {_text(v)}", markup=False, soft_wrap=True)


def line(text: str, stderr: bool = False, style: str | None = None, dim: bool = False) -> None:
    """One line as given (no markup), never wrapped by us."""
    console(stderr).print(text, style=style or ("dim" if dim else None), markup=False, soft_wrap=True)


def wrote(paths: Iterable[Any], stderr: bool = False) -> None:
    """``wrote A, B, C``: the files a command wrote, as the user would type them."""
    items = [str(p) for p in paths]
    if items:
        line("wrote " + ", ".join(items), stderr=stderr)


def next_step(command: str, why: str | None = None) -> None:
    """The command to run next (``next: ...``); ``why`` says when it fits, e.g. after a failed gate."""
    con = console()
    con.print(f"next: {command}", style="bold", markup=False, soft_wrap=True)
    if why:
        con.print(f"      ({why})", markup=False, soft_wrap=True)


def error(message: str) -> None:
    """``error: ...`` on stderr, one line."""
    con = console(stderr=True)
    con.print("error: " + message, style="red", markup=False, soft_wrap=True)


def mapping_text(d: Mapping[str, Any], fmt: str = "{}") -> str:
    """``a 1, b 2`` for a dict (never a Python repr in user output); floats through ``fmt``."""
    return ", ".join(f"{k.replace('_', ' ')} {fmt.format(v) if isinstance(v, float) else v}" for k, v in d.items())
