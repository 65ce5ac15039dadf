"""How well feature vectors predict the source (group-aware k-fold logistic regression; lower is
better): the model should read bone, not the scanner. See ``per_source.py`` for why it matters here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..core.stats import auroc as _auc
from ..errors import ConfigError
from .per_source import jsonable


@dataclass(frozen=True)
class ProbeResult:
    """Out-of-fold source prediction from features. Lower is better (0.5 = the source is not there)."""

    auroc: float  # pooled out-of-fold AUROC (one-vs-rest macro when more than two sources)
    auroc_per_fold: tuple[float, ...]
    auroc_fold_mean: float
    sources: tuple[str, ...]
    n: int
    n_groups: int
    folds: int
    seed: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def _ovr_macro_auc(y: np.ndarray, scores: np.ndarray, classes: Sequence[int]) -> float:
    if len(classes) == 2:
        return _auc((y == classes[1]).astype(int), scores[:, 1])
    aucs = [_auc((y == c).astype(int), scores[:, j]) for j, c in enumerate(classes)]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def source_probe(
    features: np.ndarray, sources: Sequence[str], groups: Sequence[Any], folds: int = 5, seed: int = 0
) -> ProbeResult:
    """How well the features predict the source: group-aware k-fold logistic regression.

    Standardised features, L2 logistic regression, ``StratifiedGroupKFold`` (shuffled with ``seed``)
    so copies of one radiograph never sit on both sides of a fold. AUROC is computed on the held-out
    fold (one-vs-rest macro over the sources present in that fold when there are more than two) and
    on all out-of-fold predictions pooled. 0.5: the features do not carry the source; 1.0: they
    identify it. Lower is better for a model meant to read bone.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2:
        raise ConfigError(f"features must be a 2-D array (rows x dims), got shape {X.shape}")
    names = sorted(set(str(s) for s in sources))
    if len(names) < 2:
        raise ConfigError(f"source_probe needs at least two sources, got {names}")
    s = np.asarray([names.index(str(v)) for v in sources])
    g = np.asarray([str(v) for v in groups])
    if not (len(s) == len(g) == len(X)):
        raise ConfigError(f"features, sources and groups must have one length, got {len(X)}, {len(s)}, {len(g)}")
    n_groups = len(np.unique(g))
    if folds < 2 or folds > n_groups:
        raise ConfigError(f"folds must be between 2 and the number of groups ({n_groups}), got {folds}")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    oof = np.zeros((len(s), len(names)))
    per_fold = []
    for tr, te in cv.split(X, s, g):
        classes = np.unique(s[tr])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(X[tr], s[tr])
        p = model.predict_proba(X[te])
        full = np.zeros((len(te), len(names)))
        full[:, classes] = p
        oof[te] = full
        present = [c for c in range(len(names)) if np.any(s[te] == c)]
        if len(present) >= 2:
            sub = full[:, present]
            if len(present) == 2:
                sub = np.column_stack([1 - sub[:, 1] / np.clip(sub.sum(axis=1), 1e-12, None), sub[:, 1] / np.clip(sub.sum(axis=1), 1e-12, None)])
            per_fold.append(_ovr_macro_auc(s[te], sub, present))
        else:
            per_fold.append(float("nan"))
    pooled = _ovr_macro_auc(s, oof, list(range(len(names))))
    valid = [a for a in per_fold if not math.isnan(a)]
    return ProbeResult(
        auroc=pooled, auroc_per_fold=tuple(per_fold), auroc_fold_mean=float(np.mean(valid)) if valid else float("nan"),
        sources=tuple(names), n=len(s), n_groups=n_groups, folds=folds, seed=seed,
        method="StandardScaler + LogisticRegression, StratifiedGroupKFold over duplicate groups"
        + (", one-vs-rest macro AUROC" if len(names) > 2 else ""),
    )
