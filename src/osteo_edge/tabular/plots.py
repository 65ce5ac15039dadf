"""PNG figures for tabular runs, bias and fusion reports (matplotlib object API via data.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.plots import new_figure, save_figure
from ..core.stats import Estimate


def _roc_points(pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(pos.astype(int), score)
    return fpr, tpr


def roc_figure(
    y: np.ndarray, probas: Mapping[str, np.ndarray], labels: Sequence[str], aucs: Mapping[str, Estimate], title: str, path: Path
) -> Path:
    """Binary: one panel, a curve per predictor. Several classes: a panel per predictor, one-vs-rest curves."""
    k = len(labels)
    names = list(probas)
    if k == 2:
        fig = new_figure(5.5, 5)
        ax = fig.add_subplot(1, 1, 1)
        for name in names:
            fpr, tpr = _roc_points(y == 1, probas[name][:, 1])
            ax.plot(fpr, tpr, label=f"{name}: AUC {aucs[name].fmt()}")
        _roc_axes(ax, f"{title}\npositive class: {labels[1]}")
    else:
        fig = new_figure(4.2 * len(names), 4.4)
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), i + 1)
            for c, lab in enumerate(labels):
                if 0 < int(np.sum(y == c)) < len(y):
                    fpr, tpr = _roc_points(y == c, probas[name][:, c])
                    ax.plot(fpr, tpr, label=f"{lab} vs rest")
            _roc_axes(ax, f"{name}: macro AUC {aucs[name].fmt()}")
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _roc_axes(ax: Any, title: str) -> None:
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")


def importance_figure(importance: Mapping[str, Sequence[tuple[str, float, float]]], path: Path, top: int = 15) -> Path:
    """Horizontal bars of permutation importance (mean drop in ROC-AUC, +- sd) per model."""
    names = list(importance)
    fig = new_figure(4.6 * len(names), 0.3 * min(top, max(len(v) for v in importance.values())) + 1.8)
    for i, name in enumerate(names):
        rows = sorted(importance[name], key=lambda r: r[1], reverse=True)[:top][::-1]
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.barh([r[0][:28] for r in rows], [r[1] for r in rows], xerr=[r[2] for r in rows], color="tab:blue")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("drop in out-of-fold ROC-AUC when shuffled", fontsize=7)
        ax.tick_params(labelsize=7)
    return save_figure(fig, path)


def group_metric_figure(
    rows: Sequence[Mapping[str, Any]], metric: str, overall: Mapping[str, float], title: str, path: Path
) -> Path:
    """Point estimates with 95% CI per group (x) and predictor (colour); small groups hatched grey."""
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig = new_figure(max(6.0, 0.9 * len(groups) * max(1, len(predictors)) / 2 + 3), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(predictors))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for j, pred in enumerate(predictors):
        xs, ys, lo, hi, small = [], [], [], [], []
        for i, g in enumerate(groups):
            r = next((r for r in rows if r["predictor"] == pred and r["group"] == g), None)
            if r is None or np.isnan(r[metric].value):
                continue
            e = r[metric]
            xs.append(i + j * width - 0.4 + width / 2)
            ys.append(e.value)
            lo.append(e.value - e.low if not np.isnan(e.low) else 0)
            hi.append(e.high - e.value if not np.isnan(e.high) else 0)
            small.append(r["too_small"])
        c = colours[j % len(colours)]
        for x, yv, below, above, tiny in zip(xs, ys, lo, hi, small):
            ax.errorbar([x], [yv], yerr=[[below], [above]], fmt="x" if tiny else "o", color=c, alpha=0.45 if tiny else 1.0, capsize=3)
        ax.plot([], [], "o", color=c, label=pred)
        if pred in overall and not np.isnan(overall[pred]):
            ax.axhline(overall[pred], color=c, lw=0.7, ls=":")
    ax.plot([], [], "x", color="grey", label="x, faded: too small to conclude")
    labels = [f"{g}\n(n={next((r['n'] for r in rows if r['group'] == g), 0)})" for g in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=7)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def fusion_figure(single: Mapping[str, Mapping[str, Estimate]], metrics: Sequence[str], title: str, path: Path) -> Path:
    names = list(single)
    fig = new_figure(2.6 * len(metrics) + 1, 3.8)
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for j, n in enumerate(names):
            e = single[n][m]
            if np.isnan(e.value):
                continue
            err = [[e.value - e.low if not np.isnan(e.low) else 0], [e.high - e.value if not np.isnan(e.high) else 0]]
            ax.errorbar([j], [e.value], yerr=err, fmt="o", capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
        ax.set_title(m.replace("_", " "), fontsize=8)
        ax.set_ylim(0, 1.02)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
