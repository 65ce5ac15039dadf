"""Step 2 of the boxes (issue 26): a first locator, trained on the heuristic boxes a person accepted,
proposes boxes for the films whose heuristic box was rejected; the person checks those by eye.

    python benchmarks/locator/bootstrap.py --split runs/model/split-per-source/split.csv --out runs/locator/v0
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", required=True)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/locator/v0")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    from osteo_edge.release.locator import train_locator
    from osteo_edge.train.locator import build, load_films, torch_boxes

    rejected = {int(x) for x in (HERE / "rejected.txt").read_text().split()}
    rep = train_locator(HERE / "knee_boxes.csv", a.split, a.data, a.out, epochs=a.epochs, exclude_ids=rejected,
                        threads=a.threads, export=False)
    model = build(weights="none")
    model.load_state_dict(torch.load(Path(a.out) / "locator.pt"))
    model.eval()
    rows = list(csv.DictReader(Path(HERE / "knee_boxes.csv").read_text().splitlines()))
    keep = {r["id"] for r in rows if int(r["id"]) in rejected}
    films = [f for f in load_films(HERE / "knee_boxes.csv", a.data) if f.rows[0]["id"] in keep]
    boxes_of = torch_boxes(model, rep["min_score"])
    with open(Path(a.out) / "proposals.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "cx", "cy", "side"])
        for f in films:
            for b in boxes_of(f):
                w.writerow([f.rows[0]["id"], round((b.left + b.side / 2) / f.factor, 1), round((b.top + b.side / 2) / f.factor, 1),
                            round(b.side / f.factor, 1)])
    print(f"proposals for {len(films)} films in {a.out}/proposals.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
