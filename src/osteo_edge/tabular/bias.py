"""Bias analysis: metrics per age band and per sex, with counts, 95% CIs and "too small" flags.

Two kinds of cohorts:

- a tabular run: its out-of-fold predictions (every model), joined back to the training CSV by
  row number (the CSV must be the one the run was trained on: its sha256 is checked);
- an image model: a ``predictions.csv`` from ``osteo-edge evaluate``, Wani rows of the chosen
  splits (default val and test), joined to the Wani clinical table on file stem = patient id.

A group is **too small to conclude** when it has fewer than ``min_n`` people (default 30) or fewer
than ``min_class`` (default 5) of some class; its numbers are still shown, greyed in the plots. For
the other groups the report gives the ROC-AUC difference from the rest of the cohort with a 95%
CI (independent bootstrap of the two disjoint sets) and says "differs" only when it excludes 0.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import DISCLAIMER, atomic_write_text, sha256_file
from ..core.age_bands import AGE_EDGES, age_band, band_order
from ..core.csvsafe import safe_frame
from ..core.stats import Estimate
from ..errors import ConfigError, DataError, require
from .fusion import DEFAULT_SOURCE, DEFAULT_SPLITS, read_image_predictions
from .metrics import DEFAULT_BOOTSTRAP, METRIC_NAMES, bootstrap, bootstrap_difference
from .store import load_run
from .table import read_table, resolve_column

log = logging.getLogger(__name__)

MIN_N = 30
MIN_CLASS = 5
SEX_NAMES = ("sex", "gender")


def parse_edges(text: str | None) -> tuple[float, ...]:
    if not text:
        return AGE_EDGES
    try:
        edges = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise ConfigError(f"--age-bands must be comma-separated ages like 40,50,60,70, got {text!r}") from exc
    if not edges or list(edges) != sorted(set(edges)):
        raise ConfigError(f"--age-bands must be increasing ages like 40,50,60,70, got {text!r}")
    return edges


@dataclass
class Cohort:
    """One set of predictions to analyse: y codes, probabilities per predictor, and the people's attributes."""

    title: str
    population: str
    labels: list[str]
    y: np.ndarray
    probas: dict[str, np.ndarray]
    age: np.ndarray
    sex: np.ndarray


@dataclass
class BiasResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    cohorts: list[Cohort] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def _sex_column(columns: Sequence[str], name: str | None) -> str:
    if name:
        return resolve_column(name, columns, "--sex-col column")
    for cand in SEX_NAMES:
        try:
            return resolve_column(cand, columns)
        except ConfigError:
            continue
    raise ConfigError(f"no sex/gender column found; pass --sex-col; columns: {list(columns)}")


def tabular_cohort(run_dir: str | os.PathLike, csv: str | os.PathLike, age_col: str | None, sex_col: str | None) -> Cohort:
    run = load_run(run_dir)
    csv = Path(csv)
    want = run.manifest.get("data", {}).get("sha256")
    if want and sha256_file(csv) != want:
        raise DataError(f"{csv}: is not the CSV the run {run.path} was trained on (sha256 differs); pass that CSV")
    df = read_table(csv)
    cols = [str(c) for c in df.columns]
    age_c = resolve_column(age_col or "age", cols, "--age-col column")
    sex_c = _sex_column(cols, sex_col)
    oof = run.oof()
    labels = run.labels
    code = {lab: i for i, lab in enumerate(labels)}
    probas = {}
    y = None
    rows = None
    for name in run.model_names:
        part = oof[oof["model"] == name].sort_values("row_index")
        if rows is None:
            rows = part["row_index"].to_numpy(dtype=int)
            y = part["label"].astype(str).map(code).to_numpy(dtype=int)
        probas[name] = part[[f"p_{lab}" for lab in labels]].to_numpy(dtype="float64")
    assert rows is not None and y is not None
    sub = df.iloc[rows]
    return Cohort(
        title=f"clinical models on {csv.name} (out-of-fold)",
        population=f"{len(rows)} rows of {csv.name}; {run.manifest.get('protocol', '')}",
        labels=labels, y=y, probas=probas,
        age=sub[age_c].to_numpy(), sex=sub[sex_c].astype("object").map(lambda v: str(v).strip().casefold() if v == v else "unknown").to_numpy(),
    )


def image_cohort(
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    clinical_csv: str | os.PathLike,
    id_col: str,
    age_col: str | None,
    sex_col: str | None,
    splits: Sequence[str] = DEFAULT_SPLITS,
    source: str | None = DEFAULT_SOURCE,
    duplicates: str | os.PathLike | None = None,
) -> Cohort:
    img, labels, counts = read_image_predictions(predictions, source, splits, duplicates)
    df = read_table(clinical_csv)
    cols = [str(c) for c in df.columns]
    idc = resolve_column(id_col, cols, "--id-col column")
    age_c = resolve_column(age_col or "age", cols, "--age-col column")
    sex_c = _sex_column(cols, sex_col)
    clin = df[[idc, age_c, sex_c]].copy()
    clin[idc] = clin[idc].astype(str)
    merged = img.merge(clin, left_on="id", right_on=idc, how="left")
    unmatched = len(set(img["id"]) - set(clin[idc]))
    if unmatched:
        log.warning("%d image patient(s) have no row in %s; their age/sex is 'unknown'", unmatched, clinical_csv)
    code = {lab: i for i, lab in enumerate(labels)}
    if not set(merged["label"].astype(str)) <= set(code):
        raise DataError(f"image predictions: labels {sorted(set(merged['label'].astype(str)))} are not all in its p_ columns {labels}")
    y = merged["label"].astype(str).map(code).to_numpy(dtype=int)
    p = merged[[f"p_{lab}" for lab in labels]].to_numpy(dtype="float64")
    first = Path(predictions if isinstance(predictions, (str, os.PathLike)) else predictions[0])
    return Cohort(
        title=f"image model ({(first.parents[2] if first.parent.parent.name == 'eval' else first.parent).as_posix()}) on Wani images",
        population=(f"{len(y)} Wani patients with images in split(s) {', '.join(splits)} (image labels; never training images"
                    + (f"; {counts.get('patients_only_via_copies', 0)} of them only through a copy in another source" if duplicates else "")
                    + ")"),
        labels=labels, y=y, probas={"image": p},
        age=merged[age_c].to_numpy(), sex=merged[sex_c].astype("object").map(lambda v: str(v).strip().casefold() if v == v else "unknown").to_numpy(),
    )


def small_reason(y: np.ndarray, labels: Sequence[str], min_n: int, min_class: int) -> str:
    n = len(y)
    if n < min_n:
        return f"n={n} < {min_n}"
    counts = np.bincount(y, minlength=len(labels))
    absent = [labels[i] for i, c in enumerate(counts) if c == 0]
    if absent:
        return f"no {', '.join(repr(a) for a in absent)} cases: ROC-AUC undefined"
    few = [f"{labels[i]} {int(c)}" for i, c in enumerate(counts) if c < min_class]
    if few:
        return f"fewer than {min_class} of: {', '.join(few)}"
    return ""


def _verdict_word(reason: str) -> str:
    return "cannot conclude" if reason.startswith("no ") else "too small to conclude"


def analyse(
    cohort: Cohort, edges: Sequence[float], n_boot: int, seed: int, min_n: int = MIN_N, min_class: int = MIN_CLASS
) -> list[dict[str, Any]]:
    k = len(cohort.labels)
    bands = np.array([age_band(a, edges) for a in cohort.age], dtype=object)
    axes = {"all": np.array(["all"] * len(cohort.y), dtype=object), "age band": bands, "sex": cohort.sex}
    orders = {"all": ["all"], "age band": band_order(edges), "sex": sorted(set(cohort.sex))}
    rows = []
    overall: dict[str, dict[str, Estimate]] = {}
    for pred, proba in cohort.probas.items():
        for axis, groups in axes.items():
            for g in orders[axis]:
                m = groups == g
                if not m.any():
                    continue
                est = bootstrap(cohort.y[m], proba[m], k, n_boot, seed)
                if axis == "all":
                    overall[pred] = est
                reason = small_reason(cohort.y[m], cohort.labels, min_n, min_class)
                row: dict[str, Any] = {
                    "cohort": cohort.title, "predictor": pred, "axis": axis, "group": g, "n": int(m.sum()),
                    "class_counts": {cohort.labels[i]: int(c) for i, c in enumerate(np.bincount(cohort.y[m], minlength=k))},
                    "too_small": bool(reason) and axis != "all", "reason": reason, **est,
                }
                row["vs_rest"] = None
                rest_reason = small_reason(cohort.y[~m], cohort.labels, min_n, min_class) if (~m).any() else "empty"
                if axis != "all" and not reason and rest_reason:
                    row["vs_overall"] = f"not compared: the rest of the cohort is unusable ({rest_reason})"
                elif axis != "all" and not reason:
                    d = bootstrap_difference(cohort.y[m], proba[m], cohort.y[~m], proba[~m], k, "roc_auc", n_boot, seed)
                    row["vs_rest"] = d
                    if np.isnan(d.low):
                        row["vs_overall"] = "no CI for the difference"
                    elif d.low > 0 or d.high < 0:
                        row["vs_overall"] = f"ROC-AUC differs from the rest: {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
                    else:
                        row["vs_overall"] = f"no evidence of a difference from the rest ({d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}])"
                else:
                    row["vs_overall"] = ""
                rows.append(row)
    return rows


def bias_report(
    out: str | os.PathLike,
    cohorts: Sequence[Cohort],
    edges: Sequence[float] = AGE_EDGES,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    min_n: int = MIN_N,
    min_class: int = MIN_CLASS,
    plots: bool = True,
) -> BiasResult:
    pd = require("pandas", "tabular")
    if not cohorts:
        raise ConfigError("nothing to analyse: give a tabular run (--run and --csv) and/or image predictions (--image-predictions)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = BiasResult(cohorts=list(cohorts))
    for c in cohorts:
        res.rows += analyse(c, edges, n_boot, seed, min_n, min_class)
    flat = []
    for r in res.rows:
        d = {k: v for k, v in r.items() if k not in METRIC_NAMES and k not in ("class_counts", "vs_rest")}
        vr = r.get("vs_rest")
        d["roc_auc_minus_rest"], d["diff_ci_low"], d["diff_ci_high"] = (vr.value, vr.low, vr.high) if vr else (np.nan, np.nan, np.nan)
        d["class_counts"] = "; ".join(f"{k} {v}" for k, v in r["class_counts"].items())
        for m in METRIC_NAMES:
            d[m], d[f"{m}_ci_low"], d[f"{m}_ci_high"] = r[m].value, r[m].low, r[m].high
        flat.append(d)
    res.written.append(atomic_write_text(out / "bias.csv", safe_frame(pd.DataFrame(flat)).to_csv(index=False, float_format="%.4f")))
    pngs: list[tuple[str, str]] = []
    if plots:
        from .plots import group_metric_figure

        for ci, c in enumerate(cohorts):
            for axis in ("age band", "sex"):
                rows = [r for r in res.rows if r["cohort"] == c.title and r["axis"] == axis]
                overall = {r["predictor"]: r["roc_auc"].value for r in res.rows if r["cohort"] == c.title and r["axis"] == "all"}
                for metric in ("roc_auc", "accuracy"):
                    name = f"bias_{ci}_{axis.replace(' ', '_')}_{metric}.png"
                    group_metric_figure(rows, metric, overall if metric == "roc_auc" else
                                        {r["predictor"]: r["accuracy"].value for r in res.rows if r["cohort"] == c.title and r["axis"] == "all"},
                                        f"{c.title}\n{metric.replace('_', ' ')} by {axis} (95% CI; dotted: overall)", out / name)
                    pngs.append((c.title, name))
                    res.written.append(out / name)
    res.written.append(atomic_write_text(out / "report.md", bias_markdown(res, edges, n_boot, min_n, min_class, pngs)))
    return res


def bias_markdown(res: BiasResult, edges: Sequence[float], n_boot: int, min_n: int, min_class: int, pngs: Sequence[tuple[str, str]]) -> str:
    lines = [
        "# Bias analysis: metrics per age band and sex",
        "",
        f"> {DISCLAIMER}",
        "",
        f"Age bands: edges {', '.join(f'{e:g}' for e in edges)}. Values: point estimate [95% percentile bootstrap CI, "
        f"{n_boot} resamples within the group]. A group is **too small to conclude** when n < {min_n} or a class has "
        f"fewer than {min_class} members; its numbers are shown for completeness only. For the other groups, the "
        "conclusion compares the group's ROC-AUC with the rest of the cohort (difference, 95% CI from independent "
        "bootstrap resamples of the two). ROC-AUC is macro one-vs-rest "
        "when there are more than two classes, and n/a when a class is absent from the group.",
        "",
    ]
    for c in res.cohorts:
        lines += [f"## {c.title}", "", f"Population: {c.population}.", ""]
        rows = [r for r in res.rows if r["cohort"] == c.title]
        for pred in c.probas:
            lines += [f"### {pred}", "", "| axis | group | n | classes | ROC-AUC | accuracy | F1 (macro) | conclusion |", "|---|---|---|---|---|---|---|---|"]
            for r in [r for r in rows if r["predictor"] == pred]:
                concl = f"{_verdict_word(r['reason'])} ({r['reason']})" if r["too_small"] else (r["vs_overall"] or "-")
                cc = ", ".join(f"{k} {v}" for k, v in r["class_counts"].items())
                lines.append(f"| {r['axis']} | {r['group']} | {r['n']} | {cc} | {r['roc_auc'].fmt()} | {r['accuracy'].fmt()} | {r['f1_macro'].fmt()} | {concl} |")
            lines.append("")
        small = sorted({f"{r['axis']} {r['group']}" for r in rows if r["too_small"] and not r["reason"].startswith("no ")})
        undefined = sorted({f"{r['axis']} {r['group']}" for r in rows if r["too_small"] and r["reason"].startswith("no ")})
        single = sorted({f"{r['axis']} {r['group']} (n={r['n']}, all {next(k for k, v in r['class_counts'].items() if v)})"
                         for r in rows if r["axis"] != "all" and r["n"] >= min_n and sum(1 for v in r["class_counts"].values() if v) == 1})
        differ = sorted({f"{r['predictor']}: {r['axis']} {r['group']}" for r in rows if r["vs_overall"].startswith("ROC-AUC differs")})
        lines.append("**What can be concluded.** " + (
            f"Too small to conclude anything: {', '.join(small)}. " if small else "No group is too small by the size rule. "
        ) + (
            f"A class is missing (ROC-AUC undefined, no conclusion on discrimination): {', '.join(undefined)}. " if undefined else ""
        ) + (
            f"Groups whose ROC-AUC differs from the rest of the cohort (95% CI of the difference excludes 0): "
            f"{'; '.join(differ)}; with several groups and models compared, one such result can be chance. " if differ else
            "No group large enough to judge has a ROC-AUC that differs from the rest of the cohort (every 95% CI of "
            "the difference spans 0): no evidence of a difference at this sample size, which is not evidence of "
            "no difference. "
        ) + (
            f"Groups of a single class although not small: {', '.join(single)}. In these data the label is fixed by "
            "that attribute there, so discrimination inside the group cannot be measured, and much of the overall "
            "ROC-AUC comes from separating such groups (e.g. by age) rather than from the other risk factors. " if single else ""
        ))
        lines.append("")
        for title, p in pngs:
            if title == c.title:
                lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)
