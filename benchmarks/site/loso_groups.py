"""Issue 28, leave one source out: the audit's duplicate groups cut to what each base model may see.

    python benchmarks/site/loso_groups.py AUDIT/groups.csv OUT_DIR

Writes two groups files for ``osteo-edge data split --groups`` (the group ids stay the audit's, so a
site pool can be checked against the split):

- ``groups-kaggle-no-wani-copy.csv``: Kaggle files (2class-kaggle, multiclass-kaggle) whose duplicate
  group has no Wani file. Every Wani Normal and Osteoporosis radiograph has a copy in the Kaggle
  folders (the audit: 117 groups hold both sources); a Kaggle base trained on those copies would have
  seen the site's films. Dropping them is what makes "Wani as the site" leave-one-source-out.
- ``groups-wani.csv``: the Wani files. The reverse cut (Wani files without a Kaggle copy) leaves only
  Osteopenia (69 groups), so the Wani-only base keeps every Wani file, and its Kaggle site pool is the
  Kaggle radiographs whose group is not in the base's train or val rows (loso.py).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

KAGGLE = {"2class-kaggle", "multiclass-kaggle"}
WANI = "wani-mendeley"


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = list(csv.DictReader(src.open()))
    sources = defaultdict(set)
    for r in rows:
        sources[r["group"]].add(r["source"])
    cuts = {"groups-kaggle-no-wani-copy.csv": [r for r in rows if r["source"] in KAGGLE and WANI not in sources[r["group"]]],
            "groups-wani.csv": [r for r in rows if r["source"] == WANI]}
    out.mkdir(parents=True, exist_ok=True)
    for name, keep in cuts.items():
        with (out / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)
        print(f"{out / name}: {len(keep)} files, {len({r['group'] for r in keep})} groups")


if __name__ == "__main__":
    main()
