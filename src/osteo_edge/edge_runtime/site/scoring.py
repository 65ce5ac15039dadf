"""Run a bundle once over a site's images and keep what every decision is made from.

For each labelled image: the input gate's rule checks (size, blank, colour), its two scores (the
out-of-distribution density score and the knee-vs-other score) and the model's mean logits over the
image's views, all through :class:`~osteo_edge.edge_runtime.EdgeClassifier` and the shared
preprocessing. Any :class:`Operating` point (a temperature, thresholds and gate thresholds) then
answers every image without running the model again (:func:`answer`): that is how validation,
calibration and cross-validation score the same images under different settings.
:func:`answer` with the bundle's own operating point reproduces ``EdgeClassifier.predict``
(the status, the label and the gate's verdict).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from ...core.progress import Progress, no_progress
from ...core.stats import softmax
from ..classifier import EdgeClassifier, decide
from ..gate import Gate, image_features
from ...errors import ConfigError, InvalidImageError
from ...preprocess import decode_for
from .labels import SiteLabels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Operating:
    """Everything that turns logits and gate scores into answers."""

    temperature: float
    thresholds: Mapping[str, float]
    ood_threshold: float = math.inf  # the gate's density threshold (inf: no density check)
    other_threshold: float = math.inf  # the gate's knee-vs-other threshold (inf: no such check)
    head: Any = None  # a LinearHead on the embedding (site calibrate --head): its logits replace the model's

    @property
    def low_bmd(self) -> float | None:
        v = self.thresholds.get("low_bmd")
        return None if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "thresholds": dict(self.thresholds),
                "gate_ood_threshold": None if math.isinf(self.ood_threshold) else self.ood_threshold,
                "gate_other_threshold": None if math.isinf(self.other_threshold) else self.other_threshold,
                **({"head": f"linear head on the {self.head.mean.size}-wide embedding"} if self.head is not None else {})}

    def with_(self, **kw: Any) -> "Operating":
        return replace(self, **kw)


def bundle_operating(clf: EdgeClassifier) -> Operating:
    """The operating point stored in a bundle's manifest."""
    g = clf.gate
    return Operating(float(clf.temperature), dict(clf.thresholds),
                     g.ood.threshold if g.ood is not None else math.inf,
                     g.discriminator.threshold if g.discriminator is not None else math.inf)


@dataclass
class SiteScores:
    """One row per labelled image (the order of the labels file)."""

    site: SiteLabels
    labels: list[str]
    negative: str
    logits: np.ndarray  # (n, classes): mean logits over the image's views
    rules_ok: np.ndarray  # bool: passed the gate's rule checks
    rule_codes: list[str | None]
    ood: np.ndarray  # density score (NaN without a density model or when the rules refused)
    other: np.ndarray  # knee-vs-other score (NaN without one or when the rules refused)
    extra: dict[str, Any] = field(default_factory=dict)
    embeddings: np.ndarray | None = None  # (n, dim): mean embedding over the views, when the model file has that output

    @property
    def n(self) -> int:
        return int(len(self.site.files))

    @property
    def y(self) -> np.ndarray:
        return self.site.y

    @property
    def neg_index(self) -> int:
        return self.labels.index(self.negative)

    @property
    def y_low(self) -> np.ndarray:
        return (self.y != self.neg_index).astype(int)

    def subset(self, idx: np.ndarray) -> "SiteScores":
        idx = np.asarray(idx, dtype=int)
        return SiteScores(self.site.subset(idx), self.labels, self.negative, self.logits[idx], self.rules_ok[idx],
                          [self.rule_codes[i] for i in idx], self.ood[idx], self.other[idx], dict(self.extra),
                          None if self.embeddings is None else self.embeddings[idx])

    def logits_for(self, op: "Operating") -> np.ndarray:
        """The logits an operating point answers from: its head's on the embeddings, else the model's."""
        if op.head is None:
            return np.nan_to_num(self.logits)
        if self.embeddings is None:
            raise ConfigError("a head needs the model's embedding; this bundle's model file has no embedding output")
        return op.head(np.nan_to_num(self.embeddings)).astype(np.float64)


def score_site(clf: EdgeClassifier, site: SiteLabels, progress: Progress | None = None) -> SiteScores:
    """Decode every image, run the gate's checks and the model; refuses (one line) files it cannot read."""
    progress = progress or no_progress
    if clf.bundle.negative_label is None:
        raise ConfigError(f"{clf.bundle.path}: the bundle names no negative label (e.g. Normal), so it has no low-BMD question to validate")
    gate: Gate = clf.gate
    rules = Gate(gate.min_side, gate.blank_std, gate.colour_chroma)
    n = len(site.files)
    logits = np.full((n, len(clf.labels)), np.nan)
    ok = np.zeros(n, dtype=bool)
    codes: list[str | None] = [None] * n
    ood, other = np.full(n, np.nan), np.full(n, np.nan)
    dim = getattr(clf.runner, "embedding_dim", None)
    emb = np.full((n, dim), np.nan) if dim else None
    unreadable: list[str] = []
    for i, (name, path) in enumerate(zip(site.files, site.paths)):
        progress("scoring", i, n)
        try:
            decoded = decode_for(path, clf.spec)
        except InvalidImageError as exc:
            unreadable.append(f"{name} ({str(exc).replace(str(path) + ': ', '')})")
            continue
        except (OSError, ValueError, TypeError, EOFError, SyntaxError, MemoryError) as exc:
            unreadable.append(f"{name} ({type(exc).__name__})")
            continue
        verdict = rules.check(decoded)
        ok[i], codes[i] = verdict.ok, verdict.code
        if verdict.ok and gate.ood is not None:
            feats = image_features(decoded)
            ood[i] = gate.ood.score(feats)
            if gate.discriminator is not None:
                other[i] = gate.discriminator.score(feats)
        z, e = clf.model_outputs(clf.inputs_for(decoded))
        logits[i] = z.mean(axis=0)
        if emb is not None and e is not None:
            emb[i] = e.mean(axis=0)
    progress("scoring", n, n)
    if unreadable:
        more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        raise ConfigError(f"{len(unreadable)} labelled file(s) cannot be read as images: {', '.join(unreadable[:3])}{more}")
    return SiteScores(site, list(clf.labels), str(clf.bundle.negative_label), logits, ok, codes, ood, other, embeddings=emb)


@dataclass(frozen=True)
class Answers:
    """Every image answered under one operating point (rows as in :class:`SiteScores`)."""

    accepted: np.ndarray  # bool: the gate accepted the image
    reason: list[str | None]  # the gate's refusal code, None when accepted
    probs: np.ndarray  # (n, classes) calibrated probabilities (also for refused images: used only where accepted)
    p_low: np.ndarray  # P(low BMD) = 1 - P(negative)
    low_flag: np.ndarray  # bool: P(low BMD) >= the low-BMD threshold (False without one)
    refer: np.ndarray  # bool: status "refer" (uncertain or low BMD), accepted images only
    status: list[str]  # ok | refer | rejected
    operating: tuple[Operating, ...] = ()  # the operating point(s) used (one per fold when cross-validated)
    threshold_row: np.ndarray | None = None  # the low-BMD threshold each row was judged at


def gate_accepts(scores: SiteScores, op: Operating) -> tuple[np.ndarray, list[str | None]]:
    """The gate's verdict per image under ``op``'s gate thresholds (NaN scores: no such check)."""
    ood_ok = ~(scores.ood > op.ood_threshold)  # NaN compares False: no density model, no refusal
    other_ok = ~(scores.other > op.other_threshold)
    acc = scores.rules_ok & ood_ok & other_ok
    reasons = [None if a else (c or "out_of_distribution") for a, c in zip(acc, scores.rule_codes)]
    return acc, reasons


def answer(scores: SiteScores, op: Operating) -> Answers:
    """Answer every image under ``op``, with the runtime's own decision rule (:func:`decide`)."""
    acc, reasons = gate_accepts(scores, op)
    z = scores.logits_for(op)
    probs = softmax(z, op.temperature)
    p_low = 1.0 - probs[:, scores.neg_index]
    thr = op.low_bmd
    low_flag = p_low >= thr if thr is not None else np.zeros(scores.n, dtype=bool)
    status, refer = [], np.zeros(scores.n, dtype=bool)
    for i in range(scores.n):
        if not acc[i]:
            status.append("rejected")
            continue
        top = int(np.argmax(probs[i]))
        s, _, _ = decide(scores.labels[top], float(probs[i, top]), float(p_low[i]), dict(op.thresholds))
        status.append(s)
        refer[i] = s == "refer"
    return Answers(acc, reasons, probs, p_low, low_flag, refer, status, (op,),
                   np.full(scores.n, np.nan if thr is None else thr))


def merge_answers(n: int, parts: list[tuple[np.ndarray, Answers]]) -> Answers:
    """Out-of-fold answers: each fold's rows answered by the operating point fitted without them."""
    k = parts[0][1].probs.shape[1]
    acc, low, ref = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    probs, p_low, thr = np.zeros((n, k)), np.zeros(n), np.full(n, np.nan)
    reason: list[str | None] = [None] * n
    status = [""] * n
    ops = []
    for idx, a in parts:
        acc[idx], low[idx], ref[idx], probs[idx], p_low[idx] = a.accepted, a.low_flag, a.refer, a.probs, a.p_low
        if a.threshold_row is not None:
            thr[idx] = a.threshold_row
        for j, i in enumerate(idx):
            reason[i], status[i] = a.reason[j], a.status[j]
        ops.extend(a.operating)
    return Answers(acc, reason, probs, p_low, low, ref, status, tuple(ops), thr)
