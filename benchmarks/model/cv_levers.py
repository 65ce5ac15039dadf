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

The scoring and the paired bootstrap are the library's (``osteo_edge.release.oof``, the commands
``osteo-edge evaluate --cv RUNDIR --split EVAL_SPLIT`` and ``osteo-edge compare --paired A.json B.json``);
this script files their results under the lever's name and draws the tables.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from osteo_edge.release.oof import paired_comparison, read_scores, score_cv, summary_row

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parents[1]
TSCORES = ROOT.parent / "shared" / "data" / "tabular" / "wani_patient_details.csv"


def score(lever: str, runs: list[Path], eval_split: Path, note: str, flip: bool = False) -> dict:
    """Score a CV directory (or an ensemble of them) out of fold; file it as results/<lever>.json and .md."""
    import torch

    torch.set_num_threads(2)
    out = score_cv(runs, eval_split, name=lever, flip=flip, tscore_csv=TSCORES if TSCORES.is_file() else None, command=note)
    out["scored_by"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    markdown = out.pop("markdown")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{lever}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{lever}.md").write_text(f"# {lever}\n\n`{note}`\n\n{out['protocol']}\n\n{markdown}\n")
    print(json.dumps(summary_row(out), indent=2))
    return out


def _f(v, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


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
    text = ("# Levers of issues 17 and 26: 5-fold group CV, out of fold, per source\n\n"
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
    """Within-source low-BMD AUROC of lever ``b`` minus lever ``a``: paired bootstrap (the library's)."""
    out = paired_comparison(read_scores(RESULTS / f"{a}.json"), read_scores(RESULTS / f"{b}.json"), n_boot=n_boot, seed=seed)
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
