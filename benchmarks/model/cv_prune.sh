#!/usr/bin/env bash
# Issue 13 ("ship the faster model when it is as good"): the pruned-30% variant of a lever through the
# same 5-fold group CV as the unpruned one. Each fold's run is pruned and fine-tuned on that fold's
# training rows only (a per-fold copy of the split: the fold's rows become val, the other folds train),
# then scored out of fold by cv_levers.py like every lever.
#
#   bash benchmarks/model/cv_prune.sh LEVER MEMBERS
set -euo pipefail
cd "$(dirname "$0")/../.."
LEVER=$1; MEMBERS=$2
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
W=runs/model
OUT=$W/$LEVER-pruned30
mkdir -p "$OUT"
for k in 0 1 2 3 4; do
  S=$OUT/split-fold$k.csv
  [ -f "$S" ] || $PY - "$W/split-$MEMBERS/split.csv" "$S" "$k" <<'PY'
import csv, sys
src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = list(csv.DictReader(open(src, newline="")))
for r in rows:
    if r["split"] != "test":
        r["split"] = "val" if int(r["fold"]) == k else "train"
with open(dst, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
PY
  [ -f "$OUT/fold$k/manifest.json" ] || $OE prune --model "$W/$LEVER/fold$k" --ratio 0.3 --split "$S" --out "$OUT/fold$k" \
      --finetune-epochs 4 --lr 3e-4 --threads 2
done
$PY benchmarks/model/cv_levers.py --lever "$LEVER-pruned30" --runs "$OUT" --eval-split "$W/split-per-source/split.csv" \
    --note "osteo-edge prune --model $W/$LEVER/fold<k> --ratio 0.3 --split <fold k's rows as val, the other folds as train> --finetune-epochs 4 --lr 3e-4"
