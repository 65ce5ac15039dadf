"""The parity gate: a reference (a torch run or any edge bundle) against compressed/exported candidates.

Torch runs go through torch, edge bundles through the edge runtime
(:func:`osteo_edge.edge_runtime.backends.open_backend`), each with its own manifest's spec, temperature,
thresholds and input gate. With a split, every model is scored on its labelled subset (accuracy,
macro-F1, group-bootstrap CIs). On a pool of images that needs no labels (a folder such as a clinic's
own films, an audit groups.csv, or the split's test rows: :mod:`osteo_edge.export.pool`), each file
goes through the runtime's decision path, and a candidate is compared with the reference on top-1
agreement, the screening decision (status ok / refer / rejected and the low-BMD flag at each bundle's
own threshold) and the |delta p| distribution (mean, p95, max), each with a 95% interval over
radiographs. The gates (:class:`Gates`): accuracy drop on the labelled rows, top-1 and decision
agreement, p95 and max |delta p| on the pool. A torch-free install can run it with edge bundles only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..artifact import Bundle, atomic_write_json, load_bundle
from ..core.progress import Progress
from ..core.stats import softmax
from ..errors import BundleError, ConfigError
from ..preprocess import PreprocessSpec
from .golden import split_inputs

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "macro_f1", "balanced_accuracy", "auroc_macro", "low_bmd_auroc")


def agreement_stats(ref_probs: np.ndarray, cand_probs: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and |delta probability| between two models on the same inputs
    (:func:`osteo_edge.export.fidelity.dp_summary`, the one definition)."""
    from .fidelity import dp_summary

    s = dp_summary(ref_probs, cand_probs)
    return {k: s[k] for k in ("agreement", "max_abs_dp", "mean_abs_dp")}


def score(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], groups: Sequence[int], thresholds: dict[str, float] | None,
          n_boot: int = 1000) -> dict[str, Any]:
    """Headline metrics with 95% group-bootstrap CIs plus per-class detail (core.classification)."""
    from ..core.classification import bootstrap_ci, classification_metrics

    thr = (thresholds or {}).get("low_bmd")
    detail = classification_metrics(y, probs, labels, thr)
    ci = bootstrap_ci(y, probs, labels, groups=list(groups), low_bmd_threshold=thr, n_boot=n_boot)
    return {"n_images": int(len(y)), "n_groups": int(len(set(groups))), "headline": ci,
            "accuracy": detail["accuracy"], "macro_f1": detail["macro_f1"],
            "per_class": detail["per_class"], "confusion": detail["confusion"]}


def evaluate_runner(
    run: Callable[[np.ndarray], np.ndarray],
    spec: PreprocessSpec,
    split: str | os.PathLike,
    labels: Sequence[str],
    temperature: float,
    thresholds: dict[str, float] | None,
    subset: str = "test",
    reference: Any = None,
    reference_spec: PreprocessSpec | None = None,
    n_boot: int = 1000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score a runner on a split subset; with a torch ``reference``, also its agreement with it."""
    from ..data.split import read_split

    inputs = split_inputs(split, spec, subset=subset, labels=labels, progress=progress)
    probs = softmax(run(inputs.x), temperature)
    out = score(np.asarray(inputs.labels), probs, labels, inputs.groups, thresholds, n_boot=n_boot)
    out["subset"] = subset
    out["protocol"] = read_split(split).info.get("protocol", "")
    if reference is not None:
        from .context import torch_logits

        ref_in = split_inputs(split, reference_spec or spec, subset=subset, labels=labels)
        ref_probs = softmax(torch_logits(reference, ref_in.x), temperature)
        out["vs_parent"] = agreement_stats(ref_probs, probs)
        out["vs_parent"]["parent_accuracy"] = float(np.mean(ref_probs.argmax(1) == np.asarray(inputs.labels)))
    return out


# ------------------------------------------------------------------------------------------------
# the parity command


@dataclass
class CandidateResult:
    name: str
    path: str
    format: str
    backend: str
    size_bytes: int
    metrics: dict[str, Any]
    agreement: float
    max_abs_dp: float
    mean_abs_dp: float
    accuracy_drop: float
    failures: list[str] = field(default_factory=list)
    pool: dict[str, Any] = field(default_factory=dict)  # agreement on the unlabelled pool (export.pool)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    reference: dict[str, Any]
    candidates: list[CandidateResult]
    gates: dict[str, float]
    subset: str
    split: str
    protocol: str
    n_images: int
    seconds: float
    pool: dict[str, Any] = field(default_factory=dict)  # what the pool is, how many files, how many left out
    explain: dict[str, Any] = field(default_factory=dict)  # parity --explain (export.explain), first candidate

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {f}" for c in self.candidates for f in c.failures]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["failures"] = self.failures
        return d


def _model_size(bundle: Bundle) -> int:
    return int(bundle.model_path.stat().st_size)


DEFAULT_NAME = "default"  # --reference/--candidate default: the bundle shipped in the package


def open_model_bundle(path: str | os.PathLike) -> Bundle:
    """A bundle to compare: a directory, or ``default`` (the shipped bundle, checked against the
    package's keys); every checksum and the seal are verified."""
    if str(path) == DEFAULT_NAME and not Path(path).exists():
        from ..edge_runtime.classifier import open_bundle

        return open_bundle(None)
    return load_bundle(path)


def _candidate_runner(bundle: Bundle, threads: int | None) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    if bundle.format == "torch":  # a torch run (the fp32 parent, QRUN/PRUN) runs through torch
        import torch

        from ..modeling.loading import load_run
        from .context import torch_logits

        if threads is not None:
            torch.set_num_threads(threads)
        model, _ = load_run(bundle.path)
        return (lambda x: torch_logits(model, x)), f"torch {torch.__version__}"
    from ..edge_runtime.backends import open_backend

    runner = open_backend(bundle.model_path, bundle.format, threads=threads)
    return runner.run, f"{runner.backend} {runner.version}"


@dataclass(frozen=True)
class Gates:
    """The parity gates (defaults: the ship rule of the compression issue)."""

    max_drop: float = 0.01  # accuracy drop on the labelled rows
    min_agreement: float = 0.99  # top-1 agreement on the pool
    min_decision_agreement: float = 0.99  # same screening status and low-BMD flag on the pool
    max_p95_dp: float = 0.04  # p95 over pool files of the largest |delta p|
    max_abs_dp: float = 0.12  # largest |delta p| on the pool

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not 0 <= v <= 1:
                raise ConfigError(f"--{k.replace('_', '-')} must be in [0, 1], got {v}")


@dataclass
class _Reference:
    """The reference's answers that every candidate is compared with: labelled rows and the pool."""

    labels: list[str]
    inputs: Any  # InputSet of the labelled rows (None without a split)
    probs: np.ndarray
    scores: dict[str, Any]
    answers: Any  # pool.Answers
    pool_groups: list[str] | None = None  # the radiograph of each pool file (--pool-members all)


def _gate(ref: _Reference, m: dict[str, Any] | None, pool: dict[str, Any], dec: dict[str, Any], g: Gates) -> list[str]:
    """Accuracy drop on the labelled rows; on the pool: top-1 and decision agreement, p95 and max |dp|."""
    fails = []
    if m is not None:
        drop = ref.scores["accuracy"] - m["accuracy"]
        if drop > g.max_drop + 1e-12:
            fails.append(f"accuracy drop {drop:.4f} > --max-drop {g.max_drop}")
    if not pool.get("n"):
        return fails + ["no pool image decoded: nothing to compare"]
    if pool["agreement"] < g.min_agreement - 1e-12:
        lo, hi = pool["ci95"]
        fails.append(f"top-1 agreement {pool['agreement']:.4f} ({pool['agree']}/{pool['n']} pool images, 95% CI "
                     f"{lo:.3f}-{hi:.3f}) < --min-agreement {g.min_agreement}")
    da = dec["decision_agreement"]
    if da["value"] < g.min_decision_agreement - 1e-12:
        fails.append(f"decision agreement {da['value']:.4f} ({dec['decision_changes']} of {dec['n']} pool images changed "
                     f"status or low-BMD flag) < --min-decision-agreement {g.min_decision_agreement}")
    if dec["p95_abs_dp"]["value"] > g.max_p95_dp + 1e-12:
        fails.append(f"p95 |delta p| {dec['p95_abs_dp']['value']:.4f} > --max-p95-dp {g.max_p95_dp}")
    if dec["max_abs_dp"]["value"] > g.max_abs_dp + 1e-12:
        fails.append(f"max |delta p| {dec['max_abs_dp']['value']:.4f} > --max-abs-dp {g.max_abs_dp}")
    return fails


def _score_candidate(cand: str | os.PathLike, ref: _Reference, split: str | os.PathLike | None, subset: str, gates: Gates,
                     threads: int | None, n_boot: int) -> tuple[Bundle, Any, CandidateResult]:
    from .pool import decision_parity, pool_agreement, pool_answers

    bundle = open_model_bundle(cand)  # verifies every checksum: a corrupted bundle is refused here
    if bundle.labels != ref.labels:
        raise BundleError(f"{cand}: labels {bundle.labels} differ from the reference's {ref.labels}")
    run, backend = _candidate_runner(bundle, threads)
    m, ag = None, {"agreement": float("nan"), "max_abs_dp": float("nan"), "mean_abs_dp": float("nan")}
    if split is not None:
        inp = split_inputs(split, bundle.spec, subset=subset, labels=ref.labels)
        if inp.paths != ref.inputs.paths:  # same rows in the same order, by construction
            raise BundleError(f"{cand}: candidate inputs do not line up with the reference's")
        probs = softmax(run(inp.x), bundle.temperature)
        m = score(np.asarray(ref.inputs.labels), probs, ref.labels, inp.groups, bundle.thresholds, n_boot=n_boot)
        ag = agreement_stats(ref.probs, probs)
    answers = pool_answers(bundle, run, ref.answers.paths, strict=True)
    pool = pool_agreement(ref.answers.probs, answers.probs, ref.pool_groups)
    dec = decision_parity(ref.answers, answers, ref.pool_groups, n_boot=max(n_boot, 200))
    pool["decisions"] = dec
    log.info("%s: agreement %.4f, decision agreement %.4f on %d pool images", cand, pool.get("agreement", float("nan")),
             dec.get("decision_agreement", {}).get("value", float("nan")), pool.get("n", 0))
    name = DEFAULT_NAME if str(cand) == DEFAULT_NAME else Path(cand).name
    return bundle, answers, CandidateResult(
        name=name, path=str(bundle.path), format=bundle.format, backend=backend, size_bytes=_model_size(bundle),
        metrics=m or {}, agreement=ag["agreement"], max_abs_dp=ag["max_abs_dp"], mean_abs_dp=ag["mean_abs_dp"],
        accuracy_drop=float(ref.scores["accuracy"] - m["accuracy"]) if m else float("nan"),
        failures=_gate(ref, m, pool, dec, gates), pool=pool,
    )


def _reference(reference: str | os.PathLike, split: str | os.PathLike | None, subset: str, pool: Any, n_boot: int,
               threads: int | None, progress: Progress | None) -> tuple[_Reference, dict[str, Any], Bundle]:
    from .pool import pool_answers

    ref_bundle = open_model_bundle(reference)
    run, backend = _candidate_runner(ref_bundle, threads)
    labels = ref_bundle.labels
    ref_in, ref_probs, ref_scores = None, np.zeros((0, len(labels))), {}
    if split is not None:
        ref_in = split_inputs(split, ref_bundle.spec, subset=subset, labels=labels, progress=progress)
        ref_probs = softmax(run(ref_in.x), ref_bundle.temperature)
        ref_scores = score(np.asarray(ref_in.labels), ref_probs, labels, ref_in.groups, ref_bundle.thresholds, n_boot=n_boot)
    ref_scores.update({"path": str(ref_bundle.path), "format": ref_bundle.format, "backend": backend,
                       "size_bytes": _model_size(ref_bundle)})
    answers = pool_answers(ref_bundle, run, pool.paths, progress=progress)
    described = {**pool.describe(), "n_images": len(answers.paths), "undecodable": answers.undecodable}
    groups = [pool.group_of()[p] for p in answers.paths] if pool.groups else None
    return _Reference(labels, ref_in, ref_probs, ref_scores, answers, groups), described, ref_bundle


def run_parity(
    reference: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    split: str | os.PathLike | None = None,
    subset: str = "test",
    gates: Gates | None = None,
    threads: int | None = None,
    n_boot: int = 1000,
    progress: Progress | None = None,
    pool: str | os.PathLike | None = None,
    pool_members: str = "one",
    images: str | os.PathLike | None = None,
    explain: str | os.PathLike | None = None,
) -> ParityReport:
    """Compare candidates with a reference (a torch run or any edge bundle; ``default`` = the shipped
    bundle): on the labelled ``subset`` of ``split`` (accuracy), and on a pool of images (top-1 and
    decision agreement, |delta p|, intervals over radiographs). The pool: ``images`` (a folder, no
    labels needed: a clinic's own films), else ``pool`` (a folder or an audit groups.csv), else the
    split's test rows. Then the :class:`Gates`."""
    from ..data.split import SPLITS, read_split
    from .pool import Pool, resolve_pool

    gates = gates or Gates()
    if subset not in SPLITS:
        raise ConfigError(f"unknown --subset {subset!r}; valid: {', '.join(SPLITS)}")
    if not candidates:
        raise ConfigError("give at least one --candidate bundle")
    if split is None and images is None:
        raise ConfigError("give --split SPLIT_CSV (labelled test rows) or --images DIR (unlabelled films), or both")
    if images is not None and pool is not None:
        raise ConfigError("give --images or --pool, not both")
    if images is not None and not Path(images).is_dir():
        raise ConfigError(f"--images {images}: not a folder")
    t0 = time.perf_counter()
    table = read_split(split) if split is not None else None
    if table is None:
        from ..edge_runtime import expand_inputs

        files = tuple(str(f) for f in expand_inputs([images]))
        chosen = Pool(files, f"every file under {images} ({len(files)}; no split given, so nothing is excluded as training data)")
    else:
        chosen = resolve_pool(images if images is not None else pool, table, pool_members)
    if not chosen.paths:
        raise ConfigError(f"no images to compare: {chosen.source}")
    ref, pool_info, ref_bundle = _reference(reference, split, subset, chosen, n_boot, threads, progress)
    scored = [_score_candidate(c, ref, split, subset, gates, threads, n_boot) for c in candidates]
    explained: dict[str, Any] = {}
    if explain is not None:  # the first candidate, from the answers just computed
        from .explain import explain as explain_pair

        bundle, answers, _ = scored[0]
        explained = explain_pair(ref_bundle, bundle, ref.answers.paths, ref.answers.probs, answers.probs, explain)
        explained["dir"] = str(explain)
    return ParityReport(
        reference=ref.scores, candidates=[r for _, _, r in scored], gates=asdict(gates), subset=subset if split is not None else "",
        split=str(split or ""), protocol=table.info.get("protocol", "") if table is not None else "",
        n_images=int(len(ref.inputs.labels)) if ref.inputs is not None else 0,
        seconds=float(time.perf_counter() - t0), pool=pool_info, explain=explained,
    )


def write_parity(report: ParityReport, json_path: str | os.PathLike | None = None, png_path: str | os.PathLike | None = None) -> dict[str, Path]:
    """The report as JSON and a PNG (accuracy and agreement per model, gates drawn in)."""
    written: dict[str, Path] = {}
    if json_path is not None:
        written["json"] = atomic_write_json(json_path, report.to_dict())
    if png_path is not None:
        from ..core.plots import new_figure, save_figure

        names = [c.name for c in report.candidates]
        g = report.gates
        series = [("top-1 agreement (pool)", [c.pool.get("agreement", np.nan) for c in report.candidates], g["min_agreement"]),
                  ("decision agreement (pool)", [_value(c.pool, "decision_agreement") for c in report.candidates],
                   g["min_decision_agreement"])]
        if report.split:
            series.append(("accuracy (labelled rows)", [c.metrics.get("accuracy", np.nan) for c in report.candidates],
                           report.reference.get("accuracy", np.nan) - g["max_drop"]))
        fig = new_figure(max(6.0, 1.6 * len(names) + 3), 4.2)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(names))
        width = 0.8 / len(series)
        for i, (label, vals, gate) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=label, color=f"C{i}")
            ax.axhline(gate, color=f"C{i}", ls="--", lw=1)
        for i, c in enumerate(report.candidates):
            ax.text(i, 1.04, "PASS" if c.passed else "FAIL", ha="center", va="bottom", color="green" if c.passed else "red", fontweight="bold")
        ax.set_xticks(x, names, rotation=15, fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_title(f"Parity against {Path(report.reference.get('path', 'reference')).name} "
                     f"({report.pool.get('n_images', 0)} pool images; dashed: gates)", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
        written["png"] = save_figure(fig, Path(png_path))
    return written


def _value(pool: dict[str, Any], key: str) -> float:
    v = (pool.get("decisions") or {}).get(key)
    return float(v["value"]) if isinstance(v, dict) else float("nan")


def read_parity_json(path: str | os.PathLike) -> ParityReport:
    """A report written by :func:`write_parity` (e.g. to redraw its PNG)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    fields = {f for f in CandidateResult.__dataclass_fields__}
    cands = [CandidateResult(**{k: v for k, v in c.items() if k in fields}) for c in d["candidates"]]
    keep = {k: d[k] for k in ("reference", "gates", "subset", "split", "protocol", "n_images", "seconds")}
    keep["pool"] = d.get("pool") or {}
    keep["explain"] = d.get("explain") or {}
    return ParityReport(candidates=cands, **keep)
