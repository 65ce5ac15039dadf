"""`osteo-edge prune`: structured channel pruning (torch-pruning), then fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from . import _output as o
from ._common import handle_errors, progress_console, quiet_native
from ._steps import after_evaluate


def register(app: typer.Typer) -> None:
    @app.command("prune")
    @handle_errors
    def prune(
        model: Annotated[Path, typer.Option("--model", help="Trained torch run directory.")],
        split: Annotated[Path, typer.Option("--split", help="split.csv: fine-tuning on train, model selection on val.")],
        out: Annotated[Path, typer.Option("--out", help="Output run directory (a pruned torch run).")],
        ratio: Annotated[float, typer.Option("--ratio", help="Fraction of channels removed per prunable layer group.")] = 0.3,
        finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Recovery fine-tuning epochs (one file per duplicate group each).")] = 3,
        lr: Annotated[float, typer.Option("--lr", help="Fine-tuning learning rate.")] = 3e-4,
        batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
        round_to: Annotated[int, typer.Option("--round-to", help="Keep channel counts multiples of this (SIMD-friendly; 1 = off).")] = 8,
        threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads (latency is measured with them).")] = 2,
    ) -> None:
        """Remove channels for real, fine-tune, and report params/MACs/size/latency/accuracy before and after."""
        from ..compress.prune import prune_run
        from .export import command_line
        from ..core.progress import TerminalProgress

        if threads:
            import torch

            torch.set_num_threads(threads)
        with TerminalProgress(f"pruning {ratio:.0%}", console=progress_console()) as progress, quiet_native():
            res = prune_run(model, split, out, ratio=ratio, finetune_epochs=finetune_epochs, lr=lr, batch_size=batch_size,
                            round_to=round_to if round_to > 1 else None, command=command_line(), progress=progress)
        b, a = res.before, res.after
        rows = []
        rows.append(("parameters", f"{b['params'] / 1e6:.3f} M", f"{a['params'] / 1e6:.3f} M", f"{a['params'] / b['params'] - 1:+.1%}"))
        rows.append(("MACs", f"{b['macs'] / 1e6:.1f} M", f"{a['macs'] / 1e6:.1f} M", f"{a['macs'] / b['macs'] - 1:+.1%}"))
        rows.append(("weights", f"{b['weights_bytes'] / 1e6:.2f} MB", f"{a['weights_bytes'] / 1e6:.2f} MB", f"{a['weights_bytes'] / b['weights_bytes'] - 1:+.1%}"))
        lb, la = b["torch_latency_ms"]["p50"], a["torch_latency_ms"]["p50"]
        rows.append((f"torch latency p50 ({a['torch_latency_ms']['threads']} threads)", f"{lb:.1f} ms", f"{la:.1f} ms", f"{la / lb - 1:+.1%}"))
        rows.append(("val accuracy", f"{b['val']['accuracy']:.4f}", f"{a['val']['accuracy']:.4f}", f"{a['val']['accuracy'] - b['val']['accuracy']:+.4f}"))
        rows.append(("val macro-F1", f"{b['val']['macro_f1']:.4f}", f"{a['val']['macro_f1']:.4f}", f"{a['val']['macro_f1'] - b['val']['macro_f1']:+.4f}"))
        rows.append(("val accuracy right after pruning", "", f"{a['val_before_finetune']['accuracy']:.4f}", ""))
        if a.get("val_after_bn_recalibration"):
            rows.append(("val accuracy after BatchNorm re-estimation", "", f"{a['val_after_bn_recalibration']['accuracy']:.4f}", ""))
        o.table(f"Pruning {ratio:.0%} of channels", [o.Col("what"), *(o.Col(c, right=True) for c in ("before", "after", "change"))], rows)
        o.line(f"wrote {out} in {res.seconds:.0f} s")
        o.next_step(after_evaluate(out, split), "or quantize first: osteo-edge quantize --int8 --model " + f"{out} --split {split} --out {out}-qat")
