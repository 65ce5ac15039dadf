"""Score a 5-fold CV run out of fold, per source, beside the shortcut baselines (issue 17).

    python benchmarks/model/cv_levers.py --lever NAME --runs runs/model/NAME --eval-split SPLIT.csv [--note CMD]
    python benchmarks/model/cv_levers.py --lever NAME --runs CV_DIR CV_DIR ... --flip --eval-split SPLIT.csv
        # an ensemble (lever 6's teacher): fold k scored by the mean logits of every CV_DIR's fold k,
        # with --flip also over each image's mirror
    python benchmarks/model/cv_levers.py --table        # the table of every scored lever
    python benchmarks/model/cv_levers.py --paired A B   # within-source low-BMD AUROC of lever B minus lever A,
        # paired bootstrap over the same out-of-fold radiographs (both scored with their out-of-fold probabilities saved)

Evaluation protocol (the same rows for every lever): the validation fold k of the eval split (a
``--members per-source`` split of the same seed, so the group -> fold assignment is that of every
training split) is scored by the fold-k model. Each distinct radiograph is scored ONCE, as the file
of its own source: a Wani radiograph as the Wani film (not its Kaggle copy), a Kaggle radiograph as
its Kaggle file. The source of a group is the Wani rule (any Wani copy -> wani-mendeley). Pooled over
the 5 folds this is an out-of-fold prediction for every non-test radiograph. Probabilities are the
uncalibrated softmax (accuracy and AUROC do not depend on the temperature).

Source probe: for each fold model, the penultimate features of all those radiographs predict the
source by group-aware 5-fold logistic regression; the AUROC is averaged over the fold models (lower
is better; 0.5 = the source is not in the features).

Saves ``benchmarks/model/results/<lever>.json`` and (``--table``) ``benchmarks/model/LEVERS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parents[1]


def own_source_rows(rows):
    """One row per group: the file from the group's own source (Wani film for a Wani radiograph)."""
    by_group: dict[int, list] = {}
    for r in rows:
        by_group.setdefault(r.group, []).append(r)
    out = []
    for g in sorted(by_group):
        mem = by_group[g]
        parts = set(mem[0].domain.split("+"))
        mem.sort(key=lambda r: (r.source not in parts, r.source, r.path))
        out.append(mem[0])
    return out


def forward(model, ds, batch: int = 32, flip: bool = False):
    """(logits, penultimate features) for every item of ``ds``; an item with several views (one per
    knee) gets the mean of its views' logits and features; ``flip``: logits averaged with the mirror's."""
    import torch

    from osteo_edge.modeling.dataset import mean_by_owner

    xs, owner = ds.all_view_arrays()
    logits, feats = [], []
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(xs), batch):
            x = torch.from_numpy(np.stack(xs[s : s + batch]))
            if hasattr(model, "forward_head"):
                f = model.forward_head(model.forward_features(x), pre_logits=True)
                z = model.get_classifier()(f)
            else:  # not a timm model: no features, logits only
                z, f = model(x), torch.zeros((x.shape[0], 1))
            if flip:
                z = (z + model(torch.flip(x, dims=[-1]))) / 2
            logits.append(z.float().numpy())
            feats.append(f.float().reshape(f.shape[0], -1).numpy())
    return mean_by_owner(np.concatenate(logits), owner, len(ds)), mean_by_owner(np.concatenate(feats), owner, len(ds))


def score(lever: str, runs: list[Path], eval_split: Path, note: str, flip: bool = False) -> dict:
    import torch

    from osteo_edge.core.machine import cpu_model
    from osteo_edge.core.stats import softmax
    from osteo_edge.data.split import read_split
    from osteo_edge.modeling.dataset import RadiographDataset
    from osteo_edge.modeling.loading import load_run
    from osteo_edge.train.sources import format_report, per_source_report, source_probe

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    table = read_split(eval_split)
    pool = own_source_rows([r for r in table.rows if r.split != "test"])
    oof_rows, oof_logits, probes = [], [], []
    for k in range(table.folds):
        fold_logits = []
        for run in runs:  # one run, or the members of an ensemble (mean logits; the probe is averaged over members)
            model, bundle = load_run(run / f"fold{k}")
            ds = RadiographDataset(pool, bundle.labels, bundle.spec)
            logits, feats = forward(model, ds, flip=flip)
            fold_logits.append(logits)
            if feats.shape[1] > 1:
                probes.append(source_probe(feats, [r.domain for r in pool], [r.group for r in pool], folds=5, seed=0))
        mine = np.array([r.fold == k for r in pool])
        oof_rows += [r for r, m in zip(pool, mine) if m]
        oof_logits.append(np.mean(fold_logits, axis=0)[mine])
    labels = bundle.labels
    logits = np.concatenate(oof_logits)
    probs = softmax(logits)
    report = per_source_report([r.label for r in oof_rows], [labels[i] for i in probs.argmax(1)], probs,
                               [r.domain for r in oof_rows], labels, groups=[r.group for r in oof_rows],
                               normal_label=bundle.negative_label or "Normal")
    train_s = 0.0
    for run in runs:
        cv = json.loads((run / "cv.json").read_text()) if (run / "cv.json").is_file() else {}
        train_s += sum(float(f.get("train_seconds") or 0) for f in cv.get("per_fold", []))
    out = {
        "lever": lever, "command": note, "scored_by": "python " + " ".join(sys.argv),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(), "torch": torch.__version__},
        "protocol": (f"5-fold group CV, out-of-fold; eval rows: the validation fold's radiographs, one file each from the "
                     f"group's own source; source of a group: Wani rule; split: {table.info.get('protocol', '')}"),
        "eval_split_sha256": table.sha256, "n": len(oof_rows), "train_seconds_total": train_s,
        "score_seconds": time.perf_counter() - t0,
        "report": report.to_dict(),
        "wani_tscore": tscore_correlation(oof_rows, probs, labels, bundle.negative_label or "Normal"),
        "source_probe": {"auroc_mean_over_fold_models": float(np.mean([p.auroc for p in probes])) if probes else None,
                         "per_fold_model": [p.auroc for p in probes]},
        "oof": {"labels": list(labels), "group": [int(r.group) for r in oof_rows], "source": [r.domain for r in oof_rows],
                "label": [r.label for r in oof_rows], "probs": np.round(probs, 5).tolist()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{lever}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{lever}.md").write_text(f"# {lever}\n\n`{note}`\n\n{out['protocol']}\n\n" + format_report(report) + "\n")
    print(json.dumps(summary_row(out), indent=2))
    return out


TSCORES = ROOT.parent / "shared" / "data" / "tabular" / "wani_patient_details.csv"


def tscore_correlation(rows, probs: np.ndarray, labels: list, normal: str) -> dict:
    """Issue 17 lever 5's report: the correlation of the model's P(normal) with the patient's
    (quantitative-ultrasound) T-score over the out-of-fold Wani radiographs (file stem = patient id)."""
    from osteo_edge.train.tscore import read_tscores

    if not TSCORES.is_file():
        return {"n": 0, "note": f"{TSCORES} not found"}
    t = read_tscores(TSCORES)
    j = labels.index(normal)
    pairs = []
    for r, p in zip(rows, probs):
        v = t.get(Path(r.path).stem)
        if "wani" in r.source and v is not None:
            pairs.append((v, float(p[j])))
    if len(pairs) < 3:
        return {"n": len(pairs)}
    a = np.array(pairs)
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731 (ties are rare in T-scores)
    return {"n": len(pairs), "pearson_r_tscore_vs_p_normal": float(np.corrcoef(a[:, 0], a[:, 1])[0, 1]),
            "spearman_r_tscore_vs_p_normal": float(np.corrcoef(rank(a[:, 0]), rank(a[:, 1]))[0, 1])}


def _cell(rep: dict, source: str, label: str) -> str:
    for c in rep["cells"]:
        if c["source"] == source and c["label"] == label:
            return f"{c['k']}/{c['n']}"
    return "-"


def _f(v, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def summary_row(res: dict) -> dict:
    rep = res["report"]
    by = {s["source"]: s for s in rep["per_source"]}
    verdict = {v["source"]: v for v in rep["verdicts"]}
    wani = "wani-mendeley"
    kag = next((s for s in by if s != wani), None)
    w = by.get(wani, {})
    return {
        "lever": res["lever"], "n": res["n"], "pooled_acc": rep["pooled_accuracy"], "pooled_macro_f1": rep["pooled_macro_f1"],
        "kaggle_acc": by.get(kag, {}).get("accuracy"), "wani_acc": w.get("accuracy"),
        "wani_ci": (w.get("accuracy_ci95") or {}).get("lo"), "wani_ci_hi": (w.get("accuracy_ci95") or {}).get("hi"),
        "wani_bar": verdict.get(wani, {}).get("shortcut_accuracy"), "wani_margin": verdict.get(wani, {}).get("margin_points"),
        "kaggle_margin": verdict.get(kag, {}).get("margin_points"),
        "worst": f"{rep['worst_source']} {rep['worst_source_accuracy']:.3f}",
        "wani_normal": _cell(rep, wani, "Normal"), "wani_penia": _cell(rep, wani, "Osteopenia"),
        "wani_porosis": _cell(rep, wani, "Osteoporosis"),
        "lowbmd_auc_kaggle": rep["within_source_low_bmd_auroc"].get(kag), "lowbmd_auc_wani": rep["within_source_low_bmd_auroc"].get(wani),
        "penia_vs_porosis_auc": rep["wani_osteopenia_vs_osteoporosis_auroc"],
        "source_probe": res["source_probe"]["auroc_mean_over_fold_models"],
        "tscore_r": (res.get("wani_tscore") or {}).get("pearson_r_tscore_vs_p_normal"),
        "train_min": res["train_seconds_total"] / 60,
    }


def table() -> str:
    rows = [summary_row(json.loads(p.read_text())) for p in sorted(RESULTS.glob("*.json"))]
    if not rows:
        return "no scored levers yet"
    any_res = json.loads(next(iter(sorted(RESULTS.glob("*.json")))).read_text())
    head = ("| lever | n | pooled acc | macro-F1 | Kaggle acc (margin vs shortcut) | Wani acc [95% CI] | Wani shortcut bar | "
            "Wani margin (pts) | worst source | Wani Normal | Wani Osteopenia | Wani Osteoporosis | low-BMD AUROC in Kaggle | "
            "low-BMD AUROC in Wani | Wani penia vs porosis AUROC | source probe AUROC | Wani r(T-score, P(Normal)) | train min |")
    lines = [head, "|" + "---|" * 18]
    for r in rows:
        lines.append(
            f"| {r['lever']} | {r['n']} | {_f(r['pooled_acc'])} | {_f(r['pooled_macro_f1'])} | {_f(r['kaggle_acc'])} "
            f"({r['kaggle_margin']:+.1f}) | {_f(r['wani_acc'])} [{_f(r['wani_ci'])}, {_f(r['wani_ci_hi'])}] | {_f(r['wani_bar'])} | "
            f"{r['wani_margin']:+.1f} | {r['worst']} | {r['wani_normal']} | {r['wani_penia']} | {r['wani_porosis']} | "
            f"{_f(r['lowbmd_auc_kaggle'])} | {_f(r['lowbmd_auc_wani'])} | {_f(r['penia_vs_porosis_auc'])} | {_f(r['source_probe'])} | "
            f"{_f(r['tscore_r'], 2)} | {r['train_min']:.0f} |")
    text = ("# Issue 17 levers: 5-fold group CV, out of fold, per source\n\n"
            f"Machine: {any_res['machine']['cpu']}, {any_res['machine']['cores']} cores ({any_res['machine']['arch']}), "
            f"torch {any_res['machine']['torch']}; shared with other jobs (train minutes are indicative).\n\n"
            f"Protocol: {any_res['protocol']}.\n\n" + "\n".join(lines) + "\n\n"
            "Commands: `bash benchmarks/model/run_levers.sh [lever ...]` trains and scores; each lever's training command "
            "is in results/<lever>.json (`command`), its full per-source report in results/<lever>.md.\n")
    (HERE / "LEVERS.md").write_text(text)
    return text


def readme_table() -> str:
    """The README's compact form of LEVERS.md (between its ``levers table`` markers)."""
    def order(p: Path) -> tuple:
        digits = "".join(c for c in p.stem.split("-")[0] if c.isdigit())
        return (int(digits or 0), p.stem)

    rows = [summary_row(json.loads(p.read_text())) for p in sorted(RESULTS.glob("*.json"), key=order)]
    lines = ["| lever | pooled acc | Kaggle acc | Wani acc [95% CI] (bar 0.563) | Wani Normal / Osteopenia / Osteoporosis | "
             "low-BMD AUROC in Kaggle / in Wani | Wani Osteopenia vs Osteoporosis AUROC | source probe AUROC | Wani r(T-score, P(Normal)) |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['lever']} | {_f(r['pooled_acc'])} | {_f(r['kaggle_acc'])} | {_f(r['wani_acc'])} [{_f(r['wani_ci'])}, {_f(r['wani_ci_hi'])}] | "
                     f"{r['wani_normal']} / {r['wani_penia']} / {r['wani_porosis']} | {_f(r['lowbmd_auc_kaggle'])} / {_f(r['lowbmd_auc_wani'])} | "
                     f"{_f(r['penia_vs_porosis_auc'])} | {_f(r['source_probe'])} | {_f(r['tscore_r'], 2)} |")
    return "\n".join(lines)


def paired(a: str, b: str, n_boot: int = 2000, seed: int = 0) -> dict:
    """Within-source low-BMD AUROC of lever ``b`` minus lever ``a`` on the same out-of-fold radiographs,
    with a percentile interval from a paired bootstrap over radiographs (the same draws for both)."""
    from osteo_edge.core.stats import auroc, percentile_interval, resample_indices

    ra, rb = (json.loads((RESULTS / f"{x}.json").read_text()) for x in (a, b))
    if "oof" not in ra or "oof" not in rb:
        raise SystemExit(f"re-score {a if 'oof' not in ra else b} with this script: its results have no out-of-fold probabilities")
    oa, ob = ra["oof"], rb["oof"]
    ia = {g: i for i, g in enumerate(oa["group"])}
    normal = oa["labels"].index("Normal")
    out = {"a": a, "b": b, "n_boot": n_boot, "seed": seed, "by_source": {}}
    for src in sorted(set(oa["source"])):
        rows = [(ia[g], j) for j, g in enumerate(ob["group"]) if ob["source"][j] == src and g in ia]
        pa = np.array([oa["probs"][i] for i, _ in rows])
        pb = np.array([ob["probs"][j] for _, j in rows])
        low = np.array([ob["label"][j] != "Normal" for _, j in rows])
        diff = lambda idx: auroc(low[idx], 1 - pb[idx, normal]) - auroc(low[idx], 1 - pa[idx, normal])  # noqa: E731
        everything = np.arange(len(rows))
        lo, hi, valid = percentile_interval([diff(idx) for idx in resample_indices(len(rows), n_boot, seed)])
        out["by_source"][src] = {"n": len(rows), "auroc_a": auroc(low, 1 - pa[:, normal]), "auroc_b": auroc(low, 1 - pb[:, normal]),
                                 "difference": diff(everything), "ci95": [lo, hi], "valid_draws": valid}
    path = HERE / "paired" / f"{a}_vs_{b}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"command": "python " + " ".join(sys.argv), **out}, indent=2) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lever")
    ap.add_argument("--runs", type=Path, nargs="+", help="a CV directory, or several (an ensemble of their fold-k models)")
    ap.add_argument("--flip", action="store_true", help="average each image's logits with its mirror's")
    ap.add_argument("--eval-split", type=Path)
    ap.add_argument("--note", default="")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--readme-table", action="store_true", help="print the README's compact table")
    ap.add_argument("--paired", nargs=2, metavar=("A", "B"), help="within-source low-BMD AUROC of B minus A, paired bootstrap")
    a = ap.parse_args()
    if a.table:
        print(table())
        return
    if a.readme_table:
        print(readme_table())
        return
    if a.paired:
        print(json.dumps(paired(*a.paired), indent=2))
        return
    if not (a.lever and a.runs and a.eval_split):
        ap.error("--lever, --runs and --eval-split are required (or --table)")
    score(a.lever, a.runs, a.eval_split, a.note, flip=a.flip)


if __name__ == "__main__":
    main()
