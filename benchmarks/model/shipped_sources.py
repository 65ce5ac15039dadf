"""The shipped bundle, per source (issue 17): the int8 model through the torch-free runtime on the
held-out test radiographs of a split, beside the shortcut baselines, and the recipe's 5-fold CV row.

    python benchmarks/model/shipped_sources.py --split SPLIT.csv [--bundle B] [--lever NAME] [--parity P.json] [--write-manifest]

A thin caller of ``osteo_edge.release.per_source`` (the ``per-source`` step of ``osteo-edge release``,
which does this for both bundles of every release; see docs/release.md). Rows: the split's test
groups, one file each from the group's own source. With --write-manifest the bundle's manifest gets
``metrics.test_per_source``, ``metrics.cv_5fold`` (the lever's CV row from results/<lever>.json) and,
with --parity, ``metrics.parity`` through a recorded revision (re-sign the bundle afterwards).
Writes benchmarks/model/shipped_sources.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from osteo_edge.core.machine import cpu_model
from osteo_edge.edge_runtime import default_bundle_path
from osteo_edge.release.oof import read_scores, summary_row
from osteo_edge.release.per_source import bundle_per_source, parity_metrics, write_release_metrics

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    ap.add_argument("--lever", default=None, help="the recipe's lever name in results/ (its CV row goes into the manifest)")
    ap.add_argument("--write-manifest", action="store_true")
    ap.add_argument("--parity", type=Path, default=None, help="the parity JSON of this bundle (its pool agreement goes into the manifest)")
    a = ap.parse_args()
    bundle = a.bundle or default_bundle_path()
    res = bundle_per_source(bundle, a.split, threads=2)
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    markdown = res.pop("markdown")
    out = {"bundle": str(bundle), **res, "machine": {"cpu": cpu_model()}, "command": command}
    (HERE / "shipped_sources.json").write_text(json.dumps(out, indent=2) + "\n")
    (HERE / "shipped_sources.md").write_text(f"# Shipped bundle per source\n\n`{command}`\n\n{res['report']['protocol']}\n\n"
                                             f"Input gate: {res['gate_accepted']}/{res['n']} accepted.\n\n{markdown}\n")
    print(markdown)
    print(f"input gate accepted {res['gate_accepted']}/{res['n']}")
    if a.write_manifest:
        parity = parity_metrics(json.loads(a.parity.read_text()), bundle, "benchmarks/export/default_parity.json") if a.parity else None
        cv = None
        if a.lever:
            scores = read_scores(RESULTS / f"{a.lever}.json")
            cv = {"lever": a.lever, "command": scores["command"], "protocol": scores["protocol"], **summary_row(scores)}
        write_release_metrics(bundle, res, parity=parity, cv=cv)
        print(f"wrote metrics.test_per_source{' and metrics.cv_5fold' if a.lever else ''} into {bundle} (sign it again)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
