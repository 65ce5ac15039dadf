"""`osteo-edge parity`: reference run (torch) vs candidate bundles (edge runtime) on real test images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import _output as out
from ._common import handle_errors, quiet_native
from ._steps import after_parity, after_parity_failed
from ..export.pool import POOL_MEMBERS
from ._common import choices

PoolMembers = choices("PoolMembers", POOL_MEMBERS)


def register(app: typer.Typer) -> None:
    @app.command("parity")
    @handle_errors
    def parity(
        reference: Annotated[Path, typer.Option("--reference", help="The torch run the candidates came from.")],
        candidate: Annotated[List[Path], typer.Option("--candidate", help="Exported bundle (repeat for several).")],
        split: Annotated[Path, typer.Option("--split", help="split.csv with the real test images.")],
        subset: Annotated[str, typer.Option("--subset", help="Split subset to compare on: test | val | train.")] = "test",
        max_drop: Annotated[float, typer.Option("--max-drop", help="Gate: largest allowed accuracy drop vs the reference (0.01 = 1 point).")] = 0.01,
        min_agreement: Annotated[float, typer.Option("--min-agreement", help="Gate: smallest allowed top-1 agreement with the reference.")] = 0.98,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON here.")] = None,
        png: Annotated[Optional[Path], typer.Option("--png", help="Write a chart here (default: beside --json).")] = None,
        threads: Annotated[Optional[int], typer.Option("--threads", help="Threads for torch and the runtimes.")] = None,
        pool: Annotated[Optional[Path], typer.Option("--pool", help="Unlabelled images for agreement: a folder, or the audit's groups.csv (every distinct radiograph outside train/val). Default: the split's test rows.")] = None,
        pool_members: Annotated[PoolMembers, typer.Option("--pool-members", help="With a groups.csv pool: one file per radiograph, or all its files (each source's encoding; interval: bootstrap over radiographs).")] = PoolMembers("one"),
    ) -> None:
        """Accuracy, macro-F1, agreement and |delta p| per candidate; exit code 1 when a gate fails."""
        from ..export.parity import run_parity, write_parity

        with quiet_native():
            report = run_parity(reference, candidate, split, subset=subset, max_drop=max_drop, min_agreement=min_agreement, threads=threads, pool=pool, pool_members=pool_members.value)
        if png is None and json_out is not None:
            png = json_out.with_suffix(".png")
        written = write_parity(report, json_out, png)
        r = report.reference
        rows = [[f"{reference.name} (reference)", "torch", f"{r['size_bytes'] / 1e6:.2f}", f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                 "1.0000", "0", "0", "-", "-", "-"]]
        for c in report.candidates:
            pool_text = (f"{c.pool['agree']}/{c.pool['n']} = {c.pool['agreement']:.4f} [{c.pool['ci95'][0]:.3f}, {c.pool['ci95'][1]:.3f}]"
                         if c.pool.get("n") else "-")
            rows.append([c.name, c.backend, f"{c.size_bytes / 1e6:.2f}", f"{c.metrics['accuracy']:.4f}", f"{c.metrics['macro_f1']:.4f}",
                         f"{c.agreement:.4f}", f"{c.max_abs_dp:.4f}", f"{c.mean_abs_dp:.4f}", pool_text,
                         f"{c.pool['max_abs_dp']:.4f}" if c.pool.get("n") else "-", "PASS" if c.passed else "FAIL"])
        cols = [out.Col("model"), out.Col("backend"), *(out.Col(x, right=True) for x in
                ("size MB", "accuracy", "macro-F1", "agreement", "max |dp|", "mean |dp|", "pool agreement [95% CI]", "pool max |dp|", "gate"))]
        out.table(f"Parity on {report.subset} ({report.n_images} images)", cols, rows)
        out.line(f"protocol: {report.protocol or 'unknown (no split.json beside the split)'}")
        p = report.pool
        out.line(f"pool: {p.get('source')}; {p.get('n_images')} images ({p.get('excluded_as_used')} files left out as train/val or copies, "
                 f"{p.get('undecodable')} undecodable); agreement interval: "
                 + ("95% " + report.candidates[0].pool["ci_method"] if report.candidates and report.candidates[0].pool.get("n")
                    and report.candidates[0].pool.get("ci_method") != "wilson" else "Wilson 95%"))
        out.line(f"gates: accuracy drop <= {max_drop} (labelled rows), top-1 agreement >= {min_agreement} (pool). "
                 "Screening aid only, not a diagnosis.", dim=True)
        out.wrote(written.values())
        if not report.passed:
            for f in report.failures:
                out.line(f"gate failed: {f}", stderr=True, style="red")
            out.next_step(*after_parity_failed(reference, split))
            raise typer.Exit(code=1)
        out.next_step(after_parity(report.candidates[0].path))
