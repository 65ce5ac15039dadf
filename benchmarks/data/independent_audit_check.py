#!/usr/bin/env python3
"""An independent re-count of the data audit, sharing no code with osteo_edge.

It walks the ImageFolder sources itself, hashes bytes with hashlib, decodes with Pillow's own
"L" conversion, takes imagehash.phash, links files by identical sha256 or phash distance <= T,
and finds groups as connected components with scipy. Then it compares its counts with an
audit.json written by `osteo-edge data audit`.

    python benchmarks/data/independent_audit_check.py AUDIT_DIR SOURCE... [--threshold 4]

Prints a comparison table and exits 1 if any count differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def recount(sources: list[Path], threshold: int) -> dict:
    files = []  # (source, label, path)
    for src in sources:
        for cls in sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for f in sorted(cls.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    files.append((src.name, cls.name, f))
    shas, hashes, ok = [], [], []
    for _, _, f in files:
        data = f.read_bytes()
        try:
            img = ImageOps.exif_transpose(Image.open(f))
            img.load()
        except Exception:
            ok.append(False)
            shas.append(None)
            hashes.append(None)
            continue
        ok.append(True)
        shas.append(hashlib.sha256(data).hexdigest())
        hashes.append(int(str(imagehash.phash(img.convert("L"))), 16))
    idx = [i for i, good in enumerate(ok) if good]
    n = len(idx)
    rows, cols = [], []
    first_by_sha: dict[str, int] = {}
    for k, i in enumerate(idx):
        j = first_by_sha.setdefault(shas[i], k)
        if j != k:
            rows.append(j)
            cols.append(k)
    h = np.array([hashes[i] for i in idx], dtype=np.uint64)
    for k in range(n):
        d = np.bitwise_count(h[k] ^ h[k + 1 :])
        for m in np.nonzero(d <= threshold)[0]:
            rows.append(k)
            cols.append(k + 1 + int(m))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    members = defaultdict(list)
    for k, i in enumerate(idx):
        members[comp[k]].append(files[i])
    labels = sorted({lab for _, lab, _ in files})
    names = [s.name for s in sources]
    overlap = {}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            overlap[f"{a} & {b}"] = sum(1 for m in members.values() if {a, b} <= {s for s, _, _ in m})
    return {
        "files": len(files),
        "unreadable": len(files) - n,
        "distinct_groups": len(members),
        "conflicting_groups": sum(1 for m in members.values() if len({lab for _, lab, _ in m}) > 1),
        "per_class_files": {lab: sum(1 for _, l2, _ in files if l2 == lab) for lab in labels},
        "per_class_groups": {lab: sum(1 for m in members.values() if lab in {l2 for _, l2, _ in m}) for lab in labels},
        "cross_source_overlap": overlap,
        "exact_duplicate_files": n - len({shas[i] for i in idx}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("audit_dir", type=Path)
    ap.add_argument("sources", type=Path, nargs="+")
    ap.add_argument("--threshold", type=int, default=4)
    ap.add_argument("--json", type=Path, help="save the comparison here")
    args = ap.parse_args()
    audit = json.loads((args.audit_dir / "audit.json").read_text())
    mine = recount([s.resolve() for s in args.sources], args.threshold)
    diffs = 0
    out = {}
    for key, value in mine.items():
        theirs = audit.get(key)
        same = theirs == value
        diffs += not same
        out[key] = {"independent": value, "audit": theirs, "agree": same}
        print(f"{'OK ' if same else 'DIFF'} {key}: independent={value} audit={theirs}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print("all counts agree" if diffs == 0 else f"{diffs} count(s) differ")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
