"""Run one bundle N times on one real knee at a fixed thread count: a whole process for farm-bench,
so two bundles can be timed A B A B with the ratio pair by pair (issue 22: the int8 file no slower).

    farm-bench -n 7 --vs '.venv/bin/python benchmarks/runtime/infer_loop.py runs/ship/old-default 1 300' \\
        -- .venv/bin/python benchmarks/runtime/infer_loop.py src/osteo_edge/models/default 1 300
"""

from __future__ import annotations

import sys
from pathlib import Path

from osteo_edge.edge_runtime import EdgeClassifier
from osteo_edge.preprocess import decode_for

KNEE = Path(__file__).resolve().parents[3] / "shared" / "data" / "knee" / "wani-mendeley" / "Normal" / "N1.JPEG"


def main(bundle: str, threads: str, runs: str) -> int:
    clf = EdgeClassifier.load(bundle, threads=int(threads))
    x = clf.inputs_for(decode_for(KNEE, clf.spec))
    for _ in range(int(runs)):
        clf.logits(x)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
