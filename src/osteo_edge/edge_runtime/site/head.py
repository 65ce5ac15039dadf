"""``site calibrate --head``: a linear head fitted on the model's frozen embedding, numpy only.

The one site-side lever that can change discrimination (AUROC): temperature and threshold only
rescale and cut the model's own logits. The head is an L2-regularised multinomial logistic
regression on the standardised embedding (the input of the model's classifier layer, the model
file's second output: ``export --embedding-output``), with class-balanced sample weights (a site's
sample is rarely balanced), fitted by gradient descent with Nesterov momentum and a step of 1/L
(L: the loss's Lipschitz constant). With 10-40 images and ~1000 features it is heavily
regularised by design: ``l2`` (default :data:`HEAD_L2`) on the weights, not on the bias.

The temperature and threshold that go with a head are fitted on **cross-fitted** head logits
(:func:`cross_fitted_logits`: each calibration image's logits from a head fitted without it), never
on the head's in-sample logits, which separate a small sample perfectly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..classifier import LinearHead

HEAD_L2 = 10.0
HEAD_ITERS = 400
INNER_FOLDS = 5


def fit_head(emb: np.ndarray, y: np.ndarray, n_classes: int, l2: float = HEAD_L2, iters: int = HEAD_ITERS) -> LinearHead:
    """Multinomial logistic regression on standardised ``emb`` (rows) for labels ``y`` (0..n_classes-1)."""
    x = np.asarray(emb, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if x.ndim != 2 or x.shape[0] != y.size or y.size < 2:
        raise ConfigError(f"a head needs at least 2 embedded images, got {y.size}")
    if l2 <= 0:
        raise ConfigError(f"--head-l2 must be positive, got {l2}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    xs = (x - mean) / scale
    n, d = xs.shape
    counts = np.bincount(y, minlength=n_classes).astype(float)
    present = counts > 0
    sw = np.where(present[y], n / (present.sum() * np.maximum(counts[y], 1.0)), 0.0) / n  # balanced, sums to 1
    onehot = np.eye(n_classes)[y]
    lip = 0.5 * float(np.linalg.norm(xs * np.sqrt(sw)[:, None], 2)) ** 2 + l2 + 0.5
    step = 1.0 / lip
    w = np.zeros((d, n_classes))
    b = np.zeros(n_classes)
    vw, vb = w.copy(), b.copy()
    t = 1.0
    for _ in range(iters):
        z = xs @ vw + vb
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * sw[:, None]
        gw, gb = xs.T @ g + l2 * vw, g.sum(axis=0)
        w_new, b_new = vw - step * gw, vb - step * gb
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        vw = w_new + (t - 1) / t_new * (w_new - w)
        vb = b_new + (t - 1) / t_new * (b_new - b)
        w, b, t = w_new, b_new, t_new
    return LinearHead(mean, scale, w, b)


def cross_fitted_logits(emb: np.ndarray, y: np.ndarray, n_classes: int, l2: float = HEAD_L2, seed: int = 0,
                        folds: int = INNER_FOLDS) -> np.ndarray:
    """Each row's head logits from a head fitted on the other rows' inner folds (stratified by ``y``)."""
    y = np.asarray(y, dtype=int)
    k = int(min(folds, max(2, min(np.bincount(y)[np.bincount(y) > 0]))))
    k = min(k, y.size)
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, dtype=int)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        fold[rows[rng.permutation(rows.size)]] = np.arange(rows.size) % k
    out = np.zeros((y.size, n_classes), dtype=np.float64)
    for f in range(k):
        test, train = fold == f, fold != f
        if not test.any():
            continue
        if train.sum() < 2:
            raise ConfigError("too few images to cross-fit a head")
        out[test] = fit_head(emb[train], y[train], n_classes, l2)(emb[test])
    return out


def head_record(head: LinearHead, l2: float, n: int) -> dict[str, Any]:
    """The manifest's ``site.head`` (what :meth:`LinearHead.from_manifest` reads), floats at float32 precision."""
    def f(a: np.ndarray) -> Any:
        return np.asarray(a, dtype=np.float32).astype(float).tolist()

    return {"kind": "linear (multinomial logistic regression, L2, class-balanced) on the standardised embedding output",
            "l2": l2, "images": n, "dim": int(head.mean.size),
            "mean": f(head.mean), "scale": f(head.scale), "weights": f(head.weights), "bias": f(head.bias)}
