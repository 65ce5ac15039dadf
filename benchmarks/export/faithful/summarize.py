"""The int8 variants of the shipped run, side by side (issue 22): one table from the parity reports here.

    python benchmarks/export/faithful/summarize.py     # writes variants.md and variants.json beside it

Each report is the output of `osteo-edge parity --json` (the commands are in README.md beside this
file); every figure is read from them, none is typed here.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORTS = ["ptq-vs-fp32.json", "ptq-calib-qat-vs-fp32.json", "qat-vs-qat-float.json", "fast-vs-fast-fp32.json", "../default_parity.json"]
WHAT = {
    "int8-old": "full int8 as shipped before (no fold, every op int8, int8 I/O)",
    "int8-fold": "gray stem fold, every op int8",
    "int8-budget": "PTQ, faithful route (fold + worst layers float within the default budget)",
    "int8-calib413": "the same, calibrated on all 413 training files",
    "qat-int8-old": "QAT run, full int8 as before",
    "qat-int8-budget": "QAT run, faithful route",
    "fast": "pruned 30% (4 fine-tune epochs) + QAT, faithful route (the candidate fast bundle)",
    "default": "shipped default (QAT run, faithful route)",
}


def row(rep: dict, c: dict) -> dict:
    d = c["pool"]["decisions"]
    q = lambda k: {"value": d[k]["value"], "ci95": d[k]["ci95"]}  # noqa: E731
    ref = Path(rep["reference"]["path"]).name
    name = "default" if Path(c["path"]).name == "default" else c["name"]
    return {"variant": name, "what": WHAT.get(name, name), "reference": ref, "n": d["n"], "radiographs": d["n_radiographs"],
            "agreement": q("agreement"), "decision_agreement": q("decision_agreement"), "mean_abs_dp": d["mean_abs_dp"]["value"],
            "p95_abs_dp": q("p95_abs_dp"), "max_abs_dp": d["max_abs_dp"]["value"], "flips": d["flips"],
            "decision_changes": d["decision_changes"], "accuracy": c["metrics"].get("accuracy"),
            "reference_accuracy": rep["reference"].get("accuracy"), "size_mb": c["size_bytes"] / 1e6, "passed": not c["failures"],
            "report": None}


def main() -> int:
    rows = []
    for name in REPORTS:
        path = HERE / name
        if not path.is_file():
            continue
        rep = json.loads(path.read_text())
        for c in rep["candidates"]:
            if "decisions" not in c.get("pool", {}):
                continue  # a report from before decision-level parity
            r = row(rep, c)
            r["report"] = str(path.resolve().relative_to(HERE.parents[2]))
            rows.append(r)
    f = lambda x: f"{x['value']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"  # noqa: E731
    lines = ["| variant | against | top-1 agreement | decision agreement | mean \\|dp\\| | p95 \\|dp\\| | max \\|dp\\| | flips / decision changes (of 726) | accuracy (89 test files) | gates |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']}: {r['what']} | {r['reference']} | {f(r['agreement'])} | {f(r['decision_agreement'])} | "
                     f"{r['mean_abs_dp']:.4f} | {r['p95_abs_dp']['value']:.4f} | {r['max_abs_dp']:.4f} | {r['flips']} / {r['decision_changes']} | "
                     f"{r['accuracy']:.3f} vs {r['reference_accuracy']:.3f} | {'pass' if r['passed'] else 'fail'} |")
    table = "\n".join(lines)
    (HERE / "variants.md").write_text("# int8 variants of the shipped run against their float graphs\n\n"
                                      "`python benchmarks/export/faithful/summarize.py` (reports and commands: README.md here)\n\n" + table + "\n")
    (HERE / "variants.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
