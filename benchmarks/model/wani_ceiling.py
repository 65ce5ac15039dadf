"""How much of the Wani label is visible at all? A Wani-only frozen-feature probe (issue 17).

    python benchmarks/model/wani_ceiling.py [--split runs/model/split-per-source/split.csv] [--sizes 224,384]
        [--framings center_crop,knee]

Rows: every non-test Wani film (the file from wani-mendeley itself) of a ``--members per-source``
split. Features: ImageNet EfficientNet-Lite0 (offline weights), frozen, global-average-pooled, at each
input size and framing (the shared preprocessing path: centre crop of the film, or ``knee``: one square
per knee on its joint line, the features of a film's knees averaged). Classifier: class-balanced logistic
regression, 5-fold out-of-fold over the split's group folds (no radiograph in two folds).
Reported: 3-class accuracy against always-Osteopenia, low-BMD AUROC (Normal vs the rest) and
Osteopenia-vs-Osteoporosis AUROC, all inside Wani: what a model that sees only Wani films, with no
source to lean on, can get from these pictures. Saves wani_ceiling.json / .md beside this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def features(rows, size: int, framing: str = "center_crop") -> np.ndarray:
    from osteo_edge.modeling.dataset import RadiographDataset
    from osteo_edge.modeling.inference import view_outputs
    from osteo_edge.modeling.models import build_model, get_arch

    model = build_model("efficientnet_lite0", 3, weights="imagenet").eval()
    ds = RadiographDataset(rows, ["Normal", "Osteopenia", "Osteoporosis"], get_arch("efficientnet_lite0").spec(size, resize=framing))
    return view_outputs(ds, lambda x: model.forward_head(model.forward_features(x), pre_logits=True), batch_size=16)


def probe(X: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from osteo_edge.core.stats import auroc

    P = np.zeros((len(y), 3))
    for k in np.unique(folds):
        tr, te = folds != k, folds == k
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, class_weight="balanced", max_iter=2000))
        clf.fit(X[tr], y[tr])
        P[te] = clf.predict_proba(X[te])
    pred = P.argmax(1)
    pp = (y == 1) | (y == 2)
    return {
        "accuracy": float((pred == y).mean()), "always_osteopenia": float((y == 1).mean()),
        "recall": {lab: f"{int(((pred == c) & (y == c)).sum())}/{int((y == c).sum())}" for c, lab in enumerate(["Normal", "Osteopenia", "Osteoporosis"])},
        "low_bmd_auroc": auroc(y != 0, 1 - P[:, 0]),
        "penia_vs_porosis_auroc": auroc(y[pp] == 2, P[pp, 2] / np.maximum(P[pp, 1] + P[pp, 2], 1e-12)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path, default=Path("runs/model/split-per-source/split.csv"))
    ap.add_argument("--sizes", default="224,384")
    ap.add_argument("--framings", default="center_crop", help="comma-separated resize policies (center_crop, knee, ...)")
    a = ap.parse_args()
    import torch

    from osteo_edge.data.split import read_split

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    table = read_split(a.split)
    rows = [r for r in table.rows if r.split != "test" and r.source == "wani-mendeley" and r.domain == "wani-mendeley"]
    y = np.array([["Normal", "Osteopenia", "Osteoporosis"].index(r.label) for r in rows])
    folds = np.array([r.fold for r in rows])
    res = {}
    for framing in a.framings.split(","):
        for size in [int(s) for s in a.sizes.split(",")]:
            key = str(size) if framing == "center_crop" else f"{size} {framing}"
            res[key] = probe(features(rows, size, framing), y, folds)
            print(key, json.dumps(res[key]))
    from osteo_edge.core.machine import cpu_model

    cpu = cpu_model()
    out = {"command": "python " + " ".join(sys.argv), "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu": cpu, "arch": platform.machine()}, "n": len(rows), "groups": len({r.group for r in rows}),
           "split_protocol": table.info.get("protocol"), "by_input_size": res, "seconds": round(time.perf_counter() - t0, 1)}
    (HERE / "wani_ceiling.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Wani-only frozen-feature probe (issue 17)", "", __doc__.split("\n\n")[2].strip(), "",
             f"`{out['command']}` on {cpu} ({platform.machine()}), {out['n']} Wani films ({out['groups']} radiographs), "
             f"{out['seconds']} s.", "",
             "| input px (framing) | 3-class accuracy | always Osteopenia | Normal | Osteopenia | Osteoporosis | low-BMD AUROC | Osteopenia vs Osteoporosis AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    for size, r in res.items():
        rc = r["recall"]
        lines.append(f"| {size} | {r['accuracy']:.3f} | {r['always_osteopenia']:.3f} | {rc['Normal']} | {rc['Osteopenia']} | "
                     f"{rc['Osteoporosis']} | {r['low_bmd_auroc']:.3f} | {r['penia_vs_porosis_auroc']:.3f} |")
    (HERE / "wani_ceiling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
