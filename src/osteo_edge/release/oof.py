"""A training recipe judged out of fold, per source (``osteo-edge evaluate --cv``), and two recipes
compared on the same radiographs (``osteo-edge compare --paired``).

Evaluation protocol (the same rows for every recipe): the validation fold k of the evaluation split
(a ``--members per-source`` split of the same seed, so the group -> fold assignment is that of every
training split) is scored by the fold-k model of the k-fold run directory (``osteo-edge train
--folds K``). Each distinct radiograph is scored ONCE, as the file of its own source
(:func:`~.per_source.own_source_rows`). Pooled over the folds this is an out-of-fold prediction for
every non-test radiograph. Probabilities are the uncalibrated softmax (accuracy and AUROC do not
depend on the temperature). Several run directories make an ensemble (fold k scored by the mean
logits of every directory's fold k); ``flip`` also averages each image's mirror.

Source probe: for each fold model, the penultimate features of all those radiographs predict the
source by group-aware 5-fold logistic regression; the AUROC is averaged over the fold models (lower
is better; 0.5 = the source is not in the features).

The paired comparison: the within-source low-BMD AUROC of recipe B minus recipe A on the radiographs
both scored, with a percentile interval from a paired bootstrap over radiographs (the same draws for both).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .per_source import own_source_rows

SCORES_KIND = "osteo-edge out-of-fold scores"


def _forward(model: Any, ds: Any, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate features) of every item, each the mean over its views; ``flip``: logits
    averaged with the mirror's. A model without timm's feature hooks gives a one-column zero feature."""
    import torch

    from ..modeling.inference import view_outputs

    model.eval()

    def forward(x: Any) -> Any:
        if hasattr(model, "forward_head"):
            f = model.forward_head(model.forward_features(x), pre_logits=True)
            z = model.get_classifier()(f)
        else:
            z, f = model(x), torch.zeros((x.shape[0], 1))
        if flip:
            z = (z + model(torch.flip(x, dims=[-1]))) / 2
        return z, f

    out = view_outputs(ds, forward)
    if out is None:
        raise DataError("no radiographs to score out of fold")
    return out


def _score_folds(runs: Sequence[Path], pool: list[Any], folds: int, flip: bool) -> tuple[list, np.ndarray, list, Any]:
    """Out-of-fold rows and logits, the source probes, and the last fold bundle (labels, negative label)."""
    from ..modeling.dataset import RadiographDataset
    from ..modeling.loading import load_run
    from ..train.source_probe import source_probe

    oof_rows: list[Any] = []
    oof_logits, probes = [], []
    bundle = None
    for k in range(folds):
        fold_logits = []
        for run in runs:
            fold = Path(run) / f"fold{k}"
            if not (fold / "manifest.json").is_file():
                raise ConfigError(f"{run}: no trained fold{k} run (osteo-edge train --folds K writes RUN/fold<k>)")
            model, bundle = load_run(fold)
            logits, feats = _forward(model, RadiographDataset(pool, bundle.labels, bundle.spec), flip)
            fold_logits.append(logits)
            if feats.shape[1] > 1 and len({r.domain for r in pool}) > 1:
                probes.append(source_probe(feats, [r.domain for r in pool], [r.group for r in pool], folds=5, seed=0))
        mine = np.array([r.fold == k for r in pool])
        oof_rows += [r for r, m in zip(pool, mine) if m]
        oof_logits.append(np.mean(fold_logits, axis=0)[mine])
    return oof_rows, np.concatenate(oof_logits), probes, bundle


def score_cv(
    runs: Sequence[str | os.PathLike],
    eval_split: str | os.PathLike,
    *,
    name: str | None = None,
    flip: bool = False,
    tscore_csv: str | os.PathLike | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Score k-fold run directories out of fold, per source (see the module docstring).

    Returns the scores record (JSON-ready): protocol, the per-source report with intervals and
    shortcut baselines (and as Markdown), the source probe, the Wani T-score correlation (with
    ``tscore_csv``) and every out-of-fold probability (``oof``), which :func:`paired_comparison` reads."""
    from ..core.machine import machine_info
    from ..core.stats import softmax
    from ..data.split import read_split
    from ..train.per_source import per_source_report
    from ..train.source_markdown import format_report

    t0 = time.perf_counter()
    runs = [Path(r) for r in runs]
    table = read_split(eval_split)
    if table.folds < 2:
        raise ConfigError(f"{eval_split}: no folds (make it with osteo-edge data split --folds K, the same seed as the runs' split)")
    pool = own_source_rows([r for r in table.rows if r.split != "test"])
    oof_rows, logits, probes, bundle = _score_folds(runs, pool, table.folds, flip)
    labels, normal = bundle.labels, bundle.negative_label or "Normal"
    probs = softmax(logits)
    report = per_source_report([r.label for r in oof_rows], [labels[i] for i in probs.argmax(1)], probs,
                               [r.domain for r in oof_rows], labels, groups=[r.group for r in oof_rows], normal_label=normal)
    train_s = sum(float(f.get("train_seconds") or 0) for r in runs if (r / "cv.json").is_file()
                  for f in json.loads((r / "cv.json").read_text(encoding="utf-8")).get("per_fold", []))
    m = machine_info()
    return {
        "kind": SCORES_KIND, "lever": name or runs[0].name, "command": command,
        "runs": [str(r) for r in runs], "flip": flip,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {k: m.get(k) for k in ("cpu", "cores", "arch")},
        "protocol": (f"{table.folds}-fold group CV, out-of-fold; eval rows: the validation fold's radiographs, one file each from the "
                     f"group's own source; source of a group: Wani rule; split: {table.info.get('protocol', '')}"),
        "eval_split_sha256": table.sha256, "n": len(oof_rows), "train_seconds_total": train_s,
        "score_seconds": time.perf_counter() - t0,
        "report": report.to_dict(),
        "wani_tscore": tscore_correlation(oof_rows, probs, labels, normal, tscore_csv),
        "source_probe": {"auroc_mean_over_fold_models": float(np.mean([p.auroc for p in probes])) if probes else None,
                         "per_fold_model": [p.auroc for p in probes]},
        "markdown": format_report(report),  # the full per-source report as Markdown (kept out of the JSON by its writers)
        "oof": {"labels": list(labels), "group": [int(r.group) for r in oof_rows], "source": [r.domain for r in oof_rows],
                "label": [r.label for r in oof_rows], "probs": np.round(probs, 5).tolist()},
    }


def tscore_correlation(rows: Sequence[Any], probs: np.ndarray, labels: Sequence[str], normal: str,
                       tscore_csv: str | os.PathLike | None) -> dict[str, Any]:
    """The correlation of the model's P(normal) with the patient's T-score over the Wani radiographs
    (file stem = patient id); ``{"n": 0}`` without a table."""
    if tscore_csv is None:
        return {"n": 0, "note": "no T-score table given"}
    from ..train.tscore import read_tscores

    t = read_tscores(tscore_csv)
    j = list(labels).index(normal)
    pairs = [(t[Path(r.path).stem], float(p[j])) for r, p in zip(rows, probs) if "wani" in r.source and Path(r.path).stem in t]
    if len(pairs) < 3:
        return {"n": len(pairs)}
    a = np.array(pairs)
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731 (ties are rare in T-scores)
    return {"n": len(pairs), "pearson_r_tscore_vs_p_normal": float(np.corrcoef(a[:, 0], a[:, 1])[0, 1]),
            "spearman_r_tscore_vs_p_normal": float(np.corrcoef(rank(a[:, 0]), rank(a[:, 1]))[0, 1])}


def _cell(rep: Mapping[str, Any], source: str, label: str) -> str:
    c = next((c for c in rep["cells"] if c["source"] == source and c["label"] == label), None)
    return f"{c['k']}/{c['n']}" if c else "-"


def summary_row(res: Mapping[str, Any], wani: str = "wani-mendeley") -> dict[str, Any]:
    """One row of a scores record: pooled, per-source (Wani and the other source), cells, AUROCs, probe."""
    rep = res["report"]
    by = {s["source"]: s for s in rep["per_source"]}
    verdict = {v["source"]: v for v in rep["verdicts"]}
    other = next((s for s in by if s != wani), None)
    w = by.get(wani, {})
    return {
        "lever": res["lever"], "n": res["n"], "pooled_acc": rep["pooled_accuracy"], "pooled_macro_f1": rep["pooled_macro_f1"],
        "kaggle_acc": by.get(other, {}).get("accuracy"), "wani_acc": w.get("accuracy"),
        "wani_ci": (w.get("accuracy_ci95") or {}).get("lo"), "wani_ci_hi": (w.get("accuracy_ci95") or {}).get("hi"),
        "wani_bar": verdict.get(wani, {}).get("shortcut_accuracy"), "wani_margin": verdict.get(wani, {}).get("margin_points"),
        "kaggle_margin": verdict.get(other, {}).get("margin_points"),
        "worst": f"{rep['worst_source']} {rep['worst_source_accuracy']:.3f}",
        "wani_normal": _cell(rep, wani, "Normal"), "wani_penia": _cell(rep, wani, "Osteopenia"),
        "wani_porosis": _cell(rep, wani, "Osteoporosis"),
        "lowbmd_auc_kaggle": rep["within_source_low_bmd_auroc"].get(other), "lowbmd_auc_wani": rep["within_source_low_bmd_auroc"].get(wani),
        "penia_vs_porosis_auc": rep["wani_osteopenia_vs_osteoporosis_auroc"],
        "source_probe": res["source_probe"]["auroc_mean_over_fold_models"],
        "tscore_r": (res.get("wani_tscore") or {}).get("pearson_r_tscore_vs_p_normal"),
        "train_min": res["train_seconds_total"] / 60,
    }


def read_scores(path: str | os.PathLike) -> dict[str, Any]:
    """A scores record written by ``osteo-edge evaluate --cv`` (refused in one line when it is not one)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such scores file (write it with osteo-edge evaluate --cv RUNDIR --json FILE)")
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:  # a binary file given by mistake
        raise ConfigError(f"{p}: not JSON (not UTF-8 text)") from exc
    if not isinstance(res, dict) or "oof" not in res or "report" not in res:
        raise ConfigError(f"{p}: has no out-of-fold probabilities (score it again with osteo-edge evaluate --cv)")
    _check_oof(p, res["oof"])
    return res


def _check_oof(p: Path, oof: Any) -> None:
    """The ``oof`` block's shape: labels, and one group, source, label and probability row per radiograph."""
    bad = f"{p}: its out-of-fold block is damaged"
    if not isinstance(oof, dict) or not all(isinstance(oof.get(k), list) for k in ("labels", "group", "source", "label", "probs")):
        raise ConfigError(f"{bad} (needs lists labels, group, source, label, probs; score it again with osteo-edge evaluate --cv)")
    n = len(oof["group"])
    if not n or any(len(oof[k]) != n for k in ("source", "label", "probs")):
        raise ConfigError(f"{bad} (group, source, label and probs must have one entry per radiograph)")
    width = len(oof["labels"])
    try:
        probs = np.asarray(oof["probs"], dtype=float)
        groups = np.asarray(oof["group"], dtype=int)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{bad} ({exc})") from exc
    if probs.shape != (n, width) or not np.isfinite(probs).all() or groups.shape != (n,):
        raise ConfigError(f"{bad} (probs must be {n} rows of {width} finite numbers, groups {n} integers)")


def _same_rows(oa: Mapping[str, Any], ob: Mapping[str, Any]) -> bool:
    """Both out-of-fold blocks scored the same radiographs (group ids) with the same source and label."""
    rows_a = {(g, s, lab) for g, s, lab in zip(oa["group"], oa["source"], oa["label"])}
    rows_b = {(g, s, lab) for g, s, lab in zip(ob["group"], ob["source"], ob["label"])}
    return rows_a == rows_b and len(rows_a) == len(oa["group"]) == len(ob["group"])


def paired_comparison(a: Mapping[str, Any], b: Mapping[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Within-source low-BMD AUROC of ``b`` minus ``a`` (scores records) on the radiographs both scored,
    with a 95% percentile interval from a paired bootstrap over radiographs (the same draws for both)."""
    from ..core.stats import auroc, percentile_interval, resample_indices

    oa, ob = a["oof"], b["oof"]
    if list(oa["labels"]) != list(ob["labels"]):
        raise ConfigError(f"the two scorings have different labels: {oa['labels']} vs {ob['labels']}")
    same_file = not (a.get("eval_split_sha256") and b.get("eval_split_sha256") and a["eval_split_sha256"] != b["eval_split_sha256"])
    if not same_file and not _same_rows(oa, ob):
        raise ConfigError("the two scorings used different evaluation splits: a paired comparison needs the same radiographs")
    ia = {g: i for i, g in enumerate(oa["group"])}
    if "Normal" not in oa["labels"]:
        raise ConfigError(f"the scorings have no 'Normal' label to read low BMD against: {oa['labels']}")
    normal = oa["labels"].index("Normal")
    out: dict[str, Any] = {"a": a.get("lever"), "b": b.get("lever"), "n_boot": n_boot, "seed": seed, "by_source": {},
                           "protocol": "within-source low-BMD AUROC of b minus a; paired bootstrap over the radiographs both scored"}
    if not same_file:
        out["eval_split_note"] = ("the two split files differ in bytes (e.g. paths written relative instead of absolute), but both "
                                  "scored the same radiographs (group ids) with the same sources and labels")
    for src in sorted(set(oa["source"])):
        rows = [(ia[g], j) for j, g in enumerate(ob["group"]) if ob["source"][j] == src and g in ia]
        if not rows:
            continue
        pa = np.array([oa["probs"][i] for i, _ in rows])
        pb = np.array([ob["probs"][j] for _, j in rows])
        low = np.array([ob["label"][j] != oa["labels"][normal] for _, j in rows])

        def diff(idx: np.ndarray) -> float:
            return auroc(low[idx], 1 - pb[idx, normal]) - auroc(low[idx], 1 - pa[idx, normal])

        lo, hi, valid = percentile_interval([diff(idx) for idx in resample_indices(len(rows), n_boot, seed)])
        out["by_source"][src] = {"n": len(rows), "auroc_a": auroc(low, 1 - pa[:, normal]), "auroc_b": auroc(low, 1 - pb[:, normal]),
                                 "difference": diff(np.arange(len(rows))), "ci95": [lo, hi], "valid_draws": valid}
    if not out["by_source"]:
        raise ConfigError("the two scorings share no radiograph: nothing to pair")
    return out
