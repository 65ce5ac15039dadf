"""The shipped bundle, per source (issue 17): the int8 model through the torch-free runtime on the
held-out test radiographs of a split, beside the shortcut baselines, and the recipe's 5-fold CV row.

    python benchmarks/model/shipped_sources.py --split SPLIT.csv [--bundle B] [--lever NAME] [--write-manifest]

Rows: the split's test groups, one file each from the group's own source (a Wani film for a Wani
radiograph), as in cv_levers.py. The model's answer is the runtime's (every view of the framing, logits
averaged, calibrated temperature); the input gate is measured separately (how many of these files it
accepts) and does not remove rows from the accuracy. With --write-manifest the bundle's manifest gets
``metrics.test_per_source`` (this report's summary), ``metrics.cv_5fold`` (the lever's CV row from
results/<lever>.json) and, with --parity, ``metrics.parity`` (agreement with the fp32 parent on the
labelled rows and on the pool) through a recorded revision (re-sign the bundle afterwards).
Writes benchmarks/model/shipped_sources.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cv_levers import RESULTS, own_source_rows, summary_row, tscore_correlation  # noqa: E402


def summary(rep: dict) -> dict:
    """The manifest's compact form of a per-source report."""
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


def main() -> int:
    from osteo_edge.core.machine import cpu_model
    from osteo_edge.data.split import read_split
    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.preprocess import decode_for
    from osteo_edge.train.sources import format_report, per_source_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    ap.add_argument("--lever", default=None, help="the recipe's lever name in results/ (its CV row goes into the manifest)")
    ap.add_argument("--write-manifest", action="store_true")
    ap.add_argument("--parity", type=Path, default=None, help="the parity JSON of this bundle (its pool agreement goes into the manifest)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    clf = EdgeClassifier.load(a.bundle, threads=2)
    table = read_split(a.split)
    rows = own_source_rows([r for r in table.rows if r.split == "test"])
    probs, accepted = [], 0
    for r in rows:
        dec = decode_for(r.path, clf.spec)
        accepted += clf.gate.check(dec).ok
        probs.append(clf.image_probabilities(dec))
    probs = np.stack(probs)
    labels = clf.labels
    rep = per_source_report([r.label for r in rows], [labels[i] for i in probs.argmax(1)], probs, [r.domain for r in rows],
                            labels, groups=[r.group for r in rows], normal_label=clf.bundle.negative_label or "Normal")
    d = rep.to_dict()
    d["protocol"] = (f"held-out test radiographs of {a.split.name} ({table.info.get('protocol', '')}), one file per duplicate group "
                     "from the group's own source; the shipped bundle through the edge runtime")
    out = {
        "bundle": str(clf.bundle.path), "bundle_seal": clf.bundle.manifest.get("seal"), "format": clf.bundle.format,
        "split_sha256": table.sha256, "n": len(rows), "gate_accepted": accepted,
        "machine": {"cpu": cpu_model()}, "seconds": round(time.perf_counter() - t0, 1),
        "command": "python " + " ".join(sys.argv), "report": d,
        "wani_tscore": tscore_correlation(rows, probs, labels, clf.bundle.negative_label or "Normal"),
    }
    (HERE / "shipped_sources.json").write_text(json.dumps(out, indent=2) + "\n")
    (HERE / "shipped_sources.md").write_text(f"# Shipped bundle per source\n\n`{out['command']}`\n\n{d['protocol']}\n\n"
                                             f"Input gate: {accepted}/{len(rows)} accepted.\n\n" + format_report(rep) + "\n")
    print(format_report(rep))
    print(f"input gate accepted {accepted}/{len(rows)}")
    if a.write_manifest:
        from osteo_edge.artifact import reseal

        metrics = dict(clf.bundle.manifest.get("metrics") or {})
        metrics["test_per_source"] = summary(d)
        if a.parity:
            par = json.loads(a.parity.read_text())
            cand = next(c for c in par["candidates"] if Path(c["path"]).resolve() == clf.bundle.path.resolve())
            metrics["parity"] = {"reference_accuracy": par["reference"]["accuracy"], "labelled_rows": par["n_images"],
                                 "labelled_agreement": cand["agreement"], "pool": cand["pool"], "pool_source": par.get("pool"),
                                 "json": "benchmarks/export/default_parity.json"}
        if a.lever:
            res = json.loads((RESULTS / f"{a.lever}.json").read_text())
            metrics["cv_5fold"] = {"lever": a.lever, "command": res["command"], "protocol": res["protocol"], **summary_row(res)}
        reseal(clf.bundle.path, step="per-source metrics (benchmarks/model/shipped_sources.py)", metrics=metrics)
        print(f"wrote metrics.test_per_source{' and metrics.cv_5fold' if a.lever else ''} into {clf.bundle.path} (sign it again)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
