"""The leakage guard, run on the full table before any model is trained.

Three rules, each refusing a column with one line that names it and the option that drops it:

1. **Identifiers**: a text or integer column whose values are all distinct (``Patient Id``,
   ``S.No``, ``Id``) is a row label, not a risk factor. Pass it as ``--id-col`` (kept beside the
   predictions, never a feature) or ``--drop`` it. In the Wani table the patient id even encodes
   the diagnosis (``N*``, ``OP*``, ``OS*``).
2. **Target proxies**: every feature alone predicts the target in a stratified k-fold (a depth-3
   decision tree on the value; for text columns also out-of-fold category frequencies); an
   out-of-fold ROC-AUC (macro one-vs-rest for several classes) at or above ``threshold``
   (default 0.95) marks a near-perfect proxy of the target, such as the T-score for a diagnosis
   that is defined by T-score thresholds.
3. **Bone-density measurements**: a column whose name says it is a densitometry result (T-score,
   Z-score, BMD, DEXA/DXA) is refused whatever its score: the diagnosis is derived from bone
   density, and a clinical risk model is meant for people who have not had a scan.

``--allow-leaky COL`` keeps a flagged column on purpose; it is then logged as a loud warning and
recorded in the run manifest.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import DataError
from .metrics import roc_auc

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95
MIN_ROWS_FOR_ID_RULE = 20

# (pattern over the normalised column name, what it is)
DENSITY_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bt[\s_.-]*score", "a T-score (bone-density measurement)"),
    (r"\bz[\s_.-]*score", "a Z-score (bone-density measurement)"),
    (r"\bbmd\b", "a bone mineral density measurement"),
    (r"bone[\s_.-]*mineral[\s_.-]*density", "a bone mineral density measurement"),
    (r"\bd[e]?xa\b", "a DEXA/DXA result"),
)


class LeakageError(DataError):
    """A feature is an identifier or a (near-)perfect proxy of the target."""


@dataclass
class LeakageReport:
    threshold: float
    folds: int
    scores: dict[str, float] = field(default_factory=dict)  # single-feature out-of-fold ROC-AUC
    flagged: dict[str, str] = field(default_factory=dict)  # column -> reason
    allowed: list[str] = field(default_factory=list)  # flagged but kept on purpose

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": (
                f"single-feature {self.folds}-fold stratified out-of-fold ROC-AUC (depth-3 tree on the value; "
                "text columns also out-of-fold category frequencies), refused at or above the threshold; "
                "bone-density measurements refused by name; identifiers refused"
            ),
            "threshold": self.threshold,
            "single_feature_auc": {k: round(v, 4) for k, v in self.scores.items()},
            "flagged": dict(self.flagged),
            "allowed_on_purpose": list(self.allowed),
        }


def _quote_list(cols: Sequence[str]) -> str:
    return '"' + ",".join(cols) + '"'


def find_identifiers(df: "pd.DataFrame", columns: Sequence[str]) -> dict[str, str]:
    """Columns that look like row identifiers: all values distinct, text or integer type."""
    import pandas as pd

    out: dict[str, str] = {}
    n = len(df)
    if n < MIN_ROWS_FOR_ID_RULE:
        return out
    for c in columns:
        s = df[c]
        if s.isna().any():
            continue
        is_int = pd.api.types.is_integer_dtype(s)
        is_text = not pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        if (is_int or is_text) and s.nunique() == n:
            out[c] = f"{n} distinct values in {n} rows"
    return out


def refuse_identifiers(df: "pd.DataFrame", columns: Sequence[str], allow: Sequence[str] = ()) -> None:
    ids = {c: r for c, r in find_identifiers(df, columns).items() if c not in allow}
    if ids:
        names = list(ids)
        raise LeakageError(
            f"column(s) {names} look like row identifiers ({'; '.join(ids.values())}), not risk factors; "
            f"pass the patient id as --id-col {names[0]!r} and/or drop them with --drop {_quote_list(names)}"
        )


def density_measurement(name: str) -> str | None:
    norm = " ".join(str(name).split()).casefold()
    for pattern, what in DENSITY_PATTERNS:
        if re.search(pattern, norm):
            return what
    return None


def single_feature_auc(x: "pd.Series", y: np.ndarray, n_classes: int, folds: int, seed: int) -> float:
    """Out-of-fold ROC-AUC of predicting ``y`` (integer codes) from one column alone."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold
    from sklearn.tree import DecisionTreeClassifier

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    numeric = pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x)
    if numeric:
        values = pd.to_numeric(x, errors="coerce").to_numpy(dtype="float64")
        candidates = [values]
        text = None
    else:
        text = x.astype("object").where(x.notna(), "(missing)").astype(str).to_numpy()
        codes = pd.Series(text).astype("category").cat.codes.to_numpy(dtype="float64")
        candidates = [codes]
    best = 0.5
    min_leaf = max(2, len(y) // 100)
    for values in candidates:
        oof = np.zeros((len(y), n_classes))
        for tr, va in cv.split(values.reshape(-1, 1), y):
            tree = DecisionTreeClassifier(max_depth=3, min_samples_leaf=min_leaf, random_state=seed)
            tree.fit(values[tr].reshape(-1, 1), y[tr])
            p = tree.predict_proba(values[va].reshape(-1, 1))
            oof[np.ix_(va, tree.classes_.astype(int))] = p
        best = max(best, roc_auc(y, oof, n_classes))
    if text is not None:
        oof = np.zeros((len(y), n_classes))
        for tr, va in cv.split(text.reshape(-1, 1), y):
            prior = np.bincount(y[tr], minlength=n_classes) + 1.0
            table: dict[str, np.ndarray] = {}
            for v, t in zip(text[tr], y[tr]):
                table.setdefault(v, np.zeros(n_classes))[t] += 1
            for i in va:
                counts = table.get(text[i], np.zeros(n_classes)) + prior / prior.sum()
                oof[i] = counts / counts.sum()
        best = max(best, roc_auc(y, oof, n_classes))
    return float(best)


def screen_features(
    df: "pd.DataFrame",
    y: np.ndarray,
    n_classes: int,
    features: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    folds: int = 5,
    seed: int = 0,
) -> LeakageReport:
    """Score every feature alone and flag target proxies and bone-density measurements."""
    report = LeakageReport(threshold=threshold, folds=folds)
    for c in features:
        auc = single_feature_auc(df[c], y, n_classes, folds, seed)
        report.scores[c] = auc
        what = density_measurement(c)
        if auc >= threshold:
            report.flagged[c] = f"single-feature CV ROC-AUC {auc:.3f} >= {threshold:g}: a near-perfect proxy of the target"
        elif what:
            report.flagged[c] = f"{what}; the diagnosis is derived from bone density"
    return report


def enforce(report: LeakageReport, allow: Sequence[str] = ()) -> None:
    """Raise one LeakageError line for flagged columns not in ``allow``; warn loudly for allowed ones."""
    refused = {c: r for c, r in report.flagged.items() if c not in allow}
    for c in report.flagged:
        if c in allow:
            report.allowed.append(c)
            log.warning(
                "LEAKAGE ALLOWED ON PURPOSE: feature %r is kept although %s. Metrics of this run are NOT "
                "estimates of a clinical risk model's performance.", c, report.flagged[c],
            )
    if refused:
        names = list(refused)
        detail = "; ".join(f"{c!r}: {r}" for c, r in refused.items())
        raise LeakageError(
            f"refused leaky feature(s) {detail}; drop them with --drop {_quote_list(names)} "
            f"(or keep them knowingly with --allow-leaky {_quote_list(names)})"
        )
