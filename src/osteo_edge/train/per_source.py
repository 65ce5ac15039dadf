"""Per-source evaluation that cannot be fooled by the source: per-source metrics beside the shortcut baselines.

Class and source are confounded in the public knee data (every Osteopenia knee comes from
``wani-mendeley``; the Kaggle sources hold only Normal and Osteoporosis). A model can therefore
score well pooled by recognising the scanner, the exposure or the aspect ratio. This module puts
each model number next to what the source alone achieves on the same rows:
:func:`per_source_report` gives pooled and per-source accuracy / macro-F1 / confusion, recall of
every (source, class) cell as ``k of n`` with a 95% interval, within-source AUROCs, two shortcut
baselines (per-source majority class; source-only class distribution) and a per-source verdict.

The source of a row is its duplicate group's source (:func:`osteo_edge.data.sources.group_source`,
the Wani rule). How well features predict the source: ``source_probe.py``; markdown of either
result: ``source_markdown.py``. numpy only at import time; scikit-learn inside the functions that
need it. No torch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..core.classification import bootstrap_ci, macro_f1
from ..core.stats import auroc as _auc
from ..core.stats import wilson_interval
from ..data.sources import WANI
from ..errors import ConfigError

NORMAL = "Normal"
OSTEOPENIA = "Osteopenia"
OSTEOPOROSIS = "Osteoporosis"


# ------------------------------------------------------------------------------------------------
# typed result


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    method: str  # "wilson" | "bootstrap-groups" | "wilson-groups"

    def contains(self, x: float) -> bool:
        return self.lo - 1e-12 <= x <= self.hi + 1e-12


@dataclass(frozen=True)
class CellRecall:
    """Recall of one (source, true class) cell: ``k`` of ``n`` correctly classified."""

    source: str
    label: str
    k: int
    n: int
    n_groups: int
    recall: float
    ci95: Interval


@dataclass(frozen=True)
class SourceMetrics:
    source: str
    n: int
    n_groups: int
    class_counts: dict[str, int]
    accuracy: float
    accuracy_ci95: Interval
    macro_f1: float  # over the classes present in this source
    confusion: tuple[tuple[int, ...], ...]  # rows true, columns predicted, in ``labels`` order
    low_bmd_auroc: float  # Normal vs the rest, inside this source; nan when it lacks one side


@dataclass(frozen=True)
class SourceShortcut:
    """What the source alone achieves on one source's rows."""

    source: str
    majority_label: str  # the majority class on the basis rows (training rows when given)
    majority_accuracy: float  # accuracy of always answering ``majority_label`` on these rows
    best_constant_label: str  # the majority class on these evaluated rows
    best_constant_accuracy: float  # the ceiling of any source-only answer on these rows
    distribution: dict[str, float]  # P(class | source) on the basis rows


@dataclass(frozen=True)
class ShortcutBaselines:
    basis: str  # "training rows" | "evaluated rows": where the majorities and distributions were counted
    per_source: tuple[SourceShortcut, ...]
    majority_accuracy: float  # pooled accuracy of the per-source majority answer
    source_only_accuracy: float  # argmax of P(class | source): equals majority_accuracy by construction
    source_only_macro_f1: float
    source_only_low_bmd_auroc: float  # pooled AUROC of P(low BMD | source)


@dataclass(frozen=True)
class Verdict:
    source: str
    model_accuracy: float
    shortcut_accuracy: float  # the bar: max(majority accuracy, best constant on these rows)
    margin_points: float  # 100 * (model - bar)
    beats_shortcut: bool  # model accuracy > bar
    ci_clears_bar: bool  # the lower 95% bound of the model's accuracy on this source is above the bar too


@dataclass(frozen=True)
class SourceReport:
    labels: tuple[str, ...]
    normal_label: str
    n: int
    n_groups: int
    pooled_accuracy: float
    pooled_macro_f1: float
    pooled_low_bmd_auroc: float
    per_source: tuple[SourceMetrics, ...]
    worst_source: str
    worst_source_accuracy: float
    cells: tuple[CellRecall, ...]
    within_source_low_bmd_auroc: dict[str, float]
    wani_osteopenia_vs_osteoporosis_auroc: float
    baselines: ShortcutBaselines
    verdicts: tuple[Verdict, ...]
    interval_method: str

    def source(self, name: str) -> SourceMetrics:
        for s in self.per_source:
            if s.source == name:
                return s
        raise KeyError(f"no source {name!r}; have {[s.source for s in self.per_source]}")

    def verdict(self, name: str) -> Verdict:
        for v in self.verdicts:
            if v.source == name:
                return v
        raise KeyError(f"no source {name!r}; have {[v.source for v in self.verdicts]}")

    def cell(self, source: str, label: str) -> CellRecall:
        for c in self.cells:
            if c.source == source and c.label == label:
                return c
        raise KeyError(f"no cell ({source!r}, {label!r})")

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))




def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if math.isnan(v) else v
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------------------------------------
# helpers


def _as_index(values: Sequence[Any], labels: Sequence[str], what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        bad = arr[(arr < 0) | (arr >= len(labels))]
        if bad.size:
            raise ConfigError(f"{what} holds class index {int(bad[0])}; valid: 0..{len(labels) - 1} for {list(labels)}")
        return arr.astype(int)
    pos = {lab: i for i, lab in enumerate(labels)}
    out = np.empty(len(arr), dtype=int)
    for i, v in enumerate(arr.tolist()):
        if v not in pos:
            raise ConfigError(f"{what} holds unknown label {v!r}; valid: {', '.join(labels)}")
        out[i] = pos[v]
    return out




def _proportion_ci(correct: np.ndarray, groups: np.ndarray | None, k_classes: int, n_boot: int, seed: int) -> Interval:
    """95% interval of the mean of a 0/1 vector: Wilson over rows, or a bootstrap over groups.

    The group bootstrap reuses :func:`osteo_edge.core.classification.bootstrap_ci` (percentile interval
    of "accuracy" with groups resampled). Where every row is right (or every row wrong) the
    percentile bootstrap collapses to a point, so there a Wilson interval over the number of
    distinct groups is given instead (conservative: a group counts once).
    """
    n = len(correct)
    k = int(correct.sum())
    if groups is None:
        lo, hi = wilson_interval(k, n)
        return Interval(lo, hi, "wilson")
    n_groups = len(np.unique(groups))
    if k in (0, n) or n_groups < 2 or n_boot <= 0:
        kg = n_groups if k == n else 0 if k == 0 else round(k / n * n_groups)
        lo, hi = wilson_interval(kg, n_groups)
        return Interval(lo, hi, "wilson-groups")
    y = np.zeros(n, dtype=int)
    probs = np.zeros((n, max(2, k_classes)))
    probs[np.arange(n), np.where(correct, 0, 1)] = 1.0  # argmax == y exactly where correct
    ci = bootstrap_ci(y, probs, [str(i) for i in range(probs.shape[1])], groups=groups, n_boot=n_boot, seed=seed,
                      metric_fn=lambda yy, pp, _labels, _t: {"accuracy": float((pp.argmax(axis=1) == yy).mean())})
    lo, hi = ci["accuracy"]["ci95"]
    if math.isnan(lo) or math.isnan(hi):
        lo, hi = wilson_interval(k, n)
        return Interval(lo, hi, "wilson")
    return Interval(float(lo), float(hi), "bootstrap-groups")


def _majority(ys: Sequence[int] | np.ndarray) -> int:
    """The most frequent class index (ties: the lower index, i.e. the first in label order)."""
    c = Counter(int(v) for v in ys)
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


# ------------------------------------------------------------------------------------------------
# the report


def per_source_report(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    probs: np.ndarray | None,
    sources: Sequence[str],
    labels: Sequence[str],
    groups: Sequence[Any] | None = None,
    normal_label: str = NORMAL,
    *,
    train_y: Sequence[Any] | None = None,
    train_sources: Sequence[str] | None = None,
    wani_source: str = WANI,
    penia_label: str = OSTEOPENIA,
    porosis_label: str = OSTEOPOROSIS,
    n_boot: int = 1000,
    seed: int = 0,
) -> SourceReport:
    """Per-source metrics of a model beside what the source alone achieves on the same rows.

    ``y_true`` / ``y_pred``: class names from ``labels`` or indices into it. ``probs``: (n, len(labels))
    class probabilities in ``labels`` order, or ``None`` (AUROCs are then nan). ``sources``: the source
    of each row (use :func:`group_source` so that Wani copies count as Wani). ``groups``: duplicate
    group ids; when given, intervals are bootstrapped over groups, else Wilson over rows.

    Shortcut baselines: the per-source majority class and the per-source class distribution
    (``P(class | source)``) are counted on the training rows when ``train_y`` and ``train_sources``
    are given, else on the evaluated rows (``baselines.basis`` says which). A source unseen in
    training gets the pooled training majority.

    Verdict: the model beats the shortcut on source S only if its accuracy on S is strictly greater
    than the bar ``max(majority accuracy, best constant answer on these rows)``. The second term is
    what any answer that depends on the source alone can reach on these rows at best, so a model
    that only reads the source can never pass, whatever the training majority was.
    """
    rows = _rows(y_true, y_pred, probs, sources, labels, groups, normal_label)
    per_source, within_auc = _per_source_metrics(rows, n_boot, seed)
    worst = min(per_source, key=lambda s: (s.accuracy, s.source))
    baselines = _shortcut_baselines(rows, train_y, train_sources)
    verdicts = []
    for sm, sc in zip(per_source, baselines.per_source):
        bar = max(sc.majority_accuracy, sc.best_constant_accuracy)
        verdicts.append(Verdict(
            source=sm.source, model_accuracy=sm.accuracy, shortcut_accuracy=bar,
            margin_points=100.0 * (sm.accuracy - bar), beats_shortcut=bool(sm.accuracy > bar + 1e-12),
            ci_clears_bar=bool(sm.accuracy_ci95.lo > bar + 1e-12),
        ))
    r = rows
    return SourceReport(
        labels=tuple(r.labels), normal_label=normal_label, n=r.n,
        n_groups=int(len(np.unique(r.grp))) if r.grp is not None else r.n,
        pooled_accuracy=float(r.correct.mean()), pooled_macro_f1=macro_f1(r.y, r.pred),
        pooled_low_bmd_auroc=_auc(r.y_low, r.p_low) if r.p_low is not None else float("nan"),
        per_source=tuple(per_source), worst_source=worst.source, worst_source_accuracy=worst.accuracy,
        cells=tuple(_cells(r, n_boot, seed)), within_source_low_bmd_auroc=within_auc,
        wani_osteopenia_vs_osteoporosis_auroc=_wani_auc(r, wani_source, penia_label, porosis_label),
        baselines=baselines, verdicts=tuple(verdicts),
        interval_method=("bootstrap over duplicate groups (percentile, %d replicates; Wilson over groups where "
                         "k = 0 or k = n)" % n_boot) if r.grp is not None else "Wilson score interval over rows",
    )


@dataclass(frozen=True)
class _Rows:
    """The evaluated rows as index arrays (validated once)."""

    labels: list[str]
    y: np.ndarray
    pred: np.ndarray
    src: np.ndarray
    grp: np.ndarray | None
    P: np.ndarray | None
    ni: int

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def k(self) -> int:
        return len(self.labels)

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.y

    @property
    def y_low(self) -> np.ndarray:
        return (self.y != self.ni).astype(int)

    @property
    def p_low(self) -> np.ndarray | None:
        return None if self.P is None else 1.0 - self.P[:, self.ni]

    @property
    def sources(self) -> list[str]:
        return sorted(set(self.src.tolist()))

    def groups_in(self, m: np.ndarray) -> np.ndarray | None:
        return None if self.grp is None else self.grp[m]

    def n_groups(self, m: np.ndarray) -> int:
        return int(len(np.unique(self.grp[m]))) if self.grp is not None else int(m.sum())


def _rows(y_true: Sequence[Any], y_pred: Sequence[Any], probs: np.ndarray | None, sources: Sequence[str],
          labels: Sequence[str], groups: Sequence[Any] | None, normal_label: str) -> _Rows:
    labels = [str(x) for x in labels]
    if normal_label not in labels:
        raise ConfigError(f"normal label {normal_label!r} is not among the labels {labels}")
    y = _as_index(y_true, labels, "y_true")
    pred = _as_index(y_pred, labels, "y_pred")
    src = np.asarray([str(s) for s in sources])
    n = len(y)
    if not (len(pred) == n == len(src)):
        raise ConfigError(f"y_true, y_pred and sources must have the same length, got {n}, {len(pred)}, {len(src)}")
    if n == 0:
        raise ConfigError("nothing to evaluate: y_true is empty")
    grp = None if groups is None else np.asarray([str(g) for g in groups])
    if grp is not None and len(grp) != n:
        raise ConfigError(f"groups must have one entry per row ({n}), got {len(grp)}")
    P = None
    if probs is not None:
        P = np.asarray(probs, dtype=np.float64)
        if P.shape != (n, len(labels)):
            raise ConfigError(f"probs must have shape ({n}, {len(labels)}), got {P.shape}")
    return _Rows(labels, y, pred, src, grp, P, labels.index(normal_label))


def _per_source_metrics(r: _Rows, n_boot: int, seed: int) -> tuple[list[SourceMetrics], dict[str, float]]:
    per_source, within_auc = [], {}
    for s in r.sources:
        m = r.src == s
        ys, ps = r.y[m], r.pred[m]
        conf = np.zeros((r.k, r.k), dtype=int)
        np.add.at(conf, (ys, ps), 1)
        auc = _auc(r.y_low[m], r.p_low[m]) if r.p_low is not None else float("nan")
        if not math.isnan(auc):
            within_auc[s] = auc
        per_source.append(SourceMetrics(
            source=s, n=int(m.sum()), n_groups=r.n_groups(m),
            class_counts={r.labels[c]: int(np.sum(ys == c)) for c in range(r.k) if np.any(ys == c)},
            accuracy=float(r.correct[m].mean()),
            accuracy_ci95=_proportion_ci(r.correct[m], r.groups_in(m), r.k, n_boot, seed),
            macro_f1=macro_f1(ys, ps), confusion=tuple(tuple(int(v) for v in row) for row in conf),
            low_bmd_auroc=auc,
        ))
    return per_source, within_auc


def _cells(r: _Rows, n_boot: int, seed: int) -> list[CellRecall]:
    """Recall of every (source, class) cell, as k of n with a 95% interval."""
    cells = []
    for s in r.sources:
        for c in range(r.k):
            m = (r.src == s) & (r.y == c)
            if not m.any():
                continue
            cells.append(CellRecall(
                source=s, label=r.labels[c], k=int(r.correct[m].sum()), n=int(m.sum()), n_groups=r.n_groups(m),
                recall=float(r.correct[m].mean()), ci95=_proportion_ci(r.correct[m], r.groups_in(m), r.k, n_boot, seed),
            ))
    return cells


def _wani_auc(r: _Rows, wani_source: str, penia_label: str, porosis_label: str) -> float:
    """Within Wani: Osteopenia vs Osteoporosis, scored by P(Osteoporosis) / (P(Osteopenia) + P(Osteoporosis))."""
    if r.P is None or penia_label not in r.labels or porosis_label not in r.labels:
        return float("nan")
    a, b = r.labels.index(penia_label), r.labels.index(porosis_label)
    m = (r.src == wani_source) & ((r.y == a) | (r.y == b))
    if not m.any():
        return float("nan")
    den = r.P[m, a] + r.P[m, b]
    score = np.divide(r.P[m, b], den, out=np.full(int(m.sum()), 0.5), where=den > 0)
    return _auc((r.y[m] == b).astype(int), score)


def _shortcut_baselines(r: _Rows, train_y: Sequence[Any] | None, train_sources: Sequence[str] | None) -> ShortcutBaselines:
    """Per-source majority class and source-only class distribution, counted on the training rows when given."""
    if (train_y is None) != (train_sources is None):
        raise ConfigError("give both train_y and train_sources (the training rows), or neither")
    if train_y is not None:
        by = _as_index(train_y, r.labels, "train_y")
        bs = np.asarray([str(s) for s in train_sources])  # type: ignore[union-attr]
        if len(by) != len(bs) or len(by) == 0:
            raise ConfigError(f"train_y and train_sources must be non-empty and of one length, got {len(by)} and {len(bs)}")
        basis = "training rows"
    else:
        by, bs, basis = r.y, r.src, "evaluated rows"
    fallback, fallback_dist = _majority(by), np.bincount(by, minlength=r.k) / len(by)
    shortcuts, maj_pred, dist_rows = [], np.empty(r.n, dtype=int), np.empty((r.n, r.k))
    for s in r.sources:
        m, bm = r.src == s, bs == s
        maj, dist = (_majority(by[bm]), np.bincount(by[bm], minlength=r.k) / bm.sum()) if bm.any() else (fallback, fallback_dist)
        best = _majority(r.y[m])
        maj_pred[m], dist_rows[m] = maj, dist
        shortcuts.append(SourceShortcut(
            source=s, majority_label=r.labels[maj], majority_accuracy=float(np.mean(r.y[m] == maj)),
            best_constant_label=r.labels[best], best_constant_accuracy=float(np.mean(r.y[m] == best)),
            distribution={r.labels[c]: float(dist[c]) for c in range(r.k)},
        ))
    so_pred = dist_rows.argmax(axis=1)
    return ShortcutBaselines(
        basis=basis, per_source=tuple(shortcuts), majority_accuracy=float(np.mean(maj_pred == r.y)),
        source_only_accuracy=float(np.mean(so_pred == r.y)), source_only_macro_f1=macro_f1(r.y, so_pred),
        source_only_low_bmd_auroc=_auc(r.y_low, 1.0 - dist_rows[:, r.ni]),
    )
