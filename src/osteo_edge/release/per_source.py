"""A bundle per source: the edge runtime's answers on a split's held-out test radiographs, beside the
shortcut baselines (per-source majority class), and the metrics a release writes into its manifests.

Rows: the split's test groups, one file each from the group's own source (a Wani film for a Wani
radiograph: :func:`own_source_rows`). The model's answer is the runtime's (every view of the framing,
logits averaged, calibrated temperature); the input gate is measured separately (how many of these
files it accepts) and does not remove rows from the accuracy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

STEP = "per-source metrics"


def own_source_rows(rows: Sequence[Any]) -> list[Any]:
    """One row per duplicate group: the file from the group's own source (Wani film for a Wani radiograph)."""
    by_group: dict[int, list] = {}
    for r in rows:
        by_group.setdefault(r.group, []).append(r)
    out = []
    for g in sorted(by_group):
        mem = by_group[g]
        parts = set(mem[0].domain.split("+"))
        mem.sort(key=lambda r: (r.source not in parts, r.source, r.path))
        out.append(mem[0])
    return out


def report_summary(rep: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's compact form of a per-source report (``PerSourceReport.to_dict()``)."""
    return {
        "protocol": rep.get("protocol"),
        "pooled_accuracy": rep["pooled_accuracy"], "pooled_macro_f1": rep["pooled_macro_f1"],
        "worst_source": rep["worst_source"], "worst_source_accuracy": rep["worst_source_accuracy"],
        "per_source": [{k: s.get(k) for k in ("source", "n", "accuracy", "accuracy_ci95", "macro_f1")} for s in rep["per_source"]],
        "shortcut": [{k: v.get(k) for k in ("source", "shortcut_accuracy", "margin_points", "beats_shortcut")} for v in rep["verdicts"]],
        "cells": rep["cells"],
        "within_source_low_bmd_auroc": rep["within_source_low_bmd_auroc"],
        "wani_osteopenia_vs_osteoporosis_auroc": rep["wani_osteopenia_vs_osteoporosis_auroc"],
    }


def bundle_per_source(bundle: str | os.PathLike | None, split: str | os.PathLike, threads: int | None = 2) -> dict[str, Any]:
    """The bundle's per-source report on ``split``'s test radiographs through the edge runtime.

    Returns ``{"report": PerSourceReport.to_dict() + protocol, "markdown": ..., "n", "gate_accepted",
    "bundle_seal", "split_sha256", "seconds"}``."""
    from ..data.split import read_split
    from ..edge_runtime import EdgeClassifier
    from ..errors import DataError
    from ..preprocess import decode_for
    from ..train.per_source import per_source_report
    from ..train.source_markdown import format_report

    t0 = time.perf_counter()
    clf = EdgeClassifier.load(bundle, threads=threads)
    table = read_split(split)
    rows = own_source_rows([r for r in table.rows if r.split == "test"])
    if not rows:
        raise DataError(f"{split}: no test rows to measure the bundle on")
    probs, accepted = [], 0
    for r in rows:
        dec = decode_for(r.path, clf.spec)
        accepted += clf.gate.check(dec).ok
        probs.append(clf.image_probabilities(dec))
    p = np.stack(probs)
    labels = clf.labels
    rep = per_source_report([r.label for r in rows], [labels[i] for i in p.argmax(1)], p, [r.domain for r in rows],
                            labels, groups=[r.group for r in rows], normal_label=clf.bundle.negative_label or "Normal")
    d = rep.to_dict()
    d["protocol"] = (f"held-out test radiographs of {Path(split).name} ({table.info.get('protocol', '')}), one file per duplicate "
                     "group from the group's own source; the bundle through the edge runtime")
    return {"report": d, "markdown": format_report(rep), "n": len(rows), "gate_accepted": int(accepted),
            "bundle_seal": clf.bundle.seal, "format": clf.bundle.format, "split_sha256": table.sha256,
            "seconds": round(time.perf_counter() - t0, 1)}


def parity_metrics(parity: Mapping[str, Any], bundle_dir: str | os.PathLike, json_name: str) -> dict[str, Any]:
    """``metrics.parity`` of a candidate bundle from a parity report (``ParityReport.to_dict()``)."""
    from ..errors import ConfigError

    want = Path(bundle_dir).resolve()
    cand = next((c for c in parity.get("candidates", []) if Path(c["path"]).resolve() == want), None)
    if cand is None:
        raise ConfigError(f"{bundle_dir} is not a candidate of the parity report {json_name}")
    return {"reference_accuracy": parity["reference"].get("accuracy"), "labelled_rows": parity.get("n_images"),
            "labelled_agreement": cand.get("agreement"), "pool": cand.get("pool"), "pool_source": parity.get("pool"),
            "json": json_name}


def write_release_metrics(bundle_dir: str | os.PathLike, per_source: Mapping[str, Any], *, parity: Mapping[str, Any] | None = None,
                          cv: Mapping[str, Any] | None = None) -> Any:
    """``metrics.test_per_source`` (and ``metrics.parity``, ``metrics.cv_5fold`` when given) into a
    bundle through a recorded revision; returns the re-sealed Bundle (sign it again)."""
    from ..artifact import load_bundle, reseal

    metrics = dict(load_bundle(bundle_dir).manifest.get("metrics") or {})
    metrics["test_per_source"] = report_summary(per_source["report"])
    if parity is not None:
        metrics["parity"] = dict(parity)
    if cv is not None:
        metrics["cv_5fold"] = dict(cv)
    return reseal(bundle_dir, step=STEP, metrics=metrics)
