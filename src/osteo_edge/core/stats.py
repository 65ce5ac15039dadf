"""The metrics core shared by every stage: softmax, AUROC, bootstrap resampling and intervals.

numpy + stdlib only (no scipy, no sklearn, no torch), so the edge runtime can use it too.

- :func:`softmax`: calibrated probabilities ``softmax(logits / T)``.
- :func:`auroc`: the binary ROC AUC (Mann-Whitney U with tied ranks averaged; equals
  ``sklearn.metrics.roc_auc_score``), NaN when one side is empty.
- :func:`resample_indices` / :func:`percentile_interval`: the percentile bootstrap (rows or
  duplicate groups resampled with replacement; 95% interval; NaN with fewer than 20 valid draws).
- :class:`Estimate`: a value with its interval. Written as ``{"value": v, "ci95": [low, high]}``
  (plus ``n`` / ``valid_resamples`` when known); :meth:`Estimate.from_dict` also reads the legacy
  ``{"value", "ci_low", "ci_high"}`` shape of older files. :func:`fmt_ci` is the one text form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

CI_LEVEL = 0.95
MIN_VALID_RESAMPLES = 20
NAN = float("nan")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64 (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default; nan, nan when n == 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (``scipy.stats.rankdata(method="average")``)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]])) if len(xs) else np.zeros(0, int)
    ends = np.concatenate([starts[1:], [len(xs)]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(xs), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the truth ``positive`` (bool or 0/1); NaN if either class is absent."""
    pos = np.asarray(positive).astype(bool)
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return NAN
    r = average_ranks(np.asarray(score, dtype=np.float64))
    return float((r[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


# ------------------------------------------------------------------------------------------------
# bootstrap


def resample_indices(n: int, n_boot: int, seed: int = 0, groups: Sequence[Any] | None = None) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap index arrays over ``n`` rows; with ``groups``, whole groups are resampled
    (cluster bootstrap: copies of one radiograph or one patient never count as independent)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot if n else 0):
            yield rng.integers(0, n, n)
        return
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == j) for j in range(len(uniq))]
    for _ in range(n_boot if len(uniq) else 0):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        yield np.concatenate([members[j] for j in pick])


def percentile_interval(samples: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float, int]:
    """``(low, high, valid draws)``: the percentile interval of the non-NaN draws (NaN if < 20 are valid)."""
    arr = np.asarray(samples, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if len(arr) < MIN_VALID_RESAMPLES:
        return NAN, NAN, int(len(arr))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(arr, [alpha, 1.0 - alpha])
    return float(lo), float(hi), int(len(arr))


def bootstrap(
    point: Mapping[str, float],
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    n_boot: int,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> dict[str, "Estimate"]:
    """An :class:`Estimate` per key of ``point``; ``statistic(idx)`` recomputes the metrics on resampled rows."""
    draws: dict[str, list[float]] = {k: [] for k in point}
    for idx in resample_indices(n, n_boot, seed, groups):
        m = statistic(idx)
        for k in draws:
            draws[k].append(m.get(k, NAN))
    out = {}
    for k, v in point.items():
        lo, hi, valid = percentile_interval(draws[k])
        out[k] = Estimate(float(v), lo, hi, n=int(n), valid_resamples=valid)
    return out


# ------------------------------------------------------------------------------------------------
# a value with its interval


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _num(v: Any) -> float:
    try:
        return NAN if v is None else float(v)
    except (TypeError, ValueError):
        return NAN


_VALUE_KEYS = ("value", "point", "estimate", "mean", "score")
_PAIR_KEYS = ("ci95", "ci", "ci_95", "interval")
_LOW_KEYS = ("ci_low", "ci_lo", "lower", "lo", "low")
_HIGH_KEYS = ("ci_high", "ci_hi", "upper", "hi", "high")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% interval (NaN bounds: no interval)."""

    value: float
    low: float = NAN
    high: float = NAN
    n: int | None = None
    valid_resamples: int | None = None

    @property
    def ci95(self) -> list[float]:
        return [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        """``{"value": v, "ci95": [low, high]}`` (+ ``n``, ``valid_resamples`` when known)."""
        d: dict[str, Any] = {"value": self.value, "ci95": [self.low, self.high]}
        if self.n is not None:
            d["n"] = self.n
        if self.valid_resamples is not None:
            d["valid_resamples"] = self.valid_resamples
        return d

    def to_row(self) -> dict[str, Any]:
        """Flat columns for a CSV row: value, ci_low, ci_high (+ n, valid_resamples)."""
        d: dict[str, Any] = {"value": self.value, "ci_low": self.low, "ci_high": self.high}
        if self.n is not None:
            d["n"] = self.n
        if self.valid_resamples is not None:
            d["valid_resamples"] = self.valid_resamples
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Estimate | None":
        """An Estimate from a number, ``{"value", "ci95": [lo, hi]}`` or the legacy ``{"value", "ci_low", "ci_high"}``
        (also ``point``/``lo``/``hi`` spellings); ``None`` when ``d`` holds no numeric value."""
        if isinstance(d, Estimate):
            return d
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            return cls(float(d))
        if not isinstance(d, Mapping):
            return None
        key = next((k for k in _VALUE_KEYS if _is_number(d.get(k))), None)
        if key is None:
            return None
        lo = next((d[k] for k in _LOW_KEYS if k in d), None)
        hi = next((d[k] for k in _HIGH_KEYS if k in d), None)
        for k in _PAIR_KEYS:
            pair = d.get(k)
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                lo, hi = pair
                break
        n = d.get("n")
        valid = d.get("valid_resamples")
        return cls(_num(d[key]), _num(lo), _num(hi), n=n if isinstance(n, int) else None,
                   valid_resamples=valid if isinstance(valid, int) else None)

    def fmt(self, digits: int = 3, style: str = "brackets") -> str:
        return fmt_ci(self, digits, style)


def fmt_ci(entry: Any, digits: int = 3, style: str = "brackets") -> str:
    """The one text form of an estimate: ``0.812 [0.701, 0.905]``, ``0.812`` without an interval, ``n/a``
    without a value. ``style="words"``: ``0.812 (95% CI 0.701 to 0.905)``. Reads every stored shape."""
    e = Estimate.from_dict(entry) if entry is not None else None
    if e is None or math.isnan(e.value):
        return "n/a"
    text = f"{e.value:.{digits}f}"
    if math.isnan(e.low) or math.isnan(e.high):
        return text
    if style == "words":
        return f"{text} (95% CI {e.low:.{digits}f} to {e.high:.{digits}f})"
    return f"{text} [{e.low:.{digits}f}, {e.high:.{digits}f}]"
