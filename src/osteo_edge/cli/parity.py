"""`osteo-edge parity`: a reference (torch run or edge bundle) vs candidate bundles, on decisions and |dp|."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from . import _output as out
from ._common import choices, handle_errors, quiet_native
from ._steps import after_parity, after_parity_failed
from ..export.parity import Gates
from ..export.pool import POOL_MEMBERS

PoolMembers = choices("PoolMembers", POOL_MEMBERS)
_G = Gates()


def _ci(d: Any, fmt: str = "{:.3f}") -> str:
    if not isinstance(d, dict):
        return "-"
    lo, hi = d["ci95"]
    return f"{fmt.format(d['value'])} [{fmt.format(lo)}, {fmt.format(hi)}]"


def register(app: typer.Typer) -> None:
    @app.command("parity")
    @handle_errors
    def parity(
        reference: Annotated[str, typer.Option("--reference", help="The model the candidates must agree with: a torch run, an edge bundle (e.g. models/default-fp32), or 'default'.")],
        candidate: Annotated[List[str], typer.Option("--candidate", help="Bundle to check ('default' = the shipped one); repeat for several.")],
        split: Annotated[Optional[Path], typer.Option("--split", help="split.csv: accuracy on its labelled --subset rows; the pool defaults to its test rows.")] = None,
        images: Annotated[Optional[Path], typer.Option("--images", help="A folder of films, no labels needed (a clinic's own): the pool for agreement and decisions.")] = None,
        subset: Annotated[str, typer.Option("--subset", help="Split subset to score: test | val | train.")] = "test",
        max_drop: Annotated[float, typer.Option("--max-drop", help="Gate: largest accuracy drop (labelled rows).")] = _G.max_drop,
        min_agreement: Annotated[float, typer.Option("--min-agreement", help="Gate: smallest top-1 agreement (pool).")] = _G.min_agreement,
        min_decision_agreement: Annotated[float, typer.Option("--min-decision-agreement", help="Gate: smallest share of pool images with the same status and low-BMD flag.")] = _G.min_decision_agreement,
        max_p95_dp: Annotated[float, typer.Option("--max-p95-dp", help="Gate: p95 over pool images of the largest |delta p|.")] = _G.max_p95_dp,
        max_abs_dp: Annotated[float, typer.Option("--max-abs-dp", help="Gate: largest |delta p| on the pool.")] = _G.max_abs_dp,
        explain: Annotated[Optional[Path], typer.Option("--explain", help="Write explain.json/png here: per-layer error (two TFLite bundles) and flips against the reference's top-2 margin.")] = None,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON here.")] = None,
        png: Annotated[Optional[Path], typer.Option("--png", help="Write a chart here (default: beside --json).")] = None,
        threads: Annotated[Optional[int], typer.Option("--threads", help="Threads for torch and the runtimes.")] = None,
        pool: Annotated[Optional[Path], typer.Option("--pool", help="With --split: a folder, or the audit's groups.csv (every radiograph outside train/val).")] = None,
        pool_members: Annotated[PoolMembers, typer.Option("--pool-members", help="groups.csv pool: one file per radiograph, or all its files (interval over radiographs).")] = PoolMembers("one"),
    ) -> None:
        """Top-1 and decision agreement and |delta p| per candidate, with 95% intervals; exit 1 when a gate fails.

        Works torch-free when the reference and candidates are edge bundles."""
        from ..export.parity import run_parity, write_parity

        gates = Gates(max_drop=max_drop, min_agreement=min_agreement, min_decision_agreement=min_decision_agreement,
                      max_p95_dp=max_p95_dp, max_abs_dp=max_abs_dp)
        with quiet_native():
            report = run_parity(reference, candidate, split, subset=subset, gates=gates, threads=threads, pool=pool,
                                pool_members=pool_members.value, images=images, explain=explain)
        if png is None and json_out is not None:
            png = json_out.with_suffix(".png")
        written = write_parity(report, json_out, png)
        _render(report, reference)
        written.update(_explained(report))
        out.wrote(written.values())
        data = f"--split {split}" if split is not None else f"--images {images}"
        if not report.passed:
            for f in report.failures:
                out.line(f"gate failed: {f}", stderr=True, style="red")
            if explain is None:
                out.next_step(*after_parity_failed(reference, candidate[0], data))
            raise typer.Exit(code=1)
        out.next_step(after_parity(candidate[0] if candidate[0] == "default" else report.candidates[0].path))


def _render(report: Any, reference: str) -> None:
    r = report.reference
    rows = [[f"{Path(reference).name} (reference)", r["backend"], f"{r['size_bytes'] / 1e6:.2f}",
             f"{r['accuracy']:.3f}" if "accuracy" in r else "-", "1", "1", "0", "0", "0", "-"]]
    for c in report.candidates:
        d = c.pool.get("decisions") or {}
        rows.append([c.name, c.backend, f"{c.size_bytes / 1e6:.2f}",
                     f"{c.metrics['accuracy']:.3f}" if c.metrics else "-",
                     _ci(d.get("agreement")), _ci(d.get("decision_agreement")),
                     f"{d['mean_abs_dp']['value']:.4f}" if d.get("n") else "-",
                     _ci(d.get("p95_abs_dp"), "{:.4f}"), f"{d['max_abs_dp']['value']:.4f}" if d.get("n") else "-",
                     "PASS" if c.passed else "FAIL"])
    cols = [out.Col("model"), out.Col("backend"), *(out.Col(x, right=True) for x in (
        "MB", "accuracy", "top-1 agreement [95% CI]", "decision agreement [95% CI]", "mean |dp|", "p95 |dp| [95% CI]",
        "max |dp|", "gate"))]
    title = (f"Parity: {report.subset} rows ({report.n_images}) and {report.pool.get('n_images')} pool images"
             if report.split else f"Parity on {report.pool.get('n_images')} images (no labels)")
    out.table(title, cols, rows)
    if report.split:
        out.line(f"protocol: {report.protocol or 'unknown (no split.json beside the split)'}")
    p = report.pool
    method = next((c.pool["decisions"]["ci_method"] for c in report.candidates if (c.pool.get("decisions") or {}).get("n")), "")
    out.line(f"pool: {p.get('source')}; {p.get('n_images')} images ({p.get('excluded_as_used', 0)} left out as train/val or "
             f"copies, {p.get('undecodable')} undecodable); intervals: {method}")
    for c in report.candidates:
        d = c.pool.get("decisions") or {}
        if d.get("n"):
            sc = d["status_counts"]
            out.line(f"{c.name}: {d['flips']} top-1 flip(s), {d['decision_changes']} decision change(s); status ok/refer/rejected "
                     f"{sc['candidate']['ok']}/{sc['candidate']['refer']}/{sc['candidate']['rejected']} vs reference "
                     f"{sc['reference']['ok']}/{sc['reference']['refer']}/{sc['reference']['rejected']}")
    g = report.gates
    out.line(f"gates: accuracy drop <= {g['max_drop']} (labelled rows); on the pool: top-1 agreement >= {g['min_agreement']}, "
             f"decision agreement >= {g['min_decision_agreement']}, p95 |dp| <= {g['max_p95_dp']}, max |dp| <= "
             f"{g['max_abs_dp']}. Screening aid only, not a diagnosis.", dim=True)


def _explained(report: Any) -> dict[str, Path]:
    rep = report.explain
    if not rep:
        return {}
    layers = rep["layers"]
    if "worst_added" in layers:
        worst = ", ".join(f"{r['op']} {r['tensor'].split(';')[0][-40:]} (+{r['added']:.3f})" for r in layers["worst_added"][:3])
        out.line(f"explain: {layers['matched']} layers matched on {layers['images']} images; worst: {worst}")
    else:
        out.line(f"explain: {layers['skipped']}")
    fl = rep["flips"]
    out.line(f"explain: {fl['n_flips']} flip(s); largest reference top-2 margin among them: "
             f"{'-' if fl['largest_flip_margin'] is None else format(fl['largest_flip_margin'], '.3f')}")
    folder = Path(rep["dir"])
    return {"explain.json": folder / "explain.json", "explain.png": folder / "explain.png"}
