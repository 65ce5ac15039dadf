"""Image-classification metrics: per-class and macro scores, the binary low-BMD view, ECE, and
group-bootstrap confidence intervals of the headline metrics.

numpy, with scikit-learn imported lazily inside :func:`classification_metrics`. The AUROC,
softmax and bootstrap are the shared ones of :mod:`osteo_edge.core.stats`. Probabilities are
calibrated softmax outputs ``softmax(logits / T)``.
Bootstrap resampling is done over duplicate groups (cluster bootstrap), so copies of one
radiograph never count as independent evidence.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import require
from .stats import Estimate, auroc, bootstrap

log = logging.getLogger(__name__)

NORMAL = "Normal"
HEADLINE = ("accuracy", "macro_f1", "balanced_accuracy", "auroc_macro", "low_bmd_auroc", "low_bmd_sensitivity", "low_bmd_specificity", "ece")


def low_bmd_probability(probs: np.ndarray, labels: Sequence[str]) -> np.ndarray | None:
    """P(low BMD) = 1 - P(Normal); ``None`` when the label set has no Normal class."""
    if NORMAL not in labels:
        return None
    return 1.0 - np.asarray(probs)[:, list(labels).index(NORMAL)]


# ------------------------------------------------------------------------------------------------
# point metrics


def ece_score(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-1 confidence (equal-width bins)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    acc, cf, cnt = [], [], []
    for b in range(bins):
        m = idx == b
        cnt.append(int(m.sum()))
        acc.append(float(correct[m].mean()) if m.any() else float("nan"))
        cf.append(float(conf[m].mean()) if m.any() else float("nan"))
    return {"edges": edges.tolist(), "accuracy": acc, "confidence": cf, "count": cnt}


def binary_at_threshold(y_low: np.ndarray, p_low: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of "P(low BMD) >= threshold"."""
    pred = p_low >= threshold
    pos, neg = y_low == 1, y_low == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return sens, spec


def choose_low_bmd_threshold(y_low: np.ndarray, p_low: np.ndarray, target_sensitivity: float = 0.9) -> dict[str, float]:
    """The highest threshold whose sensitivity on these (validation) cases is >= the target.

    Screening favours sensitivity: a missed low-BMD knee is worse than a DEXA referral. Also
    returns Youden's J optimum for reference.
    """
    y_low = np.asarray(y_low).astype(int)
    p_low = np.asarray(p_low, dtype=np.float64)
    cands = np.unique(np.concatenate([p_low, [0.0]]))[::-1]
    chosen = 0.0
    for t in cands:  # descending: the first that reaches the target is the highest
        sens, _ = binary_at_threshold(y_low, p_low, t)
        if not math.isnan(sens) and sens >= target_sensitivity:
            chosen = float(t)
            break
    best_j, youden = -1.0, 0.5
    for t in cands:
        sens, spec = binary_at_threshold(y_low, p_low, t)
        if not (math.isnan(sens) or math.isnan(spec)) and sens + spec - 1 > best_j:
            best_j, youden = sens + spec - 1, float(t)
    sens, spec = binary_at_threshold(y_low, p_low, chosen)
    return {"threshold": chosen, "target_sensitivity": float(target_sensitivity), "val_sensitivity": sens,
            "val_specificity": spec, "youden_threshold": youden}


def fit_low_bmd_threshold(probs: np.ndarray, y: np.ndarray, labels: Sequence[str], target_sensitivity: float) -> dict[str, float] | None:
    """:func:`choose_low_bmd_threshold` on calibrated probabilities and class indices (low BMD = not
    Normal); ``None`` when the label set has no Normal class."""
    p_low = low_bmd_probability(probs, labels)
    if p_low is None:
        return None
    y_low = (np.asarray(y) != list(labels).index(NORMAL)).astype(int)
    return choose_low_bmd_threshold(y_low, p_low, target_sensitivity)


def classification_metrics(
    y: np.ndarray, probs: np.ndarray, labels: Sequence[str], low_bmd_threshold: float | None = None
) -> dict[str, Any]:
    """Point metrics: accuracy, macro-F1, per-class P/R/F1, one-vs-rest AUROC, confusion, binary view, ECE."""
    require("sklearn", "train")
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    pred = probs.argmax(axis=1)
    present = sorted(set(y.tolist()))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    per_class = {}
    aurocs = []
    for i, lab in enumerate(labels):
        auc = auroc((y == i).astype(int), probs[:, i])
        per_class[lab] = {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]), "auroc": auc}
        if not math.isnan(auc):
            aurocs.append(auc)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        # macro over the classes present in y (a class absent from this subset has no recall)
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)) if len(y) else float("nan"),
        "balanced_accuracy": float(np.mean([r[i] for i in present])) if len(present) > 1 else float("nan"),
        "auroc_macro": float(np.mean(aurocs)) if aurocs else float("nan"),
        "per_class": per_class,
        "confusion": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        "ece": ece_score(probs, y) if len(y) else float("nan"),
        "nll": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)))) if len(y) else float("nan"),
    }
    p_low = low_bmd_probability(probs, labels)
    if p_low is not None:
        y_low = (y != list(labels).index(NORMAL)).astype(int)
        out["low_bmd_auroc"] = auroc(y_low, p_low)
        if low_bmd_threshold is not None:
            sens, spec = binary_at_threshold(y_low, p_low, low_bmd_threshold)
            out["low_bmd_threshold"] = float(low_bmd_threshold)
            out["low_bmd_sensitivity"], out["low_bmd_specificity"] = sens, spec
    return out


# ------------------------------------------------------------------------------------------------
# bootstrap


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in ``y`` (a class absent from the rows has no recall and is
    left out, as in :func:`classification_metrics`); nan for no rows. Plain numpy (bootstrap-fast)."""
    y, pred = np.asarray(y), np.asarray(pred)
    f1s = []
    for c in np.unique(y):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return float(np.mean(f1s)) if f1s else float("nan")


def fast_headline(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], low_bmd_threshold: float | None = None) -> dict[str, float]:
    """The headline metrics of :func:`classification_metrics` in plain numpy (for the bootstrap)."""
    k = len(labels)
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    recalls, aucs = [], []
    for c in range(k):
        if c in present:
            tp = np.sum((pred == c) & (y == c))
            fn = np.sum((pred != c) & (y == c))
            recalls.append(tp / (tp + fn) if tp + fn else 0.0)
        a = auroc((y == c).astype(int), probs[:, c])
        if not math.isnan(a):
            aucs.append(a)
    out = {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(y, pred),
        "balanced_accuracy": float(np.mean(recalls)) if len(recalls) > 1 else float("nan"),
        "auroc_macro": float(np.mean(aucs)) if aucs else float("nan"),
        "ece": ece_score(probs, y),
    }
    p_low = low_bmd_probability(probs, labels)
    if p_low is not None:
        y_low = (y != list(labels).index(NORMAL)).astype(int)
        out["low_bmd_auroc"] = auroc(y_low, p_low)
        if low_bmd_threshold is not None:
            out["low_bmd_sensitivity"], out["low_bmd_specificity"] = binary_at_threshold(y_low, p_low, low_bmd_threshold)
    return out


def headline(m: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(m[k]) for k in HEADLINE if k in m}


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[Any] | None = None,
    low_bmd_threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    metric_fn: Callable[..., Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """95% percentile intervals for every headline metric, resampling groups with replacement."""
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs)
    fn = metric_fn or fast_headline
    point = headline(classification_metrics(y, probs, labels, low_bmd_threshold))
    if n_boot <= 0 or len(y) < 2:
        return {k: Estimate(v).to_dict() for k, v in point.items()}
    est = bootstrap(point, lambda idx: headline(fn(y[idx], probs[idx], labels, low_bmd_threshold)), len(y), n_boot, seed,
                    groups=groups if groups is not None else np.arange(len(y)))
    # stored as {"value", "ci95"}: the interval of a group bootstrap is over groups, so no row count is attached
    return {k: Estimate(e.value, e.low, e.high).to_dict() for k, e in est.items()}

