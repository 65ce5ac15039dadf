"""The model card shown in the demo, rendered (Markdown) from the bundle manifest and nothing else.

Training data, split protocol, metrics (with confidence intervals where the manifest has them),
thresholds, input gate rates and intended use all come from ``manifest.json``; whatever the manifest
does not say is shown as "not recorded", never filled in.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..artifact import Bundle
from ..core.stats import Estimate, fmt_ci

NOT_RECORDED = "_not recorded in this bundle_"


def _md(text: Any) -> str:
    """Escape the few characters that would break a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return _md(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metric_value(v: Any) -> str | None:
    """``0.81`` / ``{"value": .81, "ci95": [.75, .86]}`` / ``{"point": .81, "lo": .75, "hi": .86}`` -> text."""
    if _is_num(v):
        return _num(v)
    if isinstance(v, Mapping):
        e = Estimate.from_dict(v)  # every stored shape: {value, ci95}, legacy {value, ci_low, ci_high}, {point, lo, hi}
        if e is None:
            return None
        no_interval = math.isnan(e.low) or math.isnan(e.high)
        text = _num(e.value) if no_interval else fmt_ci(e, style="words")
        n = v.get("n")
        if _is_num(n):
            text += f", n={n}"
        return text
    return None


def _metric_rows(metrics: Mapping[str, Any], prefix: tuple[str, ...] = (), depth: int = 0) -> Iterable[tuple[str, str]]:
    for key, v in metrics.items():
        name = (*prefix, str(key))
        text = _metric_value(v)
        if text is not None:
            yield " / ".join(name), text
        elif isinstance(v, Mapping) and depth < 4:
            yield from _metric_rows(v, name, depth + 1)
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(c) for c in v):
            yield " / ".join(name), f"{_num(v[0])} to {_num(v[1])}"
        elif isinstance(v, str) and len(v) < 200:
            yield " / ".join(name), _md(v)


def _bullets(items: Any) -> str:
    if isinstance(items, (list, tuple)):
        return "\n".join(f"- {_md(i if not isinstance(i, Mapping) else ', '.join(f'{k}: {w}' for k, w in i.items()))}" for i in items) or NOT_RECORDED
    if isinstance(items, Mapping):
        return "\n".join(f"- **{_md(k)}**: {_md(v)}" for k, v in items.items()) or NOT_RECORDED
    return _md(items) if items else NOT_RECORDED


def _gate_text(gate: Any) -> str:
    if not isinstance(gate, Mapping):
        return "Rule checks only (decodable, large enough, not blank, greyscale); no calibrated out-of-distribution score."
    ood = gate.get("ood")
    if not isinstance(ood, Mapping):
        return "Rule checks only (decodable, large enough, not blank, greyscale)."
    head = f"Rule checks plus an out-of-distribution score (threshold {_num(float(ood.get('threshold', float('nan'))))})"
    disc = gate.get("discriminator")
    if isinstance(disc, Mapping):
        head += f" and a knee-vs-other score (threshold {_num(float(disc.get('threshold', float('nan'))))})"
    lines = [head + "."]
    cal = ood.get("calibration") or {}
    for set_name in ("test_sets", "calibration_sets"):
        sets = cal.get(set_name)
        if not isinstance(sets, Mapping):
            continue
        ind = sets.get("in_distribution") or {}
        if _is_num(ind.get("accept_rate")):
            lines.append(f"- {set_name.replace('_', ' ')}: knee radiographs accepted {ind['accept_rate']:.1%} (n={ind.get('n')})")
        for src, r in (sets.get("in_distribution_by_source") or {}).items():
            if isinstance(r, Mapping) and _is_num(r.get("accept_rate")):
                lines.append(f"  - {_md(src)}: {r.get('accepted')}/{r.get('n')} accepted")
        for name, r in (sets.get("out_of_distribution") or {}).items():
            if isinstance(r, Mapping) and _is_num(r.get("reject_rate")):
                lines.append(f"- {set_name.replace('_', ' ')}: {_md(name)} rejected {r['reject_rate']:.1%} (n={r.get('n')})")
        break
    if cal.get("protocol"):
        lines.append(f"- protocol: {_md(cal['protocol'])}")
    return "\n".join(lines)


def _per_source_text(metrics: Mapping[str, Any]) -> str:
    """The per-source metrics (issue 17) when the manifest has them: the source shortcut (the majority
    class of each source) is the bar a model must clear on each source."""
    lines = []
    cv = metrics.get("cv_5fold")
    if isinstance(cv, Mapping) and _is_num(cv.get("wani_acc")):
        lines.append(f"- 5-fold group CV of the recipe ({_md(cv.get('lever'))}, n={cv.get('n')}): pooled accuracy {_num(cv.get('pooled_acc'))}, "
                     f"Wani accuracy {_num(cv.get('wani_acc'))} vs shortcut {_num(cv.get('wani_bar'))}, Wani Normal recalled {_md(cv.get('wani_normal'))}, "
                     f"within-source low-BMD AUROC Kaggle {_num(cv.get('lowbmd_auc_kaggle'))} / Wani {_num(cv.get('lowbmd_auc_wani'))}")
    t = metrics.get("test_per_source")
    if isinstance(t, Mapping) and isinstance(t.get("per_source"), list):
        bars = {v.get("source"): v for v in t.get("shortcut") or [] if isinstance(v, Mapping)}
        lines += ["", "Held-out test radiographs (the shipped model):", "", "| source | n | accuracy [95% CI] | shortcut | margin (points) |", "|---|---|---|---|---|"]
        for r in t["per_source"]:
            if not isinstance(r, Mapping):
                continue
            ci = r.get("accuracy_ci95") or {}
            v = bars.get(r.get("source"), {})
            lines.append(f"| {_md(r.get('source'))} | {r.get('n')} | {_num(r.get('accuracy'))} [{_num(ci.get('lo'))}, {_num(ci.get('hi'))}] | "
                         f"{_num(v.get('shortcut_accuracy'))} | {_num(v.get('margin_points'))} |")
        if t.get("protocol"):
            lines.append(f"\n{_md(t['protocol'])}")
    return "\n".join(lines).strip()


def model_card_markdown(bundle: Bundle) -> str:
    """Markdown model card of a bundle, from its manifest only."""
    prov = bundle.provenance
    labels = ", ".join(bundle.labels)
    thr = bundle.thresholds
    parts = [
        f"> **{bundle.intended_use}**",
        "",
        "### Model",
        f"- format: `{_md(bundle.format)}`{_scheme(bundle)}; classes (output order): {_md(labels)}",
        f"- input: {bundle.spec.input_size}x{bundle.spec.input_size} px, resize `{bundle.spec.resize}`, layout {bundle.spec.layout}",
        f"- calibration temperature: {_num(bundle.temperature)}",
        "- thresholds: "
        + (
            ", ".join(
                [
                    *(["refer for DEXA when the top probability is below " + _num(thr["min_confidence"])] if "min_confidence" in thr else []),
                    *(["low BMD suspected when P(low BMD) = 1 - P(Normal) is at least " + _num(thr["low_bmd"])] if "low_bmd" in thr else []),
                ]
            )
            or NOT_RECORDED
        ),
    ]
    if bundle.arch is not None:
        parts.append(f"- architecture: `{_md(bundle.arch.name)}`")
    if prov.parent is not None:
        parts.append(f"- exported from: `{_md(' '.join(x for x in (prov.parent.path, prov.parent.format) if x))}`")
    sig = bundle.signature
    parts.append(f"- signed by key `{sig.key_id}`; seal `{_md(str(bundle.seal)[:16])}...`" if sig else
                 f"- unsigned; seal `{_md(str(bundle.seal)[:16])}...`" if bundle.seal else "- unsigned, unsealed (version-1 manifest)")
    parts += ["", "### Training data", _bullets(prov.raw.get("data"))]
    parts += ["", "### Split protocol", _md(prov.protocol) if prov.protocol else NOT_RECORDED]
    if prov.split_sha256:
        parts.append(f"(split file sha256 `{_md(str(prov.split_sha256)[:16])}...`)")
    rows = list(_metric_rows(bundle.metrics.raw))
    parts += ["", "### Metrics"]
    with_ci = [(k, v) for k, v in rows if "95% CI" in v]
    if with_ci:
        parts += ["With 95% confidence intervals:", "", "| metric | value |", "|---|---|", *[f"| {_md(k)} | {v} |" for k, v in with_ci]]
        parts += ["", f"<details><summary>All {len(rows)} recorded metrics</summary>", "", "| metric | value |", "|---|---|",
                  *[f"| {_md(k)} | {v} |" for k, v in rows], "", "</details>"]
    elif rows:
        parts += ["| metric | value |", "|---|---|", *[f"| {_md(k)} | {v} |" for k, v in rows]]
    else:
        parts.append(NOT_RECORDED)
    per_source = _per_source_text(bundle.metrics.raw)
    if per_source:
        parts += ["", "### Per source, beside the shortcut", per_source]
    parts += ["", "### Input gate", _gate_text(bundle.gate)]
    if prov.command:
        parts += ["", "### How it was made", f"`{_md(prov.command)}`"]
    parts += [
        "",
        "### Intended use",
        "Screening aid for knee radiographs, **not a diagnosis** and not a medical device. "
        "An uncertain or low-BMD result means: refer for DEXA. A person decides; the model only points.",
    ]
    return "\n".join(parts)


def _scheme(bundle: Any) -> str:
    """How an int8 file was quantized, in words, from its export record (empty for other files)."""
    q = (bundle.export_info or {}).get("quantization") or {}
    if q.get("scheme") == "weight-only":
        return " (weight-only: int8 weights, float activations)"
    if "activations" in q and "weights" in q:
        return f" ({_md(str(q['weights']))} weights, {_md(str(q['activations']))} activations)"
    return ""
