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
