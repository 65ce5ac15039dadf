"""Issue 28: what site validation and site calibration buy, with the SHIPPED default bundle and Wani as the site.

    python benchmarks/site/loso_wani.py --split SPLIT.csv --groups AUDIT/groups.csv [--site wani|kaggle] [--ks 10,20,40] [--draws 20]

``--site kaggle`` runs the same protocol with the Kaggle folders as the site, for contrast: the source
the model does see bone in (not leave-one-source-out: the model was trained on other Kaggle films).

(``bash benchmarks/site/run.sh`` rebuilds the split and runs this.) No training.

1. The pool: the site's radiographs the shipped model never saw. A file of the site's source(s) is
   kept when its duplicate group (audit ``groups.csv``) has no row in the split's ``train`` or ``val``
   rows (the shipped model's training rows, and the rows that chose its epoch, temperature and
   threshold). One file per group; groups whose site files carry different labels are dropped. The split is checked to
   be the shipped model's: the bundle, run through the runtime on the split's test rows, must give
   the test accuracy and row count recorded in its manifest.
2. For k in ``--ks`` and ``--draws`` random draws: k pool radiographs are the site's labelled
   sample, the rest of the pool is scored. On the rest: the shipped bundle as it is, and the bundle
   calibrated on the k (temperature, low-BMD threshold for sensitivity 0.9, gate;
   :func:`osteo_edge.edge_runtime.site.calibrate.fit_operating`, the same code as ``site calibrate``).
   ``site validate`` on the k (default criteria, default minimum per class) gives a verdict, or
   refuses for too few images per class; it is compared with the verdict on the whole pool.
3. Writes results.json, RESULTS.md and loso_wani.png next to this script (``--site kaggle``: in
   ``kaggle/`` beside it; or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import platform
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from osteo_edge.artifact.signing import TrustStore
from osteo_edge.core.stats import auroc
from osteo_edge.edge_runtime import EdgeClassifier, default_bundle_path
from osteo_edge.errors import ConfigError
from osteo_edge.edge_runtime.site import score
from osteo_edge.edge_runtime.site.calibrate import Target, fit_operating
from osteo_edge.edge_runtime.site.labels import check_counts
from osteo_edge.edge_runtime.site.scoring import answer, bundle_operating
from osteo_edge.edge_runtime.site.validate import DEFAULT_REQUIRE, METRICS, MIN_PER_CLASS, build_report, figures, json_safe

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KNEE = REPO.parent / "shared" / "data" / "knee"
SITES = {"wani": ("Wani", ("wani-mendeley",)), "kaggle": ("Kaggle", ("2class-kaggle", "multiclass-kaggle"))}
SHOWN = ("ece", "sensitivity", "specificity", "referral_rate", "accuracy", "auroc")


def build_pool(split_csv: Path, groups_csv: Path, out_csv: Path, sources: tuple[str, ...], name: str) -> dict:
    split = list(csv.DictReader(split_csv.open()))
    seen: dict[str, set[str]] = defaultdict(set)
    for r in split:
        seen[r["group"]].add(r["split"])
    audit = list(csv.DictReader(groups_csv.open()))
    sha_group = {r["sha256"]: r["group"] for r in audit}
    if any(sha_group.get(r["sha256"]) != r["group"] for r in split):
        raise SystemExit(f"{split_csv} and {groups_csv} disagree on the duplicate groups: not the same audit")
    by_group: dict[str, list[dict]] = defaultdict(list)
    status = Counter()
    for r in audit:
        if r["source"] not in sources:
            continue
        used = seen.get(r["group"], set())
        status["in train or val" if used & {"train", "val"} else "test" if "test" in used else "not in the split (label conflict)"] += 1
        if not used & {"train", "val"}:
            by_group[r["group"]].append(r)
    conflicts = [g for g, rs in by_group.items() if len({x["label"] for x in rs}) > 1]
    other_labels: dict[str, set[str]] = defaultdict(set)  # labels of the group's copies in the other source
    for r in audit:
        if r["source"] not in sources:
            other_labels[r["group"]].add(r["label"])
    rows, kinds = [], Counter()
    for g, rs in sorted(by_group.items(), key=lambda kv: int(kv[0])):
        if g in conflicts:
            continue
        first = sorted(rs, key=lambda x: x["path"])[0]
        rows.append((Path(first["path"]).relative_to(Path(first["path"]).parents[2]).as_posix(), first["label"], g))
        if "test" in seen.get(g, set()):
            kinds["held-out test radiograph"] += 1
        elif other_labels[g] - {first["label"]}:
            kinds[f"{name} {first['label']}, other source's copy {'/'.join(sorted(other_labels[g]))} (dropped from the split as a label conflict)"] += 1
        else:
            kinds["not in the split, other reason"] += 1
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "group"])
        w.writerows(rows)
    return {"site_files_by_split_status": dict(status), "groups_kept": len(rows), "groups_dropped_site_label_conflict": len(conflicts),
            "counts": dict(Counter(lab for _, lab, _ in rows)), "kinds": dict(kinds)}


def check_split(clf: EdgeClassifier, split_csv: Path) -> dict:
    """The shipped bundle on the split's test rows must reproduce its manifest's test accuracy."""
    test = [r for r in csv.DictReader(split_csv.open()) if r["split"] == "test"]
    ok = 0
    for r in test:
        p = Path(r["path"])
        p = p if p.is_absolute() else (split_csv.parent / p)
        pred = clf.predict(p)
        ok += pred.label == r["label"]
    claimed = clf.bundle.metrics.test
    acc = ok / len(test)
    same = claimed is not None and claimed.accuracy is not None and abs(acc - claimed.accuracy) < 1e-9 and claimed.raw.get("n_images") == len(test)
    return {"test_rows": len(test), "accuracy": acc, "manifest_accuracy": claimed.accuracy if claimed else None,
            "manifest_n": claimed.raw.get("n_images") if claimed else None, "same_split": bool(same)}


def summarise(vals: list[float]) -> dict:
    a = np.asarray([v for v in vals if v is not None and not math.isnan(v)], dtype=float)
    if a.size == 0:
        return {"mean": None, "p2_5": None, "p97_5": None, "n": 0}
    return {"mean": float(a.mean()), "p2_5": float(np.percentile(a, 2.5)), "p97_5": float(np.percentile(a, 97.5)), "n": int(a.size)}


def verdict_on(scores, clf, op, min_per_class: int, n_boot: int, seed: int) -> str:
    try:
        check_counts(scores.site, scores.negative, min_per_class)
    except ConfigError:
        return "refused: too few per class"
    return build_report(scores, answer(scores, op), clf.bundle, DEFAULT_REQUIRE, n_boot=n_boot, seed=seed)["verdict"]


def summarise_table(runs: list[dict], ks: list[int], n: int, full_verdict: str) -> list[dict]:
    """One entry per k: every figure over the draws, the verdicts, agreement with the whole pool's."""
    table = []
    for k in ks:
        rs = [r for r in runs if r["k"] == k]
        entry = {"k": k, "draws": len(rs), "scored_on": n - k}
        for which in ("base", "calibrated"):
            entry[which] = {f: summarise([r[which][f] for r in rs]) for f in SHOWN}
        entry["temperature"] = summarise([r["temperature"] for r in rs])
        entry["low_bmd"] = summarise([r["low_bmd"] for r in rs])
        entry["verdicts"] = dict(Counter(r["verdict"] for r in rs))
        entry["verdicts_minimum_2"] = dict(Counter(r["verdict_minimum_2"] for r in rs))
        entry["agrees_with_full_pool"] = sum(r["verdict"] == full_verdict for r in rs)
        entry["normal_in_site_sample"] = summarise([r["site_counts"]["Normal"] for r in rs])
        table.append(entry)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path, required=True, help="the shipped model's split.csv (data split --members per-source, seed 0)")
    ap.add_argument("--groups", type=Path, required=True, help="the audit's groups.csv that split was made from")
    ap.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    ap.add_argument("--ks", default="10,20,40")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--site", choices=sorted(SITES), default="wani")
    ap.add_argument("--out", type=Path, default=None, help="default: beside this script (wani) or kaggle/ beside it")
    args = ap.parse_args()
    out = args.out or (HERE if args.site == "wani" else HERE / args.site)
    out.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]

    name, sources = SITES[args.site]
    pool_csv = out / f"{args.site}_pool.csv"
    pool = build_pool(args.split, args.groups, pool_csv, sources, name)
    tmp = tempfile.TemporaryDirectory()
    bundle, trust = args.bundle, None
    if bundle is None:
        # A byte-for-byte copy of the shipped bundle (same seal, signature checked against the package's
        # key): loaded from a temporary folder so that a training run of another job that happens to sit
        # at the bundle's recorded parent path (runs/ship/fp32 beside the checkout) is not taken for its parent.
        bundle = Path(tmp.name) / "default"
        shutil.copytree(default_bundle_path(), bundle)
        trust = TrustStore.package()
    clf, scores = score(KNEE, pool_csv, bundle, min_per_class=2, trust=trust)
    split_check = check_split(clf, args.split)
    if not split_check["same_split"]:
        raise SystemExit(f"the split does not reproduce the bundle's test figures: {split_check}")
    base = bundle_operating(clf)
    target = Target(target_sensitivity=0.9)
    base_all = answer(scores, base)
    full = {"figures": figures(scores, base_all),
            "verdict_default_minimum": verdict_on(scores, clf, base, MIN_PER_CLASS, args.bootstrap, args.seed),
            "verdict_minimum_2": verdict_on(scores, clf, base, 2, args.bootstrap, args.seed),
            "report": {k: v for k, v in build_report(scores, base_all, clf.bundle, DEFAULT_REQUIRE, n_boot=args.bootstrap,
                                                     seed=args.seed).items() if k in ("metrics", "criteria", "verdict", "counts")}}
    # Osteopenia vs Osteoporosis inside the pool (Wani: the one within-source question the pool has cases for)
    lab = scores.labels
    m = scores.y != scores.neg_index
    p = base_all.probs[m]
    opo = p[:, lab.index("Osteoporosis")] / (p[:, lab.index("Osteopenia")] + p[:, lab.index("Osteoporosis")])
    full["osteoporosis_vs_osteopenia_auroc"] = auroc(scores.y[m] == lab.index("Osteoporosis"), opo)

    rng = np.random.default_rng(args.seed)
    runs = []
    for k in ks:
        for d in range(args.draws):
            perm = rng.permutation(scores.n)
            site, rest = np.sort(perm[:k]), np.sort(perm[k:])
            s_site, s_rest = scores.subset(site), scores.subset(rest)
            op, fit = fit_operating(scores, site, base, target)
            row = {"k": k, "draw": d, "site_counts": s_site.site.counts(), "temperature": op.temperature, "low_bmd": op.low_bmd,
                   "base": figures(s_rest, answer(s_rest, base)), "calibrated": figures(s_rest, answer(s_rest, op)),
                   "verdict": verdict_on(s_site, clf, base, MIN_PER_CLASS, args.bootstrap, args.seed + d),
                   "verdict_minimum_2": verdict_on(s_site, clf, base, 2, args.bootstrap, args.seed + d)}
            runs.append(row)
        print(f"k={k}: {args.draws} draws done", file=sys.stderr)

    table = summarise_table(runs, ks, scores.n, full["verdict_default_minimum"])

    meta = {"generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/site/loso_wani.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}, Python {platform.python_version()}",
            "bundle": {"path": "shipped default" if args.bundle is None else args.bundle.name, "seal": clf.bundle.seal, "temperature": base.temperature,
                       "low_bmd": base.low_bmd, "min_confidence": base.thresholds.get("min_confidence")},
            "site": name, "split_check": split_check, "pool": pool, "target": target.to_dict(), "require": DEFAULT_REQUIRE,
            "min_per_class": MIN_PER_CLASS}
    result = {"meta": meta, "full_pool": full, "table": table, "runs": runs}
    result = json_safe(result)  # NaN -> null
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "RESULTS.md").write_text(markdown(result))
    plot(result, out / "loso_wani.png")
    print((out / "RESULTS.md").read_text())


def f3(s: dict | None) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.2f} [{s['p2_5']:.2f}, {s['p97_5']:.2f}]"


def markdown(r: dict) -> str:
    meta, full, table = r["meta"], r["full_pool"], r["table"]
    pool = meta["pool"]
    fig = full["figures"]
    lines = [
        f"# Site validation and calibration: the shipped bundle, {meta['site']} as the site", "",
        f"`{meta['command']}` ({meta['machine']}; {meta['generated']}). No training.", "",
        f"Pool: the {meta['site']} radiographs the shipped model never saw (duplicate group not in the split's train or val rows), one file per "
        f"group, label conflicts inside the site dropped: **{pool['groups_kept']} radiographs: "
        + ", ".join(f"{v} {k}" for k, v in sorted(pool["counts"].items())) + "**. "
        "Of them: " + "; ".join(f"{v} {k}" for k, v in sorted(pool["kinds"].items(), key=lambda kv: -kv[1])) + ". "
        f"Split check: the bundle on the split's {meta['split_check']['test_rows']} test rows gives accuracy "
        f"{meta['split_check']['accuracy']:.4f}, as its manifest records ({meta['split_check']['manifest_accuracy']:.4f}): the same split.", "",
        "The shipped bundle on the whole pool: " + ", ".join(f"{METRICS[f][0]} {fig[f]:.2f}" for f in SHOWN if fig.get(f) is not None and not math.isnan(fig[f]))
        + (f"; Osteopenia vs Osteoporosis AUROC {full['osteoporosis_vs_osteopenia_auroc']:.2f}"
           if full.get("osteoporosis_vs_osteopenia_auroc") is not None else "") + ". `site validate` on the whole pool: "
        f"**{full['verdict_default_minimum']}** (default minimum of {meta['min_per_class']} per side); with the minimum lowered to 2: "
        f"**{full['verdict_minimum_2']}**.", "",
        f"Each row: {table[0]['draws']} random draws of k radiographs as the site's labelled sample; figures on the rest of the pool "
        "(mean over draws [2.5th, 97.5th percentile of the draws]). Calibrated = temperature, low-BMD threshold (sensitivity 0.9) and gate "
        "refitted on the k by the code of `site calibrate`.", "",
        "| k | Normal in sample | T fitted | ECE base | ECE calibrated | sensitivity base | sensitivity calibrated | specificity base | "
        "specificity calibrated | referral base | referral calibrated | accuracy base | accuracy calibrated | AUROC base | AUROC calibrated | "
        "`site validate` on the k |",
        "|" + "---|" * 16,
    ]
    for e in table:
        b, c = e["base"], e["calibrated"]
        verdicts = ", ".join(f"{v} {k}" for k, v in sorted(e["verdicts"].items()))
        lines.append(f"| {e['k']} | {f3(e['normal_in_site_sample'])} | {f3(e['temperature'])} | {f3(b['ece'])} | {f3(c['ece'])} | "
                     f"{f3(b['sensitivity'])} | {f3(c['sensitivity'])} | {f3(b['specificity'])} | {f3(c['specificity'])} | "
                     f"{f3(b['referral_rate'])} | {f3(c['referral_rate'])} | {f3(b['accuracy'])} | {f3(c['accuracy'])} | "
                     f"{f3(b['auroc'])} | {f3(c['auroc'])} | {verdicts} |")
    lines += ["", "Verdicts with the minimum per class lowered to 2 (what the intervals alone say): "
              + "; ".join(f"k={e['k']}: " + ", ".join(f"{v} {k}" for k, v in sorted(e["verdicts_minimum_2"].items())) for e in table)
              + f". Agreement with the whole pool's verdict ({full['verdict_default_minimum']}): "
              + ", ".join(f"k={e['k']} {e['agrees_with_full_pool']}/{e['draws']}" for e in table) + ".", "",
              "![figures vs k](loso_wani.png)", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    try:
        from osteo_edge.core.plots import new_figure, save_figure

        fig = new_figure(11, 6)
    except Exception as exc:  # matplotlib missing: the tables carry every number
        print(f"plot skipped ({exc})", file=sys.stderr)
        return
    table = r["table"]
    ks = [e["k"] for e in table]
    for i, f in enumerate(SHOWN):
        ax = fig.add_subplot(2, 3, i + 1)
        for which, style in (("base", "o--"), ("calibrated", "s-")):
            mean = [e[which][f]["mean"] if e[which][f]["mean"] is not None else np.nan for e in table]
            lo = [e[which][f]["p2_5"] if e[which][f]["p2_5"] is not None else np.nan for e in table]
            hi = [e[which][f]["p97_5"] if e[which][f]["p97_5"] is not None else np.nan for e in table]
            ax.errorbar(ks, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], fmt=style, capsize=3, label=which)
        ax.set(title=METRICS[f][0], xlabel="k (site sample)", xticks=ks)
        if i == 0:
            ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
