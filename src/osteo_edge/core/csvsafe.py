"""CSV cells a spreadsheet cannot run: the one helper every CSV writer of the product uses.

Clinics open result CSVs in a spreadsheet, which treats a cell that begins with ``=``, ``+``, ``-``
or ``@`` (and, in some programs, a tab or carriage return) as a formula: a file named
``=HYPERLINK(...)cmd.jpg`` would run. :func:`safe_cell` prefixes such a text cell with a single quote
(the OWASP "CSV injection" advice), so the spreadsheet shows it as text. Numbers are data, not
formulas: a number, or a text cell that is a plain decimal number such as ``-0.5`` or ``+3e-2``, is
left as it is.

Standard library only (no pandas): :func:`safe_frame` works on any DataFrame-like object by duck
typing.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, Iterable, Sequence

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(row: Iterable[Any]) -> list[Any]:
    return [safe_cell(v) for v in row]


def csv_text(header: Sequence[Any], rows: Iterable[Iterable[Any]]) -> str:
    """A whole CSV document (``\\n`` line ends) with every cell passed through :func:`safe_cell`.

    A cell holding a carriage return or a line feed is quoted (the csv module quotes only the
    characters of its line terminator, so rows are written with ``\\r\\n`` and end in ``\\n``)."""
    out = []
    for row in [header, *rows]:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerow(safe_row(row))
        out.append(buf.getvalue()[:-2] + "\n")
    return "".join(out)


def safe_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells (object/string columns) and column names are
    neutralised; numeric columns are untouched."""
    out = frame.copy()
    for col in out.columns:
        if getattr(out[col].dtype, "kind", "O") in "OSU" or str(out[col].dtype).startswith("string"):
            out[col] = out[col].map(safe_cell)
    out.columns = [safe_cell(c) for c in out.columns]
    return out


def utf8_text(value: Any) -> Any:
    """A file name that is not UTF-8 (an old share's Latin-1 names arrive as surrogate escapes) as
    text a record, a CSV and a console can hold: its undecodable bytes become U+FFFD. Anything else
    as it is."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
