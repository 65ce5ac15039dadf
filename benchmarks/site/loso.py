"""Issue 28: what site validation and site calibration buy, leave one source out, three cases in one table.

    python benchmarks/site/loso.py --groups AUDIT/groups.csv \
        --case "Kaggle-only base, Wani site=BUNDLE:SPLIT:wani" --case "...=BUNDLE:SPLIT:kaggle" \
        --case "shipped default, Wani site=default:SPLIT:wani" [--ks 10,20,40] [--draws 20] [--head-l2 10] [--out DIR]

(``bash benchmarks/site/run_loso.sh`` builds the splits, trains and exports the two base models and runs this.)

Per case (a base bundle, the split it was trained on, the site's source):

1. The pool: the site's radiographs the base never saw (:func:`loso_wani.build_pool`: duplicate group not
   in the split's train or val rows; one file per group; groups whose site files disagree dropped), and
   the split check (the bundle reproduces its manifest's test accuracy on the split's test rows).
   Site labels the bundle lacks (a binary Kaggle base: Normal / LowBMD) are mapped onto its low-BMD
   label, as ``site validate`` does.
2. For k in ``--ks`` and ``--draws`` random draws: k pool radiographs are the site's labelled sample,
   the rest of the pool is scored: the base as it is; calibrated on the k (temperature, low-BMD
   threshold for sensitivity 0.9, gate: the code of ``site calibrate``); and, when the bundle's model
   file has an embedding output, calibrated with ``--head`` (a linear head on the embedding, then
   temperature and threshold on its cross-fitted logits). ``site validate`` on the k (default criteria
   and minimum per class) gives a verdict, compared with the verdict on the whole pool.
3. Writes results.json, RESULTS.md and loso.png into ``--out`` (default: ``loso/`` beside this script).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shutil
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loso_wani import KNEE, SITES, build_pool, check_split, f3, summarise, verdict_on  # noqa: E402

from osteo_edge.artifact.signing import TrustStore  # noqa: E402
from osteo_edge.edge_runtime import default_bundle_path  # noqa: E402
from osteo_edge.edge_runtime.site import score  # noqa: E402
from osteo_edge.edge_runtime.site.calibrate import Target, fit_operating  # noqa: E402
from osteo_edge.edge_runtime.site.scoring import answer, bundle_operating  # noqa: E402
from osteo_edge.edge_runtime.site.validate import DEFAULT_REQUIRE, METRICS, MIN_PER_CLASS, figures, json_safe  # noqa: E402

HERE = Path(__file__).resolve().parent
SHOWN = ("auroc", "ece", "sensitivity", "specificity", "referral_rate", "accuracy")
ARMS = ("base", "calibrated", "head")


def parse_case(text: str) -> dict:
    name, _, rest = text.partition("=")
    bundle, split, site = rest.split(":")
    if site not in SITES:
        raise SystemExit(f"--case {text!r}: site must be one of {', '.join(SITES)}")
    return {"name": name.strip(), "bundle": bundle, "split": Path(split), "site": site}


def load_case(case: dict, groups: Path, work: Path, bootstrap: int, seed: int) -> tuple:
    """(clf, scores, pool info, split check, whole-pool figures and verdict) of one case."""
    name, sources = SITES[case["site"]]
    pool_csv = work / f"{case['name'].replace(' ', '_').replace(',', '')}_pool.csv"
    pool = build_pool(case["split"], groups, pool_csv, sources, name)
    bundle, trust = case["bundle"], None
    if bundle == "default":  # a byte-for-byte copy, checked against the package key (see loso_wani.py)
        bundle = work / "default"
        if not bundle.exists():
            shutil.copytree(default_bundle_path(), bundle)
        trust = TrustStore.package()
    clf, scores = score(KNEE, pool_csv, bundle, min_per_class=2, trust=trust)
    split_check = check_split(clf, case["split"])
    if not split_check["same_split"]:
        raise SystemExit(f"{case['name']}: the split does not reproduce the bundle's test figures: {split_check}")
    base = bundle_operating(clf)
    full = {"figures": figures(scores, answer(scores, base)),
            "verdict": verdict_on(scores, clf, base, MIN_PER_CLASS, bootstrap, seed),
            "verdict_minimum_2": verdict_on(scores, clf, base, 2, bootstrap, seed)}
    return clf, scores, pool, split_check, full


def run_case(case: dict, groups: Path, work: Path, ks: list[int], draws: int, head_l2: float, bootstrap: int, seed: int) -> dict:
    clf, scores, pool, split_check, full = load_case(case, groups, work, bootstrap, seed)
    base = bundle_operating(clf)
    target = Target(target_sensitivity=0.9)
    has_head = scores.embeddings is not None
    rng = np.random.default_rng(seed)
    runs = []
    for k in ks:
        for d in range(draws):
            perm = rng.permutation(scores.n)
            site, rest = np.sort(perm[:k]), np.sort(perm[k:])
            s_site, s_rest = scores.subset(site), scores.subset(rest)
            row = {"k": k, "draw": d, "site_counts": s_site.site.counts(), "base": figures(s_rest, answer(s_rest, base))}
            op, _ = fit_operating(scores, site, base, target)
            row["calibrated"] = figures(s_rest, answer(s_rest, op))
            row["temperature"] = op.temperature
            if has_head:
                op_h, _ = fit_operating(scores, site, base, target, head_l2=head_l2, seed=seed + d)
                row["head"] = figures(s_rest, answer(s_rest, op_h))
            row["verdict"] = verdict_on(s_site, clf, base, MIN_PER_CLASS, bootstrap, seed + d)
            runs.append(row)
        print(f"{case['name']}: k={k}, {draws} draws done", file=sys.stderr)
    table = []
    for k in ks:
        rs = [r for r in runs if r["k"] == k]
        entry = {"k": k, "draws": len(rs), "scored_on": scores.n - k,
                 "negative_in_sample": summarise([r["site_counts"][scores.negative] for r in rs]),
                 "temperature": summarise([r["temperature"] for r in rs]),
                 "verdicts": dict(Counter(r["verdict"] for r in rs)),
                 "agrees_with_full_pool": sum(r["verdict"] == full["verdict"] for r in rs)}
        for arm in ARMS:
            if all(arm in r for r in rs):
                entry[arm] = {f: summarise([r[arm][f] for r in rs]) for f in SHOWN}
        table.append(entry)
    sig = clf.bundle.signature
    return {"name": case["name"], "site": SITES[case["site"]][0], "bundle": {
                "path": "shipped default" if case["bundle"] == "default" else Path(case["bundle"]).name, "format": clf.bundle.format,
                "labels": clf.labels, "seal": clf.bundle.seal, "signed_by": sig.key_id if sig else None,
                "temperature": base.temperature, "low_bmd": base.low_bmd, "embedding_output": has_head},
            "split": str(case["split"]), "split_check": split_check, "pool": pool,
            "label_mapping": dict(scores.site.mapping), "pool_site_counts": scores.site.site_counts(),
            "full_pool": full, "table": table, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=Path, required=False, help="the full audit's groups.csv (every split's group ids come from it)")
    ap.add_argument("--case", action="append", default=[], help="'NAME=BUNDLE|default:SPLIT.csv:wani|kaggle' (repeatable)")
    ap.add_argument("--ks", default="10,20,40")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--head-l2", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=HERE / "loso")
    ap.add_argument("--replot", action="store_true", help="only redraw loso.png from the results.json in --out")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((args.out / "results.json").read_text()), args.out / "loso.png")
        return
    if args.groups is None or not args.case:
        ap.error("--groups and at least one --case are required (or --replot)")
    args.out.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    cases = [parse_case(c) for c in args.case]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(c, args.groups, Path(tmp), ks, args.draws, args.head_l2, args.bootstrap, args.seed) for c in cases]
    meta = {"generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/site/loso.py " + " ".join(f"'{a}'" if " " in a else a for a in sys.argv[1:]),
            "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}, Python {platform.python_version()}",
            "target": {"target_sensitivity": 0.9}, "require": DEFAULT_REQUIRE, "min_per_class": MIN_PER_CLASS, "head_l2": args.head_l2,
            "ks": ks, "draws": args.draws}
    result = json_safe({"meta": meta, "cases": results})
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "RESULTS.md").write_text(markdown(result))
    plot(result, args.out / "loso.png")
    print((args.out / "RESULTS.md").read_text())


def cell(entry: dict, f: str) -> str:
    return " / ".join(f3(entry[a][f]) if a in entry else "-" for a in ARMS)


def markdown(r: dict) -> str:
    meta = r["meta"]
    lines = ["# Site validation and calibration, leave one source out", "",
             f"`{meta['command']}` ({meta['machine']}; {meta['generated']}).", "",
             "## The cases", ""]
    for c in r["cases"]:
        fig, pool, sc = c["full_pool"]["figures"], c["pool"], c["split_check"]
        mapped = (" Site labels mapped onto the bundle's: " + ", ".join(f"{a} -> {b}" for a, b in c["label_mapping"].items()) + "."
                  if c["label_mapping"] else "")
        lines += [f"- **{c['name']}**: bundle `{c['bundle']['path']}` ({c['bundle']['format']}, labels {', '.join(c['bundle']['labels'])}"
                  f"{', embedding output' if c['bundle']['embedding_output'] else ''}), split `{c['split']}` (check: {sc['test_rows']} test rows, "
                  f"accuracy {sc['accuracy']:.4f} = manifest {sc['manifest_accuracy']:.4f}). Pool: {pool['groups_kept']} {c['site']} radiographs "
                  "the base never saw (" + ", ".join(f"{v} {k}" for k, v in sorted(c["pool_site_counts"].items())) + f").{mapped} "
                  "The base on the whole pool: " + ", ".join(f"{METRICS[f][0]} {fig[f]:.2f}" for f in SHOWN if fig.get(f) is not None)
                  + f"; `site validate` on the whole pool: **{c['full_pool']['verdict']}** (minimum 2 per side: {c['full_pool']['verdict_minimum_2']})."]
    lines += ["", f"Each row: {meta['draws']} random draws of k radiographs as the site's labelled sample, figures on the rest of the "
              "pool, mean over draws [2.5th, 97.5th percentile of the draws]. Each cell: **base / calibrated / calibrated + head** "
              "(calibrated: temperature, low-BMD threshold for sensitivity 0.9 and gate refitted on the k by the code of `site calibrate`; "
              f"+ head: `site calibrate --head`, a linear head on the model's embedding, L2 {meta['head_l2']:g}; '-': the bundle's model file "
              "has no embedding output). Last column: `site validate` on the k (default criteria "
              + ", ".join(f"{k} >= {v:g}" for k, v in meta["require"].items()) + f" on the lower bounds, at least {meta['min_per_class']} "
              "per side), and how many of the draws give the whole pool's verdict.", "",
              "| case | k | negatives in sample | T fitted | AUROC | ECE | sensitivity | specificity | referral | accuracy | `site validate` on the k |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["cases"]:
        for e in c["table"]:
            verdicts = ", ".join(f"{v} {k}" for k, v in sorted(e["verdicts"].items()))
            lines.append(f"| {c['name']} | {e['k']} | {f3(e['negative_in_sample'])} | {f3(e['temperature'])} | "
                         + " | ".join(cell(e, f) for f in SHOWN)
                         + f" | {verdicts}; {e['agrees_with_full_pool']}/{e['draws']} as the whole pool |")
    lines += ["", "![figures vs k](loso.png)", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    try:
        from osteo_edge.core.plots import new_figure, save_figure

        fig = new_figure(15, 3.3 * len(r["cases"]))
    except Exception as exc:  # matplotlib missing: the table carries every number
        print(f"plot skipped ({exc})", file=sys.stderr)
        return
    shown = SHOWN[:5]
    for i, c in enumerate(r["cases"]):
        ks = [e["k"] for e in c["table"]]
        for j, f in enumerate(shown):
            ax = fig.add_subplot(len(r["cases"]), len(shown), i * len(shown) + j + 1)
            for arm, style in zip(ARMS, ("o--", "s-", "^-")):
                if arm not in c["table"][0]:
                    continue
                s = [e[arm][f] for e in c["table"]]
                mean = np.array([x["mean"] if x["mean"] is not None else math.nan for x in s])
                lo = np.array([x["p2_5"] if x["p2_5"] is not None else math.nan for x in s])
                hi = np.array([x["p97_5"] if x["p97_5"] is not None else math.nan for x in s])
                ax.errorbar(np.array(ks) + (ARMS.index(arm) - 1) * 0.6, mean, yerr=[mean - lo, hi - mean], fmt=style, capsize=3, label=arm)
            ax.set(title=f"{METRICS[f][0]}" + ("" if j else "\n" + textwrap.fill(c["name"], 30)), xticks=ks, ylim=(-0.02, 1.02))
            if i == len(r["cases"]) - 1:
                ax.set_xlabel("k (site sample)")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
