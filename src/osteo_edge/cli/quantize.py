"""`osteo-edge quantize`: NNCF int8 (post-training or quantization-aware) of a trained run."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from . import _output as o
from ._common import handle_errors, progress_console, quiet_native, quiet_third_party
from ._steps import after_evaluate


class Method(str, Enum):
    qat = "qat"
    ptq = "ptq"


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    @handle_errors
    def quantize(
        model: Annotated[Path, typer.Option("--model", help="Trained (or pruned) torch run directory.")],
        split: Annotated[Path, typer.Option("--split", help="split.csv: calibration and fine-tuning on train, model selection on val.")],
        out: Annotated[Path, typer.Option("--out", help="Output run directory (a torch bundle to export with --int8).")],
        int8: Annotated[bool, typer.Option("--int8", help="Quantize to int8 (the only precision offered).")] = True,
        method: Annotated[Method, typer.Option("--method", help="qat: quantize then fine-tune; ptq: post-training only.")] = Method.qat,
        epochs: Annotated[int, typer.Option("--epochs", help="QAT fine-tuning epochs (one file per duplicate group per epoch).")] = 2,
        calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images from the training split.")] = 300,
        lr: Annotated[float, typer.Option("--lr", help="QAT learning rate (small: 1e-5 .. 1e-4).")] = 1e-5,
        batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
        fold_bn: Annotated[bool, typer.Option(help="Fold BatchNorm scales into the convolutions before quantizing.")] = True,
        distill: Annotated[float, typer.Option("--distill", help="QAT loss weight of matching the float parent's outputs (KL); 0 = labels only, 1 = parent only.")] = 0.0,
        threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads.")] = None,
    ) -> None:
        """int8 with NNCF: calibrate on training images, optionally fine-tune (QAT); writes a run to export."""
        if not int8:
            raise typer.BadParameter("only --int8 quantization is offered")
        # NNCF compiles a small C++ extension on first use; on a busy 2-core machine that takes minutes.
        os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
        from ..compress.quantize import quantize_run
        from ..core.progress import TerminalProgress
        from .export import command_line

        try:
            import nncf  # noqa: F401 - imported here so that its INFO logger is quieted below (quantize_run names the extra if missing)
        except ImportError:
            pass
        quiet_third_party()

        if threads:
            import torch

            torch.set_num_threads(threads)
        stages = ("epoch", "calibrating", "validating")  # in a pipe or a log: one line each, never minutes of silence
        with TerminalProgress(f"NNCF {method.value}", console=progress_console(), lines=stages) as progress, quiet_native():
            res = quantize_run(model, split, out, method=method.value, epochs=epochs, calib_size=calib_size, lr=lr,
                               batch_size=batch_size, fold_bn=fold_bn, distill=distill, command=command_line(), progress=progress)
        names = {"float": "float parent", "int8_simulated_before_qat": "int8 simulated, after calibration",
                 "int8_simulated": "int8 simulated, final", "baked_float": "tuned float weights (exported)"}
        rows = [[label, f"{res.val[k]['accuracy']:.4f}", f"{res.val[k]['macro_f1']:.4f}"] for k, label in names.items() if k in res.val]
        o.table(f"NNCF {res.method.upper()} (validation split)", [o.Col("model"), o.Col("accuracy", right=True), o.Col("macro-F1", right=True)], rows)
        o.line(f"wrote {out} in {res.seconds:.0f} s")
        o.next_step(after_evaluate(out, split))
