"""Site validation and site calibration, torch-free (numpy + the edge runtime).

A clinic finds out whether a model bundle works on its own DEXA-labelled films before it trusts it
(:func:`validate_site`), and can refit the bundle's temperature, low-BMD threshold and gate on those
films into a new bundle signed with its own key, whose recorded figures are cross-validated
(:func:`calibrate_site`). See ``docs/site.md``::

    from osteo_edge.edge_runtime.site import validate_site
    result = validate_site("films/", "labels.csv", out="site-report")
    result.report["verdict"]            # "pass" | "fail" | "insufficient"
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...core.progress import Progress
from ...errors import ConfigError
from .calibrate import FOLDS, MIN_ACCEPT, REPORT_DIR, Target, cross_validate, fit_operating, write_site_bundle
from .labels import SiteLabels, check_counts, read_labels, who_class
from .scoring import Answers, Operating, SiteScores, answer, bundle_operating, score_site
from .validate import DEFAULT_REQUIRE, METRICS, MIN_PER_CLASS, N_BOOT, json_safe, build_report, parse_require, write_report

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_REQUIRE", "MIN_PER_CLASS", "CalibrationResult", "Operating", "SiteLabels", "SiteScores", "Target",
    "ValidationResult", "calibrate_site", "parse_require", "read_labels", "score", "validate_site", "who_class",
]


@dataclass
class ValidationResult:
    report: dict[str, Any]
    scores: SiteScores
    answers: Answers
    written: list[Path]


@dataclass
class CalibrationResult:
    bundle: Any  # the verified site Bundle
    report: dict[str, Any]  # the cross-validated site validation report
    operating: Operating
    base_operating: Operating
    written: list[Path]


def score(images: str | os.PathLike, labels_csv: str | os.PathLike, model: str | os.PathLike | None = None, *,
          trust: Any = None, threads: int | None = None, min_per_class: int = MIN_PER_CLASS,
          progress: Progress | None = None, need_embedding: bool = False) -> tuple[Any, SiteScores]:
    """Load the bundle (verified: seal, checksums, signature, trust), read and check the labels and
    run every labelled image once. Returns ``(EdgeClassifier, SiteScores)``."""
    from .. import EdgeClassifier

    if min_per_class < 2:
        raise ConfigError(f"--min-per-class must be at least 2, got {min_per_class}")
    clf = EdgeClassifier.load(model, threads=threads, trust=trust)
    if need_embedding and getattr(clf.runner, "embedding_dim", None) is None:
        raise ConfigError(f"{clf.bundle.path}: --head needs the model's embedding, and this model file has one output; export the "
                          "base model with 'osteo-edge export --model RUN --format tflite --embedding-output ...'")
    if clf.bundle.negative_label is None:
        raise ConfigError(f"{clf.bundle.path}: the bundle names no negative label (e.g. Normal), so it has no low-BMD question to validate")
    site = read_labels(images, labels_csv, clf.labels, clf.bundle.negative_label)
    if site.mapping:
        log.warning("%s", site.mapping_note())
    check_counts(site, clf.bundle.negative_label, min_per_class)
    return clf, score_site(clf, site, progress)


def validate_site(images: str | os.PathLike, labels_csv: str | os.PathLike, model: str | os.PathLike | None = None, *,
                  out: str | os.PathLike | None = None, require: Mapping[str, float] | None = None, trust: Any = None,
                  threads: int | None = None, n_boot: int = N_BOOT, seed: int = 0, min_per_class: int = MIN_PER_CLASS,
                  plots: bool = True, command: str = "", progress: Progress | None = None) -> ValidationResult:
    """The bundle as it is, on a site's labelled images: figures with intervals, the model card's
    claims beside them and a verdict. Writes report.md, report.json and plots into ``out`` when given."""
    clf, scores = score(images, labels_csv, model, trust=trust, threads=threads, min_per_class=min_per_class, progress=progress)
    ans = answer(scores, bundle_operating(clf))
    report = build_report(scores, ans, clf.bundle, DEFAULT_REQUIRE if require is None else require, n_boot=n_boot, seed=seed,
                          command=command)
    written = write_report(report, ans, scores, out, plots) if out is not None else []
    return ValidationResult(report, scores, ans, written)


def calibrate_site(images: str | os.PathLike, labels_csv: str | os.PathLike, model: str | os.PathLike | None, *,
                   out: str | os.PathLike, key: str | os.PathLike, site: str = "site", target: Target | None = None,
                   folds: int = FOLDS, min_accept: float = MIN_ACCEPT, require: Mapping[str, float] | None = None,
                   trust: Any = None, threads: int | None = None, n_boot: int = N_BOOT, seed: int = 0,
                   min_per_class: int = MIN_PER_CLASS, plots: bool = True, command: str = "",
                   progress: Progress | None = None, head_l2: float | None = None) -> CalibrationResult:
    """Refit temperature, low-BMD threshold and gate on the site's images into a new bundle signed with
    ``key``, with the out-of-fold (k-fold) site validation report recorded in it. With ``head_l2`` also a
    linear head on the model's embedding (:mod:`.head`; the model file needs an embedding output)."""
    from ...artifact.signing import sign_seal

    sign_seal("0" * 64, key)  # a bad key is refused before any work
    if not site.strip():
        raise ConfigError("--site must name the site")
    clf, scores = score(images, labels_csv, model, trust=trust, threads=threads, min_per_class=min_per_class, progress=progress,
                        need_embedding=head_l2 is not None)
    base = bundle_operating(clf)
    if target is None:
        target = Target(target_sensitivity=clf.bundle.calibration.target_sensitivity)
    require = DEFAULT_REQUIRE if require is None else require
    cv_answers, fold_details = cross_validate(scores, base, target, folds, seed, min_accept, head_l2)
    k = len(fold_details)
    protocol = (f"{k}-fold cross-validation inside the site's images (stratified by the low-BMD question"
                f"{', whole groups together' if len(set(scores.site.groups.tolist())) < scores.n else ''}, seed {seed}): each fold answered by "
                f"{'a linear head on the embedding, ' if head_l2 is not None else ''}the temperature, low-BMD threshold "
                f"({target.text()}) and gate thresholds fitted on the other folds only")
    report = build_report(scores, cv_answers, clf.bundle, require, n_boot=n_boot, seed=seed, protocol=protocol, command=command)
    report["folds"] = fold_details
    op, details = fit_operating(scores, np.arange(scores.n), base, target, min_accept, head_l2, seed)
    report["fitted_on_all"] = {**op.to_dict(), "fit": details}
    # the report files that travel inside the bundle
    files: dict[str, bytes] = {}
    shipped = {k: v for k, v in report.items() if k != "per_image"}  # no file names (often patient ids) travel with the bundle
    shipped["bundle"] = {**report["bundle"], "path": Path(str(report["bundle"]["path"])).name}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_report(shipped, cv_answers, scores, tmp, plots)
        for p in paths:
            files[p.name] = p.read_bytes()
    sig = clf.bundle.signature
    record = {
        "name": site,
        "base": {"seal": clf.bundle.seal, "signed_by": sig.key_id if sig else None, "format": clf.bundle.format,
                 "temperature": base.temperature, "thresholds": dict(base.thresholds)},
        "labels_file": {"name": scores.site.csv_name, "sha256": scores.site.csv_sha256, "truth_from": scores.site.truth_from},
        "images": scores.n,
        "counts": scores.site.counts(),
        "label_mapping": {"site_counts": scores.site.site_counts(), "mapped": dict(scores.site.mapping), "note": scores.site.mapping_note()}
        if scores.site.mapping else None,
        "operating_point": target.to_dict(),
        "fitted": {**op.to_dict(), "fit": details, "min_accept": min_accept},
        "cross_validated": {k2: report[k2] for k2 in ("protocol", "metrics", "require", "criteria", "verdict", "sample_size",
                                                     "counts", "accepted_counts", "gate", "answers", "bootstrap")},
        "report": f"{REPORT_DIR}/report.md",
    }
    if op.head is not None:
        from .head import head_record

        record["head"] = head_record(op.head, float(head_l2), scores.n)  # type: ignore[arg-type]
    elif getattr(clf, "head", None) is not None:  # a head bundle recalibrated without --head keeps its head (the logits it was scored with)
        record["head"] = {**dict(clf.bundle.manifest["site"]["head"]), "kept_from_base": clf.bundle.seal}
    headline = {METRICS[k2][2]: v for k2, v in report["metrics"].items()}
    cv_headline = {"headline": headline, "n_images": scores.n, "protocol": protocol, "verdict": report["verdict"]}
    bundle = write_site_bundle(clf.bundle, out, op, base, details, json_safe(record), json_safe(cv_headline), key, files, command)
    written = [Path(out)]
    return CalibrationResult(bundle, report, op, base, written)

