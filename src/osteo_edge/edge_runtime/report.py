"""Writing predictions out (CSV), torch-free."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ..artifact import atomic_write_text
from ..core.csvsafe import csv_text
from .classifier import Prediction


def predictions_csv(preds: Iterable[Prediction], labels: Sequence[str], path: str | os.PathLike) -> Path:
    """One row per input: path, status, label, p_<label>..., low_bmd_probability, reason, message, latency_ms.

    Text cells a spreadsheet would run as a formula (a file named ``=cmd.jpg``) are neutralised
    (:mod:`osteo_edge.core.csvsafe`)."""
    header = ["path", "status", "label", *[f"p_{lab}" for lab in labels], "low_bmd_probability", "reason", "message", "latency_ms"]
    rows = (
        [
            p.path, p.status, p.label or "",
            *[f"{p.probabilities[lab]:.6f}" if lab in p.probabilities else "" for lab in labels],
            "" if p.low_bmd_probability is None else f"{p.low_bmd_probability:.6f}",
            p.reason or "", p.message, "" if p.latency_ms is None else f"{p.latency_ms:.3f}",
        ]
        for p in preds
    )
    return atomic_write_text(path, csv_text(header, rows))
