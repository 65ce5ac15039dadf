"""Writing predictions out (CSV), torch-free."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..artifact import atomic_write_text
from .classifier import Prediction


def predictions_csv(preds: Iterable[Prediction], labels: Sequence[str], path: str | os.PathLike) -> Path:
    """One row per input: path, status, label, p_<label>..., low_bmd_probability, reason, message, latency_ms."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "status", "label", *[f"p_{lab}" for lab in labels], "low_bmd_probability", "reason", "message", "latency_ms"])
    for p in preds:
        w.writerow([
            p.path, p.status, p.label or "",
            *[f"{p.probabilities[lab]:.6f}" if lab in p.probabilities else "" for lab in labels],
            "" if p.low_bmd_probability is None else f"{p.low_bmd_probability:.6f}",
            p.reason or "", p.message, "" if p.latency_ms is None else f"{p.latency_ms:.3f}",
        ])
    return atomic_write_text(path, buf.getvalue())


# Spreadsheet formula injection: a cell a spreadsheet would read as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text: one starting with =, +, -, @, tab or CR gets a
    leading single quote. ``None`` is the empty cell. The one helper every CSV writer uses."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
