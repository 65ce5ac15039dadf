"""Training and evaluation figures (matplotlib object API via osteo_edge.data.report, no pyplot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.classification import reliability_bins
from ..core.stats import Estimate, auroc
from ..core.plots import new_figure, save_figure


def training_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str = "", kept_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch; the kept epoch (best validation macro-F1 unless given) is marked."""
    fig = new_figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ep = [int(h["epoch"]) for h in history]
    ax1.plot(ep, [float(h["train_loss"]) for h in history], marker="o", label="train loss")
    ax1.plot(ep, [float(h["val_loss"]) for h in history], marker="o", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax2.plot(ep, [float(h["train_acc"]) for h in history], marker="o", label="train accuracy")
    ax2.plot(ep, [float(h["val_acc"]) for h in history], marker="o", label="val accuracy")
    ax2.plot(ep, [float(h["val_macro_f1"]) for h in history], marker="o", label="val macro-F1")
    frozen = [e for e, h in zip(ep, history) if h.get("stage") == "frozen"]
    for ax in (ax1, ax2):
        if frozen:
            ax.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="0.9", label=None)
    if kept_epoch is None and history:
        kept_epoch = ep[int(np.argmax([float(h["val_macro_f1"]) for h in history]))]
    if kept_epoch is not None:
        for ax in (ax1, ax2):
            ax.axvline(kept_epoch, color="k", ls=":", lw=1, label=f"kept: epoch {kept_epoch}")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle(title or "Training curves (shaded: frozen-backbone warm-up)")
    return save_figure(fig, path)


def confusion_png(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> Path:
    cm = np.asarray(confusion, dtype=np.float64)
    fig = new_figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}\n{frac[i, j]:.0%}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="row fraction (recall)")
    return save_figure(fig, path)


def roc_png(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], path: Path, title: str,
            p_low: np.ndarray | None = None, y_low: np.ndarray | None = None, operating: tuple[float, float] | None = None) -> Path:
    from sklearn.metrics import roc_curve

    fig = new_figure(10 if p_low is not None else 5.5, 4.5)
    ax = fig.add_subplot(1, 2 if p_low is not None else 1, 1)
    for i, lab in enumerate(labels):
        yb = (y == i).astype(int)
        if yb.min() == yb.max():
            continue
        fpr, tpr, _ = roc_curve(yb, probs[:, i])
        ax.plot(fpr, tpr, label=f"{lab} vs rest (AUC {auroc(yb, probs[:, i]):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("One-vs-rest ROC", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    if p_low is not None and y_low is not None and y_low.min() != y_low.max():
        ax2 = fig.add_subplot(1, 2, 2)
        fpr, tpr, _ = roc_curve(y_low, p_low)
        ax2.plot(fpr, tpr, color="C3", label=f"low BMD vs Normal (AUC {auroc(y_low, p_low):.3f})")
        if operating is not None:
            sens, spec = operating
            ax2.plot([1 - spec], [sens], "ko", label=f"operating point (sens {sens:.2f}, spec {spec:.2f})")
        ax2.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
        ax2.set_xlabel("1 - specificity")
        ax2.set_ylabel("sensitivity")
        ax2.set_title("Binary screening view", fontsize=10)
        ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def reliability_png(y: np.ndarray, probs_before: np.ndarray, probs_after: np.ndarray, temperature: float,
                    ece_before: float, ece_after: float, path: Path, title: str) -> Path:
    fig = new_figure(10, 4.5)
    for k, (probs, name, ece) in enumerate(((probs_before, "before (T = 1)", ece_before),
                                           (probs_after, f"after temperature scaling (T = {temperature:.2f})", ece_after))):
        ax = fig.add_subplot(1, 2, k + 1)
        rb = reliability_bins(probs, y)
        edges = np.asarray(rb["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        acc = np.asarray(rb["accuracy"], dtype=np.float64)
        ok = ~np.isnan(acc)
        ax.bar(centers[ok], acc[ok], width=edges[1] - edges[0], edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], color="C3", ls="--", label="perfect calibration")
        for c, a, n in zip(centers[ok], acc[ok], np.asarray(rb["count"])[ok]):
            ax.text(c, min(a + 0.02, 0.97), str(n), ha="center", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-1 confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {ece:.3f}", fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)  # below: never over the bars
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def compare_png(rows: Sequence[Mapping[str, Any]], path: Path, metric: str = "macro_f1") -> Path:
    """Test metric with 95% CI per run, beside host latency."""
    fig = new_figure(11, 4.5)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = [str(r["run"]) for r in rows]
    x = np.arange(len(rows))
    for j, (key, lab) in enumerate(((metric, "macro-F1"), ("accuracy", "accuracy"), ("low_bmd_auroc", "low-BMD AUROC"))):
        vals, lo, hi = [], [], []
        for r in rows:
            e = Estimate.from_dict((r.get("test") or {}).get(key)) or Estimate(float("nan"))
            vals.append(e.value)
            lo.append(e.value - e.low if e.low == e.low else 0)
            hi.append(e.high - e.value if e.high == e.high else 0)
        ax1.bar(x + (j - 1) * 0.27, vals, 0.27, yerr=[lo, hi], capsize=3, label=lab)
    ax1.set_xticks(x, names, rotation=20, fontsize=8)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("test (95% bootstrap CI)")
    ax1.legend(fontsize=8)
    ax1.set_title("Test-split metrics", fontsize=10)
    lat = [r.get("latency_ms_p50", float("nan")) for r in rows]
    ax2.bar(x, lat, color="C4")
    ax2.set_xticks(x, names, rotation=20, fontsize=8)
    ax2.set_ylabel("ms (torch eager, batch 1, p50)")
    ax2.set_title("Host latency", fontsize=10)
    return save_figure(fig, path)
