"""Subgroup metrics of an evaluation (``evaluate --metadata CSV --key COLUMN --subgroups age,sex``):
the metadata table joined on file stems, each subgroup column mapped to names (age bands from
``core.age_bands``, tertiles for other numbers, else the value), and bootstrap metrics per name.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.age_bands import age_band
from ..core.classification import bootstrap_ci
from ..errors import ConfigError, DataError

SUBGROUP_ALIASES = {"sex": ("gender", "sex"), "age": ("age",), "bmi": ("bmi",)}


def _norm_col(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


def read_metadata(path: str | os.PathLike, key: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Rows of a metadata CSV keyed by ``key`` (matched to image file stems, case-insensitive)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such metadata file")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = list(reader.fieldnames or [])
        match = [c for c in cols if _norm_col(c) == _norm_col(key)]
        if not match:
            raise ConfigError(f"--key {key!r} is not a column of {path.name}; columns: {', '.join(c.strip() for c in cols)}")
        table = {}
        for row in reader:
            k = (row.get(match[0]) or "").strip().lower()
            if k:
                table[k] = row
    return table, cols


def _resolve_column(name: str, cols: Sequence[str]) -> str:
    want = _norm_col(name)
    for cand in (want, *SUBGROUP_ALIASES.get(want, ())):
        for c in cols:
            if _norm_col(c) == cand:
                return c
    for cand in (want, *SUBGROUP_ALIASES.get(want, ())):
        hits = [c for c in cols if _norm_col(c).startswith(cand)]
        if len(hits) == 1:
            return hits[0]
    raise ConfigError(f"subgroup {name!r} matches no metadata column; columns: {', '.join(c.strip() for c in cols)}")


def subgroup_names(column: str, values: list[str]) -> dict[str, str]:
    """Map raw values to subgroup names: age bands, tertiles for other numbers, else the value."""
    nums = {}
    for v in values:
        try:
            nums[v] = float(v)
        except (TypeError, ValueError):
            pass
    filled = [v for v in values if v.strip()]
    mostly_numeric = bool(nums) and sum(v in nums for v in filled) >= 0.8 * len(filled)
    if mostly_numeric and _norm_col(column).startswith("age"):
        return {v: age_band(nums[v], unknown="missing") if v in nums else "missing" for v in values}
    if not (mostly_numeric and len(set(nums.values())) > 6):
        return {v: (v.strip().lower() or "missing") for v in values}
    q1, q2 = np.percentile(list(nums.values()), [100 / 3, 200 / 3])
    name = _norm_col(column)

    def tertile(x: float) -> str:
        return f"{name} <= {q1:.3g}" if x <= q1 else f"{name} {q1:.3g}-{q2:.3g}" if x <= q2 else f"{name} > {q2:.3g}"

    return {v: tertile(nums[v]) if v in nums else "missing" for v in values}


def subgroup_metrics(
    rows: Sequence[Any], y: np.ndarray, probs: np.ndarray, labels: Sequence[str], metadata: str | os.PathLike,
    key: str, subgroups: Sequence[str], low_bmd_threshold: float | None, n_boot: int, seed: int,
) -> dict[str, Any]:
    table, cols = read_metadata(metadata, key)
    stems = [Path(r.path).stem.strip().lower() for r in rows]
    matched = np.array([s in table for s in stems])
    out: dict[str, Any] = {"metadata": str(metadata), "key": key, "matched": int(matched.sum()), "unmatched": int((~matched).sum()), "by": {}}
    groups = np.array([r.group for r in rows])
    for sg in subgroups:
        col = _resolve_column(sg, cols)
        raw = [(table[s].get(col) or "") if m else "" for s, m in zip(stems, matched)]
        mapping = subgroup_names(col, [v for v, m in zip(raw, matched) if m])
        names = np.array([mapping.get(v, "missing") if m else "unmatched" for v, m in zip(raw, matched)])
        res = {}
        for name in sorted(set(names.tolist())):
            if name == "unmatched":
                continue
            m = names == name
            ci = bootstrap_ci(y[m], probs[m], labels, groups[m], low_bmd_threshold, n_boot=n_boot, seed=seed)
            res[name] = {"n": int(m.sum()), "labels": label_counts(y[m], labels), **ci}
        out["by"][sg] = {"column": col.strip(), "groups": res}
    return out


def label_counts(y: np.ndarray, labels: Sequence[str]) -> dict[str, int]:
    """How many rows of each label ``y`` holds (labels with none left out)."""
    c = Counter(int(i) for i in y)
    return {lab: c[i] for i, lab in enumerate(labels) if c[i]}
