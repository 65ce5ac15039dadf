"""`osteo-edge tabular train | predict | bias | fuse`: clinical risk models (screening-aid risk estimates)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import _output as o
from ._common import handle_errors

tabular_app = typer.Typer(
    help=(
        "Clinical risk models on tabular data (logistic regression, random forest, XGBoost) with a leakage guard, "
        "SMOTE inside the training folds only, bias analysis and image+clinical late fusion. Outputs are "
        "screening-aid risk estimates, never a diagnosis."
    ),
    no_args_is_help=True,
)


def _names(values: Optional[List[str]]) -> tuple[str, ...]:
    from ..tabular.table import split_names

    out: list[str] = []
    for v in values or []:
        out += split_names(v)
    return tuple(out)


def _splits(text: str) -> tuple[str, ...]:
    from ..errors import ConfigError

    vals = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in vals if s not in ("train", "val", "test")]
    if not vals or bad:
        raise ConfigError(f"unknown split(s) {bad or [text]} in --splits; valid: train, val, test")
    return vals


def _disclaimer() -> None:
    from ..artifact import DISCLAIMER

    o.line(DISCLAIMER, dim=True)


@tabular_app.command("train")
@handle_errors
def train(
    csv: Annotated[Path, typer.Option("--csv", help="Training table (CSV with a header row).")],
    target: Annotated[str, typer.Option("--target", help="Column to predict.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to write (models, schema, metrics, plots).")],
    models: Annotated[str, typer.Option("--models", help="Comma-separated: logreg, rf, xgboost.")] = "logreg,rf,xgboost",
    smote: Annotated[bool, typer.Option("--smote/--no-smote", help="SMOTE oversampling inside each training fold only.")] = False,
    folds: Annotated[int, typer.Option("--folds", help="Stratified cross-validation folds.")] = 5,
    drop: Annotated[Optional[List[str]], typer.Option("--drop", help="Columns not to use (comma-separated; repeatable).")] = None,
    id_col: Annotated[Optional[str], typer.Option("--id-col", help="Row/patient id column: kept beside predictions, never a feature.")] = None,
    allow_leaky: Annotated[Optional[List[str]], typer.Option("--allow-leaky", help="Keep these flagged columns anyway (loud warning; metrics become meaningless).")] = None,
    leak_threshold: Annotated[float, typer.Option("--leak-threshold", help="Refuse a feature whose single-feature CV ROC-AUC reaches this.")] = 0.95,
    seed: Annotated[int, typer.Option("--seed", help="Seed for folds, models, SMOTE and bootstrap.")] = 0,
    jobs: Annotated[int, typer.Option("--jobs", help="Threads for random forest / XGBoost.")] = 1,
    trees: Annotated[int, typer.Option("--trees", help="Trees for random forest / XGBoost.")] = 300,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the 95% CIs.")] = 1000,
    importance_repeats: Annotated[int, typer.Option("--importance-repeats", help="Permutation-importance repeats per fold (0: off).")] = 5,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write ROC and importance PNGs.")] = True,
) -> None:
    """Cross-validate clinical risk models, refuse leaky features, save the models with their input schema."""
    from ..core.progress import TerminalProgress
    from ..tabular.models import parse_models
    from ..tabular.train import TrainOptions, train_tabular

    opts = TrainOptions(
        target=target, models=tuple(parse_models(models)), smote=smote, folds=folds, drop=_names(drop),
        id_column=id_col, allow_leaky=_names(allow_leaky), leak_threshold=leak_threshold, seed=seed, n_jobs=jobs,
        trees=trees, bootstrap=bootstrap, importance_repeats=importance_repeats, plots=plots,
    )
    with TerminalProgress("cross-validation") as progress:
        res = train_tabular(csv, out, opts, command=shlex.join(["osteo-edge", *sys.argv[1:]]), progress=progress)
    rows = [[name + (" *" if name == res.selected else ""), *(ms[k].fmt() for k in ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro"))]
            for name, ms in res.metrics.items()]
    o.table(f"{csv.name} -> {res.schema.target}: out-of-fold metrics [95% bootstrap CI]",
            [o.Col("model"), *(o.Col(m, right=True) for m in ("ROC-AUC", "accuracy", "bal. accuracy", "F1 macro"))], rows)
    o.line(f"rows {res.n_rows}; classes {o.mapping_text({str(k): v for k, v in res.class_counts.items()})}; * = default model for predict")
    o.line(f"protocol: {res.protocol}")
    for c in res.leakage.allowed:
        o.line(f"WARNING: leaky feature {c} kept on purpose ({res.leakage.flagged[c]})", style="bold red")
    o.line(f"wrote {out} ({', '.join(res.written)})")
    _disclaimer()
    o.next_step(f"osteo-edge tabular predict --model {out} --csv NEW.csv --out risk.csv")


@tabular_app.command("predict")
@handle_errors
def predict(
    model: Annotated[Path, typer.Option("--model", help="A run directory from 'tabular train'.")],
    csv: Annotated[Path, typer.Option("--csv", help="Table with the same feature columns as in training.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the risk estimates to this CSV.")] = None,
    estimator: Annotated[Optional[str], typer.Option("--estimator", help="Which model of the run (default: the run's best by CV ROC-AUC).")] = None,
    show: Annotated[int, typer.Option("--show", help="Rows to print.")] = 10,
) -> None:
    """Screening-aid risk estimates for every row of a CSV (schema-checked against the training table)."""
    from ..tabular.store import load_run, predict_frame, write_predictions_csv
    from ..tabular.table import read_table

    run = load_run(model)
    res = predict_frame(run, read_table(csv), estimator, source=str(csv))
    if out:
        write_predictions_csv(res, out)
    pcols = [c for c in res.columns if c.startswith("p_")]
    rows = [[*([str(r["id"])] if "id" in res else []), str(r["row"]), str(r["pred"]), *(f"{r[c]:.3f}" for c in pcols)]
            for _, r in res.head(show).iterrows()]
    o.table(f"risk estimates ({res['model'].iloc[0]}), first {min(show, len(res))} of {len(res)} rows",
            [*(o.Col(c) for c in (["id"] if "id" in res else []) + ["row", "pred"]), *(o.Col(c, right=True) for c in pcols)], rows)
    if out:
        o.wrote([out])
    _disclaimer()
    o.next_step(f"osteo-edge tabular bias --run {model} --csv {csv} --out BIAS_DIR")


@tabular_app.command("bias")
@handle_errors
def bias(
    out: Annotated[Path, typer.Option("--out", help="Directory for bias.csv, report.md and PNGs.")],
    run: Annotated[Optional[Path], typer.Option("--run", help="A tabular run: analyse its out-of-fold predictions.")] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="The CSV that run was trained on (age and sex are read from it).")] = None,
    image_predictions: Annotated[Optional[List[Path]], typer.Option("--image-predictions", help="predictions.csv from 'osteo-edge evaluate' (repeatable: val and test).")] = None,
    clinical: Annotated[Optional[Path], typer.Option("--clinical", help="Wani clinical table for the image predictions (age, sex by patient id).")] = None,
    id_col: Annotated[str, typer.Option("--id-col", help="Patient id column of --clinical (= image file stem).")] = "Patient Id",
    age_col: Annotated[Optional[str], typer.Option("--age-col", help="Age column (default: 'Age').")] = None,
    sex_col: Annotated[Optional[str], typer.Option("--sex-col", help="Sex column (default: 'Sex' or 'Gender').")] = None,
    age_bands: Annotated[Optional[str], typer.Option("--age-bands", help="Band edges, e.g. 40,50,60,70.")] = None,
    splits: Annotated[str, typer.Option("--splits", help="Image splits to use (never train unless you mean it).")] = "val,test",
    source: Annotated[str, typer.Option("--source", help="Image source name in predictions.csv ('' = all).")] = "wani-mendeley",
    duplicates: Annotated[Optional[Path], typer.Option("--duplicates", help="A split.csv made with --members all over the same sources: attributes held-out copies from other sources to their Wani patients.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples per group.")] = 1000,
    min_n: Annotated[int, typer.Option("--min-n", help="Groups smaller than this are 'too small to conclude'.")] = 30,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Metrics per age band and sex (counts, 95% CIs, 'too small to conclude' flags) for tabular and image models."""
    from ..errors import ConfigError
    from ..tabular.bias import bias_report, image_cohort, parse_edges, tabular_cohort

    edges = parse_edges(age_bands)
    cohorts = []
    if run is not None:
        if csv is None:
            raise ConfigError("--run needs --csv (the table the run was trained on)")
        cohorts.append(tabular_cohort(run, csv, age_col, sex_col))
    if image_predictions:
        if clinical is None:
            raise ConfigError("--image-predictions needs --clinical (the Wani patient table)")
        cohorts.append(image_cohort(image_predictions, clinical, id_col, age_col, sex_col, _splits(splits), source or None, duplicates))
    res = bias_report(out, cohorts, edges, bootstrap, seed, min_n)
    for c in res.cohorts:
        rows = []
        for r in [r for r in res.rows if r["cohort"] == c.title]:
            note = (f"cannot conclude ({r['reason']})" if r["reason"].startswith("no ") else "too small to conclude") if r["too_small"] else r["vs_overall"]
            rows.append([r["predictor"], r["axis"], str(r["group"]), str(r["n"]), r["roc_auc"].fmt(), r["accuracy"].fmt(), note])
        o.table(c.title, [*(o.Col(x) for x in ("predictor", "axis", "group")), o.Col("n", right=True), o.Col("ROC-AUC [95% CI]", right=True),
                          o.Col("accuracy", right=True), o.Col("note", wrap=True)], rows)
    o.line(f"wrote {out / 'report.md'}, {out / 'bias.csv'} and {sum(1 for p in res.written if p.suffix == '.png')} PNGs")
    _disclaimer()


@tabular_app.command("fuse")
@handle_errors
def fuse(
    run: Annotated[Path, typer.Option("--run", help="A tabular run on the Wani clinical table, trained with --id-col.")],
    predictions: Annotated[List[Path], typer.Option("--predictions", help="predictions.csv from 'osteo-edge evaluate' (repeatable: RUN/eval/val and RUN/eval/test).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for fusion_metrics.csv, report.md and PNGs.")],
    estimator: Annotated[Optional[str], typer.Option("--estimator", help="Clinical model of the run (default: the run's best).")] = None,
    splits: Annotated[str, typer.Option("--splits", help="Image splits to use (never train unless you mean it).")] = "val,test",
    source: Annotated[str, typer.Option("--source", help="Image source name in predictions.csv ('' = all).")] = "wani-mendeley",
    duplicates: Annotated[Optional[Path], typer.Option("--duplicates", help="A split.csv made with --members all over the same sources: attributes held-out copies from other sources to their Wani patients.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Paired bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Late fusion of the image model's calibrated probabilities with the clinical model, with paired CIs."""
    from ..tabular.fusion import fuse as _fuse
    from ..tabular.fusion import verdict

    res = _fuse(run, predictions, out, estimator, _splits(splits), source or None, bootstrap, seed, duplicates=duplicates)
    metrics = list(next(iter(res.single.values())))
    o.table(f"late fusion, n={res.n_patients} patients ({', '.join(f'{k} {v}' for k, v in res.class_counts.items())})",
            [o.Col("predictor"), *(o.Col(m, right=True) for m in metrics)], [[name, *(ms[m].fmt() for m in metrics)] for name, ms in res.single.items()])
    for (a, b), ms in res.diffs.items():
        e = ms["roc_auc"]
        o.line(f"{a} - {b}: ROC-AUC {e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}] -> {verdict(e)}")
    o.wrote([out / "report.md"])
    _disclaimer()


def register(app: typer.Typer) -> None:
    app.add_typer(tabular_app, name="tabular")
