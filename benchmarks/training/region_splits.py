"""Cut a joint knee+spine split into one split per region, keeping every row's split/group/fold.

The per-region models and the joint model are then trained on the same images and evaluated on the
same test rows, so "one model for both regions" vs "one model per region" is a like-for-like comparison.

usage: python benchmarks/training/region_splits.py JOINT_SPLIT_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from osteo_edge.data.split import SplitTable, read_split, write_split

REGIONS = {"knee": ("multiclass-kaggle", "wani-mendeley", "2class-kaggle"), "spine": ("sriher",)}


def main(joint_dir: str, out_dir: str) -> None:
    joint = read_split(Path(joint_dir) / "split.csv")
    for region, sources in REGIONS.items():
        rows = [r for r in joint.rows if r.source in sources]
        info = dict(joint.info)
        info["protocol"] = f"{joint.info.get('protocol', '')}; {region} rows only of the joint knee+spine split"
        info["region"] = region
        info["parent_split_sha256"] = joint.sha256
        written = write_split(SplitTable(rows=rows, labels=joint.labels, info=info), Path(out_dir) / region)
        print(f"{region}: {len(rows)} rows -> {written['split.csv']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
