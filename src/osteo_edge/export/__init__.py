"""Export a torch run to an edge bundle: one function per format, registered by format name.

The formats themselves are records in :data:`osteo_edge.formats.FORMATS`; this package adds one
exporter function per runtime format (``onnx``, ``onnx-int8``, ``tflite``, ``tflite-int8``)::

    from osteo_edge.export import export_model
    result = export_model("runs/knee-lite0", "tflite-int8", "bundles/lite0-int8", split="split/split.csv")

Every export writes a verified bundle (model file + manifest with labels, spec in the format's
layout, temperature, thresholds, metrics, provenance with the parent run and the command), and
checks the exported file numerically against torch on golden inputs through the edge runtime
before the bundle is moved into place. With a split, calibration images come from its TRAINING
subset and the exported model is also scored on its test subset (metrics with group-bootstrap CIs).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Bundle, load_bundle, runtime_versions, seal, split_reference, write_bundle_dir
from ..core.progress import Progress, no_progress
from ..errors import ConfigError, ParityError, choice_error
from ..formats import FORMATS, ModelFormat, get_format
from ..preprocess import PreprocessSpec
from .context import EXPORTERS, MODEL_FILES, ExportContext, Exporter, register_exporter, torch_logits  # noqa: F401 (the package's API)
from .fidelity import FidelityBudget
from .golden import golden_inputs

log = logging.getLogger(__name__)

# the exporter modules register themselves (their heavy imports happen inside the functions)
from . import onnx_export as _onnx_export  # noqa: E402,F401
from . import tflite_export as _tflite_export  # noqa: E402,F401


def export_formats() -> list[str]:
    return [name for name in FORMATS if name in EXPORTERS]


def resolve_format(fmt: str, int8: bool = False) -> ModelFormat:
    """``onnx``/``tflite`` plus ``int8`` -> ``onnx-int8``/``tflite-int8``; full names pass through."""
    name = f"{fmt}-int8" if int8 and not fmt.endswith("-int8") else fmt
    if name not in EXPORTERS:
        raise choice_error("export format", name, export_formats())
    return get_format(name)


# ------------------------------------------------------------------------------------------------
# golden parity

CALIBRATION_SOURCES = ("split", "synthetic")

# Tolerances of the golden check, by precision: calibrated probabilities through the runtime vs torch.
GOLDEN_TOLERANCE = {
    "fp32": {"max_abs_dp": 1e-3},
    "int8": {"max_abs_dp": 0.25},
}


def golden_check(ref_logits: np.ndarray, cand_logits: np.ndarray, temperature: float, precision: str) -> dict[str, Any]:
    """Compare candidate and torch logits; ``passed`` is judged by :data:`GOLDEN_TOLERANCE`."""
    from ..core.stats import softmax
    from .parity import agreement_stats

    if cand_logits.shape != ref_logits.shape:
        return {"passed": False, "why": f"output shape {cand_logits.shape} != torch {ref_logits.shape}"}
    stats = agreement_stats(softmax(ref_logits, temperature), softmax(cand_logits, temperature))
    stats["max_abs_dlogit"] = float(np.abs(ref_logits - cand_logits).max())
    tol = GOLDEN_TOLERANCE[precision]
    stats["tolerance"] = dict(tol)
    stats["passed"] = bool(np.isfinite(cand_logits).all() and stats["max_abs_dp"] <= tol["max_abs_dp"])
    if not stats["passed"]:
        stats["why"] = f"max |delta p| {stats['max_abs_dp']:.4g} > {tol['max_abs_dp']}"
    return stats


# ------------------------------------------------------------------------------------------------
# the export


def _check_options(fmt: ModelFormat, split: Any, calib_size: int, golden_size: int, calibration: str) -> None:
    if calib_size < 1 or golden_size < 1:
        raise ConfigError(f"--calib-size and golden size must be positive, got {calib_size} and {golden_size}")
    if calibration not in CALIBRATION_SOURCES:
        raise choice_error("calibration source", calibration, CALIBRATION_SOURCES)
    if fmt.precision == "int8" and split is None and calibration != "synthetic":
        raise ConfigError(f"{fmt.name} needs calibration images: give --split SPLIT_CSV (its train rows), or "
                          "--calibration synthetic to calibrate on synthetic images (not for a real model)")


def _provenance(parent: Bundle, tmp: Path, command: str | None, split: str | None) -> dict[str, Any]:
    provenance = parent.child_provenance(tmp, command).to_dict()
    if split is not None:
        provenance.setdefault("split_csv", split)
    if provenance.get("split_csv") is not None:  # a bundle that travels names its split by content, not by path
        provenance["split_csv"] = split_reference(provenance["split_csv"], provenance.get("split_sha256"))
    return provenance


def _fold_for(fmt: ModelFormat, model: Any, spec: PreprocessSpec, fold_gray: bool) -> tuple[Any, PreprocessSpec, dict[str, Any] | None]:
    """(model, spec, fold record) to export: the gray stem fold for tflite-int8 when it applies."""
    from .fidelity import fold_gray_stem, gray_foldable

    if fmt.name == "tflite-int8" and fold_gray and gray_foldable(spec):
        return fold_gray_stem(model, spec)
    return model, spec, None


@dataclass
class ExportResult:
    bundle: Bundle
    golden: dict[str, Any]
    test: dict[str, Any] | None
    seconds: float

    @property
    def size_bytes(self) -> int:
        return self.bundle.model_path.stat().st_size


def export_model(
    run_dir: str | os.PathLike,
    format_name: str,
    out: str | os.PathLike,
    split: str | os.PathLike | None = None,
    calib_size: int = 128,
    golden_size: int = 8,
    evaluate: bool = True,
    threads: int | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    calibration: str = "split",
    budget: FidelityBudget | None = FidelityBudget(),
    fold_gray: bool = True,
) -> ExportResult:
    """Export ``run_dir`` to ``format_name`` as the bundle ``out`` (replaced only when complete).

    int8 needs real calibration images (``split``); ``calibration="synthetic"`` calibrates on
    synthetic images instead, only when asked for by name. For ``tflite-int8``: ``fold_gray`` folds a
    replicated gray input into the stem (:func:`fidelity.fold_gray_stem`), and ``budget`` (a
    :class:`fidelity.FidelityBudget`, frozen; ``None`` = every op int8 with
    int8 I/O) chooses which ops stay float (:func:`fidelity.budgeted_int8`)."""
    from ..modeling.loading import load_run
    from ..edge_runtime.backends import open_backend
    t0 = time.perf_counter()
    fmt = resolve_format(format_name)
    _check_options(fmt, split, calib_size, golden_size, calibration)
    split = str(split) if split is not None else None
    model, parent = load_run(run_dir)
    export_net, export_spec, fold_info = _fold_for(fmt, model, parent.spec, fold_gray)
    spec_out = export_spec.with_layout(fmt.layout)
    (progress or no_progress)(f"exporting {fmt.name}")
    golden = golden_inputs(parent.spec.with_layout("NCHW"), split, n=golden_size, labels=parent.labels)
    ref = torch_logits(model, golden.x)
    result: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        model_file = MODEL_FILES[fmt.backend]
        with tempfile.TemporaryDirectory(prefix="osteo-export-") as work:
            ctx = ExportContext(model=export_net, parent=parent, fmt=fmt, spec=spec_out, out_file=tmp / model_file,
                                workdir=Path(work), calib_size=calib_size,
                                split=None if calibration == "synthetic" else split, progress=progress,
                                budget=budget if fmt.name == "tflite-int8" else None)
            if fold_info is not None:
                ctx.info["gray_stem_fold"] = fold_info
            EXPORTERS[fmt.name](ctx)
            (progress or no_progress)(f"checking {fmt.name} against torch")
        runner = open_backend(ctx.out_file, fmt.name, threads=threads)
        cand = runner.run(golden.as_layout(spec_out))
        check = golden_check(ref, cand, parent.temperature, fmt.precision)
        check["inputs"] = golden.describe()
        result["golden"] = check
        if not check["passed"]:
            raise ParityError(f"{fmt.name} export does not match torch on {golden.describe()['n']} golden inputs: {check['why']}")
        metrics: dict[str, Any] = {"parent": parent.metrics.raw}
        if split is not None and evaluate:
            from .parity import evaluate_runner

            test = evaluate_runner(runner.run, spec_out, split, parent.labels, parent.temperature, parent.thresholds,
                                   reference=model, reference_spec=parent.spec.with_layout("NCHW"), progress=progress)
            test["evaluated_with"] = f"{runner.backend} {runner.version}"
            metrics["test"] = test
            result["test"] = test
        seal(tmp, format=fmt.name, model_file=model_file, labels=parent.labels, spec=spec_out, temperature=parent.temperature,
             thresholds=parent.thresholds, metrics=metrics, provenance=_provenance(parent, tmp, command, split),
             versions=runtime_versions(("torch", "onnx", "onnxruntime", "ai-edge-litert", "tensorflow", "onnx2tf", "nncf")),
             extra={"arch": parent.arch.to_dict() if parent.arch else None,
                    "export": {"format": fmt.name, "precision": fmt.precision, "layout": fmt.layout, "golden_parity": check,
                               **ctx.info}})

    write_bundle_dir(out, build)
    bundle = load_bundle(out)
    log.info("exported %s -> %s (%s, %.1f s)", run_dir, out, fmt.name, time.perf_counter() - t0)
    return ExportResult(bundle=bundle, golden=result["golden"], test=result.get("test"), seconds=time.perf_counter() - t0)


__all__ = [
    "EXPORTERS",
    "ExportContext",
    "ExportResult",
    "GOLDEN_TOLERANCE",
    "export_formats",
    "export_model",
    "golden_check",
    "register_exporter",
    "resolve_format",
    "torch_logits",
]
