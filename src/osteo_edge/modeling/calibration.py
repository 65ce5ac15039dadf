"""Calibration shared by training, evaluation and compression: the temperature fit and the choice
of calibration images (export's int8 calibration and quantize's NNCF calibration pick the same way).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..core.stats import softmax


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood on these (validation) logits."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = softmax(logits, math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    # Never worse than no scaling on the data it was fitted on.
    return t if nll(res.x) <= nll(0.0) else 1.0


def pick_rows(rows: Sequence, n: int, seed: int = 0) -> list:
    """Up to ``n`` rows, one per duplicate group first, spread over labels, deterministic."""
    by_group: dict[int, object] = {}
    for r in sorted(rows, key=lambda r: r.path):
        by_group.setdefault(r.group, r)
    reps = list(by_group.values())
    rng = np.random.default_rng(seed)
    rng.shuffle(reps)
    # round-robin over labels so every class is represented
    by_label: dict[str, list] = {}
    for r in reps:
        by_label.setdefault(r.label, []).append(r)
    picked: list = []
    while len(picked) < n and any(by_label.values()):
        for lab in sorted(by_label):
            if by_label[lab] and len(picked) < n:
                picked.append(by_label[lab].pop())
    if len(picked) < n:  # fewer groups than asked: fill with the remaining duplicates
        rest = [r for r in rows if r not in picked]
        picked.extend(rest[: n - len(picked)])
    return picked
