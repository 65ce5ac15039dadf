"""`osteo-edge export`: a torch run (trained, quantization-tuned or pruned) to an edge bundle."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from ..export.fidelity import FidelityBudget
from ..formats import FORMATS
from ..export import CALIBRATION_SOURCES
from . import _output as o
from ..export.embedding import FORMATS as EMBEDDING_FORMATS, embedding_output as embedding_output_ctx
from ._common import choices, handle_errors, progress_console, quiet_native, usage_error
from ._steps import after_export


# export targets: the formats the edge runtime loads (``torch`` is the input, not a target)
ExportFormat = choices("ExportFormat", (f.name for f in FORMATS.values() if f.runtime))
Calibration = choices("Calibration", CALIBRATION_SOURCES)


def command_line() -> str:
    return "osteo-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:])


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
        calibration: Annotated[Calibration, typer.Option("--calibration", help="int8 calibration images: the split's train rows, or synthetic images (only when asked for by name; not for a real model).")] = Calibration("split"),
        max_p95_dp: Annotated[float, typer.Option("--max-p95-dp", help="tflite-int8 fidelity budget: p95 over the split's val images of the largest |delta p| against the float graph.")] = FidelityBudget.max_p95_dp,
        max_abs_dp: Annotated[float, typer.Option("--max-abs-dp", help="tflite-int8 fidelity budget: largest |delta p| allowed on those images.")] = FidelityBudget.max_abs_dp,
        max_float_ops: Annotated[int, typer.Option("--max-float-ops", help="tflite-int8: at most this many of the worst layers kept float to meet the budget.")] = FidelityBudget.max_float_ops,
        weights_only: Annotated[bool, typer.Option("--weights-only", help="tflite-int8: int8 weights, float activations: the float model's answers at int8 size, fp32 speed (as fast as full int8 on CPUs without int8 dot product: AVX2, Pi 4).")] = False,
        all_int8: Annotated[bool, typer.Option("--all-int8", help="tflite-int8: every op int8 with int8 input/output, no fidelity budget (for int8-only accelerators).")] = False,
        gray_fold: Annotated[bool, typer.Option(help="tflite-int8: fold a replicated gray input into the stem (one input channel; exact on gray images).")] = True,
        embedding_output: Annotated[bool, typer.Option("--embedding-output", help="fp32 tflite: a second output, the pooled embedding (for 'site calibrate --head').")] = False,
    ) -> None:
        """Export to ONNX or TFLite (fp32 or int8), check it numerically against torch, write a bundle.

        TensorFlow's and the converter's own logs are hidden unless --verbose is given."""
        from ..core.progress import TerminalProgress
        from ..export import export_model, resolve_format

        fmt = resolve_format(format.value, int8)
        if embedding_output and fmt.name not in EMBEDDING_FORMATS:
            raise usage_error(f"--embedding-output is for {', '.join(EMBEDDING_FORMATS)} (fp32), not {fmt.name}")
        if weights_only and (all_int8 or fmt.name != "tflite-int8"):
            raise usage_error("--weights-only is for tflite-int8 (--format tflite --int8), without --all-int8")
        budget = None if all_int8 else FidelityBudget(max_p95_dp=max_p95_dp, max_abs_dp=max_abs_dp, max_float_ops=max_float_ops,
                                                      weights_only=weights_only)
        with TerminalProgress(f"export {fmt.name}", console=progress_console()) as progress, quiet_native(), embedding_output_ctx(embedding_output):
            result = export_model(model, fmt.name, out, split=split, calib_size=calib_size, golden_size=golden,
                                  evaluate=evaluate, threads=threads, command=command_line(), progress=progress,
                                  calibration=calibration.value, budget=budget, fold_gray=gray_fold)
        _render(result, fmt.name, out)
        o.line("Screening aid only, not a diagnosis.", dim=True)
        o.next_step(after_export(model, out, split))


def _render(result, fmt_name: str, out: Path) -> None:
    from ..core.stats import fmt_ci

    g = result.golden
    rows = [("bundle", str(out)), ("model file", f"{result.bundle.model_path.name} ({result.size_bytes / 1e6:.2f} MB)"),
            ("golden inputs", f"{g['inputs']['n']} ({g['inputs']['source']})"),
            ("golden max |delta p| vs torch", f"{g['max_abs_dp']:.2e} (tolerance {g['tolerance']['max_abs_dp']})"),
            ("golden top-1 agreement", f"{g['agreement']:.3f}")]
    if result.test:
        h = result.test["headline"]
        rows += [(f"test accuracy ({result.test['n_images']} images)", fmt_ci(h.get("accuracy"))), ("test macro-F1", fmt_ci(h.get("macro_f1")))]
        vp = result.test.get("vs_parent", {})
        if vp:
            rows += [("parent (torch) test accuracy", f"{vp['parent_accuracy']:.3f}"), ("test agreement with parent", f"{vp['agreement']:.3f}")]
    q = (result.bundle.export_info or {}).get("quantization", {})
    fid = q.get("fidelity")
    if fid:
        a = fid["achieved"]
        rows += [("float ops (fidelity budget)", f"{fid['float_ops']} of {fid['n_quantized_layers']} layers kept float") if "n_quantized_layers" in fid
                 else ("weight-only int8", f"{fid['quantized_weights']} weight tensors int8, {fid['float_weights']} small ones float; activations float"),
                 (f"vs float graph ({fid['check_images']} val images)",
                  f"p95 |dp| {a['p95_abs_dp']:.4f} (<= {fid['budget']['max_p95_dp']}), max {a['max_abs_dp']:.4f} "
                  f"(<= {fid['budget']['max_abs_dp']}), agreement {a['agreement']:.3f}")]
    fold = (result.bundle.export_info or {}).get("gray_stem_fold")
    if fold:
        rows.append(("gray stem fold", f"{fold['layer']}: {fold['input_channels']} channels, max |dlogit| {fold['max_abs_dlogit_on_gray']:.1e} on gray"))
    rows.append(("time", f"{result.seconds:.1f} s"))
    o.summary(f"Export {fmt_name}", rows)
