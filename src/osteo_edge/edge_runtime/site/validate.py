"""Site validation: does this bundle work on this clinic's own labelled films?

Figures, each with a 95% percentile-bootstrap interval (images resampled with replacement, or whole
``group``s when the labels file has that column; :func:`osteo_edge.core.stats.bootstrap`), widened
where it is narrower than the Wilson interval of the figure as a proportion of its effective count
(a small-sample guard, :func:`estimates`):

- ``gate_acceptance``: share of the labelled images the input gate accepts;
- on the accepted images: ``accuracy``, ``macro_f1`` (over the classes present), ``sensitivity`` and
  ``specificity`` of "P(low BMD) >= thresholds.low_bmd" (P(low BMD) = 1 - P(negative label)),
  ``auroc`` (low BMD vs the negative label, from P(low BMD)), ``ece`` (expected calibration error of
  the top-1 probability, 10 bins) and ``referral_rate`` (share answered ``refer``: uncertain or low
  BMD suspected, the runtime's own rule).

The **verdict** compares each figure the clinic requires (``--require``) with its interval: a
"higher is better" figure passes when its lower bound is at or above the requirement and fails when
its upper bound is below it (``ece`` and ``referral_rate``: "at most", mirrored). The verdict is
``fail`` when any requirement fails, ``pass`` when all pass, and ``insufficient`` otherwise (an
interval that straddles a requirement: more images are needed to decide). Defaults:
:data:`DEFAULT_REQUIRE`. Fewer than :data:`MIN_PER_CLASS` images on either side of the low-BMD
question (the negative label; every other label) is refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...artifact import Bundle, atomic_write_json, atomic_write_text
from ...core.classification import binary_at_threshold, ece_score, fast_headline, reliability_bins
from ...core.stats import Estimate, auroc, bootstrap, fmt_ci, wilson_interval
from ...errors import ConfigError, OsteoEdgeError
from .scoring import Answers, SiteScores

log = logging.getLogger(__name__)

REPORT_KIND = "osteo-edge-site-validation"
REPORT_VERSION = 1
MIN_PER_CLASS = 5  # images on each side of the low-BMD question (negative label / every other label)
N_BOOT = 1000
DEFAULT_REQUIRE = {"sensitivity": 0.85, "auroc": 0.75}
AUROC_HALF_WIDTH = 0.1  # the sample-size line: images needed for a +-0.1 AUROC interval

# name -> (title, higher is better, key of the same figure in a manifest's metrics)
METRICS: dict[str, tuple[str, bool, str | None]] = {
    "accuracy": ("accuracy", True, "accuracy"),
    "macro_f1": ("macro-F1", True, "macro_f1"),
    "sensitivity": ("low-BMD sensitivity", True, "low_bmd_sensitivity"),
    "specificity": ("low-BMD specificity", True, "low_bmd_specificity"),
    "auroc": ("low-BMD AUROC", True, "low_bmd_auroc"),
    "ece": ("ECE (top-1)", False, "ece"),
    "gate_acceptance": ("gate acceptance", True, "gate_acceptance"),
    "referral_rate": ("referral rate", False, "referral_rate"),
}
ALIASES = {"sens": "sensitivity", "spec": "specificity", "auc": "auroc", "f1": "macro_f1", "referral": "referral_rate",
           "gate": "gate_acceptance", "acceptance": "gate_acceptance", "acc": "accuracy"}


def parse_require(text: str | None) -> dict[str, float]:
    """``"sensitivity=0.85,auroc=0.75"`` -> dict (``None``: :data:`DEFAULT_REQUIRE`); at least one criterion."""
    if text is None:
        return dict(DEFAULT_REQUIRE)
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"--require takes NAME=VALUE pairs separated by commas, got {part!r}; names: {', '.join(METRICS)}")
        name, value = (x.strip() for x in part.split("=", 1))
        name = ALIASES.get(name, name)
        if name not in METRICS:
            raise ConfigError(f"unknown requirement {name!r}; valid: {', '.join(METRICS)}")
        try:
            v = float(value)
        except ValueError:
            raise ConfigError(f"--require {name} needs a number in [0, 1], got {value!r}") from None
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"--require {name} needs a number in [0, 1], got {v}")
        out[name] = v
    if not out:
        raise ConfigError(f"--require needs at least one criterion NAME=VALUE; names: {', '.join(METRICS)}")
    return out


# ------------------------------------------------------------------------------------------------
# figures


def figures(scores: SiteScores, ans: Answers, idx: np.ndarray | None = None) -> dict[str, float]:
    """Every figure on rows ``idx`` (all rows by default); NaN where a figure is undefined."""
    idx = np.arange(scores.n) if idx is None else np.asarray(idx)
    nan = float("nan")
    out = {k: nan for k in METRICS}
    if idx.size == 0:
        return out
    out["gate_acceptance"] = float(ans.accepted[idx].mean())
    a = idx[ans.accepted[idx]]
    if a.size == 0:
        return out
    y, probs = scores.y[a], ans.probs[a]
    h = fast_headline(y, probs, scores.labels)
    out["accuracy"], out["macro_f1"] = h["accuracy"], h["macro_f1"]
    out["ece"] = ece_score(probs, y)
    y_low = (y != scores.neg_index).astype(int)
    if ans.threshold_row is not None and not np.all(np.isnan(ans.threshold_row[a])):
        out["sensitivity"], out["specificity"] = binary_at_threshold(y_low, ans.p_low[a], ans.threshold_row[a])
    out["auroc"] = auroc(y_low, ans.p_low[a])
    out["referral_rate"] = float(ans.refer[a].mean())
    return out


def effective_counts(scores: SiteScores, ans: Answers) -> dict[str, int]:
    """How many films each figure is a proportion of (the small-sample guard's n): sensitivity the
    accepted low-BMD films, specificity the accepted negative films, AUROC the smaller of the two,
    gate acceptance every film, the others every accepted film. ECE has none (no guard)."""
    a = ans.accepted
    pos, neg = int(np.sum(a & (scores.y_low == 1))), int(np.sum(a & (scores.y_low == 0)))
    n_acc = int(a.sum())
    return {"accuracy": n_acc, "macro_f1": n_acc, "sensitivity": pos, "specificity": neg, "auroc": min(pos, neg),
            "gate_acceptance": scores.n, "referral_rate": n_acc}


def estimates(scores: SiteScores, ans: Answers, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Estimate]:
    """Each figure with its 95% bootstrap interval (groups resampled whole), widened where it is
    narrower than the Wilson interval of the figure read as a proportion of its effective count
    (:func:`effective_counts`). The guard matters on small samples: 5 of 5 low-BMD films found, or
    5 Normal and 5 low-BMD films perfectly separated, give a bootstrap interval of [1, 1]; Wilson
    gives [0.57, 1], and a verdict must not pass on five films."""
    point = figures(scores, ans)
    groups = scores.site.groups
    if n_boot <= 0:
        return {k: Estimate(v) for k, v in point.items()}
    est = bootstrap(point, lambda idx: figures(scores, ans, idx), scores.n, n_boot, seed,
                    groups=groups if len(set(groups.tolist())) < scores.n else None)
    for name, m in effective_counts(scores, ans).items():
        e = est[name]
        if m <= 0 or math.isnan(e.value) or math.isnan(e.low) or math.isnan(e.high):
            continue
        wl, wh = wilson_interval(int(round(e.value * m)), m)
        est[name] = Estimate(e.value, min(e.low, wl), max(e.high, wh), n=e.n, valid_resamples=e.valid_resamples)
    return est


# ------------------------------------------------------------------------------------------------
# verdict and sample size


def judge(est: Mapping[str, Estimate], require: Mapping[str, float]) -> tuple[str, list[dict[str, Any]]]:
    """``(verdict, one row per requirement)``: see the module docstring."""
    rows = []
    for name, req in require.items():
        e = est.get(name)
        higher = METRICS[name][1]
        if e is None or math.isnan(e.low) or math.isnan(e.high):
            result, why = "undecided", "no interval"
        elif higher:
            result = "pass" if e.low >= req else "fail" if e.high < req else "undecided"
            why = f"lower bound {e.low:.3f} {'>=' if e.low >= req else '<'} {req:g}" + (f"; upper bound {e.high:.3f} < {req:g}" if e.high < req else "")
        else:
            result = "pass" if e.high <= req else "fail" if e.low > req else "undecided"
            why = f"upper bound {e.high:.3f} {'<=' if e.high <= req else '>'} {req:g}" + (f"; lower bound {e.low:.3f} > {req:g}" if e.low > req else "")
        rows.append({"metric": name, "require": ("at least " if higher else "at most ") + f"{req:g}", "required": req,
                     "value": None if e is None else e.value, "ci95": None if e is None else [e.low, e.high], "result": result, "why": why})
    results = {r["result"] for r in rows}
    verdict = "fail" if "fail" in results else "pass" if results <= {"pass"} else "insufficient"
    return verdict, rows


def _hanley_mcneil_se(a: float, n_pos: float, n_neg: float) -> float:
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def sample_size(scores: SiteScores, ans: Answers, est: Mapping[str, Estimate], half_width: float = AUROC_HALF_WIDTH) -> dict[str, Any]:
    """About how many images per class (at this site's class mix) would narrow the AUROC interval to
    +-``half_width``: the bootstrap interval's half-width scaled by 1/sqrt(n); without an interval,
    Hanley & McNeil's standard error at the measured AUROC (95% normal interval)."""
    counts = {lab: int(np.sum((scores.y == i) & ans.accepted)) for i, lab in enumerate(scores.labels)}
    n_neg = counts[scores.negative]
    n_pos = sum(v for k, v in counts.items() if k != scores.negative)
    e = est.get("auroc")
    a = e.value if e is not None else float("nan")
    out: dict[str, Any] = {"half_width": half_width}
    if n_neg < 2 or n_pos < 2 or math.isnan(a):
        out.update(method="none", text="AUROC could not be measured; no sample-size estimate.")
        return out
    if e is not None and not (math.isnan(e.low) or math.isnan(e.high)) and e.high > e.low:
        now = (e.high - e.low) / 2
        out["method"] = "the bootstrap interval's half-width, scaled by 1/sqrt(n) at this site's class mix"
    else:
        now = 1.96 * _hanley_mcneil_se(min(max(a, 0.5), 0.99), n_pos, n_neg)
        out["method"] = "Hanley-McNeil standard error at the measured AUROC, this site's class mix"
    m = max(1.0, (now / half_width) ** 2)
    need = {k: int(math.ceil(v * m)) for k, v in counts.items()}
    more = {k: max(0, need[k] - v) for k, v in counts.items()}
    out.update({"current_half_width": now, "total_per_class": need, "more_per_class": more})
    if sum(more.values()) == 0:
        out["text"] = (f"the AUROC interval is already about +-{now:.2f} on {n_neg + n_pos} accepted images; "
                       f"no more images are needed for +-{half_width:g}.")
        return out
    out["text"] = (f"the AUROC interval is now about +-{now:.2f}; +-{half_width:g} needs about "
                   + ", ".join(f"{v} more {k}" for k, v in more.items() if need[k] > 0)
                   + f" images ({', '.join(f'{need[k]} {k}' for k in need if need[k] > 0)} in all, at this site's class mix)")
    # the scarcer side alone (Hanley-McNeil, scaled to the measured half-width): often far fewer films
    a_used = min(max(a, 0.5), 0.99)
    scale = now / (1.96 * _hanley_mcneil_se(a_used, n_pos, n_neg))
    scarce_neg = n_neg <= n_pos
    fixed, grow = (n_pos, n_neg) if scarce_neg else (n_neg, n_pos)
    for extra in range(0, 20001):
        n_g = grow + extra
        se = _hanley_mcneil_se(a_used, fixed, n_g) if scarce_neg else _hanley_mcneil_se(a_used, n_g, fixed)
        if scale * 1.96 * se <= half_width:
            side = scores.negative if scarce_neg else "low-BMD"
            out["scarcer_side_only"] = {"side": side, "more": extra}
            out["text"] += f"; or about {extra} more {side} images alone."
            break
    else:
        out["text"] += f"; more {scores.negative if scarce_neg else 'low-BMD'} images alone would not get there."
    return out


# ------------------------------------------------------------------------------------------------
# the model card's claims


def card_claims(bundle: Bundle) -> dict[str, Any]:
    """The figures the bundle's manifest claims (a site bundle: its cross-validated site figures; else
    the publisher's test split), by :data:`METRICS` name; ``source`` says which."""
    metrics = bundle.metrics
    for split, source in (("site_cv", "site cross-validation (this bundle's calibration images, out of fold)"),
                          ("test", "publisher's held-out test split")):
        s = metrics.split(split)
        if s is None:
            continue
        head = s.raw.get("headline") if isinstance(s.raw.get("headline"), Mapping) else {}
        out: dict[str, Any] = {}
        for name, (_, _, key) in METRICS.items():
            if key is None:
                continue
            e = Estimate.from_dict(head.get(key)) if key in head else Estimate.from_dict(s.raw.get(key))
            if e is not None and not math.isnan(e.value):
                out[name] = e.to_dict()
        if "gate_acceptance" not in out:
            acc = _gate_claim(bundle)
            if acc is not None:
                out["gate_acceptance"] = {"value": acc, "ci95": [float("nan"), float("nan")]}
        n = s.raw.get("n_images", s.raw.get("n"))
        return {"source": source, "split": split, "n": n if isinstance(n, int) else None, "figures": out}
    return {"source": "none recorded", "split": None, "n": None, "figures": {}}


def _gate_claim(bundle: Bundle) -> float | None:
    g = bundle.gate if isinstance(bundle.gate, Mapping) else {}
    cal = (g.get("ood") or {}).get("calibration") or {}
    for key in ("test_sets", "calibration_sets"):
        rate = ((cal.get(key) or {}).get("in_distribution") or {}).get("accept_rate")
        if isinstance(rate, (int, float)):
            return float(rate)
    return None


# ------------------------------------------------------------------------------------------------
# the report


def build_report(scores: SiteScores, ans: Answers, bundle: Bundle, require: Mapping[str, float], *, n_boot: int = N_BOOT,
                 seed: int = 0, protocol: str = "", command: str = "") -> dict[str, Any]:
    """The validation report (the content of report.json)."""
    est = estimates(scores, ans, n_boot, seed)
    verdict, rows = judge(est, require)
    site = scores.site
    reasons: dict[str, int] = {}
    for r in ans.reason:
        if r is not None:
            reasons[r] = reasons.get(r, 0) + 1
    ops = [o.to_dict() for o in ans.operating]
    sig = bundle.signature
    return {
        "kind": REPORT_KIND, "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "protocol": protocol or "the bundle as it is, on every labelled image",
        "bundle": {"path": str(bundle.path), "format": bundle.format, "seal": bundle.seal, "signed_by": sig.key_id if sig else None,
                   "labels": bundle.labels, "negative_label": scores.negative},
        "operating_point": ops[0] if len(ops) == 1 else {"per_fold": ops},
        "labels_file": {"name": site.csv_name, "sha256": site.csv_sha256, "truth_from": site.truth_from},
        "images": scores.n,
        "groups": int(len(set(site.groups.tolist()))),
        "counts": site.counts(),
        "label_mapping": {"site_counts": site.site_counts(), "mapped": dict(site.mapping), "note": site.mapping_note()}
        if site.mapping else None,
        "accepted_counts": {lab: int(np.sum((scores.y == i) & ans.accepted)) for i, lab in enumerate(scores.labels)},
        "gate": {"accepted": int(ans.accepted.sum()), "rejected": int((~ans.accepted).sum()), "rejected_by_reason": reasons},
        "answers": {s: ans.status.count(s) for s in ("ok", "refer", "rejected")},
        "metrics": {k: e.to_dict() for k, e in est.items()},
        "claims": card_claims(bundle),
        "require": dict(require),
        "criteria": rows,
        "verdict": verdict,
        "sample_size": sample_size(scores, ans, est),
        "bootstrap": {"replicates": n_boot, "seed": seed, "unit": "group" if len(set(site.groups.tolist())) < scores.n else "image",
                      "interval": "95% percentile, widened to at least the Wilson interval of the figure as a proportion of its effective count",
                      "effective_counts": effective_counts(scores, ans)},
        "min_per_class": MIN_PER_CLASS,
        "reliability": reliability_bins(ans.probs[ans.accepted], scores.y[ans.accepted]) if ans.accepted.any() else None,
        "per_image": [{"file": f, "label": scores.labels[int(y)], "status": s, "reason": r,
                       "p_low_bmd": None if s == "rejected" else round(float(p), 6)}
                      for f, y, s, r, p in zip(site.files, scores.y, ans.status, ans.reason, ans.p_low)],
    }


WHAT_TO_DO = {
    "pass": "Every requirement is met on this site's films, judged on the lower bound of its interval. Keep the labelled set and "
            "re-run `site validate` after any change of X-ray equipment, protocol or model bundle.",
    "insufficient": "The intervals are too wide to decide: label more films (the sample-size line says about how many) and run "
                    "`site validate` again. Until then treat every answer as unvalidated here: refer on clinical grounds as before.",
    "fail": "This bundle does not meet the site's requirements on its own films. Do not use its answers for referral decisions. "
            "`osteo-edge site calibrate` refits the temperature, the low-BMD threshold and the gate on these films and reports "
            "cross-validated figures; it cannot create discrimination the model lacks (a threshold cannot change AUROC, a temperature only a little). "
            "If the calibrated report still fails on AUROC, the model does not see what separates low BMD at this site: refer by "
            "clinical risk (age, fracture history) and DEXA as before.",
}


def _fmt(e: Mapping[str, Any] | None) -> str:
    return fmt_ci(e) if e else "-"


def report_markdown(r: Mapping[str, Any], plots: Sequence[str] = (), plot_note: str | None = None) -> str:
    b, m, claims = r["bundle"], r["metrics"], r["claims"]
    op = r["operating_point"]
    lines = [
        "# Site validation", "",
        f"**Verdict: {r['verdict']}** (requirements: " + (", ".join(f"{c['metric']} {c['require']}" for c in r["criteria"]) or "none") + ")", "",
        WHAT_TO_DO[r["verdict"]], "",
        f"- bundle: `{b['path']}` ({b['format']}, seal `{(b['seal'] or '-')[:16]}`, signed by {b['signed_by'] or 'nobody'})",
        f"- protocol: {r['protocol']}",
        f"- labels file: `{r['labels_file']['name']}` (sha256 `{r['labels_file']['sha256'][:16]}...`, truth from `{r['labels_file']['truth_from']}`)",
        f"- images: {r['images']} ({r['groups']} groups); gate accepted {r['gate']['accepted']}, rejected {r['gate']['rejected']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in r['gate']['rejected_by_reason'].items())})" if r["gate"]["rejected_by_reason"] else ""),
        f"- answers: {', '.join(f'{k} {v}' for k, v in r['answers'].items())}",
    ]
    if "per_fold" not in op:
        lines.append(f"- operating point: temperature {op['temperature']:.3g}, thresholds "
                     + ", ".join(f"{k} {v:.3g}" for k, v in op["thresholds"].items()))
    else:
        lines.append(f"- operating point: refitted in each of {len(op['per_fold'])} folds on the other folds' images (out-of-fold figures)")
    if r.get("label_mapping"):
        lines += ["", f"**Labels mapped:** {r['label_mapping']['note']}. The labels file's own counts: "
                  + ", ".join(f"{k} {v}" for k, v in r["label_mapping"]["site_counts"].items()) + "."]
    lines += ["", "## Counts per class", "", "| class | labelled | accepted by the gate |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {r['accepted_counts'][k]} |" for k, v in r["counts"].items()]
    lines += ["", f"## Figures (95% intervals: percentile bootstrap over {r['bootstrap']['unit']}s, {r['bootstrap']['replicates']} "
              "replicates, never narrower than the Wilson interval of the figure as a proportion of its films)", "",
              f"| figure | this site | model card ({claims['source']}) | requirement | result |", "|---|---|---|---|---|"]
    crit = {c["metric"]: c for c in r["criteria"]}
    for name, (title, _, _) in METRICS.items():
        c = crit.get(name)
        lines.append(f"| {title} | {_fmt(m.get(name))} | {_fmt(claims['figures'].get(name))} | {c['require'] if c else ''} | {c['result'] if c else ''} |")
    lines += ["", f"Sample size: {r['sample_size']['text']}", "",
              "Sensitivity and specificity are of \"P(low BMD) >= the low-BMD threshold\" on the images the gate accepted; the referral "
              "rate counts every `refer` answer (low BMD suspected or uncertain) among them. A requirement passes when the lower bound of "
              "its interval clears it (`ece`, `referral_rate`: the upper bound stays under it), fails when the whole interval misses it, "
              "and is undecided otherwise.", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    if plot_note:
        lines += [f"Plots: {plot_note}", ""]
    lines += ["A screening aid, not a diagnosis: uncertain or low-BMD answers mean referral for DEXA.", ""]
    return "\n".join(lines)


def write_plots(r: Mapping[str, Any], ans: Answers, scores: SiteScores, out: Path) -> tuple[list[Path], str | None]:
    """reliability.png (and roc.png); ``([], why)`` when matplotlib is missing."""
    try:
        from ...core.plots import new_figure, save_figure

        fig = new_figure(4.5, 4.5)
    except OsteoEdgeError as exc:
        return [], f"not drawn ({exc})"
    paths = []
    rel = r.get("reliability")
    if rel:
        ax = fig.add_subplot(1, 1, 1)
        edges = np.asarray(rel["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        acc = np.asarray(rel["accuracy"], dtype=float)
        ax.bar(centres, np.nan_to_num(acc), width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        for c, a, n in zip(centres, acc, rel["count"]):
            if n:
                ax.text(c, (0 if math.isnan(a) else a) + 0.02, str(n), ha="center", fontsize=7)
        ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="top-1 probability", ylabel="accuracy",
               title=f"Reliability (ECE {fmt_ci(r['metrics']['ece'], 2)})")
        ax.legend(loc="upper left", fontsize=8)
        paths.append(save_figure(fig, out / "reliability.png"))
    a = ans.accepted
    y_low = scores.y_low[a]
    if a.any() and 0 < y_low.sum() < y_low.size:
        fig = new_figure(4.5, 4.5)
        ax = fig.add_subplot(1, 1, 1)
        p = ans.p_low[a]
        ts = np.r_[np.inf, np.unique(p)[::-1]]
        tpr = [float(np.mean(p[y_low == 1] >= t)) for t in ts]
        fpr = [float(np.mean(p[y_low == 0] >= t)) for t in ts]
        ax.plot(fpr, tpr, "-", label=f"AUROC {fmt_ci(r['metrics']['auroc'], 2)}")
        sens, spec = r["metrics"]["sensitivity"]["value"], r["metrics"]["specificity"]["value"]
        if not (math.isnan(sens) or math.isnan(spec)):
            ax.plot([1 - spec], [sens], "o", color="red", label="at the low-BMD threshold")
        ax.plot([0, 1], [0, 1], "k:")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity", ylabel="sensitivity", title="Low BMD vs the negative label")
        ax.legend(loc="lower right", fontsize=8)
        paths.append(save_figure(fig, out / "roc.png"))
    return paths, None


def json_safe(v: Any) -> Any:
    """JSON without NaN (null instead), numpy made plain."""
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) or math.isinf(float(v)) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def write_report(r: Mapping[str, Any], ans: Answers, scores: SiteScores, out: str | os.PathLike, plots: bool = True) -> list[Path]:
    """report.json, report.md and the plots into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pngs, note = write_plots(r, ans, scores, out) if plots else ([], "not requested")
    atomic_write_json(out / "report.json", json_safe(r))
    atomic_write_text(out / "report.md", report_markdown(r, [str(p) for p in pngs], note))
    written += [out / "report.md", out / "report.json", *pngs]
    return written


def report_json_text(r: Mapping[str, Any]) -> str:
    return json.dumps(json_safe(r), indent=2)
