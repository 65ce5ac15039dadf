"""What an exporter function gets (:class:`ExportContext`), the table of exporters by format name
and how one registers (:func:`register_exporter`), and torch's logits for the checks. The exporter
modules (onnx_export, tflite_export) import this; the package imports them to fill the table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..artifact import Bundle
from ..core.progress import Progress
from ..errors import ConfigError
from ..formats import ModelFormat, get_format
from ..preprocess import PreprocessSpec
from .golden import InputSet, calibration_inputs

log = logging.getLogger(__name__)

MODEL_FILES = {"onnxruntime": "model.onnx", "litert": "model.tflite"}


@dataclass
class ExportContext:
    """What an exporter function gets. It writes ``out_file`` and may use ``workdir`` for scratch."""

    model: Any  # torch.nn.Module in eval mode
    parent: Bundle
    fmt: ModelFormat
    spec: PreprocessSpec  # the parent spec in the format's layout
    out_file: Path
    workdir: Path
    calib_size: int = 128
    split: str | None = None
    progress: Progress | None = None
    info: dict[str, Any] = field(default_factory=dict)  # exporters record converter details here
    budget: Any = None  # fidelity.FidelityBudget for int8 TFLite (None: every op int8, int8 I/O)
    _calib: InputSet | None = None

    @property
    def torch_spec(self) -> PreprocessSpec:
        """The exported model's spec in torch's layout (one channel for a gray-folded model)."""
        return self.spec.with_layout("NCHW")

    def check_inputs(self) -> InputSet:
        """Images the fidelity budget is measured on: the split's validation rows (never test rows),
        else the calibration images."""
        if self.split is None:
            return self.calibration()
        from .golden import split_inputs

        return split_inputs(self.split, self.torch_spec, subset="val", labels=self.parent.labels, progress=self.progress)

    def calibration(self) -> InputSet:
        """Calibration images (training split) in the torch (NCHW) layout; computed once."""
        if self._calib is None:
            self._calib = calibration_inputs(self.torch_spec, self.split, n=self.calib_size, labels=self.parent.labels, progress=self.progress)
            self.info["calibration"] = {**self._calib.describe(), "subset": "train" if self.split else None}
        return self._calib


Exporter = Callable[[ExportContext], None]
EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Register the export function of the format ``name`` (which must be a FORMATS record)."""
    fmt = get_format(name)
    if not fmt.runtime:
        raise ConfigError(f"format {name!r} is not an edge-runtime format")

    def deco(fn: Exporter) -> Exporter:
        EXPORTERS[fmt.name] = fn
        return fn

    return deco


def torch_logits(model: Any, x: np.ndarray, batch: int = 16) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).float().numpy())
    return np.concatenate(outs, axis=0)
