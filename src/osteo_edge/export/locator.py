"""int8 TFLite export of the knee locator (issue 26), through the classifier's ONNX -> onnx2tf route."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..locator import INPUT, MODEL_FILE


def export_int8(model: Any, calib: np.ndarray, out_dir: Path, workdir: Path) -> Path:
    """int8 TFLite (full integer, int8 I/O) through the project's ONNX -> onnx2tf route."""
    from types import SimpleNamespace

    from ..preprocess import PreprocessSpec
    from .tflite_export import full_integer_tflite, saved_model_from_onnx

    class NCHW(__import__("torch").nn.Module):  # the exporter feeds NCHW; onnx2tf turns it into NHWC
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: Any) -> Any:
            return self.m(x.permute(0, 2, 3, 1))

    spec = PreprocessSpec(input_size=INPUT, layout="NCHW")
    ctx = SimpleNamespace(model=NCHW(model).eval(), torch_spec=spec, workdir=workdir, info={},
                          parent=SimpleNamespace(labels=["knee joint"], temperature=1.0))
    workdir.mkdir(parents=True, exist_ok=True)
    tf_dir, _ = saved_model_from_onnx(ctx)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    path.write_bytes(full_integer_tflite(tf_dir, calib))
    return path
