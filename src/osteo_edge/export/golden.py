"""Golden and calibration inputs, always made through :mod:`osteo_edge.preprocess`.

Real images come from a split file (calibration from the TRAINING split, golden parity inputs from
the test split); without a split, golden inputs are deterministic synthetic radiograph-like images
(smooth gradients, a bright "bone" band and noise) pushed through the same preprocessing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.progress import Progress
from ..errors import ConfigError, DataError
from ..modeling.calibration import pick_rows
from ..preprocess import PreprocessSpec, preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSet:
    """Model inputs with where they came from (recorded in manifests)."""

    x: np.ndarray  # float32 batch in ``layout``
    layout: str  # NCHW | NHWC
    source: str  # "split:<subset>" or "synthetic"
    paths: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()  # label index per input (real images only)
    groups: tuple[int, ...] = ()

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "n": int(self.x.shape[0])}

    def as_layout(self, spec: PreprocessSpec) -> np.ndarray:
        """The same inputs in another layout (pure transpose: the values are the spec's). For a
        one-channel spec (a gray-folded model) from replicated planes, the first plane: the planes
        are identical when mean and std are (:func:`osteo_edge.export.fidelity.gray_foldable`)."""
        x = self.x
        ch_axis = 1 if self.layout == "NCHW" else 3
        if spec.channels == 1 and x.ndim == 4 and x.shape[ch_axis] == 3:
            x = x[:, :1] if self.layout == "NCHW" else x[..., :1]
        if spec.layout != self.layout:
            axes = (0, 3, 1, 2) if spec.layout == "NCHW" else (0, 2, 3, 1)
            x = x.transpose(axes)
        return np.ascontiguousarray(x)


def synthetic_images(n: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Deterministic grayscale uint8 images that look vaguely like a knee radiograph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for i in range(n):
        cx = 0.35 + 0.3 * rng.random()
        width = 0.08 + 0.1 * rng.random()
        bone = np.exp(-(((xx - cx) / width) ** 2)) * (0.5 + 0.5 * rng.random())
        joint = np.exp(-(((yy - 0.5) / 0.05) ** 2)) * 0.3 * rng.random()
        base = 0.15 + 0.2 * yy * rng.random() + bone - joint
        base += rng.normal(0, 0.04 + 0.03 * (i % 3), base.shape)
        out.append((np.clip(base, 0, 1) * 255).astype(np.uint8))
    return out


def _rows(split_csv: str | os.PathLike, subset: str) -> tuple[list, list[str]]:
    from ..data.split import read_split

    table = read_split(split_csv)
    rows = table.subset(subset)
    if not rows:
        raise DataError(f"{split_csv}: the {subset!r} subset is empty")
    return rows, table.labels


def split_inputs(
    split_csv: str | os.PathLike,
    spec: PreprocessSpec,
    subset: str = "test",
    n: int | None = None,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> InputSet:
    """Real images of one split subset through the shared preprocessing. ``n=None``: all rows."""
    rows, split_labels = _rows(split_csv, subset)
    if n is not None:
        if n < 1:
            raise ConfigError(f"number of images must be at least 1, got {n}")
        rows = pick_rows(rows, n, seed)
    labels = list(labels or split_labels)
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({r.label for r in rows} - set(index))
    if unknown:
        raise DataError(f"{split_csv}: label(s) {unknown} are not among the model's labels {labels}")
    xs = []
    for i, r in enumerate(rows):
        xs.append(preprocess(r.path, spec))
        if progress:
            progress(f"preprocessing {subset} images", i + 1, len(rows))
    return InputSet(
        x=np.stack(xs).astype(np.float32),
        layout=spec.layout,
        source=f"split:{subset}",
        paths=tuple(r.path for r in rows),
        labels=tuple(index[r.label] for r in rows),
        groups=tuple(int(r.group) for r in rows),
    )


def synthetic_inputs(spec: PreprocessSpec, n: int = 8, seed: int = 0) -> InputSet:
    xs = [preprocess(img, spec) for img in synthetic_images(n, size=max(64, spec.input_size + 17), seed=seed)]
    return InputSet(x=np.stack(xs).astype(np.float32), layout=spec.layout, source="synthetic")


def golden_inputs(
    spec: PreprocessSpec, split_csv: str | os.PathLike | None = None, n: int = 8, subset: str = "test", labels: Sequence[str] | None = None
) -> InputSet:
    """Golden parity inputs: real ``subset`` images when a split is given, else synthetic ones."""
    if split_csv is None:
        return synthetic_inputs(spec, n)
    return split_inputs(split_csv, spec, subset=subset, n=n, labels=labels)


def calibration_inputs(
    spec: PreprocessSpec,
    split_csv: str | os.PathLike | None,
    n: int = 128,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> InputSet:
    """Calibration images from the TRAINING split (synthetic only when no split is given)."""
    if split_csv is None:
        log.warning("no --split given: calibrating int8 ranges on synthetic images (give a split for a real model)")
        return synthetic_inputs(spec, n, seed=1)
    return split_inputs(split_csv, spec, subset="train", n=n, labels=labels, seed=1, progress=progress)
