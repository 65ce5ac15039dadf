"""Calibrate the edge runtime's input gate and save the measured rates in benchmarks/runtime/gate/.

    python benchmarks/runtime/calibrate_gate.py --split SPLIT.csv [--crossfit] [--bundle BUNDLE_DIR ...] [--out DIR]

A thin caller of ``osteo-edge gate calibrate`` (``osteo_edge.release.gate.calibrate_gate_from_split``;
the protocol is in its docstring and in docs/runtime.md) with the repository's non-knee set: the grey
spine radiographs of ../shared/data/spine/sriher, beside the package photographs and 120 synthetic
images the command adds. Equivalent command:

    osteo-edge gate calibrate --split SPLIT.csv --crossfit --non-knee ../shared/data/spine/sriher \\
        --out benchmarks/runtime/gate [--bundle BUNDLE_DIR]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from osteo_edge.release.gate import calibrate_gate_from_split

ROOT = Path(__file__).resolve().parents[2]
SPINE = ROOT.parent / "shared" / "data" / "spine" / "sriher"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, type=Path)
    ap.add_argument("--bundle", type=Path, action="append", default=[])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runtime" / "gate")
    ap.add_argument("--min-accept", type=float, default=0.99)
    ap.add_argument("--synthetic", type=int, default=120)
    ap.add_argument("--crossfit", action="store_true", help="thresholds on out-of-fold scores of every non-test knee (the split's folds)")
    a = ap.parse_args()
    res = calibrate_gate_from_split(a.split, bundles=a.bundle, crossfit=a.crossfit, non_knee=[SPINE] if SPINE.is_dir() else [],
                                    synthetic=a.synthetic, min_accept=a.min_accept, out=a.out,
                                    command="python " + " ".join(shlex.quote(x) for x in sys.argv))
    cal = res.gate.ood.calibration
    print(f"threshold {res.report['threshold']:.3f}")
    for name, sets in (("calibration", cal.get("calibration_sets")), ("test", cal.get("test_sets"))):
        for src, r in (sets or {}).get("in_distribution_by_source", {}).items():
            print(f"[{name}] {src}: accepted {r['accepted']}/{r['n']} ({r['accept_rate']:.3f})")
        for k, v in (sets or {}).get("out_of_distribution", {}).items():
            print(f"[{name}] {k}: rejected {v['rejected']}/{v['n']} ({v['reject_rate']:.3f}) + refused by rules {v['refused_by_rules']}")
    for b in res.bundles:
        print(f"wrote gate into {b} (sign it again)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
