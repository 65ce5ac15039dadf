#!/usr/bin/env python3
"""How the near-duplicate threshold of `data audit` was chosen: distance histogram and pixel agreement.

    python benchmarks/data/phash_threshold.py SOURCE... [--out benchmarks/data/phash_threshold.json]

For every pair of files: the Hamming distance of their 64-bit perceptual hashes; for pairs at each
small distance, percentiles of the 64x64 pixel correlation (a copy correlates ~1.0, two different
knees ~0.9); and the number of groups / largest group that single linkage gives at each threshold.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from osteo_edge.data.audit import audit_sources, group_files
from osteo_edge.preprocess import PreprocessSpec, decode_image, resize, to_gray


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/data/phash_threshold.json"))
    args = ap.parse_args()
    res = audit_sources(args.sources)
    files = res.readable
    h = np.array([int(f.phash, 16) for f in files], dtype=np.uint64)
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    iu = np.triu_indices(len(h), 1)
    hist = np.bincount(d[iu], minlength=17)[:17].tolist()
    spec = PreprocessSpec(input_size=64, resize="stretch")
    t = np.array([resize(to_gray(decode_image(f.path)), spec).ravel() for f in files])
    t = (t - t.mean(1, keepdims=True)) / (t.std(1, keepdims=True) + 1e-6)
    corr = {}
    rng = np.random.default_rng(0)
    for k in range(0, 13, 2):
        i, j = np.nonzero(np.triu(d == k, 1))
        if len(i) == 0:
            continue
        sel = rng.permutation(len(i))[:2000]
        c = (t[i[sel]] * t[j[sel]]).mean(1)
        corr[k] = {"pairs": int(len(i)), "corr_p5_p50_p95": np.percentile(c, [5, 50, 95]).round(3).tolist()}
    by_threshold = {}
    for thr in (0, 2, 4, 6, 8):
        infos = [f for f in res.files]
        group_files(infos, thr)
        sizes = np.bincount([f.group for f in infos if f.readable])
        by_threshold[thr] = {"groups": int(len(sizes)), "largest_group": int(sizes.max())}
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "files": len(files),
        "pair_distance_histogram_0_16": hist,
        "pixel_correlation_by_distance": corr,
        "groups_by_threshold": by_threshold,
    }
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
