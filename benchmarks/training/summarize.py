"""Build benchmarks/training/RESULTS.md from the saved outputs under results/ (no number is typed in by hand).

usage: python benchmarks/training/summarize.py benchmarks/training/results
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from osteo_edge.artifact import DISCLAIMER
from osteo_edge.train.evaluate import fmt_mean_sd
from osteo_edge.core.classification import bootstrap_ci
from osteo_edge.core.stats import fmt_ci

LABELS = ["Normal", "Osteopenia", "Osteoporosis"]
KNEE_SOURCES = ("multiclass-kaggle", "wani-mendeley", "2class-kaggle")


def load(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def main_table(res: Path) -> list[str]:
    cmp_ = load(res / "compare" / "compare.json")
    if not cmp_:
        return ["(compare stage not run yet)"]
    m = cmp_["machine"]
    out = [f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('arch')}), torch {m.get('torch')}; training and latency on "
           f"this CPU, shared with other jobs (timings are indicative). Latency: {cmp_['latency']}.", "",
           f"**Protocol:** {cmp_['runs'][0]['protocol']}.", "",
           "| run | weights | px | params (M) | MMACs | latency p50 (ms) | train time (min) | epochs (best) | test accuracy | test macro-F1 | "
           "low-BMD AUROC | sens / spec at val threshold | ECE after / before T |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cmp_["runs"]:
        ev = load(res / r["run"] / "test_metrics.json") or {}
        h = ev.get("headline", r["test"])
        ece_before = fmt_ci(ev.get("ece_uncalibrated")) if ev else "n/a"
        out.append(
            f"| {r['run']} | {r['weights']} | {r['img_size']} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e6:.0f} | {r['latency_ms_p50']:.1f} | "
            f"{r['train_seconds'] / 60:.1f} | {r['epochs_run']} ({r['best_epoch']}) | {fmt_ci(h.get('accuracy'))} | {fmt_ci(h.get('macro_f1'))} | "
            f"{fmt_ci(h.get('low_bmd_auroc'))} | {fmt_ci(h.get('low_bmd_sensitivity'))} / {fmt_ci(h.get('low_bmd_specificity'))} | "
            f"{fmt_ci(h.get('ece'))} / {ece_before} |")
    n = {r.get("test_n") for r in cmp_["runs"]}
    out += ["", f"Test split: n = {', '.join(map(str, n))} distinct radiographs; 95% CIs are percentile bootstrap over duplicate groups (1000 replicates)."]
    out += ["", "### Per source (test split)", "",
            "With one file per group, a group is represented by its largest copy, so the Wani groups that also exist in a Kaggle set "
            "are scored on the Kaggle copy: the Wani rows here are all Osteopenia (see the next section for the Wani files themselves). "
            "The reference point from the data README (frozen Lite0 features + logistic regression, on distinct held-out radiographs): "
            "about 0.76 pooled 3-class accuracy, about 0.68 on Wani (always answering Osteopenia gives 0.61 there).", "",
            "| run | source | n | accuracy | macro-F1 | recall per class |", "|---|---|---|---|---|---|"]
    for r in cmp_["runs"]:
        ev = load(res / r["run"] / "test_metrics.json")
        if not ev:
            continue
        for src, s in ev["per_source"].items():
            out.append(f"| {r['run']} | {src} | {s['n']} | {fmt_ci(s.get('accuracy'))} | {fmt_ci(s.get('macro_f1'))} | "
                       f"{_recalls(np.asarray(s['confusion']))} |")
    return out


def _recalls(cm: np.ndarray) -> str:
    return ", ".join(f"{lab} {cm[i, i]}/{cm[i].sum()}" for i, lab in enumerate(LABELS) if cm[i].sum())


def wani_table(res: Path) -> list[str]:
    """Every file of each test group (members all): the Wani images themselves, 3 classes."""
    runs = sorted(p.parent.name for p in res.glob("*/test-all-members_metrics.json"))
    if not runs:
        return ["(knee-eval stage not run yet)"]
    out = ["Scored on every file of the same 48 test groups (`--members all` split: identical group-to-split assignment), "
           "so each source is judged on its own copies; Wani is the only source with all three classes (T-score labels). "
           "CIs: bootstrap over groups.", "",
           "| run | trained on | rows | n | accuracy | macro-F1 | low-BMD AUROC | recall per class |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        m = load(res / run / "test-all-members_metrics.json")
        trained = "every file" if "allmembers" in run else "one file per group"
        h = m["headline"]
        out.append(f"| {run} | {trained} | all test files | {m['n']} | {fmt_ci(h.get('accuracy'))} | {fmt_ci(h.get('macro_f1'))} | "
                   f"{fmt_ci(h.get('low_bmd_auroc'))} | {_recalls(np.asarray(m['point']['confusion']))} |")
        w = m["per_source"].get("wani-mendeley")
        if w:
            out.append(f"| {run} | {trained} | Wani files | {w['n']} | {fmt_ci(w.get('accuracy'))} | {fmt_ci(w.get('macro_f1'))} | "
                       f"{fmt_ci(w.get('low_bmd_auroc'))} | {_recalls(np.asarray(w['confusion']))} |")
    ref = load(res / runs[0] / "test-all-members_metrics.json")["per_source"].get("wani-mendeley")
    if ref:
        cm = np.asarray(ref["confusion"])
        out += ["", f"Always answering Osteopenia would score {cm[1].sum() / cm.sum():.2f} on these {int(cm.sum())} Wani files."]
    for run in runs:
        m = load(res / run / "test_metrics.json")
        if "allmembers" in run and m:
            h = m["headline"]
            out += ["", f"{run} on the one-file-per-group test rows (n = {m['n']}, comparable with the architecture table): "
                        f"accuracy {fmt_ci(h.get('accuracy'))}, macro-F1 {fmt_ci(h.get('macro_f1'))}, "
                        f"low-BMD AUROC {fmt_ci(h.get('low_bmd_auroc'))}."]
    return out


def cv_tables(res: Path) -> list[str]:
    dirs = sorted(p.parent for p in res.glob("*/cv_metrics.json"))
    if not dirs:
        return ["(cv stage not run yet)"]
    out: list[str] = []
    for d in dirs:
        out += [f"### {d.name}", "", *cv_table(d), ""]
    return out


def cv_table(d: Path) -> list[str]:
    s = load(d / "cv_metrics.json")
    cv = load(d / "cv.json")
    cfg = (cv or {}).get("config", {})
    out = [f"{s['folds']} folds of {cfg.get('arch')} at {cfg.get('img_size')} px ({cfg.get('epochs')} epochs max); fold k validates on fold k; "
           f"every fold's model is evaluated on the same held-out test split. Total training time "
           f"{(cv or {}).get('train_seconds_total', float('nan')) / 60:.0f} min.", "",
           "| metric (test) | mean ± sd over folds |", "|---|---|"]
    for k, v in s["summary"].items():
        out.append(f"| {k} | {fmt_mean_sd(v)} |")
    out += ["", "| source | accuracy | macro-F1 |", "|---|---|---|"]
    for src, summ in s["per_source_summary"].items():
        out.append(f"| {src} | {fmt_mean_sd(summ.get('accuracy'))} | {fmt_mean_sd(summ.get('macro_f1'))} |")
    if cv:
        vals = [f["val"].get("macro_f1", {}).get("value", float("nan")) for f in cv["per_fold"]]
        out += ["", f"Validation-fold macro-F1 (used for early stopping, so optimistic): {fmt_mean_sd(cv['val_summary'].get('macro_f1'))} "
                f"(per fold: {', '.join(f'{v:.3f}' for v in vals)})."]
    return out


def _pred_rows(p: Path) -> list[dict]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def _region_metrics(rows: list[dict]) -> dict:
    y = np.array([LABELS.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{lab}"]) for lab in LABELS] for r in rows])
    groups = np.array([int(r["group"]) for r in rows])
    return bootstrap_ci(y, probs, LABELS, groups, n_boot=1000, seed=0)


def region_table(res: Path) -> list[str]:
    if not (res / "region" / "joint" / "predictions.csv").is_file():
        return ["(region stage not run yet)"]
    joint = _pred_rows(res / "region" / "joint" / "predictions.csv")
    out = ["Same images, same test rows: the joint knee+spine split, and its knee rows and spine rows as two per-region splits. "
           "EfficientNet-Lite0 (ImageNet), 160 px, 8 epochs max, identical settings.", "",
           "| test rows | model | n | accuracy | macro-F1 | low-BMD AUROC |", "|---|---|---|---|---|---|"]
    for region, sources in (("knee", KNEE_SOURCES), ("spine", ("sriher",))):
        own_p = res / "region" / region / "predictions.csv"
        cand = [("one model for both regions", [r for r in joint if r["source"] in sources])]
        if own_p.is_file():
            cand.append((f"{region}-only model", _pred_rows(own_p)))
        for name, rows in cand:
            m = _region_metrics(rows)
            out.append(f"| {region} | {name} | {len(rows)} | {fmt_ci(m['accuracy'])} | {fmt_ci(m['macro_f1'])} | {fmt_ci(m['low_bmd_auroc'])} |")
    return out


def main(res_dir: str) -> None:
    res = Path(res_dir)
    lines = ["# Training benchmarks (knee, 3 classes)", "", f"> {DISCLAIMER}", "",
             "Generated by `benchmarks/training/summarize.py` from the outputs in `results/`; reproduce everything with "
             "`bash benchmarks/training/run_all.sh` (exact commands there).", "",
             "## Architectures on the knee split", "", *main_table(res), "",
             "## The Wani images (3 classes) and every copy of each test radiograph", "", *wani_table(res), "",
             "## 5-fold cross-validation", "", *cv_tables(res), "",
             "## Multi-region: one model for knee + spine, or one per region?", "", *region_table(res), ""]
    (res.parent / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {res.parent / 'RESULTS.md'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
