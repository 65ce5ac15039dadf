"""Tabular classification metrics on predicted probabilities, and percentile-bootstrap confidence intervals.

The AUROC, the bootstrap resampling/intervals and :class:`Estimate` are the shared ones of
:mod:`osteo_edge.core.stats`; this module only defines the tabular metric set.

``y`` holds integer class codes ``0..K-1``; ``proba`` is an ``(n, K)`` array. ROC-AUC is the
binary AUC of class 1 for two classes and the macro average of one-vs-rest AUCs for more (NaN
when a class has no positives or no negatives in the sample). F1 is macro-averaged over the
classes present in the truth or the predictions. Predictions are the most probable class.

CIs: percentile bootstrap, resampling rows (for out-of-fold predictions: patients) with
replacement; resamples where a metric is undefined (a class missing) are skipped and counted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..core.stats import Estimate, auroc, percentile_interval, resample_indices
from ..core.stats import bootstrap as _bootstrap

DEFAULT_BOOTSTRAP = 1000
METRIC_NAMES = ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro")


def roc_auc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    y = np.asarray(y)
    if n_classes == 2:
        return auroc(y == 1, proba[:, 1])
    aucs = [auroc(y == k, proba[:, k]) for k in range(n_classes)]
    return float("nan") if any(np.isnan(a) for a in aucs) else float(np.mean(aucs))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred))) if len(y) else float("nan")


def per_class_recall(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float]:
    out = []
    for k in range(n_classes):
        m = y == k
        out.append(float(np.mean(pred[m] == k)) if m.any() else float("nan"))
    return out


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    rec = [r for r in per_class_recall(y, pred, n_classes) if not np.isnan(r)]
    return float(np.mean(rec)) if rec else float("nan")


def f1_macro(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    scores = []
    for k in range(n_classes):
        tp = int(np.sum((pred == k) & (y == k)))
        fp = int(np.sum((pred == k) & (y != k)))
        fn = int(np.sum((pred != k) & (y == k)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def compute(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype="float64")
    pred = proba.argmax(axis=1)
    return {
        "roc_auc": roc_auc(y, proba, n_classes),
        "accuracy": accuracy(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred, n_classes),
        "f1_macro": f1_macro(y, pred, n_classes),
    }


def bootstrap(
    y: np.ndarray, proba: np.ndarray, n_classes: int, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict[str, Estimate]:
    """Point estimates and percentile-bootstrap 95% CIs of every metric in :data:`METRIC_NAMES`."""
    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype="float64")
    point = compute(y, proba, n_classes)
    return _bootstrap(point, lambda idx: compute(y[idx], proba[idx], n_classes), len(y), n_boot, seed)


def paired_bootstrap(
    y: np.ndarray,
    probas: dict[str, np.ndarray],
    n_classes: int,
    pairs: list[tuple[str, str]],
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    extra: dict[str, Callable[[np.ndarray, np.ndarray], float]] | None = None,
) -> tuple[dict[str, dict[str, Estimate]], dict[tuple[str, str], dict[str, Estimate]]]:
    """Metrics of several predictors on the same rows, and of the differences ``a - b`` for ``pairs``.

    The same resampled rows are used for every predictor in a resample (a paired bootstrap), so
    the CI of a difference accounts for the correlation between the predictors.
    ``extra`` adds metrics ``name -> f(y, proba)``.
    """
    y = np.asarray(y, dtype=int)
    extra = extra or {}

    def all_metrics(idx: np.ndarray | None) -> dict[str, dict[str, float]]:
        yy = y if idx is None else y[idx]
        res = {}
        for name, p in probas.items():
            pp = p if idx is None else p[idx]
            m = compute(yy, pp, n_classes)
            for ename, f in extra.items():
                m[ename] = f(yy, pp)
            res[name] = m
        return res

    point = all_metrics(None)
    n = len(y)
    draws = [all_metrics(idx) for idx in resample_indices(n, n_boot, seed)]
    single: dict[str, dict[str, Estimate]] = {}
    for name, m in point.items():
        single[name] = {}
        for k, v in m.items():
            lo, hi, valid = percentile_interval([d[name][k] for d in draws])
            single[name][k] = Estimate(v, lo, hi, n, valid)
    diffs: dict[tuple[str, str], dict[str, Estimate]] = {}
    for a, b in pairs:
        diffs[(a, b)] = {}
        for k in point[a]:
            lo, hi, valid = percentile_interval([d[a][k] - d[b][k] for d in draws])
            diffs[(a, b)][k] = Estimate(point[a][k] - point[b][k], lo, hi, n, valid)
    return single, diffs


def bootstrap_difference(
    y_a: np.ndarray, p_a: np.ndarray, y_b: np.ndarray, p_b: np.ndarray, n_classes: int, metric: str = "roc_auc",
    n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
) -> Estimate:
    """``metric(a) - metric(b)`` for two disjoint groups, each resampled independently (95% percentile CI)."""
    y_a, y_b = np.asarray(y_a, dtype=int), np.asarray(y_b, dtype=int)
    point = compute(y_a, p_a, n_classes)[metric] - compute(y_b, p_b, n_classes)[metric]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot if len(y_a) and len(y_b) else 0):
        ia = rng.integers(0, len(y_a), len(y_a))
        ib = rng.integers(0, len(y_b), len(y_b))
        draws.append(compute(y_a[ia], p_a[ia], n_classes)[metric] - compute(y_b[ib], p_b[ib], n_classes)[metric])
    lo, hi, valid = percentile_interval(draws)
    return Estimate(float(point), lo, hi, len(y_a), valid)
