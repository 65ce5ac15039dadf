"""Markdown (for a report.md) of a per-source report (``per_source.py``) or a source probe
(``source_probe.py``)."""

from __future__ import annotations

import math

from .per_source import Interval, SourceReport
from .source_probe import ProbeResult


def _f(x: float, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _ci(iv: Interval) -> str:
    return f"[{_f(iv.lo)}, {_f(iv.hi)}]"


def format_report(result: SourceReport | ProbeResult) -> str:
    """Markdown tables (for a report.md) of a :class:`SourceReport` or a :class:`ProbeResult`."""
    if isinstance(result, ProbeResult):
        folds = ", ".join(_f(a) for a in result.auroc_per_fold)
        return (
            "## Source probe (lower is better)\n\n"
            f"Out-of-fold AUROC of predicting the source ({', '.join(result.sources)}) from the features: "
            f"**{_f(result.auroc)}** (per fold: {folds}; mean {_f(result.auroc_fold_mean)}). "
            f"{result.n} rows, {result.n_groups} groups, {result.folds} folds, seed {result.seed}; {result.method}. "
            "0.5 = the source cannot be read from the features.\n"
        )
    r = result
    b = r.baselines
    sc = {s.source: s for s in b.per_source}
    out = [
        "## Per source, beside the shortcut\n",
        f"{r.n} rows ({r.n_groups} groups). Intervals: {r.interval_method}. "
        f"Shortcut majorities counted on the {b.basis}.\n",
        "| | n | accuracy [95% CI] | macro-F1 | low-BMD AUROC (within) | majority class | majority acc. | shortcut bar | margin (points) | beats shortcut | CI clears bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| **pooled** | {r.n} | {_f(r.pooled_accuracy)} | {_f(r.pooled_macro_f1)} | {_f(r.pooled_low_bmd_auroc)} (pooled) | per source | "
        f"{_f(b.majority_accuracy)} | | | | |",
    ]
    for s in r.per_source:
        v = r.verdict(s.source)
        c = sc[s.source]
        out.append(
            f"| {s.source} | {s.n} | {_f(s.accuracy)} {_ci(s.accuracy_ci95)} | {_f(s.macro_f1)} | {_f(s.low_bmd_auroc)} | "
            f"{c.majority_label} | {_f(c.majority_accuracy)} | {_f(v.shortcut_accuracy)} | {v.margin_points:+.1f} | "
            f"{'yes' if v.beats_shortcut else '**no**'} | {'yes' if v.ci_clears_bar else 'no'} |"
        )
    out += [
        "",
        f"Worst source: **{r.worst_source}** (accuracy {_f(r.worst_source_accuracy)}). "
        "The shortcut bar is the higher of the majority accuracy and the best constant answer on these rows, "
        "so a model that only reads the source cannot beat it. \"CI clears bar\": the lower 95% bound of the model's "
        "accuracy on the source is above the bar as well (a margin inside the noise does not).\n",
        "## Recall per (source, class)\n",
        "| source | class | k of n | recall | 95% CI | groups | interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r.cells:
        out.append(f"| {c.source} | {c.label} | {c.k} of {c.n} | {_f(c.recall)} | {_ci(c.ci95)} | {c.n_groups} | {c.ci95.method} |")
    out += [
        "",
        "## Within-source discrimination\n",
        "| source | low-BMD AUROC (Normal vs rest, inside the source) |",
        "|---|---|",
    ]
    for s in r.per_source:
        out.append(f"| {s.source} | {_f(s.low_bmd_auroc)} |")
    out += [
        "",
        f"Within Wani, Osteopenia vs Osteoporosis AUROC (score P(Osteoporosis) / (P(Osteopenia) + P(Osteoporosis))): "
        f"{_f(r.wani_osteopenia_vs_osteoporosis_auroc)}.\n",
        "## Shortcut baselines\n",
        f"Source-only classifier (answers P(class | source), counted on the {b.basis}): accuracy {_f(b.source_only_accuracy)} "
        f"(equal to the per-source majority by construction), macro-F1 {_f(b.source_only_macro_f1)}, "
        f"pooled low-BMD AUROC from P(low BMD | source) alone {_f(b.source_only_low_bmd_auroc)}. "
        f"Compare the model's pooled low-BMD AUROC {_f(r.pooled_low_bmd_auroc)}.\n",
        "| source | P(class \\| source) | majority | best constant on these rows |",
        "|---|---|---|---|",
    ]
    for c in b.per_source:
        dist = ", ".join(f"{k} {v:.2f}" for k, v in c.distribution.items() if v > 0)
        out.append(f"| {c.source} | {dist} | {c.majority_label} ({_f(c.majority_accuracy)}) | {c.best_constant_label} ({_f(c.best_constant_accuracy)}) |")
    conf = ["", "## Confusion per source (rows true, columns predicted)\n"]
    for s in r.per_source:
        conf.append(f"**{s.source}**\n")
        conf.append("| true \\ pred | " + " | ".join(r.labels) + " |")
        conf.append("|---|" + "---|" * len(r.labels))
        for lab, row in zip(r.labels, s.confusion):
            if sum(row):
                conf.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
        conf.append("")
    return "\n".join(out + conf) + "\n"
