"""Site calibration: refit a bundle's temperature, low-BMD threshold and gate on a site's own films.

What is refitted (numpy only, the model's weights are untouched):

1. the **gate**: its rule checks stay; its two score thresholds (density, knee-vs-other) are only
   ever *loosened*, and only as far as needed for the gate to accept ``min_accept`` of the site's
   labelled knees (each score's threshold is raised to the ``1 - (1 - min_accept) / 2`` quantile of
   the site's scores when it is below it, so that both together accept at least ``min_accept``).
   With no non-knee images from the site the gate is never tightened;
2. the **temperature**: the one that minimises the negative log-likelihood of the labels on the
   accepted images (a log-spaced grid from 0.05 to 20, refined). A temperature at the upper bound
   (recorded as ``temperature_at_bound``) means the site's labels are fitted best by flattening the
   probabilities towards a uniform guess: at this site the model's probabilities carry no usable
   information;
3. the **low-BMD threshold** for the operating point the clinic asks for: the highest threshold whose
   sensitivity on the site's accepted images reaches ``target_sensitivity``
   (:func:`osteo_edge.core.classification.choose_low_bmd_threshold`), or the lowest threshold whose
   referral rate (every ``refer`` answer, the ``min_confidence`` rule included) is at most
   ``max_referral``.

A threshold never changes the AUROC. With two labels a temperature cannot either; with three,
P(low BMD) = 1 - P(Normal) is not a monotone function of the logits' scale, so a temperature can
reorder it a little, but it cannot create discrimination the model lacks. Calibration buys
calibrated probabilities and a chosen operating point, not a better model.

The figures recorded with the site bundle are **out of fold**: the site's images are split into
``folds`` stratified folds (by the low-BMD question; whole ``group``s together), each fold is
answered by an operating point fitted on the other folds only, and the site validation report is
computed on those answers. The bundle itself is then fitted on every image.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...core.classification import choose_low_bmd_threshold
from ...core.stats import softmax
from ...errors import ConfigError
from .scoring import Answers, Operating, SiteScores, answer, gate_accepts, merge_answers

log = logging.getLogger(__name__)

MIN_ACCEPT = 0.98
FOLDS = 5
T_RANGE = (0.05, 20.0)
REPORT_DIR = "site-validation"


@dataclass(frozen=True)
class Target:
    """The operating point asked for: a sensitivity to reach, or a referral rate not to exceed."""

    target_sensitivity: float | None = None
    max_referral: float | None = None

    def __post_init__(self) -> None:
        if (self.target_sensitivity is None) == (self.max_referral is None):
            raise ConfigError("give one operating point: --target-sensitivity or --max-referral, not both")
        v = self.target_sensitivity if self.target_sensitivity is not None else self.max_referral
        if not 0.0 < float(v) <= 1.0:  # type: ignore[arg-type]
            raise ConfigError(f"the operating point must be in (0, 1], got {v}")

    def to_dict(self) -> dict[str, float]:
        return {"target_sensitivity": self.target_sensitivity} if self.target_sensitivity is not None else {"max_referral": self.max_referral}  # type: ignore[dict-item]

    def text(self) -> str:
        if self.target_sensitivity is not None:
            return f"low-BMD sensitivity >= {self.target_sensitivity:g}"
        return f"referral rate <= {self.max_referral:g}"


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood of ``y`` under softmax(logits / T)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        raise ConfigError("no accepted images to fit a temperature on")

    def nll(t: float) -> float:
        p = softmax(logits, t)[np.arange(len(y)), y]
        return float(-np.mean(np.log(np.clip(p, 1e-12, None))))

    grid = np.exp(np.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), 121))
    vals = [nll(t) for t in grid]
    i = int(np.argmin(vals))
    lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, len(grid) - 1)])
    for _ in range(40):  # golden-section refinement in log T
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if nll(math.exp(a)) <= nll(math.exp(b)):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def fit_gate(scores: SiteScores, idx: np.ndarray, base: Operating, min_accept: float = MIN_ACCEPT) -> tuple[float, float]:
    """Gate score thresholds loosened (never tightened) to accept ``min_accept`` of rows ``idx``."""
    if not 0.5 <= min_accept <= 1.0:
        raise ConfigError(f"--min-accept must be in [0.5, 1], got {min_accept}")
    q = 1.0 - (1.0 - min_accept) / 2.0
    out = []
    for vals, t in ((scores.ood[idx], base.ood_threshold), (scores.other[idx], base.other_threshold)):
        vals = vals[~np.isnan(vals)]
        if math.isinf(t) or vals.size == 0:
            out.append(t)
            continue
        need = float(np.quantile(vals, q, method="higher"))
        out.append(max(t, need))
    return out[0], out[1]


def fit_low_bmd(scores: SiteScores, idx: np.ndarray, probs: np.ndarray, p_low: np.ndarray, thresholds: Mapping[str, float],
                target: Target) -> tuple[float, dict[str, Any]]:
    """The low-BMD threshold for ``target`` on rows ``idx`` (accepted rows only)."""
    y_low = scores.y_low[idx]
    if target.target_sensitivity is not None:
        c = choose_low_bmd_threshold(y_low, p_low[idx], target.target_sensitivity)
        return float(c["threshold"]), {"fitted_sensitivity": c["val_sensitivity"], "fitted_specificity": c["val_specificity"]}
    cap = float(target.max_referral)  # type: ignore[arg-type]
    min_conf = thresholds.get("min_confidence")
    top = probs[idx].max(axis=1)
    uncertain = top < min_conf if min_conf is not None else np.zeros(len(idx), dtype=bool)
    p = p_low[idx]
    for t in np.r_[np.unique(p), 1.0]:  # ascending: the first meeting the cap refers the most low-BMD suspects
        rate = float(np.mean(uncertain | (p >= t)))
        if rate <= cap + 1e-12:
            return float(t), {"fitted_referral_rate": rate, "cap_met": True}
    rate = float(np.mean(uncertain | (p >= 1.0)))
    log.warning("the referral cap %.2f cannot be met: the min_confidence rule alone refers %.0f%% of these images", cap, 100 * rate)
    return 1.0, {"fitted_referral_rate": rate, "cap_met": False}


def fit_operating(scores: SiteScores, idx: np.ndarray, base: Operating, target: Target, min_accept: float = MIN_ACCEPT,
                  head_l2: float | None = None, seed: int = 0) -> tuple[Operating, dict[str, Any]]:
    """Gate, temperature, then low-BMD threshold, fitted on rows ``idx`` only. With ``head_l2`` a linear
    head on the embedding first (:mod:`.head`); temperature and threshold then on its cross-fitted logits."""
    idx = np.asarray(idx, dtype=int)
    if head_l2 is not None:
        return _fit_with_head(scores, idx, base, target, min_accept, head_l2, seed)
    t_ood, t_other = fit_gate(scores, idx, base, min_accept)
    op = base.with_(ood_threshold=t_ood, other_threshold=t_other)
    acc, _ = gate_accepts(scores, op)
    a = idx[acc[idx]]
    if a.size == 0:
        raise ConfigError("the input gate refuses every calibration image; check that these are knee radiographs")
    temperature = fit_temperature(scores.logits[a], scores.y[a])
    probs = softmax(np.nan_to_num(scores.logits), temperature)
    p_low = 1.0 - probs[:, scores.neg_index]
    thr, details = fit_low_bmd(scores, a, probs, p_low, base.thresholds, target)
    op = op.with_(temperature=temperature, thresholds={**dict(base.thresholds), "low_bmd": thr})
    min_conf = base.thresholds.get("min_confidence")
    uncertain = float(np.mean(probs[a].max(axis=1) < min_conf)) if min_conf is not None else 0.0
    details.update({"images": int(idx.size), "accepted": int(a.size), "gate_acceptance": float(a.size / idx.size),
                    "uncertain_rate": uncertain, "temperature_at_bound": bool(temperature >= 0.99 * T_RANGE[1])})
    return op, details


def _fit_with_head(scores: SiteScores, idx: np.ndarray, base: Operating, target: Target, min_accept: float, l2: float,
                   seed: int) -> tuple[Operating, dict[str, Any]]:
    from .head import cross_fitted_logits, fit_head

    if scores.embeddings is None:
        raise ConfigError("--head needs the model's embedding: export the base model with 'osteo-edge export ... --embedding-output'")
    emb = np.nan_to_num(scores.embeddings)
    k = len(scores.labels)
    head = fit_head(emb[idx], scores.y[idx], k, l2)
    z = head(emb).astype(np.float64)
    z[idx] = cross_fitted_logits(emb[idx], scores.y[idx], k, l2, seed)  # calibrate on logits of heads that never saw the row
    crossfit = replace(scores, logits=z)
    op, details = fit_operating(crossfit, idx, base.with_(head=None), target, min_accept)
    details["head"] = {"l2": l2, "images": int(idx.size), "dim": int(emb.shape[1]),
                       "temperature_and_threshold_on": "cross-fitted head logits (inner folds)"}
    return op.with_(head=head), details


def make_folds(scores: SiteScores, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number per row: groups dealt round-robin into ``k`` folds within each low-BMD side, shuffled
    with ``seed``; ``k`` is lowered to the smaller side's number of groups."""
    groups = scores.site.groups
    y_low = scores.y_low
    uniq = list(dict.fromkeys(groups.tolist()))
    side = {g: int(y_low[groups == g].max()) for g in uniq}  # a group with any low-BMD image counts as low BMD
    per_side = [[g for g in uniq if side[g] == s] for s in (0, 1)]
    k = int(min(k, *(len(p) for p in per_side)))
    if k < 2:
        raise ConfigError("cross-validation needs at least 2 groups on each side of the low-BMD question")
    rng = np.random.default_rng(seed)
    fold_of: dict[Any, int] = {}
    start = 0
    for part in per_side:
        order = [part[i] for i in rng.permutation(len(part))]
        for j, g in enumerate(order):
            fold_of[g] = (start + j) % k
        start += len(order)
    return np.array([fold_of[g] for g in groups.tolist()], dtype=int)


def cross_validate(scores: SiteScores, base: Operating, target: Target, folds: int = FOLDS, seed: int = 0,
                   min_accept: float = MIN_ACCEPT, head_l2: float | None = None) -> tuple[Answers, list[dict[str, Any]]]:
    """Out-of-fold answers: every fold answered by the operating point fitted on the other folds."""
    fold = make_folds(scores, folds, seed)
    parts, details = [], []
    for f in range(int(fold.max()) + 1):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        op, d = fit_operating(scores, train, base, target, min_accept, head_l2, seed + f)
        parts.append((test, answer(scores.subset(test), op)))
        details.append({"fold": f, "train": int(train.size), "test": int(test.size), **op.to_dict(), "fit": d})
    return merge_answers(scores.n, parts), details


# ------------------------------------------------------------------------------------------------
# the site bundle


_REBUILT = {"kind", "manifest_version", "format", "model_file", "labels", "negative_label", "spec", "temperature", "thresholds",
            "metrics", "provenance", "versions", "intended_use", "created", "revisions", "files", "seal", "signature", "gate"}


def site_gate(base_gate: Mapping[str, Any] | None, base: Operating, op: Operating, details: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The base bundle's gate record with the site's thresholds, and a record of what changed."""
    if base_gate is None:
        return None
    g = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base_gate.items()}
    if g.get("ood") is not None and not math.isinf(op.ood_threshold):
        g["ood"]["threshold"] = float(f"{op.ood_threshold:.7g}")
    if g.get("discriminator") is not None and not math.isinf(op.other_threshold):
        g["discriminator"]["threshold"] = float(f"{op.other_threshold:.7g}")
    g["site_calibration"] = {
        "rule": "score thresholds only loosened, to accept the site's labelled knees (rule checks unchanged)",
        "base_ood_threshold": None if math.isinf(base.ood_threshold) else base.ood_threshold,
        "base_other_threshold": None if math.isinf(base.other_threshold) else base.other_threshold,
        "site_acceptance": details.get("gate_acceptance"),
        "note": "the base gate's rates on non-knee images were measured at the base thresholds",
    }
    return g


def write_site_bundle(base_bundle: Any, out: str | os.PathLike, op: Operating, base: Operating, fit_details: Mapping[str, Any],
                      site_record: Mapping[str, Any], cv_headline: Mapping[str, Any], key: str | os.PathLike,
                      report_files: Mapping[str, bytes], command: str = "") -> Any:
    """A new bundle: the base bundle's files, the site's operating point, the ``site`` record and the
    cross-validated report (``site-validation/``), sealed and signed with ``key``."""
    from ...artifact import load_bundle, runtime_versions, seal, sign_bundle, write_bundle_dir

    out = Path(out)
    b = base_bundle
    if out.resolve() == Path(b.path).resolve():
        raise ConfigError(f"--out {out} is the base bundle; write the site bundle to a new folder")
    m = b.manifest
    provenance = b.child_provenance(out, command)
    metrics = {**dict(m.get("metrics") or {}), "site_cv": dict(cv_headline)}
    extra = {k: v for k, v in m.items() if k not in _REBUILT}
    extra["site"] = dict(site_record)
    gate = site_gate(b.gate, base, op, fit_details)
    if gate is not None:
        extra["gate"] = gate

    def build(tmp: Path) -> None:
        for name in m["files"]:
            if name.startswith(REPORT_DIR + "/"):
                continue  # a site bundle made from a site bundle: the old report is replaced
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(b.path / name, dst)
        rep = tmp / REPORT_DIR
        rep.mkdir(exist_ok=True)
        for name, data in report_files.items():
            (rep / name).write_bytes(data)
        seal(tmp, format=b.format, model_file=m["model_file"], labels=b.labels, spec=b.spec, temperature=op.temperature,
             thresholds=dict(op.thresholds), metrics=metrics, provenance=provenance, versions=runtime_versions(),
             negative_label=b.negative_label, extra=extra)
        sign_bundle(tmp, key)

    write_bundle_dir(out, build)
    return load_bundle(out)
