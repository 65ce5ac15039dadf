"""The MODELS table and the pipelines: preprocessing -> (SMOTE) -> classifier, one object per fit.

Every model is an imbalanced-learn :class:`~imblearn.pipeline.Pipeline`, so the SMOTE step runs
only inside ``fit`` (on the rows it is fitted on) and is skipped by ``predict_proba``. The
cross-validation in :mod:`.train` fits one fresh pipeline per training fold: synthetic samples
are made from that fold's training rows only and never reach its validation rows.

Preprocessing: numeric columns -> median imputation (plus missing-value indicators) -> standard
scaling; text columns -> a "(missing)" category -> one-hot encoding, with categories seen fewer
than ``MIN_CATEGORY_COUNT`` times in the training rows pooled into one "infrequent" column and
categories never seen mapped to it as well. SMOTE interpolates in this encoded space.

Hyper-parameters are fixed, small and documented here (no tuning, so no nested CV is needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError, choice_error, require
from .table import TableSchema

MIN_CATEGORY_COUNT = 5
DEFAULT_TREES = 300


@dataclass(frozen=True)
class ModelRecord:
    name: str
    title: str
    params: str  # the fixed hyper-parameters, for reports
    make: Callable[[int, int, int], Any]  # (seed, n_jobs, trees) -> unfitted classifier


def _logreg(seed: int, n_jobs: int, trees: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=5000, random_state=seed)


def _rf(seed: int, n_jobs: int, trees: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=trees, min_samples_leaf=2, max_features="sqrt", n_jobs=n_jobs, random_state=seed
    )


def _xgb(seed: int, n_jobs: int, trees: int) -> Any:
    xgboost = require("xgboost", "tabular")
    return xgboost.XGBClassifier(
        n_estimators=trees, max_depth=3, learning_rate=0.05, subsample=0.8, colsample_bytree=0.8,
        min_child_weight=1.0, tree_method="hist", n_jobs=n_jobs, random_state=seed, verbosity=0,
    )


MODELS: dict[str, ModelRecord] = {
    r.name: r
    for r in (
        ModelRecord("logreg", "Logistic regression", "L2, C=1.0 (multinomial for >2 classes)", _logreg),
        ModelRecord("rf", "Random forest", "trees=--trees (300), min_samples_leaf=2, max_features=sqrt", _rf),
        ModelRecord(
            "xgboost", "XGBoost", "trees=--trees (300), max_depth=3, learning_rate=0.05, subsample=0.8, colsample_bytree=0.8", _xgb
        ),
    )
}


def parse_models(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--models is empty; valid: {', '.join(MODELS)}")
    for n in names:
        if n not in MODELS:
            raise choice_error("model", n, MODELS)
    return list(dict.fromkeys(names))


def build_preprocessor(schema: TableSchema) -> Any:
    require("sklearn", "tabular")
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if schema.numeric:
        parts.append((
            "num",
            Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True)), ("scale", StandardScaler())]),
            schema.numeric,
        ))
    if schema.categorical:
        parts.append((
            "cat",
            Pipeline([
                ("impute", SimpleImputer(strategy="constant", fill_value="(missing)")),
                ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=MIN_CATEGORY_COUNT, sparse_output=False)),
            ]),
            schema.categorical,
        ))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=True)


def build_pipeline(
    name: str,
    schema: TableSchema,
    *,
    smote: bool = False,
    smote_k: int = 5,
    seed: int = 0,
    n_jobs: int = 1,
    trees: int = DEFAULT_TREES,
) -> Any:
    """An unfitted imblearn Pipeline: ``prep`` -> (``smote``) -> ``model``."""
    if name not in MODELS:
        raise choice_error("model", name, MODELS)
    require("imblearn", "tabular")
    from imblearn.over_sampling import SMOTE
    from imblearn.pipeline import Pipeline

    steps: list[tuple[str, Any]] = [("prep", build_preprocessor(schema))]
    if smote:
        if smote_k < 1:
            raise ConfigError(f"SMOTE needs at least 2 samples of every class in each training fold; k_neighbors would be {smote_k}")
        steps.append(("smote", SMOTE(k_neighbors=smote_k, random_state=seed)))
    steps.append(("model", MODELS[name].make(seed, n_jobs, trees)))
    return Pipeline(steps)
