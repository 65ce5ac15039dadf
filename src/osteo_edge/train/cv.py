"""k-fold cross-validation: one run (a sealed bundle) per fold under ``OUT/fold<k>``, and a
mean ± sd summary. Fold k validates on fold k and trains on the other folds; the test split is held
out of every fold and evaluated by each fold's model."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from ..artifact import atomic_write_json, atomic_write_text
from ..core.classification import HEADLINE
from ..core.progress import Progress
from ..errors import ConfigError
from .config import TrainConfig
from .engine import TrainResult, train
from .finish import LAST
from .evaluate import EvalResult, evaluate_run, fmt_mean_sd, summarize_folds

log = logging.getLogger(__name__)


def fold_dirs(cv_dir: str | os.PathLike) -> list[Path]:
    cv_dir = Path(cv_dir)
    dirs = sorted((p for p in cv_dir.glob("fold*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    return [d for d in dirs if (d / "manifest.json").is_file()]


def is_cv_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and not (path / "manifest.json").is_file() and bool(fold_dirs(path))


def train_folds(
    config: TrainConfig, out: str | os.PathLike, folds: int, *, resume: bool = False,
    progress: Progress | None = None, command: str = "",
) -> list[TrainResult]:
    from ..data.split import read_split

    out = Path(out)
    table = read_split(config.split)
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}")
    if table.folds < folds:
        raise ConfigError(f"{config.split}: split has {table.folds} folds, {folds} asked for; make it with 'osteo-edge data split --folds {folds}'")
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: directory exists and is not empty; pass --resume to continue it, or choose another --out")
    results = []
    for k in range(folds):
        run = out / f"fold{k}"
        log.info("fold %d of %d -> %s", k + 1, folds, run)
        if progress is not None:
            progress("fold", fold=k, folds=folds)
        results.append(train(config.replace(fold=k), run, resume=resume and (run / LAST).is_file(), progress=progress, command=command))
    summary = {
        "folds": folds, "protocol": str(table.info.get("protocol", "")), "split_csv": str(table.path), "split_sha256": table.sha256,
        "command": command, "config": config.to_dict(),
        "per_fold": [{"fold": k, "run": str(r.run_dir), "best_epoch": r.best_epoch, "train_seconds": r.train_seconds,
                      "val": {m: {"value": r.val_metrics[m]} for m in HEADLINE if m in r.val_metrics}} for k, r in enumerate(results)],
    }
    summary["val_summary"] = summarize_folds(summary["per_fold"], key="val")
    summary["train_seconds_total"] = float(sum(r.train_seconds for r in results))
    atomic_write_json(out / "cv.json", summary)
    return results


def evaluate_folds(cv_dir: str | os.PathLike, subset: str = "test", out: str | os.PathLike | None = None, **kw: Any) -> dict[str, Any]:
    """Evaluate every fold's run on ``subset``; write ``cv_metrics.json`` and ``cv_report.md``."""
    cv_dir = Path(cv_dir)
    runs = fold_dirs(cv_dir)
    if not runs:
        raise ConfigError(f"{cv_dir}: no fold<k> runs found (train them with 'osteo-edge train --folds K')")
    out = Path(out) if out is not None else cv_dir / "eval" / subset
    results: list[EvalResult] = [evaluate_run(run, subset=subset, out=out / run.name, **kw) for run in runs]
    per_fold = [{"fold": run.name, "headline": r.metrics["headline"], "n": r.metrics["n"],
                 "per_source": {s: {k: v for k, v in m.items() if k in ("n", *HEADLINE)} for s, m in r.metrics["per_source"].items()}}
                for run, r in zip(runs, results)]
    summary = {
        "cv_dir": str(cv_dir), "subset": subset, "folds": len(runs), "protocol": results[0].metrics["protocol"].split("; k-fold")[0],
        "per_fold": per_fold, "summary": summarize_folds(per_fold),
        "per_source_summary": {s: summarize_folds([{"headline": f["per_source"][s]} for f in per_fold if s in f["per_source"]])
                               for s in sorted({s for f in per_fold for s in f["per_source"]})},
    }
    atomic_write_json(out / "cv_metrics.json", summary)
    atomic_write_text(out / "cv_report.md", render_cv_report(summary))
    return summary


def render_cv_report(s: Mapping[str, Any]) -> str:
    from ..artifact import DISCLAIMER
    from ..core.stats import fmt_ci

    lines = [f"# {s['folds']}-fold cross-validation: {Path(s['cv_dir']).name}, {s['subset']} split", "", f"> {DISCLAIMER}", "",
             f"**Protocol:** {s['protocol']}; k-fold over the non-test groups (fold k validates, the others train); "
             f"every fold's model is evaluated on the same held-out {s['subset']} split.", "",
             "## mean ± sd over folds", "", "| metric | mean ± sd |", "|---|---|"]
    for k, v in s["summary"].items():
        lines.append(f"| {k} | {fmt_mean_sd(v)} |")
    lines += ["", "## per source (mean ± sd over folds)", ""]
    for src, summ in s["per_source_summary"].items():
        lines.append(f"- **{src}**: " + ", ".join(f"{k} {fmt_mean_sd(v)}" for k, v in summ.items()))
    lines += ["", "## per fold (value [95% bootstrap CI])", "", "| fold | n | accuracy | macro-F1 | low-BMD AUROC | ECE |", "|---|---|---|---|---|---|"]
    for f in s["per_fold"]:
        h = f["headline"]
        lines.append(f"| {f['fold']} | {f['n']} | {fmt_ci(h.get('accuracy'))} | {fmt_ci(h.get('macro_f1'))} | {fmt_ci(h.get('low_bmd_auroc'))} | {fmt_ci(h.get('ece'))} |")
    return "\n".join(lines) + "\n"
