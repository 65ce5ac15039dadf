"""What the source alone scores on the knee data: shortcut baselines per source, per CV fold.

Issue 17 ("Bone, not scanner"). Builds the project's own leakage-safe split (audit + split, seed 0,
``--members one``, 5 folds: the split of benchmarks/training's CV runs) and, for every fold
(validation fold k, trained on the other folds) and for the held-out test split, reports what a
classifier that only knows the source achieves:

- per-source majority class (counted on the training rows) and its accuracy on the evaluated rows,
- the source-only classifier P(class | source): accuracy and pooled low-BMD AUROC,
- the counts of every (source, class) cell,

with the source of a duplicate group defined as "wani-mendeley if any member is from Wani" (the
Kaggle folders hold copies of Wani images). Where per-image model predictions are saved
(``predictions.csv`` beside a metrics.json), they are scored with ``per_source_report``.
A source probe on image geometry (aspect ratio, size, format, mode) shows how easily the source is read.

usage (from the repository root):
  PYTHONPATH=src python benchmarks/model/shortcut_baselines.py [--data ../shared/data] [--out benchmarks/model]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from osteo_edge.data.audit import audit_sources
from osteo_edge.artifact import sha256_file
from osteo_edge.data.split import SplitOptions, SplitRow, SplitTable, make_split, write_split
from osteo_edge.data.sources import group_source
from osteo_edge.train.per_source import per_source_report
from osteo_edge.train.source_markdown import format_report
from osteo_edge.train.source_probe import source_probe

KNEE = ("multiclass-kaggle", "wani-mendeley", "2class-kaggle")  # the README's order (the split depends on it)
CV_SPLIT_SHA256 = "f6fd92a4d915666a7e65484263a380ed6f49ff3691fb4df1c325424d9796796d"  # runs/splits/knee-one (cv5 runs)
LABELS = ("Normal", "Osteopenia", "Osteoporosis")


def machine() -> dict[str, str]:
    from osteo_edge.core.machine import cpu_model

    return {"cpu": cpu_model(), "cores": str(os.cpu_count()), "arch": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__}


def _cells(rows: list[SplitRow], src: dict[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (s, lab), n in sorted(Counter((src[r.path], r.label) for r in rows).items()):
        out[s][lab] = n
    return dict(out)


def shortcut(eval_rows: list[SplitRow], train_rows: list[SplitRow], src: dict[str, str], labels: list[str], n_boot: int):
    """The source-only classifier trained on ``train_rows``, scored on ``eval_rows`` as if it were the model."""
    tsrc = [src[r.path] for r in train_rows]
    ty = [labels.index(r.label) for r in train_rows]
    dist: dict[str, np.ndarray] = {}
    for s in set(tsrc):
        c = np.bincount([y for y, t in zip(ty, tsrc) if t == s], minlength=len(labels)).astype(float)
        dist[s] = c / c.sum()
    pooled = np.bincount(ty, minlength=len(labels)) / len(ty)
    probs = np.array([dist.get(src[r.path], pooled) for r in eval_rows])
    pred = probs.argmax(axis=1)
    return per_source_report([r.label for r in eval_rows], pred, probs, [src[r.path] for r in eval_rows], labels,
                             groups=[r.group for r in eval_rows], train_y=[r.label for r in train_rows],
                             train_sources=tsrc, n_boot=n_boot, seed=0)


def _row(rep, s: str) -> dict[str, object]:
    b = {c.source: c for c in rep.baselines.per_source}[s]
    sm = rep.source(s)
    return {"n": sm.n, "class_counts": sm.class_counts, "majority_label_train": b.majority_label,
            "majority_accuracy": b.majority_accuracy, "best_constant_accuracy": b.best_constant_accuracy,
            "source_only_accuracy": sm.accuracy}


def _clean(x: object) -> object:
    """JSON-ready: nan -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _msd(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "n/a"
    return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def score_predictions(pred_csv: Path, src: dict[str, str], data: Path, n_boot: int) -> dict[str, object] | None:
    """Score a saved predictions.csv (path, source, group, split, label, pred, p_<label>...) per source."""
    with open(pred_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    labels = [c[2:] for c in rows[0] if c.startswith("p_")]
    n_all = len(rows)
    rows = [r for r in rows if str(Path(r["path"]).resolve()) in src]  # knee rows only (a joint model also saw spine)
    if not rows:
        print(f"  {pred_csv}: no knee rows; skipped")
        return None
    paths = [str(Path(r["path"]).resolve()) for r in rows]
    gsrc = [src[p] for p in paths]
    probs = np.array([[float(r[f"p_{lab}"]) for lab in labels] for r in rows])
    info: dict[str, object] = {"predictions": str(pred_csv), "labels": labels, "n": len(rows), "n_not_knee_left_out": n_all - len(rows)}
    meta = pred_csv.with_name("metrics.json")
    train_y = train_s = None
    info["majority_basis_note"] = "evaluated rows"
    if meta.is_file():
        m = json.loads(meta.read_text())
        info.update({k: m.get(k) for k in ("run", "subset", "split_csv", "split_sha256", "command")})
        # The region models were trained on a joint knee+spine split (or its knee rows): rebuild it with the
        # project's own audit + split to count the majorities on the real training rows, and use them only if
        # the rebuilt split.csv is byte-identical to the evaluated one (same sha256).
        split_csv = str(m.get("split_csv", ""))
        if "region/knee" in split_csv or "knee-spine-one" in split_csv:
            joint = make_split(audit_sources([data / "knee" / s for s in KNEE] + [data / "spine" / "sriher"]).files,
                               SplitOptions(members="one", seed=0))
            knee_rows = [r for r in joint.rows if r.source in KNEE]
            written = knee_rows if "region/knee" in split_csv else joint.rows
            with tempfile.TemporaryDirectory() as tmp:  # as data split / region_splits.py write it
                sha = sha256_file(write_split(SplitTable(rows=written, labels=joint.labels), tmp, relative=False)["split.csv"])
            info["rebuilt_split_sha256"] = sha
            if sha == m.get("split_sha256"):
                train = [r for r in knee_rows if r.split == "train"]
                train_y, train_s = [r.label for r in train], [src[r.path] for r in train]
                info["majority_basis_note"] = "knee training rows of the rebuilt split (its sha256 matches the evaluated split)"
            else:
                info["majority_basis_note"] = "rebuilt split differs from the evaluated one: majorities counted on the evaluated rows"
    rep = per_source_report([r["label"] for r in rows], [r["pred"] for r in rows], probs, gsrc, labels,
                            groups=[(s, r["group"]) for s, r in zip(gsrc, rows)], train_y=train_y, train_sources=train_s,
                            n_boot=n_boot, seed=0)
    folder_vs_group = Counter((r["source"], g, r["label"]) for r, g in zip(rows, gsrc))
    info["folder_vs_group_source"] = [{"row_source": a, "group_source": b, "label": c, "n": n} for (a, b, c), n in sorted(folder_vs_group.items())]
    info["report"] = rep.to_dict()
    info["markdown"] = format_report(rep)
    return info


class KneeSplit(NamedTuple):
    """The readable knee files, the source of each duplicate group and the project's split of them."""

    files: list
    by_group: dict[str, str]
    src: dict[str, str]
    table: SplitTable
    labels: list[str]
    same_as_cv: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    ap.add_argument("--out", default="benchmarks/model", help="where the JSON and markdown go (default: %(default)s)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--predictions", nargs="*", default=None,
                    help="saved per-image predictions.csv files to score (default: every predictions.csv under benchmarks/training/results)")
    return ap.parse_args(argv)


def knee_split(data: Path, folds: int, seed: int) -> KneeSplit:
    """Audit the knee sources and build the leakage-safe split (``--members one``)."""
    audit = audit_sources([data / "knee" / s for s in KNEE])
    files = [f for f in audit.files if f.readable]
    by_group = group_source(files)  # the Wani rule, over every member file
    src = {str(Path(f.path).resolve()): by_group[f.group] for f in files}
    opts = SplitOptions(folds=folds, members="one", seed=seed)
    table = make_split(audit.files, opts)
    labels = list(table.labels)
    same_as_cv = table.sha256 == CV_SPLIT_SHA256
    print(f"split: {len(table.rows)} rows (one per group), sha256 {table.sha256[:12]}... "
          f"{'== the cv5 runs split' if same_as_cv else '!= the cv5 runs split'}")
    return KneeSplit(files, by_group, src, table, labels, same_as_cv)


def fold_baselines(knee: KneeSplit, folds: int, n_boot: int) -> list[dict]:
    """The source-only classifier for every validation fold k, trained on the other folds."""
    out = []
    for k in range(folds):
        ev, tr = knee.table.subset("val", fold=k), knee.table.subset("train", fold=k)
        rep = shortcut(ev, tr, knee.src, knee.labels, n_boot)
        out.append({"fold": k, "n_eval": len(ev), "n_train": len(tr), "cells": _cells(ev, knee.src),
                    "pooled_majority_accuracy": rep.baselines.majority_accuracy,
                    "source_only_accuracy": rep.baselines.source_only_accuracy,
                    "source_only_low_bmd_auroc": rep.baselines.source_only_low_bmd_auroc,
                    "per_source": {s.source: _row(rep, s.source) for s in rep.per_source}})
    return out


def geometry_probes(knee: KneeSplit, folds: int, seed: int):
    """Source probe on image geometry, one row per file, grouped by duplicate group: all features, aspect ratio alone."""
    files = knee.files
    feats = np.array([[math.log(f.width / f.height), math.log(f.width), math.log(f.height), f.format == "PNG", f.mode == "RGB"]
                      for f in files], dtype=float)
    fsrc = [knee.by_group[f.group] for f in files]
    probe_all = source_probe(feats, fsrc, [f.group for f in files], folds=folds, seed=seed)
    probe_aspect = source_probe(feats[:, :1], fsrc, [f.group for f in files], folds=folds, seed=seed)
    return probe_all, probe_aspect


def header_md(result: dict, knee: KneeSplit, folds: int) -> list[str]:
    table = knee.table
    return [
        "# Shortcut baselines per source (issue 17)\n",
        f"Generated {result['date']} by `{result['command']}` on {result['machine']['cpu']} ({result['machine']['cores']} cores, "
        f"{result['machine']['arch']}, Python {result['machine']['python']}), {result['seconds']} s.\n",
        f"**Split:** {table.info.get('protocol')}; {folds} folds over the non-test groups. sha256 `{table.sha256[:16]}`"
        f" ({'the same split.csv as the cv5 training runs' if knee.same_as_cv else 'NOT the cv5 runs split'}). "
        f"Dropped: {table.info.get('dropped')}.\n",
        f"**Source of a group:** {result['group_source_rule']}. Groups per source (all readable files): "
        + ", ".join(f"{k} {v}" for k, v in result["groups_per_source"].items()) + ".\n",
    ]


def fold_table_md(folds: list[dict], sources: list[str]) -> tuple[list[str], dict[str, float]]:
    """The fold-by-fold table and the per-(source, class) counts; also the majority accuracies pooled over the folds."""
    md = [
        "## The source-only classifier, fold by fold (validation fold k; majorities counted on the other folds)\n",
        "| fold | n | pooled majority acc. | source-only acc. | source-only low-BMD AUROC | "
        + " | ".join(f"{s}: majority (train) / acc." for s in sources) + " |",
        "|---|---|---|---|---|" + "---|" * len(sources),
    ]
    for f in folds:
        cells = " | ".join(f"{f['per_source'][s]['majority_label_train']} / {f['per_source'][s]['majority_accuracy']:.3f}"
                           if s in f["per_source"] else "n/a" for s in sources)
        md.append(f"| {f['fold']} | {f['n_eval']} | {f['pooled_majority_accuracy']:.3f} | {f['source_only_accuracy']:.3f} | "
                  f"{f['source_only_low_bmd_auroc']:.3f} | {cells} |")
    md.append(f"| mean ± sd | | {_msd([f['pooled_majority_accuracy'] for f in folds])} | {_msd([f['source_only_accuracy'] for f in folds])} | "
              f"{_msd([f['source_only_low_bmd_auroc'] for f in folds])} | "
              + " | ".join(_msd([f['per_source'][s]['majority_accuracy'] for f in folds if s in f['per_source']]) for s in sources) + " |")
    pooled = {s: sum(f["per_source"][s]["majority_accuracy"] * f["per_source"][s]["n"] for f in folds if s in f["per_source"])
              / sum(f["per_source"][s]["n"] for f in folds if s in f["per_source"]) for s in sources}
    n_folds_total = sum(f["n_eval"] for f in folds)
    pooled_all = sum(f["pooled_majority_accuracy"] * f["n_eval"] for f in folds) / n_folds_total
    md.append(f"| all folds pooled | {n_folds_total} | {pooled_all:.3f} | {pooled_all:.3f} | | "
              + " | ".join(f"{pooled[s]:.3f}" for s in sources) + " |")
    md += ["", "Counts per (source, class) in each validation fold:\n", "| fold | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for f in folds:
        md.append(f"| {f['fold']} | " + " | ".join(", ".join(f"{lab} {n}" for lab, n in f["cells"].get(s, {}).items()) for s in sources) + " |")
    return md, {"all": pooled_all, **pooled}


def detail_md(rep_vs_group: Counter, test_rep, probe_all, probe_aspect) -> list[str]:
    """Where the kept files come from, the test-split baseline and the geometry probe."""
    md = ["", "## Where the split's one file per group comes from\n",
          "`--members one` keeps the largest file of each group; its folder is the `source` column of split.csv, "
          "which is what the existing per-source reports group by.\n",
          "| folder of the kept file | source of the group (Wani rule) | label | groups |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c} | {n} |" for (a, b, c), n in sorted(rep_vs_group.items())]
    md += ["", "## Held-out test split: the source-only classifier scored as if it were a model\n",
           "Majorities counted on all non-test rows. This is the bar every model on this test split must clear, per source.\n",
           format_report(test_rep),
           "## How easily the source is read from image geometry\n",
           "Features: log aspect ratio, log width, log height, PNG?, stored as RGB? (one row per file, folds over groups).\n",
           format_report(probe_all).replace("## Source probe (lower is better)\n\n", ""),
           "Aspect ratio alone: " + format_report(probe_aspect).replace("## Source probe (lower is better)\n\n", ""),
           ]
    return md


def scored_md(scored: list[dict]) -> list[str]:
    """One section per scored predictions.csv."""
    md = []
    for s in scored:
        md += [f"## Saved model predictions: `{s['predictions']}`\n",
               f"Run `{s.get('run')}`, subset {s.get('subset')}, split `{s.get('split_csv')}`; {s['n']} knee rows"
               f"{' (' + str(s['n_not_knee_left_out']) + ' spine rows left out)' if s['n_not_knee_left_out'] else ''}. "
               f"Majority basis: {s.get('majority_basis_note', 'evaluated rows')}.\n",
               "| folder of the row | source of the group | label | n |", "|---|---|---|---|"]
        md += [f"| {x['row_source']} | {x['group_source']} | {x['label']} | {x['n']} |" for x in s["folder_vs_group_source"]]
        md += ["", s["markdown"]]
    return md


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    data, out = Path(args.data), Path(args.out)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "PYTHONPATH=src python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    knee = knee_split(data, args.folds, args.seed)
    table, src, by_group = knee.table, knee.src, knee.by_group
    # where the representative file's folder and the group's source disagree
    rep_vs_group = Counter((r.source, src[r.path], r.label) for r in table.rows)

    folds = fold_baselines(knee, args.folds, args.n_boot)
    test_rows = table.subset("test")
    nontest = [r for r in table.rows if r.split != "test"]
    test_rep = shortcut(test_rows, nontest, src, knee.labels, args.n_boot)
    probe_all, probe_aspect = geometry_probes(knee, args.folds, args.seed)

    preds = [Path(p) for p in args.predictions] if args.predictions is not None else sorted(Path("benchmarks/training/results").rglob("predictions.csv"))
    scored = [s for s in (score_predictions(p, src, data, args.n_boot) for p in preds) if s]

    sources = sorted({s for f in folds for s in f["per_source"]})
    result = {
        "issue": 17, "date": started, "command": command, "machine": machine(), "seconds": round(time.perf_counter() - t0, 1),
        "group_source_rule": "wani-mendeley if any member file of the duplicate group is from wani-mendeley; "
                             "otherwise the members' folders joined with '+'",
        "split": {"protocol": table.info.get("protocol"), "folds": args.folds, "sha256": table.sha256,
                  "same_as_cv5_runs_split": knee.same_as_cv, "rows": len(table.rows), "dropped": table.info.get("dropped")},
        "groups_per_source": dict(sorted(Counter(by_group.values()).items())),
        "representative_folder_vs_group_source": [{"row_source": a, "group_source": b, "label": c, "n": n}
                                                  for (a, b, c), n in sorted(rep_vs_group.items())],
        "cells_all_split_rows": _cells(table.rows, src),
        "folds": folds,
        "test": {"n": len(test_rows), "cells": _cells(test_rows, src), "report": test_rep.to_dict()},
        "probe_geometry": probe_all.to_dict(), "probe_aspect_ratio": probe_aspect.to_dict(),
        "scored_predictions": [{k: v for k, v in s.items() if k != "markdown"} for s in scored],
    }

    fold_lines, result["folds_pooled_majority_accuracy"] = fold_table_md(folds, sources)
    md = header_md(result, knee, args.folds) + fold_lines
    md += detail_md(rep_vs_group, test_rep, probe_all, probe_aspect) + scored_md(scored)

    out.mkdir(parents=True, exist_ok=True)
    (out / "shortcut_baselines.json").write_text(json.dumps(_clean(result), indent=1, allow_nan=False, default=str) + "\n")
    (out / "shortcut_baselines.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out / 'shortcut_baselines.json'} and {out / 'shortcut_baselines.md'}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
