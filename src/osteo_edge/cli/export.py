"""`osteo-edge export`: a torch run (trained, quantization-tuned or pruned) to an edge bundle."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..formats import FORMATS
from ._common import choices, console, handle_errors, next_step


# export targets: the formats the edge runtime loads (``torch`` is the input, not a target)
ExportFormat = choices("ExportFormat", (f.name for f in FORMATS.values() if f.runtime))


def command_line() -> str:
    return "osteo-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def quiet_tensorflow() -> None:
    """Less C++ log noise from TensorFlow (set before it is imported; the user's setting wins)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def register(app: typer.Typer) -> None:
    @app.command("export")
    @handle_errors
    def export(
        model: Annotated[Path, typer.Option("--model", help="Torch run directory (train, quantize or prune output).")],
        format: Annotated[ExportFormat, typer.Option("--format", help="Target format; --int8 turns onnx/tflite into onnx-int8/tflite-int8.")],
        out: Annotated[Path, typer.Option("--out", help="Bundle directory to write (replaced only when the new one is complete).")],
        int8: Annotated[bool, typer.Option("--int8", help="Full int8 (ONNX QDQ / TFLite full-integer), calibrated on the training split.")] = False,
        split: Annotated[Optional[Path], typer.Option("--split", help="split.csv: calibration from its train subset, golden parity and test metrics from its test subset.")] = None,
        calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images (distinct radiographs first) for int8.")] = 128,
        golden: Annotated[int, typer.Option("--golden", help="Golden images for the numerical parity check against torch.")] = 8,
        evaluate: Annotated[bool, typer.Option(help="Score the exported model on the test split (needs --split).")] = True,
        threads: Annotated[Optional[int], typer.Option("--threads", help="Runtime threads for the checks (default: backend default).")] = None,
    ) -> None:
        """Export to ONNX or TFLite (fp32 or int8), check it numerically against torch, write a bundle."""
        quiet_tensorflow()
        from ..core.stats import fmt_ci
        from ..export import export_model, resolve_format

        fmt = resolve_format(format.value, int8)
        result = export_model(model, fmt.name, out, split=split, calib_size=calib_size, golden_size=golden,
                              evaluate=evaluate, threads=threads, command=command_line())
        g = result.golden
        t = Table(title=f"Export {fmt.name}")
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("bundle", str(out))
        t.add_row("model file", f"{result.bundle.model_path.name} ({result.size_bytes / 1e6:.2f} MB)")
        t.add_row("golden inputs", f"{g['inputs']['n']} ({g['inputs']['source']})")
        t.add_row("golden max |delta p| vs torch", f"{g['max_abs_dp']:.2e} (tolerance {g['tolerance']['max_abs_dp']})")
        t.add_row("golden top-1 agreement", f"{g['agreement']:.3f}")
        if result.test:
            h = result.test["headline"]
            t.add_row(f"test accuracy ({result.test['n_images']} images)", fmt_ci(h.get("accuracy")))
            t.add_row("test macro-F1", fmt_ci(h.get("macro_f1")))
            vp = result.test.get("vs_parent", {})
            if vp:
                t.add_row("parent (torch) test accuracy", f"{vp['parent_accuracy']:.3f}")
                t.add_row("test agreement with parent", f"{vp['agreement']:.3f}")
        t.add_row("time", f"{result.seconds:.1f} s")
        console.print(t)
        console.print("Screening aid only, not a diagnosis.", style="dim")
        split_arg = f" --split {split}" if split else " --split SPLIT.csv"
        next_step(f"osteo-edge parity --reference {model} --candidate {out}{split_arg}")
