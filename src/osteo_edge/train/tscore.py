"""The T-score as an auxiliary training target (issue 17, lever 5).

Every Wani image stem is a patient id in ``wani_patient_details.csv`` (``Patient Id``, ``T-score Value``,
quantitative ultrasound). A radiograph's T-score applies to every file of its duplicate group (the
Kaggle copies of a Wani film are the same patient). The targets are standardised on the training rows;
rows without a T-score get NaN and add nothing to the auxiliary loss.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

ID_COLUMN, T_COLUMN = "Patient Id", "T-score Value"


def read_tscores(path: str | Path) -> dict[str, float]:
    """Patient id -> T-score from the clinical table (one-line ConfigError when it is not that table)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {ID_COLUMN, T_COLUMN} <= set(reader.fieldnames or ()):
                raise ConfigError(f"{path}: needs the columns {ID_COLUMN!r} and {T_COLUMN!r} (wani_patient_details.csv)")
            out = {}
            for r in reader:
                try:
                    out[r[ID_COLUMN].strip()] = float(r[T_COLUMN])
                except (TypeError, ValueError):
                    continue
            return out
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the T-score table ({exc.strerror or exc})") from exc


def tscore_targets(rows: Sequence[Any], table: dict[str, float]) -> tuple[np.ndarray, dict[str, float]]:
    """Standardised T-score per row (NaN without one), and {mean, sd, n_rows, n_groups} of the raw values."""
    by_group: dict[Any, float] = {}
    for r in rows:
        t = table.get(Path(r.path).stem)
        if t is not None and "wani" in str(r.source):
            by_group[r.group] = t
    raw = np.array([by_group.get(r.group, np.nan) for r in rows], dtype=np.float64)
    known = raw[~np.isnan(raw)]
    if known.size < 10:
        raise ConfigError(f"--tscore-aux needs T-scores for at least 10 training radiographs, found {known.size}")
    mean, sd = float(known.mean()), float(known.std() or 1.0)
    return ((raw - mean) / sd).astype(np.float32), {"mean": mean, "sd": sd, "n_rows": int(known.size), "n_groups": len(by_group)}
