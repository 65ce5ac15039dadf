"""Image + clinical late fusion for the Wani patients, with paired bootstrap CIs.

Inputs: a tabular run trained on the Wani clinical table with ``--id-col "Patient Id"`` (its
out-of-fold probabilities: every patient's clinical prediction comes from a model that never saw
that patient) and a ``predictions.csv`` written by ``osteo-edge evaluate`` (contract: columns
path, source, group, split, label, pred, p_<label>..., calibrated probabilities). Only image rows
of the Wani source in the chosen splits (default val and test, never train) are used; a patient's
image id is its file stem (``OP12.jpg`` -> ``OP12``); several images of one patient are averaged.

Fusion rules, fixed in advance (nothing is fitted, so nothing can leak):

- ``mean``: the average of the two probability vectors;
- ``product``: the normalised element-wise product (log-linear pooling, as if the two were
  independent pieces of evidence; it counts the class prior twice).

The reference label is the clinical table's target (the T-score diagnosis). Each predictor's
metrics and the differences fused - image and fused - clinical use the same bootstrap resamples
of patients (paired); "beats" means the 95% CI of the difference lies above zero.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..artifact import DISCLAIMER, atomic_write_text
from ..core.csvsafe import safe_frame
from ..core.stats import Estimate, auroc
from ..errors import ConfigError, DataError, require
from .metrics import DEFAULT_BOOTSTRAP, paired_bootstrap
from .store import TabularRun, load_run

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "wani-mendeley"
DEFAULT_SPLITS = ("val", "test")
PREDICTION_COLUMNS = ("path", "split", "label")
FUSION_RULES = ("mean", "product")


def _norm(s: str) -> str:
    return str(s).strip().casefold()


def read_image_predictions(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    source: str | None = DEFAULT_SOURCE,
    splits: Sequence[str] = DEFAULT_SPLITS,
    duplicates: str | os.PathLike | None = None,
) -> tuple["pd.DataFrame", list[str], dict[str, int]]:
    """Image predictions per patient id (file stem): columns id, split, label, p_<label>; the labels; counts.

    ``paths``: one or several predictions.csv files (``osteo-edge evaluate`` writes one per subset,
    e.g. RUN/eval/val and RUN/eval/test); they must have the same label columns, and an image listed
    twice is kept once. Rows of other sources and of splits not in ``splits`` are left out, except
    that with ``duplicates`` (a split.csv made with ``--members all`` over the same sources) a
    held-out image from another source that is a copy of Wani images is attributed to those patients.
    """
    pd = require("pandas", "tabular")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ConfigError("no predictions.csv given")
    df, pcols = _read_prediction_files(pd, list(map(Path, paths)))
    path = Path(paths[0]) if len(paths) == 1 else Path(f"{len(paths)} predictions files")
    labels = [c[2:] for c in pcols]
    counts = {"rows": len(df)}
    present = sorted(df["split"].astype(str).unique())
    if "train" in splits:
        log.warning("image predictions of the training split are used: they are optimistic (the model saw them)")
    df = df[df["split"].astype(str).isin(list(splits))]
    if df.empty:
        raise DataError(f"{path}: no rows in split(s) {list(splits)}; splits present: {present}")
    counts["rows_in_splits"] = len(df)
    df = df.assign(id=[Path(str(p)).stem for p in df["path"]], via="file")
    if source:
        df = _rows_of_source(pd, df, path, source, splits, duplicates, counts)
    else:
        counts["rows_of_source"] = len(df)
    return _per_patient(df, pcols, counts), labels, counts


def _read_prediction_files(pd: Any, paths: Sequence[Path]) -> tuple["pd.DataFrame", list[str]]:
    """The rows of every file (an image listed twice kept once) and their common ``p_<label>`` columns."""
    frames = []
    pcols: list[str] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such predictions.csv (write one with 'osteo-edge evaluate')")
        one = pd.read_csv(path)
        missing = [c for c in PREDICTION_COLUMNS if c not in one.columns]
        cols = [c for c in one.columns if str(c).startswith("p_")]
        if missing or len(cols) < 2:
            raise DataError(
                f"{path}: not an 'osteo-edge evaluate' predictions.csv (missing {missing or 'p_<label> columns'}); "
                f"columns: {list(one.columns)}"
            )
        if pcols and cols != pcols:
            raise DataError(f"{path}: label columns {cols} differ from {pcols} of the other predictions file")
        pcols = cols
        frames.append(one)
    return pd.concat(frames, ignore_index=True).drop_duplicates(subset=["path"], keep="first"), pcols


def _rows_of_source(
    pd: Any, df: "pd.DataFrame", path: Path, source: str, splits: Sequence[str], duplicates: str | os.PathLike | None,
    counts: dict[str, int],
) -> "pd.DataFrame":
    """The rows of ``source``, plus (with ``duplicates``) other sources' copies of its files."""
    if "source" not in df.columns:
        raise DataError(f"{path}: has no 'source' column to select {source!r} with; pass --source ''")
    srcs = sorted(df["source"].astype(str).unique())
    own = df[df["source"].astype(str) == source]
    counts["rows_of_source"] = len(own)
    if duplicates is not None:
        others = df[df["source"].astype(str) != source]
        mapped = map_duplicates(others, duplicates, source)
        counts["rows_mapped_from_copies"] = len(mapped)
        own = pd.concat([own, mapped], ignore_index=True)
    if own.empty:
        raise DataError(f"{path}: no rows of source {source!r} in split(s) {list(splits)}; sources present: {srcs}")
    return own


def _per_patient(df: "pd.DataFrame", pcols: list[str], counts: dict[str, int]) -> "pd.DataFrame":
    """One row per patient id: images averaged (then renormalised); patients whose images disagree on the label left out."""
    conflicts = df.groupby("id")["label"].nunique()
    bad = list(conflicts[conflicts > 1].index)
    counts["patients_with_conflicting_image_labels"] = len(bad)
    if bad:
        log.warning("%d patient(s) whose images carry different labels are left out: %s", len(bad), ", ".join(bad[:5]))
        df = df[~df["id"].isin(bad)]
    agg = df.groupby("id").agg(
        split=("split", lambda s: ",".join(sorted(set(map(str, s))))),
        label=("label", "first"),
        images=("path", "size"),
        via=("via", lambda s: ",".join(sorted(set(map(str, s))))),
        **{c: (c, "mean") for c in pcols},
    ).reset_index()
    p = agg[pcols].to_numpy(dtype="float64")
    agg[pcols] = p / p.sum(axis=1, keepdims=True)
    counts["patients"] = len(agg)
    counts["patients_only_via_copies"] = int((agg["via"] == "copy").sum())
    return agg


def map_duplicates(rows: "pd.DataFrame", split_csv: str | os.PathLike, source: str) -> "pd.DataFrame":
    """Rows of other sources that are copies of ``source`` files (same duplicate group in ``split_csv``),
    one row per such ``source`` file, with ``id`` = that file's stem and ``via`` = 'copy'.

    A prediction row is found in the split by its resolved path, else by the sha256 of its file.
    A split made with ``--members one`` keeps a single file per duplicate group, often from another
    source, so without this mapping most Wani normal/osteoporosis knees would be lost.
    """
    import pandas as pd

    from ..artifact import sha256_file
    from ..data.split import read_split

    table = read_split(split_csv)
    by_path = {str(Path(r.path).resolve()): r.group for r in table.rows}
    by_sha = {r.sha256: r.group for r in table.rows if r.sha256}
    members: dict[int, list[str]] = {}
    for r in table.rows:
        if r.source == source:
            members.setdefault(r.group, []).append(Path(r.path).stem)
    out = []
    for _, row in rows.iterrows():
        p = Path(str(row["path"]))
        g = by_path.get(str(p.resolve()))
        if g is None and p.is_file():
            g = by_sha.get(sha256_file(p))
        for stem in sorted(set(members.get(g, []))) if g is not None else []:
            out.append({**row.to_dict(), "id": stem, "via": "copy"})
    return pd.DataFrame(out, columns=list(rows.columns))


def match_labels(image_labels: Sequence[str], clinical_labels: Sequence[str]) -> list[int]:
    """For each clinical label, the index of the image label with the same name (case-insensitive)."""
    idx = {_norm(lab): i for i, lab in enumerate(image_labels)}
    if set(idx) != {_norm(lab) for lab in clinical_labels}:
        raise DataError(
            f"the image model's labels {list(image_labels)} and the clinical target's labels {list(clinical_labels)} "
            "differ; fusion needs the same classes"
        )
    return [idx[_norm(lab)] for lab in clinical_labels]


def low_bmd_scorer(labels: Sequence[str]) -> Any:
    """AUC of P(low BMD) = 1 - P(normal) for 'not normal', when a label is called normal."""
    normals = [i for i, lab in enumerate(labels) if _norm(lab) == "normal"]
    if not normals or len(labels) < 3:
        return None
    j = normals[0]

    def f(y: np.ndarray, p: np.ndarray) -> float:
        return auroc(y != j, 1.0 - p[:, j])

    return f


@dataclass
class FusionResult:
    n_patients: int
    labels: list[str]
    single: dict[str, dict[str, Estimate]]
    diffs: dict[tuple[str, str], dict[str, Estimate]]
    counts: dict[str, int]
    label_disagreements: int
    estimator: str
    splits: list[str]
    class_counts: dict[str, int] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)


def fuse(
    run_dir: str | os.PathLike,
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    estimator: str | None = None,
    splits: Sequence[str] = DEFAULT_SPLITS,
    source: str | None = DEFAULT_SOURCE,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    plots: bool = True,
    duplicates: str | os.PathLike | None = None,
) -> FusionResult:
    pd = require("pandas", "tabular")
    run: TabularRun = load_run(run_dir)
    estimator = run.resolve_model(estimator)
    if not run.schema.id_column:
        raise ConfigError(f"{run.path}: trained without --id-col; retrain with --id-col \"Patient Id\" to join images by patient")
    labels = run.labels
    k = len(labels)
    oof = run.oof()
    oof = oof[oof["model"] == estimator].copy()
    oof["id"] = oof["id"].astype(str)
    img, img_labels, counts = read_image_predictions(predictions, source, splits, duplicates)
    order = match_labels(img_labels, labels)
    merged = img.merge(oof, on="id", how="inner", suffixes=("_img", ""))
    counts["patients_with_clinical_record"] = len(merged)
    counts["image_patients_without_clinical_record"] = len(img) - len(merged)
    if merged.empty:
        raise DataError(
            f"no image file stem matches a {run.schema.id_column!r} of the run (e.g. images {list(img['id'][:3])}, "
            f"clinical {list(oof['id'][:3])})"
        )
    merged = merged.sort_values("id").reset_index(drop=True)
    code = {lab: i for i, lab in enumerate(labels)}
    y = merged["label"].map(code).to_numpy(dtype=int)
    disagree = int(np.sum([_norm(a) != _norm(b) for a, b in zip(merged["label_img"], merged["label"])]))
    p_clin = merged[[f"p_{lab}" for lab in labels]].to_numpy(dtype="float64")
    p_img = merged[[f"p_{img_labels[i]}_img" if f"p_{img_labels[i]}_img" in merged else f"p_{img_labels[i]}" for i in order]].to_numpy(dtype="float64")
    prod = p_clin * p_img
    prod = prod / np.clip(prod.sum(axis=1, keepdims=True), 1e-300, None)
    probas = {"clinical": p_clin, "image": p_img, "fused_mean": (p_clin + p_img) / 2.0, "fused_product": prod}
    pairs = [(f, o) for f in ("fused_mean", "fused_product") for o in ("image", "clinical")] + [("image", "clinical")]
    extra = {}
    lb = low_bmd_scorer(labels)
    if lb:
        extra["low_bmd_auc"] = lb
    single, diffs = paired_bootstrap(y, probas, k, pairs, n_boot, seed, extra)
    result = FusionResult(len(y), labels, single, diffs, counts, disagree, estimator, list(splits),
                          {lab: int(n) for lab, n in zip(labels, np.bincount(y, minlength=k))})

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per = pd.DataFrame({"id": merged["id"], "split": merged["split"], "images": merged["images"], "label": merged["label"]})
    for name, p in probas.items():
        for c, lab in enumerate(labels):
            per[f"{name}_p_{lab}"] = p[:, c]
    result.written.append(atomic_write_text(out / "fusion_predictions.csv", safe_frame(per).to_csv(index=False, float_format="%.5f")))
    rows = []
    for name, ms in single.items():
        for m, e in ms.items():
            rows.append({"predictor": name, "metric": m, **e.to_row()})
    for (a, b), ms in diffs.items():
        for m, e in ms.items():
            rows.append({"predictor": f"{a} - {b}", "metric": m, **e.to_row()})
    result.written.append(atomic_write_text(out / "fusion_metrics.csv", safe_frame(pd.DataFrame(rows)).to_csv(index=False, float_format="%.4f")))
    pngs = []
    if plots:
        from .plots import fusion_figure, roc_figure

        ms = [m for m in ("roc_auc", "low_bmd_auc", "accuracy", "f1_macro") if m in next(iter(single.values()))]
        fusion_figure(single, ms, f"Wani patients, image {'+'.join(splits)} split(s), n={len(y)} (95% bootstrap CI)", out / "fusion.png")
        roc_figure(y, probas, labels, {n: single[n]["roc_auc"] for n in probas}, f"Image vs clinical vs fused, n={len(y)}", out / "fusion_roc.png")
        pngs = ["fusion.png", "fusion_roc.png"]
        result.written += [out / p for p in pngs]
    preds = [predictions] if isinstance(predictions, (str, os.PathLike)) else list(predictions)
    result.written.append(atomic_write_text(out / "report.md", fusion_markdown(result, run, [Path(p) for p in preds], pngs)))
    return result


def verdict(e: Estimate) -> str:
    if np.isnan(e.low):
        return "no CI (too few valid resamples)"
    if e.low > 0:
        return "better (CI above 0)"
    if e.high < 0:
        return "worse (CI below 0)"
    return "no evidence of a difference (CI spans 0)"


def fusion_markdown(r: FusionResult, run: TabularRun, predictions: Sequence[Path], pngs: Sequence[str]) -> str:
    metrics = list(next(iter(r.single.values())))
    c = r.counts
    lines = [
        "# Image + clinical late fusion (Wani patients)",
        "",
        f"> {DISCLAIMER}",
        "",
        f"Clinical model: `{r.estimator}` from `{run.path}` (out-of-fold probabilities, protocol: {run.manifest.get('protocol', '?')}).",
        f"Image model: {', '.join(f'`{p}`' for p in predictions)} ({c['rows']} rows; {c['rows_in_splits']} in split(s) "
        f"{', '.join(r.splits)}; {c['rows_of_source']} of them Wani files"
        + (f", plus {c['rows_mapped_from_copies']} patient rows from held-out copies in other sources (duplicate groups)"
           if "rows_mapped_from_copies" in c else "")
        + f"; {c['patients']} patients ({c.get('patients_only_via_copies', 0)} only through a copy), "
        f"{c['patients_with_clinical_record']} with a clinical record).",
        f"**n = {r.n_patients} patients** ("
        + ", ".join(f"{lab} {n}" for lab, n in r.class_counts.items())
        + "); reference label = the clinical table's diagnosis (T-score).",
        f"Image labels that disagree with the clinical diagnosis: {r.label_disagreements}.",
        "",
        "Fusion rules fixed in advance: `fused_mean` = average of the two probability vectors; `fused_product` = "
        "normalised product. Nothing is fitted on these patients.",
        "",
        "| predictor | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for name, ms in r.single.items():
        lines.append(f"| {name} | " + " | ".join(ms[m].fmt() for m in metrics) + " |")
    lines += ["", "Paired differences (same bootstrap resamples of patients), with the verdict on ROC-AUC:", "",
              "| difference | " + " | ".join(m.replace("_", " ") for m in metrics) + " | verdict (ROC-AUC) |",
              "|---|" + "---|" * (len(metrics) + 1)]
    for (a, b), ms in r.diffs.items():
        lines.append(f"| {a} - {b} | " + " | ".join(_signed(ms[m]) for m in metrics) + f" | {verdict(ms['roc_auc'])} |")
    lines += [
        "",
        "Caveats: the image model's validation split was used for its temperature and thresholds, so its "
        "val-split predictions are slightly optimistic; the clinical probabilities come from SMOTE-trained models "
        "when the run used --smote (their class balance is shifted); two fusion rules were tried, so a single "
        "borderline 'better' should be read with that in mind. Values: point estimate [95% percentile bootstrap CI].",
        "",
    ]
    for p in pngs:
        lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)


def _signed(e: Estimate) -> str:
    if np.isnan(e.value):
        return "n/a"
    if np.isnan(e.low):
        return f"{e.value:+.3f}"
    return f"{e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"
