"""`osteo-edge evaluate`: metrics with intervals, screening view, calibration, per-source/subgroup metrics."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import _output as out
from ._common import handle_errors
from ._steps import after_evaluate, after_split
from .train import command_line


CV = "Out-of-fold scoring (--cv)"


class Subset(str, Enum):
    test = "test"
    val = "val"


@handle_errors
def evaluate_cmd(
    model: Annotated[Optional[Path], typer.Option("--model", help="Run directory from 'osteo-edge train' (or a --folds directory).", show_default=False)] = None,
    split: Annotated[Optional[Path], typer.Option("--split", help="split.csv (with --cv: the evaluation split with the runs' folds).", show_default="the run's own split")] = None,
    subset: Annotated[Subset, typer.Option(help="Which split to evaluate.")] = Subset.test,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output directory.", show_default="RUN/eval/SUBSET")] = None,
    metadata: Annotated[Optional[Path], typer.Option(help="Metadata CSV for subgroup metrics (joined on the image file stem).")] = None,
    key: Annotated[Optional[str], typer.Option(help="Metadata column holding the image file stem, e.g. 'Patient Id'.")] = None,
    subgroups: Annotated[Optional[str], typer.Option(help="Comma-separated metadata columns, e.g. age,sex (age is banded).")] = None,
    folds: Annotated[int, typer.Option(help="Evaluate a k-fold directory (OUT/fold<k>) and report mean ± sd.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 2,
    cv: Annotated[Optional[List[Path]], typer.Option("--cv", help="Score a k-fold run directory (train --folds) out of fold, per source, with CIs; repeat for an ensemble.", rich_help_panel=CV)] = None,
    flip: Annotated[bool, typer.Option("--flip", help="--cv: average each image's logits with its mirror's.", rich_help_panel=CV)] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="--cv: the recipe's name in the scores file.", show_default="the run directory's name", rich_help_panel=CV)] = None,
    tscore_csv: Annotated[Optional[Path], typer.Option("--tscore-csv", help="--cv: wani_patient_details.csv, for the correlation of P(Normal) with the T-score.", rich_help_panel=CV)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="--cv: the scores file (for compare --paired and release recipes).", show_default="RUN/eval/oof_scores.json", rich_help_panel=CV)] = None,
) -> None:
    """Evaluate a trained run; writes metrics.json, report.md, predictions.csv and PNGs, and stores the
    validation-fitted temperature and low-BMD threshold in the bundle. With --cv: a k-fold run
    directory scored out of fold, per source, beside the shortcut baselines (no bundle is changed)."""
    if cv:
        ignored = [f for f, v in (("--model", model), ("--out", out_dir), ("--folds", folds), ("--metadata", metadata),
                                  ("--subgroups", subgroups)) if v]
        if ignored:  # they were silently ignored: the scores went to --json, every fold of each --cv directory was read
            raise typer.BadParameter(f"{', '.join(ignored)} not used with --cv (give the run directories to --cv, the file to --json)",
                                     param_hint="--cv")
        _evaluate_cv(cv, split, flip=flip, name=name, tscore_csv=tscore_csv, json_out=json_out)
        return
    if model is None:
        raise typer.BadParameter("give --model RUN (or --cv CV_DIR)", param_hint="--model")
    from ..train.cv import evaluate_folds, fold_dirs, is_cv_dir
    from ..train.evaluate import evaluate_run, fmt_mean_sd

    command = command_line("evaluate", dict(model=model, split=split, subset=subset, out=out_dir, metadata=metadata, key=key,
                                            subgroups=subgroups, folds=folds or None, bootstrap=bootstrap, seed=seed))
    kw = dict(split=split, metadata=metadata, key=key, subgroups=[s.strip() for s in (subgroups or "").split(",") if s.strip()],
              n_boot=bootstrap, seed=seed, device=device, threads=threads, command=command)
    if folds or is_cv_dir(model):
        found = len(fold_dirs(model))
        if folds and found != folds:
            from ..errors import ConfigError

            raise ConfigError(f"{model}: {found} trained fold runs found, --folds {folds} given")
        s = evaluate_folds(model, subset=subset.value, out=out_dir, **kw)
        out.summary(f"{s['folds']}-fold CV on the {s['subset']} split (mean ± sd over folds)",
                    [(k, fmt_mean_sd(v)) for k, v in s["summary"].items()])
        out.line(f"protocol: {s['protocol']}")
        out.wrote([(Path(out_dir) if out_dir else Path(model) / "eval" / subset.value) / "cv_report.md"])
        out.next_step(after_split(split or s.get("split_csv") or "SPLIT.csv"), "cross-validation measures the recipe; train the model to ship on the whole split")
        return
    r = evaluate_run(model, subset=subset.value, out=out_dir, **kw)
    _render(model, subset.value, r)
    out.next_step(after_evaluate(model, split or r.metrics.get("split_csv")))


METRICS = ("accuracy", "macro_f1", "auroc_macro", "low_bmd_auroc", "low_bmd_sensitivity", "low_bmd_specificity", "ece")


def _render(model: Path, subset: str, r) -> None:
    from ..core.stats import fmt_ci

    m = r.metrics
    sources = list(m["per_source"])
    rows = [[k, fmt_ci(m["headline"][k]), *[fmt_ci(m["per_source"][s].get(k)) for s in sources]] for k in METRICS if k in m["headline"]]
    # each source's n in its header: "0.000 [0.000, 0.000]" on 5 images is not a certainty
    out.table(f"{Path(model).name}: {subset} split, n = {m['n']} (95% bootstrap CI)",
              [out.Col("metric"), out.Col(f"pooled (n={m['n']})", right=True),
               *(out.Col(f"{s} (n={m['per_source'][s].get('n', '?')})", right=True) for s in sources)], rows)
    small = [s for s in sources if isinstance(m["per_source"][s].get("n"), int) and m["per_source"][s]["n"] < 30]
    if small:
        out.line(f"few images in {', '.join(small)}: read the intervals, not the point estimates")
    out.line(f"protocol: {m['protocol']}")
    out.line(f"temperature {m['temperature']:.3f}; thresholds {out.mapping_text(m['thresholds'], '{:.3f}')} "
             f"(fitted on validation, stored in {model})")
    out.wrote(r.files.values())


def _evaluate_cv(runs: List[Path], split: Optional[Path], *, flip: bool, name: Optional[str], tscore_csv: Optional[Path],
                 json_out: Optional[Path]) -> None:
    import shlex
    import sys

    from ..artifact import atomic_write_json, atomic_write_text
    from ..release.oof import score_cv

    if split is None:
        raise typer.BadParameter("--cv needs --split: the evaluation split whose folds the runs were trained on", param_hint="--split")
    path = json_out or Path(runs[0]) / "eval" / "oof_scores.json"
    for f in (path, path.with_suffix(".md")):  # refused before minutes of scoring, not when writing
        if f.is_dir():
            raise typer.BadParameter(f"{f} is a folder; give a file name such as {f / 'oof_scores.json'}", param_hint="--json")
    blocked = next((d for d in path.parents if d.exists() and not d.is_dir()), None)
    if blocked is not None:
        raise typer.BadParameter(f"{blocked} is a file, not a folder", param_hint="--json")
    res = score_cv(runs, split, name=name, flip=flip, tscore_csv=tscore_csv,
                   command="osteo-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    rep = res["report"]
    verdict = {v["source"]: v for v in rep["verdicts"]}
    rows = [[s["source"], str(s["n"]), _acc_ci(s), f"{s['macro_f1']:.3f}",
             _num(verdict.get(s["source"], {}).get("shortcut_accuracy")), _num(verdict.get(s["source"], {}).get("margin_points"), "{:+.1f}"),
             _num(rep["within_source_low_bmd_auroc"].get(s["source"]))] for s in rep["per_source"]]
    rows.append(["pooled", str(res["n"]), _num(rep["pooled_accuracy"]), _num(rep["pooled_macro_f1"]), "-", "-", "-"])
    out.table(f"{res['lever']}: out of fold, per source (95% CI)",
              [out.Col("source"), *(out.Col(c, right=True) for c in ("n", "accuracy [95% CI]", "macro-F1", "shortcut acc",
                                                                     "margin (pts)", "low-BMD AUROC"))], rows)
    probe = res["source_probe"]["auroc_mean_over_fold_models"]
    out.line(f"source probe AUROC (lower is better): {_num(probe)}; protocol: {res['protocol']}")
    markdown = res.pop("markdown")
    written = [atomic_write_json(path, res)]
    written.append(atomic_write_text(path.with_suffix(".md"), f"# {res['lever']}\n\n`{res['command']}`\n\n{res['protocol']}\n\n{markdown}\n"))
    out.wrote(written)
    out.next_step(f"osteo-edge compare --paired OTHER_SCORES.json {shlex.quote(str(path))}", "compare two recipes on the same radiographs")


def _num(v, fmt: str = "{:.3f}") -> str:
    return "-" if v is None or v != v else fmt.format(v)


def _acc_ci(s: dict) -> str:
    ci = s.get("accuracy_ci95") or {}
    return f"{_num(s.get('accuracy'))} [{_num(ci.get('lo'))}, {_num(ci.get('hi'))}]"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
