"""The parity gate: a torch reference run against exported/compressed candidates on real test images.

The reference goes through torch; every exported candidate goes through the edge runtime
(:func:`osteo_edge.edge_runtime.backends.open_backend`), each with its own manifest's spec and
temperature, on the same split subset. Per candidate: accuracy, macro-F1 (group-bootstrap CIs),
top-1 agreement with the reference, max and mean |delta calibrated probability|; then, on a pool of
unlabelled images far larger than the test split (:mod:`osteo_edge.export.pool`), top-1 agreement
with its 95% Wilson interval and |delta p|. The gates: accuracy drop on the labelled rows <=
``max_drop``, agreement on the pool >= ``min_agreement`` (on the labelled rows when the pool is empty).
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
    """Top-1 agreement and |delta probability| between two models on the same inputs."""
    ref_probs, cand_probs = np.asarray(ref_probs, np.float64), np.asarray(cand_probs, np.float64)
    delta = np.abs(ref_probs - cand_probs)
    return {
        "agreement": float(np.mean(ref_probs.argmax(1) == cand_probs.argmax(1))) if len(ref_probs) else float("nan"),
        "max_abs_dp": float(delta.max()) if delta.size else 0.0,
        "mean_abs_dp": float(delta.mean()) if delta.size else 0.0,
    }


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
        from . import torch_logits

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


def _candidate_runner(bundle: Bundle, threads: int | None) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    if bundle.format == "torch":  # a compressed torch run (QRUN/PRUN) runs through torch
        from ..modeling.loading import load_run
        from . import torch_logits

        model, _ = load_run(bundle.path)
        return (lambda x: torch_logits(model, x)), "torch"
    from ..edge_runtime.backends import open_backend

    runner = open_backend(bundle.model_path, bundle.format, threads=threads)
    return runner.run, f"{runner.backend} {runner.version}"


@dataclass
class _Reference:
    """The reference's answers that every candidate is compared with: labelled rows and the pool."""

    labels: list[str]
    inputs: Any  # InputSet of the labelled rows
    probs: np.ndarray
    scores: dict[str, Any]
    pool_paths: list[str]
    pool_probs: np.ndarray
    pool_groups: list[str] | None = None  # the radiograph of each pool file (--pool-members all)


def _gate(m: dict[str, Any], ref: _Reference, ag: dict[str, float], pool: dict[str, Any], max_drop: float, min_agreement: float) -> list[str]:
    """The gates: accuracy drop on the labelled rows, top-1 agreement on the pool (its point estimate)."""
    fails = []
    drop = ref.scores["accuracy"] - m["accuracy"]
    if drop > max_drop + 1e-12:
        fails.append(f"accuracy drop {drop:.4f} > --max-drop {max_drop}")
    if not pool["n"] and ag["agreement"] < min_agreement - 1e-12:
        fails.append(f"top-1 agreement {ag['agreement']:.4f} on the labelled rows (the pool is empty) < --min-agreement {min_agreement}")
    if pool["n"] and pool["agreement"] < min_agreement - 1e-12:
        lo, hi = pool["ci95"]
        fails.append(f"top-1 agreement {pool['agreement']:.4f} ({pool['agree']}/{pool['n']} pool images, 95% CI "
                     f"{lo:.3f}-{hi:.3f}) < --min-agreement {min_agreement}")
    return fails


def _score_candidate(cand: str | os.PathLike, ref: _Reference, split: str | os.PathLike, subset: str, gates: tuple[float, float],
                     threads: int | None, n_boot: int) -> CandidateResult:
    from .pool import pool_agreement, pool_probabilities

    bundle = load_bundle(cand)  # verifies every checksum: a corrupted bundle is refused here
    if bundle.labels != ref.labels:
        raise BundleError(f"{cand}: labels {bundle.labels} differ from the reference's {ref.labels}")
    run, backend = _candidate_runner(bundle, threads)
    inp = split_inputs(split, bundle.spec, subset=subset, labels=ref.labels)
    if inp.paths != ref.inputs.paths:  # same rows in the same order, by construction
        raise BundleError(f"{cand}: candidate inputs do not line up with the reference's")
    probs = softmax(run(inp.x), bundle.temperature)
    m = score(np.asarray(ref.inputs.labels), probs, ref.labels, inp.groups, bundle.thresholds, n_boot=n_boot)
    ag = agreement_stats(ref.probs, probs)
    pool_probs, _, _ = pool_probabilities(run, ref.pool_paths, bundle.spec, bundle.temperature, strict=True)
    pool = pool_agreement(ref.pool_probs, pool_probs, ref.pool_groups)
    log.info("%s: accuracy %.4f, agreement %.4f (labelled), %.4f on %d pool images", cand, m["accuracy"], ag["agreement"],
             pool["agreement"], pool["n"])
    return CandidateResult(
        name=Path(cand).name, path=str(cand), format=bundle.format, backend=backend, size_bytes=_model_size(bundle),
        metrics=m, agreement=ag["agreement"], max_abs_dp=ag["max_abs_dp"], mean_abs_dp=ag["mean_abs_dp"],
        accuracy_drop=float(ref.scores["accuracy"] - m["accuracy"]), failures=_gate(m, ref, ag, pool, *gates), pool=pool,
    )


def _reference(reference: str | os.PathLike, split: str | os.PathLike, subset: str, pool: Any, n_boot: int,
               progress: Progress | None) -> tuple[_Reference, dict[str, Any]]:
    from ..modeling.loading import load_run
    from . import torch_logits
    from .pool import pool_probabilities

    ref_model, ref_bundle = load_run(reference)
    labels = ref_bundle.labels
    ref_in = split_inputs(split, ref_bundle.spec, subset=subset, labels=labels, progress=progress)
    ref_probs = softmax(torch_logits(ref_model, ref_in.x), ref_bundle.temperature)
    ref_scores = score(np.asarray(ref_in.labels), ref_probs, labels, ref_in.groups, ref_bundle.thresholds, n_boot=n_boot)
    ref_scores.update({"path": str(reference), "format": ref_bundle.format, "backend": "torch", "size_bytes": _model_size(ref_bundle)})
    pool_probs, ok, bad = pool_probabilities(lambda x: torch_logits(ref_model, x), pool.paths, ref_bundle.spec,
                                             ref_bundle.temperature, progress=progress)
    described = {**pool.describe(), "n_images": len(ok), "undecodable": bad}
    groups = [pool.group_of()[p] for p in ok] if pool.groups else None
    return _Reference(labels, ref_in, ref_probs, ref_scores, ok, pool_probs, groups), described


def run_parity(
    reference: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    split: str | os.PathLike,
    subset: str = "test",
    max_drop: float = 0.01,
    min_agreement: float = 0.98,
    threads: int | None = None,
    n_boot: int = 1000,
    progress: Progress | None = None,
    pool: str | os.PathLike | None = None,
    pool_members: str = "one",
) -> ParityReport:
    """Score the reference (torch) and every candidate (edge runtime) on the labelled ``subset`` and
    measure their agreement on the unlabelled pool (:mod:`osteo_edge.export.pool`); apply the gates
    (accuracy drop on the labelled rows, agreement on the pool)."""
    from ..data.split import SPLITS, read_split
    from .pool import resolve_pool

    if subset not in SPLITS:
        raise ConfigError(f"unknown --subset {subset!r}; valid: {', '.join(SPLITS)}")
    if not candidates:
        raise ConfigError("give at least one --candidate bundle")
    if not 0 <= max_drop <= 1 or not 0 <= min_agreement <= 1:
        raise ConfigError(f"--max-drop and --min-agreement must be in [0, 1], got {max_drop} and {min_agreement}")
    t0 = time.perf_counter()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    table = read_split(split)
    ref, pool_info = _reference(reference, split, subset, resolve_pool(pool, table, pool_members), n_boot, progress)
    results = [_score_candidate(c, ref, split, subset, (max_drop, min_agreement), threads, n_boot) for c in candidates]
    return ParityReport(
        reference=ref.scores, candidates=results, gates={"max_drop": max_drop, "min_agreement": min_agreement},
        subset=subset, split=str(split), protocol=table.info.get("protocol", ""), n_images=int(len(ref.inputs.labels)),
        seconds=float(time.perf_counter() - t0), pool=pool_info,
    )


def write_parity(report: ParityReport, json_path: str | os.PathLike | None = None, png_path: str | os.PathLike | None = None) -> dict[str, Path]:
    """The report as JSON and a PNG (accuracy and agreement per model, gates drawn in)."""
    written: dict[str, Path] = {}
    if json_path is not None:
        written["json"] = atomic_write_json(json_path, report.to_dict())
    if png_path is not None:
        from ..core.plots import new_figure, save_figure

        names = ["reference"] + [c.name for c in report.candidates]
        accs = [report.reference["accuracy"]] + [c.metrics["accuracy"] for c in report.candidates]
        agrees = [1.0] + [c.pool["agreement"] if c.pool.get("n") else c.agreement for c in report.candidates]
        fig = new_figure(max(6.0, 1.4 * len(names) + 2), 4.2)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(names))
        ax.bar(x - 0.2, accs, 0.4, label="accuracy")
        ax.bar(x + 0.2, agrees, 0.4, label=f"top-1 agreement with reference ({report.pool.get('n_images', report.n_images)} pool images)")
        ax.axhline(report.reference["accuracy"] - report.gates["max_drop"], color="C0", ls="--", lw=1, label="accuracy gate")
        ax.axhline(report.gates["min_agreement"], color="C1", ls="--", lw=1, label="agreement gate")
        for i, c in enumerate(report.candidates, start=1):
            ax.text(i, max(accs[i], agrees[i]) + 0.02, "PASS" if c.passed else "FAIL", ha="center", va="bottom", color="green" if c.passed else "red", fontweight="bold")
        ax.set_xticks(x, names, rotation=15, fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_title(f"Parity on the {report.subset} split ({report.n_images} images)", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
        written["png"] = save_figure(fig, Path(png_path))
    return written


def read_parity_json(path: str | os.PathLike) -> ParityReport:
    """A report written by :func:`write_parity` (e.g. to redraw its PNG)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    fields = {f for f in CandidateResult.__dataclass_fields__}
    cands = [CandidateResult(**{k: v for k, v in c.items() if k in fields}) for c in d["candidates"]]
    keep = {k: d[k] for k in ("reference", "gates", "subset", "split", "protocol", "n_images", "seconds")}
    keep["pool"] = d.get("pool") or {}
    return ParityReport(candidates=cands, **keep)
