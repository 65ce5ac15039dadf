"""Evaluate a trained run: honest metrics with intervals, the binary screening view, calibration,
per-source and subgroup metrics, predictions, figures and a readable report.

The temperature and the low-BMD threshold are (re)fitted on the run's validation split (never on
the evaluated test split) and stored in the bundle, which is resealed. Every report names the split
protocol read from split.json.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..artifact import DISCLAIMER, Provenance, atomic_write_json, atomic_write_text, load_bundle, reseal
from ..errors import ConfigError, DataError
from ..core.classification import HEADLINE, NORMAL, bootstrap_ci, classification_metrics, ece_score, low_bmd_probability
from ..core.stats import fmt_ci, softmax
from ..modeling.dataset import RadiographDataset
from ..modeling.loading import load_run
from ..modeling.inference import predict_logits, resolve_device
from .finish import calibrate_on_val, split_provenance
from .subgroups import label_counts, subgroup_metrics

log = logging.getLogger(__name__)

SUBSETS = ("test", "val")
EVAL_FILES = ("metrics.json", "report.md", "predictions.csv", "confusion.png", "roc.png", "reliability.png")


@dataclass
class EvalResult:
    out: Path
    subset: str
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalScores:
    """What scoring a run produced, before anything is written: the metrics.json record and the
    arrays the predictions file and the figures are drawn from."""

    metrics: dict[str, Any]
    rows: list[Any]
    labels: list[str]
    y: np.ndarray
    logits: np.ndarray
    p_raw: np.ndarray
    p_cal: np.ndarray
    temperature: float
    thresholds: dict[str, float]
    calib: dict[str, Any]

    @property
    def ece_raw(self) -> float:
        return float(self.metrics["ece_uncalibrated"]["value"])


@dataclass
class _EvalRows:
    """The rows to score and the validation rows to calibrate on, with where they came from."""

    table: Any
    split_path: Path
    prov: Provenance
    same_split: bool
    own: Any
    fold: int
    overlap: int
    calib_rows_from: str
    rows: list[Any]
    val_rows: list[Any]


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str | os.PathLike | None = None,
    subset: str = "test",
    out: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    key: str | None = None,
    subgroups: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    threads: int = 2,
    command: str = "",
    plots: bool = True,
) -> EvalResult:
    """Evaluate ``run_dir`` on ``subset`` of its split; write the files and reseal the bundle."""
    if subset not in SUBSETS:
        raise ConfigError(f"unknown --subset {subset!r}; valid: {', '.join(SUBSETS)}")
    if (metadata is None) != (key is None) or (subgroups and metadata is None):
        raise ConfigError("--metadata and --key go together, and --subgroups needs both")
    run_dir = Path(run_dir)
    scores = score_run(run_dir, split, subset, metadata=metadata, key=key, subgroups=subgroups, n_boot=n_boot, seed=seed,
                       batch_size=batch_size, device=device, threads=threads, command=command)
    out = Path(out) if out is not None else run_dir / "eval" / subset
    files = write_evaluation(scores, out, run_dir.name, plots)
    _reseal_run(run_dir, out, subset, scores.metrics, scores.temperature, scores.thresholds, scores.calib)
    return EvalResult(out=out, subset=subset, metrics=scores.metrics, files=files)


# ------------------------------------------------------------------------------------------------
# scoring (writes nothing)


def score_run(
    run_dir: Path, split: str | os.PathLike | None, subset: str, *, metadata: str | os.PathLike | None = None,
    key: str | None = None, subgroups: Sequence[str] = (), n_boot: int = 1000, seed: int = 0, batch_size: int = 32,
    device: str = "auto", threads: int = 2, command: str = "",
) -> EvalScores:
    """Logits of ``subset``, temperature and thresholds refitted on validation, metrics with intervals."""
    with _torch_threads(threads):
        dev = resolve_device(device)
        model, bundle = load_run(run_dir, device=dev)
        sel = _select_rows(run_dir, bundle, split, subset)
        labels, spec = bundle.labels, bundle.spec
        val_ds = RadiographDataset(sel.val_rows, labels, spec)
        val_logits = predict_logits(model, val_ds, batch_size, dev, channels_last=spec.channels > 1)
        temperature, thresholds, calib = _calibrate(bundle, val_logits, val_ds.targets)
        if subset == "val":
            ds, logits = val_ds, val_logits
        else:
            ds = RadiographDataset(sel.rows, labels, spec)
            logits = predict_logits(model, ds, batch_size, dev, channels_last=spec.channels > 1)
    y = ds.targets
    p_raw, p_cal = softmax(logits, 1.0), softmax(logits, temperature)
    metrics = compute_metrics(y, p_raw, p_cal, sel.rows, labels, thresholds.get("low_bmd"), n_boot, seed)
    metrics["sources"] = source_report(y, p_cal, sel, labels, bundle.negative_label, n_boot, seed)
    result = _result_record(run_dir, subset, sel, labels, len(y), temperature, thresholds, calib, metrics, n_boot, seed, command)
    if metadata is not None and key is not None:
        result["subgroups"] = subgroup_metrics(sel.rows, y, p_cal, labels, metadata, key, list(subgroups), thresholds.get("low_bmd"), n_boot, seed)
    return EvalScores(result, sel.rows, labels, y, logits, p_raw, p_cal, temperature, thresholds, calib)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)


def _select_rows(run_dir: Path, bundle: Any, split: str | os.PathLike | None, subset: str) -> _EvalRows:
    """Read the split to score; calibration rows come from the run's own validation split when it is there."""
    from ..data.split import read_split

    prov = bundle.provenance
    split_path = Path(split or prov.split_csv or "")
    if not str(split_path) or not split_path.is_file():
        raise DataError(f"{run_dir}: pass --split (the run's split file {prov.split_csv!r} is not available)")
    table = read_split(split_path)
    if table.labels != bundle.labels:
        raise DataError(f"{split_path}: labels {table.labels} differ from the model's {bundle.labels}")
    same_split = prov.split_sha256 == table.sha256
    own = table if same_split else _own_split(prov)
    fold = prov.fold
    overlap = 0
    if own is not None:  # calibrate on the run's own validation rows, whatever split is scored
        _, val_rows = own.train_val(fold)
        calib_rows_from = "the run's own validation split"
    else:
        _, val_rows = table.train_val()
        calib_rows_from = "the evaluated split's validation rows (the run's own split file is not available)"
    rows = (val_rows if same_split else table.train_val()[1]) if subset == "val" else table.subset("test")
    if not same_split:
        if own is not None:
            seen = {r.sha256 for r in own.rows if r.split != "test" and r.sha256}
            overlap = sum(1 for r in rows if r.sha256 and r.sha256 in seen)
        log.warning("%s is not the split this run was trained on; %s of its %s rows are byte-identical to the run's "
                    "training/validation files", split_path, overlap if own is not None else "an unknown number", subset)
    if not rows or not val_rows:
        raise DataError(f"{split_path}: the {subset} or validation subset is empty")
    return _EvalRows(table, split_path, prov, same_split, own, fold, overlap, calib_rows_from, rows, val_rows)


def _calibrate(bundle: Any, val_logits: np.ndarray, y_val: np.ndarray) -> tuple[float, dict[str, float], dict[str, Any]]:
    """Refit temperature and thresholds on validation, with the run's own sensitivity target and confidence floor."""
    cal = bundle.calibration
    min_conf = cal.min_confidence if cal.min_confidence is not None else 0.6
    return calibrate_on_val(val_logits, y_val, bundle.labels, min_conf, cal.target_sensitivity)


def compute_metrics(
    y: np.ndarray, p_raw: np.ndarray, p_cal: np.ndarray, rows: Sequence[Any], labels: Sequence[str],
    thr: float | None, n_boot: int, seed: int,
) -> dict[str, Any]:
    """Point metrics, bootstrap intervals over duplicate groups, ECE before calibration, per source."""
    groups = np.array([r.group for r in rows])
    ece_raw = ece_score(p_raw, y)
    ece_raw_ci = bootstrap_ci(y, p_raw, labels, groups, thr, n_boot=n_boot, seed=seed)["ece"]
    per_source = {}
    for src in sorted({r.source for r in rows}):
        m = np.array([r.source == src for r in rows])
        per_source[src] = {
            "n": int(m.sum()), "labels": label_counts(y[m], labels),
            **bootstrap_ci(y[m], p_cal[m], labels, groups[m], thr, n_boot=n_boot, seed=seed),
            "confusion": classification_metrics(y[m], p_cal[m], labels, thr)["confusion"],
        }
    return {
        "groups": int(len(set(groups.tolist()))),
        "headline": bootstrap_ci(y, p_cal, labels, groups, thr, n_boot=n_boot, seed=seed),
        "point": classification_metrics(y, p_cal, labels, thr),
        "ece_uncalibrated": {"value": ece_raw, "ci95": ece_raw_ci["ci95"]},
        "majority_baseline_accuracy": Counter(y.tolist()).most_common(1)[0][1] / len(y),
        "per_source": per_source,
    }


def source_report(y: np.ndarray, p_cal: np.ndarray, sel: _EvalRows, labels: Sequence[str], negative: str | None,
                  n_boot: int, seed: int) -> dict[str, Any] | None:
    """Per source of each duplicate group (Wani rule) beside the shortcut baselines counted on the
    run's training rows (one per group): the numbers a source-reading model cannot fake."""
    from .per_source import per_source_report
    from .source_markdown import format_report

    if negative is None:
        return None
    train = sel.own.subset("train", sel.fold if sel.fold >= 0 else None) if sel.own is not None else []
    one = {r.group: r for r in train}.values()
    rep = per_source_report(y, p_cal.argmax(axis=1), p_cal, [r.domain for r in sel.rows], labels, [r.group for r in sel.rows],
                            negative, train_y=[r.label for r in one] or None, train_sources=[r.domain for r in one] or None,
                            n_boot=n_boot, seed=seed)
    return {"source_of_group": "wani-mendeley if any copy of the radiograph is a Wani file, else its folder(s)",
            **rep.to_dict(), "markdown": format_report(rep)}


def _result_record(
    run_dir: Path, subset: str, sel: _EvalRows, labels: list[str], n: int, temperature: float, thresholds: Mapping[str, float],
    calib: Mapping[str, Any], metrics: Mapping[str, Any], n_boot: int, seed: int, command: str,
) -> dict[str, Any]:
    """The metrics.json record: the metrics with the protocol, the split and the calibration they rest on."""
    provenance = split_provenance(sel.table, sel.fold, sel.prov.command)
    return {
        "run": str(run_dir), "subset": subset, "n": int(n), "groups": metrics["groups"],
        "protocol": provenance["protocol"], "split_csv": str(sel.split_path), "split_sha256": sel.table.sha256,
        "same_split_as_training": sel.same_split, "overlap_with_training_files": sel.overlap if sel.own is not None else None,
        "calibrated_on": sel.calib_rows_from, "labels": labels, "temperature": temperature, "thresholds": thresholds,
        "calibration": calib, "headline": metrics["headline"], "point": metrics["point"],
        "ece_uncalibrated": metrics["ece_uncalibrated"],
        "majority_baseline_accuracy": metrics["majority_baseline_accuracy"], "per_source": metrics["per_source"],
        "sources": metrics["sources"],
        "bootstrap": {"replicates": n_boot, "unit": "duplicate group", "seed": seed},
        "command": command, "disclaimer": DISCLAIMER,
    }


# ------------------------------------------------------------------------------------------------
# writing (files in ``out``; the bundle update is a separate step, see :func:`_reseal_run`)


def write_evaluation(scores: EvalScores, out: Path, run_name: str, plots: bool = True) -> dict[str, Path]:
    """metrics.json, predictions.csv, the PNGs (``plots``) and report.md in ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics.json": atomic_write_json(out / "metrics.json", scores.metrics)}
    files["predictions.csv"] = _write_predictions(out / "predictions.csv", scores.rows, scores.labels, scores.logits, scores.p_cal)
    if plots:
        files.update(_write_plots(scores, out, run_name))
    files["report.md"] = atomic_write_text(out / "report.md", render_report(scores.metrics))
    return files


def _write_plots(s: EvalScores, out: Path, run_name: str) -> dict[str, Path]:
    from .plots import confusion_png, reliability_png, roc_png

    labels, y, point = s.labels, s.y, s.metrics["point"]
    thr = s.thresholds.get("low_bmd")
    title = f"{run_name}: {s.metrics['subset']} split (n = {len(y)})"
    p_low = low_bmd_probability(s.p_cal, labels)
    y_low = (y != labels.index(NORMAL)).astype(int) if NORMAL in labels else None
    op = (point.get("low_bmd_sensitivity", float("nan")), point.get("low_bmd_specificity", float("nan"))) if thr is not None else None
    return {
        "confusion.png": confusion_png(point["confusion"], labels, out / "confusion.png", title),
        "roc.png": roc_png(y, s.p_cal, labels, out / "roc.png", title, p_low, y_low, op),
        "reliability.png": reliability_png(y, s.p_raw, s.p_cal, s.temperature, s.ece_raw, point["ece"], out / "reliability.png", title),
    }


def _own_split(prov: Provenance) -> Any:
    """The run's training split, when its file is still there and unchanged."""
    from ..data.split import read_split

    if not prov.split_csv or not Path(prov.split_csv).is_file():
        return None
    table = read_split(prov.split_csv)
    return table if table.sha256 == prov.split_sha256 else None


def metrics_key(result: Mapping[str, Any]) -> str:
    """Manifest metrics key: the subset name for the run's own split, else ``subset@<split dir>``."""
    if result["same_split_as_training"]:
        return str(result["subset"])
    return f"{result['subset']}@{Path(result['split_csv']).parent.name}"


def _write_predictions(path: Path, rows: Sequence[Any], labels: Sequence[str], logits: np.ndarray, probs: np.ndarray) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "source", "group", "split", "label", "pred", *[f"p_{lab}" for lab in labels], "low_bmd_probability", "group_source"])
    p_low = low_bmd_probability(probs, labels)
    for i, r in enumerate(rows):
        w.writerow([r.path, r.source, r.group, r.split, r.label, labels[int(probs[i].argmax())],
                    *[f"{p:.6f}" for p in probs[i]], f"{p_low[i]:.6f}" if p_low is not None else "", r.domain])
    return atomic_write_text(path, buf.getvalue())


def _reseal_run(run_dir: Path, out: Path, subset: str, result: Mapping[str, Any], temperature: float,
                thresholds: Mapping[str, float], calib: Mapping[str, Any]) -> None:
    """Store temperature, thresholds and the subset's headline metrics in the run's manifest."""
    bundle = load_bundle(run_dir, verify=False)  # reseal verifies before it writes
    try:
        rel = out.resolve().relative_to(run_dir.resolve())
        changed = [f"{rel.as_posix()}/{name}" for name in EVAL_FILES]
    except ValueError:
        changed = []
    metrics = dict(bundle.metrics.raw)
    metrics[metrics_key(result)] = {**result["headline"], "n": result["n"], "split_sha256": result["split_sha256"]}
    training = dict(bundle.training)
    training["calibration"] = dict(calib)
    reseal(run_dir, step="evaluate", changed=changed, temperature=temperature, thresholds=dict(thresholds), metrics=metrics, training=training)


# ------------------------------------------------------------------------------------------------
# report


def render_report(r: Mapping[str, Any]) -> str:
    labels = r["labels"]
    h = r["headline"]
    thr = r["thresholds"].get("low_bmd")
    lines = [
        f"# Evaluation: {Path(r['run']).name}, {r['subset']} split",
        "",
        f"> {DISCLAIMER}",
        "",
        f"**Protocol:** {r['protocol']}.",
        "",
        f"{r['n']} images ({r['groups']} distinct radiograph groups). 95% intervals: percentile bootstrap over groups "
        f"({r['bootstrap']['replicates']} replicates). Probabilities are calibrated with temperature T = {r['temperature']:.3f} "
        "fitted on the validation split.",
    ]
    if not r["same_split_as_training"]:
        ov = r.get("overlap_with_training_files")
        lines += ["", "**Note:** this split is not the one the model was trained on; "
                  + (f"{ov} of the evaluated files are byte-identical to the run's training/validation files." if ov is not None
                     else "whether its rows overlap the training data cannot be checked (the run's split file is not available).")
                  + f" Temperature and threshold come from {r['calibrated_on']}."]
    lines += ["", "## Headline (3-class)" if len(labels) == 3 else "## Headline", "", "| metric | value [95% CI] |", "|---|---|"]
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "balanced_accuracy": "balanced accuracy", "auroc_macro": "one-vs-rest AUROC (macro)",
             "low_bmd_auroc": "low-BMD AUROC (Normal vs Osteopenia+Osteoporosis)",
             "low_bmd_sensitivity": f"low-BMD sensitivity at P >= {thr:.3f}" if thr is not None else "low-BMD sensitivity",
             "low_bmd_specificity": "low-BMD specificity at the same threshold", "ece": "ECE (calibrated)"}
    for k in HEADLINE:
        if k in h:
            lines.append(f"| {names[k]} | {fmt_ci(h[k])} |")
    lines.append(f"| ECE before temperature scaling | {fmt_ci(r['ece_uncalibrated'])} |")
    lines.append(f"| majority-class accuracy (reference) | {r['majority_baseline_accuracy']:.3f} |")
    pc = r["point"]["per_class"]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | AUROC (one-vs-rest) | support |", "|---|---|---|---|---|---|"]
    for lab in labels:
        c = pc[lab]
        auc = "n/a" if c["auroc"] != c["auroc"] else f"{c['auroc']:.3f}"
        lines.append(f"| {lab} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {auc} | {c['support']} |")
    lines += ["", "Confusion matrix (rows true, columns predicted): `confusion.png`; ROC curves: `roc.png`; "
              "reliability before/after temperature scaling: `reliability.png`.", ""]
    if thr is not None:
        lb = r["calibration"].get("low_bmd", {})
        lines += ["## Binary screening view", "",
                  f"P(low BMD) = 1 - P(Normal). Operating threshold {thr:.3f}, chosen on validation: {lb.get('method', '')} "
                  f"(validation sensitivity {lb.get('val_sensitivity', float('nan')):.3f}, specificity {lb.get('val_specificity', float('nan')):.3f}). "
                  "At or above it the runtime says \"low BMD suspected: refer for DEXA\".", ""]
    lines += ["## Per source", "", "The sources are confounded with the classes (see the data README): pooled numbers can reward "
              "recognising the source. Wani (wani-mendeley) is the only three-class source, with T-score ground truth.", "",
              "| source | n | labels | accuracy | macro-F1 | low-BMD AUROC |", "|---|---|---|---|---|---|"]
    for src, m in r["per_source"].items():
        labs = ", ".join(f"{k} {v}" for k, v in m["labels"].items())
        lines.append(f"| {src} | {m['n']} | {labs} | {fmt_ci(m.get('accuracy'))} | {fmt_ci(m.get('macro_f1'))} | {fmt_ci(m.get('low_bmd_auroc'))} |")
    if r.get("sources"):
        lines += ["", "## Per source of the radiograph, beside the shortcut", "",
                  "Source of a duplicate group: wani-mendeley when any copy is a Wani file (the Kaggle folders hold copies "
                  "of Wani knees). A model is better than the shortcut on a source only when it beats the per-source "
                  "majority class there.", "", r["sources"]["markdown"]]
    sg = r.get("subgroups")
    if sg:
        lines += ["", "## Subgroups", "", f"Metadata {Path(sg['metadata']).name} joined on the image file stem = `{sg['key']}`: "
                  f"{sg['matched']} images matched, {sg['unmatched']} not (those are left out of this section).", ""]
        for name, block in sg["by"].items():
            lines += [f"### {name} (column `{block['column']}`)", "", "| subgroup | n | labels | accuracy | macro-F1 | low-BMD sensitivity | low-BMD specificity |",
                      "|---|---|---|---|---|---|---|"]
            for g, m in block["groups"].items():
                labs = ", ".join(f"{k} {v}" for k, v in m["labels"].items())
                lines.append(f"| {g} | {m['n']} | {labs} | {fmt_ci(m.get('accuracy'))} | {fmt_ci(m.get('macro_f1'))} | "
                             f"{fmt_ci(m.get('low_bmd_sensitivity'))} | {fmt_ci(m.get('low_bmd_specificity'))} |")
            lines.append("")
    lines += ["", f"Split file: `{r['split_csv']}` (sha256 {r['split_sha256'][:16]}...). Command: `{r['command'] or 'library call'}`.", ""]
    return "\n".join(lines)


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v == v], dtype=np.float64)
    if not len(arr):
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def summarize_folds(per_fold: Sequence[Mapping[str, Any]], key: str = "headline") -> dict[str, Any]:
    """mean ± sd over folds of every headline metric (values, not intervals)."""
    out = {}
    for k in HEADLINE:
        vals = [float(f[key][k]["value"]) for f in per_fold if k in f.get(key, {})]
        if vals:
            out[k] = _mean_sd(vals)
    return out


def fmt_mean_sd(e: Mapping[str, float] | None) -> str:
    if not e or e.get("n", 0) == 0 or math.isnan(e["mean"]):
        return "n/a"
    return f"{e['mean']:.3f} ± {e['sd']:.3f}"
