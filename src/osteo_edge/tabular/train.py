"""Train clinical risk models with stratified k-fold cross-validation and write a run directory.

Order of work, each step on the whole table only where it cannot leak:

1. read the CSV, resolve the target, ``--drop`` and ``--id-col`` columns, drop rows without a target;
2. the leakage guard (:mod:`.leakage`): identifiers, target proxies, bone-density measurements;
3. the input schema (:mod:`.table`) and the feature frame, through the same ``check`` as prediction;
4. for each model and each of K stratified folds: a fresh pipeline (:mod:`.models`) is fitted on
   the training rows (SMOTE, when on, is a step of that pipeline, so it sees only those rows),
   predicts the validation rows, and permutation importance is measured on them;
5. metrics on the out-of-fold predictions with percentile-bootstrap 95% CIs (and the per-fold
   spread), ROC and importance PNGs;
6. every model refit on all rows and saved with the schema; the best out-of-fold ROC-AUC is the
   default model of ``tabular predict``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..artifact import DISCLAIMER, atomic_write_text, runtime_versions, sha256_file
from ..core.csvsafe import safe_frame
from ..core.progress import Progress
from ..core.stats import Estimate
from ..errors import ConfigError, DataError, require
from . import leakage as _leak
from .metrics import DEFAULT_BOOTSTRAP, METRIC_NAMES, bootstrap, compute, roc_auc
from .models import DEFAULT_TREES, MODELS, build_pipeline
from .store import save_model, write_run
from .table import TableSchema, _as_text, infer_schema, read_table, resolve_column, resolve_columns, target_labels

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    target: str
    models: tuple[str, ...] = ("logreg", "rf", "xgboost")
    smote: bool = False
    folds: int = 5
    drop: tuple[str, ...] = ()
    id_column: str | None = None
    allow_leaky: tuple[str, ...] = ()
    leak_threshold: float = _leak.DEFAULT_THRESHOLD
    seed: int = 0
    n_jobs: int = 1
    trees: int = DEFAULT_TREES
    bootstrap: int = DEFAULT_BOOTSTRAP
    importance_repeats: int = 5
    plots: bool = True

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")
        if not self.models:
            raise ConfigError(f"no models given; valid: {', '.join(MODELS)}")
        for m in self.models:
            if m not in MODELS:
                raise ConfigError(f"unknown model {m!r}; valid: {', '.join(MODELS)}")
        if not 0.5 < self.leak_threshold <= 1.0:
            raise ConfigError(f"--leak-threshold must be in (0.5, 1], got {self.leak_threshold}")
        if self.n_jobs < 1 or self.trees < 1 or self.bootstrap < 0 or self.importance_repeats < 0:
            raise ConfigError("--jobs and --trees must be >= 1; --bootstrap and --importance-repeats >= 0")


@dataclass
class PreparedData:
    """The table after column resolution and the leakage guard: what the folds are cut from."""

    X: "pd.DataFrame"
    y: np.ndarray  # integer codes into schema.labels
    schema: TableSchema
    ids: list[Any] | None
    rows: np.ndarray  # 0-based data-row numbers in the CSV of the rows used
    leakage: _leak.LeakageReport
    dropped_no_target: int


@dataclass
class TrainResult:
    run_dir: Path
    schema: TableSchema
    metrics: dict[str, dict[str, Estimate]]
    fold_metrics: dict[str, list[dict[str, float]]]
    selected: str
    n_rows: int
    class_counts: dict[str, int]
    protocol: str
    leakage: _leak.LeakageReport
    written: list[str] = field(default_factory=list)


def prepare(df: "pd.DataFrame", opts: TrainOptions) -> PreparedData:
    """Resolve columns, run the leakage guard, build the schema and the feature frame."""
    cols = [str(c) for c in df.columns]
    target = resolve_column(opts.target, cols, "--target column")
    drop = resolve_columns(opts.drop, cols, "--drop column")
    id_col = resolve_column(opts.id_column, cols, "--id-col column") if opts.id_column else None
    allow = resolve_columns(opts.allow_leaky, cols, "--allow-leaky column")
    if target in drop or target == id_col:
        raise ConfigError(f"the target {target!r} cannot also be dropped or be the id column")
    keep = df[df[target].notna()]
    dropped_no_target = len(df) - len(keep)
    if dropped_no_target:
        log.warning("%d row(s) have no value in the target %r and are left out", dropped_no_target, target)
    features = [c for c in cols if c not in {target, id_col, *drop}]
    if not features:
        raise ConfigError(f"no feature columns left after the target, --id-col and --drop; columns: {cols}")
    labels = target_labels(keep[target])
    if len(labels) < 2:
        raise DataError(f"target {target!r} has a single value {labels}; need at least two classes")
    y_text = keep[target].map(_as_text)
    code = {lab: i for i, lab in enumerate(labels)}
    y = y_text.map(code).to_numpy(dtype=int)
    counts = np.bincount(y, minlength=len(labels))
    if counts.min() < opts.folds:
        small = {labels[i]: int(c) for i, c in enumerate(counts) if c < opts.folds}
        raise DataError(f"class(es) {small} have fewer rows than --folds {opts.folds}; use fewer folds or more data")
    _leak.refuse_identifiers(keep, features, allow=allow)
    report = _leak.screen_features(keep, y, len(labels), features, opts.leak_threshold, opts.folds, opts.seed)
    _leak.enforce(report, allow=allow)
    schema = infer_schema(keep, features, target, labels, id_col, ignored=drop)
    X = schema.check(keep, source="training table")
    ids = keep[id_col].astype("object").tolist() if id_col else None
    return PreparedData(X.reset_index(drop=True), y, schema, ids, keep.index.to_numpy(), report, dropped_no_target)


def smote_neighbours(y: np.ndarray, folds: int, seed: int) -> int:
    """SMOTE's k: 5, or less when a class has few rows in the smallest training fold."""
    from sklearn.model_selection import StratifiedKFold

    least = min(
        int(np.bincount(y[tr], minlength=int(y.max()) + 1).min())
        for tr, _ in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    )
    return min(5, least - 1)


def cross_validate(
    data: PreparedData, opts: TrainOptions, progress: Progress | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, list[dict[str, float]]], dict[str, list[tuple[str, float, float]]]]:
    """Out-of-fold probabilities per model, the fold of every row, per-fold metrics, permutation importance."""
    require("sklearn", "tabular")
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedKFold

    X, y, schema = data.X, data.y, data.schema
    k = len(schema.labels)
    cv = StratifiedKFold(n_splits=opts.folds, shuffle=True, random_state=opts.seed)
    splits = list(cv.split(np.zeros(len(y)), y))
    fold_of = np.full(len(y), -1)
    for f, (_, va) in enumerate(splits):
        fold_of[va] = f
    smote_k = smote_neighbours(y, opts.folds, opts.seed) if opts.smote else 5
    oof: dict[str, np.ndarray] = {}
    per_fold: dict[str, list[dict[str, float]]] = {}
    importance: dict[str, list[tuple[str, float, float]]] = {}

    def scorer(est: Any, Xv: Any, yv: np.ndarray) -> float:
        return roc_auc(yv, est.predict_proba(Xv), k)

    total = len(opts.models) * len(splits)
    done = 0
    for name in opts.models:
        proba = np.full((len(y), k), np.nan)
        per_fold[name] = []
        imps: list[np.ndarray] = []
        for f, (tr, va) in enumerate(splits):
            pipe = build_pipeline(name, schema, smote=opts.smote, smote_k=smote_k, seed=opts.seed, n_jobs=opts.n_jobs, trees=opts.trees)
            pipe.fit(X.iloc[tr], y[tr])
            p = np.asarray(pipe.predict_proba(X.iloc[va]), dtype="float64")
            if p.shape[1] != k:
                raise DataError(f"model {name} fold {f}: predicted {p.shape[1]} classes, expected {k}")
            proba[va] = p
            per_fold[name].append(compute(y[va], p, k))
            if opts.importance_repeats:
                r = permutation_importance(
                    pipe, X.iloc[va], y[va], scoring=scorer, n_repeats=opts.importance_repeats,
                    random_state=opts.seed, n_jobs=1,
                )
                imps.append(r.importances)  # (features, repeats)
            done += 1
            if progress:
                progress(f"{name} fold {f + 1}/{len(splits)}", done, total)
        if np.isnan(proba).any():  # pragma: no cover - every row is in exactly one validation fold
            raise DataError("internal error: some rows got no out-of-fold prediction")
        oof[name] = proba
        if imps:
            allv = np.concatenate(imps, axis=1)
            importance[name] = [(c, float(allv[i].mean()), float(allv[i].std())) for i, c in enumerate(X.columns)]
    return oof, fold_of, per_fold, importance


def protocol_sentence(n: int, opts: TrainOptions, smote_k: int | None) -> str:
    smote = f"SMOTE (k={smote_k}) inside each training fold only" if opts.smote else "no resampling"
    return (
        f"{opts.folds}-fold stratified cross-validation (shuffled, seed {opts.seed}) over {n} rows; metrics on the "
        f"pooled out-of-fold predictions; {smote}; 95% CIs: percentile bootstrap ({opts.bootstrap} resamples) of "
        f"the out-of-fold predictions (rows resampled; refitting variability not included; the per-fold spread is "
        f"reported beside it); fixed hyper-parameters, no tuning; saved models refit on all {n} rows"
    )


def train_tabular(
    csv: str | os.PathLike,
    out: str | os.PathLike,
    opts: TrainOptions,
    command: str | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Cross-validate every model in ``opts.models`` on ``csv`` and write the run directory ``out``."""
    require("pandas", "tabular")
    require("skops.io", "tabular")
    csv = Path(csv)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "tabular.json").is_file())):
        raise ConfigError(f"{out}: exists and is not a tabular run; choose another --out")
    df = read_table(csv)
    data = prepare(df, opts)
    y, schema = data.y, data.schema
    labels = list(schema.labels)
    k = len(labels)
    smote_k = smote_neighbours(y, opts.folds, opts.seed) if opts.smote else None
    if opts.smote and smote_k is not None and smote_k < 1:
        raise DataError("SMOTE needs at least 2 rows of every class in each training fold; use fewer folds or no --smote")
    cv = _CrossValidated(data, labels, *cross_validate(data, opts, progress))
    metrics = {name: bootstrap(y, p, k, opts.bootstrap, opts.seed) for name, p in cv.oof.items()}
    selected = max(opts.models, key=lambda m: (np.nan_to_num(metrics[m]["roc_auc"].value, nan=-1.0)))
    protocol = protocol_sentence(len(y), opts, smote_k)
    class_counts = {lab: int(c) for lab, c in zip(labels, np.bincount(y, minlength=k))}
    result = TrainResult(Path(out), schema, metrics, cv.per_fold, selected, len(y), class_counts, protocol, data.leakage)

    def build(tmp: Path) -> dict[str, Any]:
        models_meta = _refit_models(tmp, data, opts, smote_k, progress)
        _write_tables(tmp, cv, metrics, opts)
        pngs = _write_pngs(tmp, cv, metrics, f"Out-of-fold ROC ({csv.name}, {len(y)} rows)") if opts.plots else []
        atomic_write_text(tmp / "report.md", run_report(result, csv, opts, pngs, cv.importance))
        return {
            "task": "clinical risk model (tabular classification)",
            "schema": schema.to_dict(),
            "labels": labels,
            "models": models_meta,
            "selected": selected,
            "selection_rule": "highest out-of-fold ROC-AUC (point estimate)",
            "metrics": {n: {m: e.to_dict() for m, e in metrics[n].items()} for n in metrics},
            "fold_metrics": cv.per_fold,
            "protocol": protocol,
            "options": {"smote": opts.smote, "smote_k": smote_k, "folds": opts.folds, "seed": opts.seed, "trees": opts.trees,
                        "bootstrap": opts.bootstrap, "importance_repeats": opts.importance_repeats},
            "leakage": data.leakage.to_dict(),
            "data": {"csv": str(csv.resolve()), "sha256": sha256_file(csv), "rows_in_csv": len(df), "rows_used": len(y),
                     "rows_without_target": data.dropped_no_target, "class_counts": class_counts},
            "provenance": {"command": command},
            "versions": runtime_versions(("scikit-learn", "imbalanced-learn", "xgboost", "pandas", "skops")),
        }

    write_run(Path(out), build)
    result.written = sorted(p.name for p in Path(out).iterdir())
    return result


@dataclass
class _CrossValidated:
    """What :func:`cross_validate` returned, beside the data it was cut from."""

    data: PreparedData
    labels: list[str]
    oof: dict[str, np.ndarray]
    fold_of: np.ndarray
    per_fold: dict[str, list[dict[str, float]]]
    importance: dict[str, list[tuple[str, float, float]]]


def _refit_models(tmp: Path, data: PreparedData, opts: TrainOptions, smote_k: int | None, progress: Progress | None) -> dict[str, Any]:
    """Every model refitted on all rows and saved as ``models/<name>.skops``; returns their manifest records."""
    models_meta = {}
    for name in opts.models:
        pipe = build_pipeline(name, data.schema, smote=opts.smote, smote_k=smote_k or 5, seed=opts.seed, n_jobs=opts.n_jobs, trees=opts.trees)
        pipe.fit(data.X, data.y)
        save_model(pipe, tmp / "models" / f"{name}.skops")
        models_meta[name] = {"file": f"models/{name}.skops", "title": MODELS[name].title, "params": MODELS[name].params}
        if progress:
            progress(f"refit {name} on all rows", 1, 1)
    return models_meta


def _write_tables(tmp: Path, cv: _CrossValidated, metrics: dict[str, dict[str, Estimate]], opts: TrainOptions) -> None:
    """oof_predictions.csv (long format), metrics.csv, importance.csv (when measured) and leakage.csv."""
    import pandas as pd

    data, labels, y = cv.data, cv.labels, cv.data.y
    frames = []
    for name, p in cv.oof.items():
        fr = pd.DataFrame({"row_index": data.rows, "id": data.ids if data.ids is not None else [""] * len(y), "fold": cv.fold_of,
                           "model": name, "label": [labels[i] for i in y], "pred": [labels[i] for i in p.argmax(1)]})
        for c, lab in enumerate(labels):
            fr[f"p_{lab}"] = p[:, c]
        frames.append(fr)
    atomic_write_text(tmp / "oof_predictions.csv", safe_frame(pd.concat(frames)).to_csv(index=False))
    rows = []
    for name in opts.models:
        for m in METRIC_NAMES:
            e = metrics[name][m]
            fold_vals = np.array([fm[m] for fm in cv.per_fold[name]], dtype="float64")
            rows.append({"model": name, "metric": m, "value": e.value, "ci_low": e.low, "ci_high": e.high,
                         "fold_mean": np.nanmean(fold_vals), "fold_sd": np.nanstd(fold_vals, ddof=1), "n": e.n})
    atomic_write_text(tmp / "metrics.csv", safe_frame(pd.DataFrame(rows)).to_csv(index=False, float_format="%.4f"))
    if cv.importance:
        imp_rows = [{"model": n, "feature": f, "mean_auc_drop": m, "sd": s} for n, v in cv.importance.items() for f, m, s in v]
        atomic_write_text(tmp / "importance.csv", safe_frame(pd.DataFrame(imp_rows)).to_csv(index=False, float_format="%.5f"))
    lk = data.leakage
    leak_rows = [{"column": c, "single_feature_auc": a, "flagged": lk.flagged.get(c, ""), "allowed_on_purpose": c in lk.allowed}
                 for c, a in sorted(lk.scores.items(), key=lambda kv: -kv[1])]
    atomic_write_text(tmp / "leakage.csv", safe_frame(pd.DataFrame(leak_rows)).to_csv(index=False, float_format="%.4f"))


def _write_pngs(tmp: Path, cv: _CrossValidated, metrics: dict[str, dict[str, Estimate]], roc_title: str) -> list[str]:
    """roc.png and (when measured) importance.png; returns the names written."""
    from .plots import importance_figure, roc_figure

    roc_figure(cv.data.y, cv.oof, cv.labels, {n: metrics[n]["roc_auc"] for n in cv.oof}, roc_title, tmp / "roc.png")
    pngs = ["roc.png"]
    if cv.importance:
        importance_figure(cv.importance, tmp / "importance.png")
        pngs.append("importance.png")
    return pngs


def _fmt_row(name: str, ms: dict[str, Estimate], per_fold: list[dict[str, float]]) -> str:
    cells = []
    for m in METRIC_NAMES:
        vals = np.array([f[m] for f in per_fold], dtype="float64")
        cells.append(f"{ms[m].fmt()} <br>folds {np.nanmean(vals):.3f} ± {np.nanstd(vals, ddof=1):.3f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def run_report(
    result: TrainResult, csv: Path, opts: TrainOptions, pngs: Sequence[str], importance: dict[str, list[tuple[str, float, float]]]
) -> str:
    s = result.schema
    lines = [
        f"# Clinical risk model: {csv.name} -> {s.target}",
        "",
        f"> {DISCLAIMER} The models give screening-aid risk estimates from clinical/lifestyle variables, "
        "not a diagnosis: a person at risk is referred for DEXA.",
        "",
        f"Rows: {result.n_rows}; classes: " + ", ".join(f"{k} {v}" for k, v in result.class_counts.items()) + ".",
        f"Features ({len(s.features)}): " + ", ".join(f"`{c.name}` ({c.kind})" for c in s.features) + ".",
    ]
    if s.id_column:
        lines.append(f"Id column (not a feature): `{s.id_column}`.")
    if s.ignored:
        lines.append("Dropped on request: " + ", ".join(f"`{c}`" for c in s.ignored) + ".")
    lines += [
        "",
        f"Protocol: {result.protocol}.",
        "",
        "| model | ROC-AUC" + (" (macro one-vs-rest)" if len(s.labels) > 2 else "") + " | accuracy | balanced accuracy | F1 (macro) |",
        "|---|---|---|---|---|",
    ]
    for name in result.metrics:
        lines.append(_fmt_row(name, result.metrics[name], result.fold_metrics[name]))
    lines += [
        "",
        f"Values: pooled out-of-fold estimate [95% bootstrap CI]; below it, mean ± sd over the {opts.folds} folds. "
        f"Default model for `tabular predict`: **{result.selected}** (highest point ROC-AUC; overlapping CIs mean "
        "the models are not distinguishable on this data).",
        "",
        "## Leakage guard",
        "",
        "Single-feature out-of-fold ROC-AUC of every feature (a near-perfect proxy would be refused at "
        f">= {result.leakage.threshold:g}):",
        "",
        "| feature | single-feature AUC |",
        "|---|---|",
    ]
    for c, a in sorted(result.leakage.scores.items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"| `{c}` | {a:.3f}{' (ALLOWED ON PURPOSE: ' + result.leakage.flagged[c] + ')' if c in result.leakage.allowed else ''} |")
    if importance:
        lines += ["", "## Permutation importance (drop in out-of-fold ROC-AUC when a column is shuffled, validation folds)", ""]
        for name, v in importance.items():
            top = sorted(v, key=lambda r: -r[1])[:5]
            lines.append(f"- {name}: " + ", ".join(f"`{f}` {m:.3f}" for f, m, _ in top))
    lines.append("")
    for p in pngs:
        lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)
