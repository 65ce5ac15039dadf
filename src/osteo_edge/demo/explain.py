"""Occlusion sensitivity through the edge runtime: where does covering the image change the answer?

The model input is split into a ``grid x grid`` mesh; each cell in turn is replaced by the image's
mean (in model space) and the whole set of occluded copies is run as one batch through the same
runtime that made the prediction (no torch, no gradients, works for every exported format). The
heat of a cell is how much the calibrated probability of the predicted class drops when that cell
is hidden: red where the image supports the answer.

It explains the model, not the disease: a hot region outside the bone (a label, the film edge) is
a warning sign that the model looks at the wrong thing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from ..preprocess import PreprocessSpec

log = logging.getLogger(__name__)

DEFAULT_GRID = 8

# A perceptually ordered dark-to-bright colour ramp (approximately matplotlib's "inferno").
_RAMP = np.array(
    [
        [0.001, 0.000, 0.014],
        [0.258, 0.039, 0.406],
        [0.578, 0.148, 0.404],
        [0.865, 0.317, 0.226],
        [0.988, 0.645, 0.040],
        [0.988, 0.998, 0.645],
    ]
)


@dataclass(frozen=True)
class Explanation:
    heat: np.ndarray  # (grid, grid) probability drop of the target class, may be negative
    target: int  # class index explained
    base_probability: float
    elapsed_ms: float


def occlusion_map(
    probabilities: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    spec: PreprocessSpec,
    target: int | None = None,
    grid: int = DEFAULT_GRID,
) -> Explanation:
    """Occlusion sensitivity of one model input ``x`` (no batch dim, spec layout).

    ``probabilities`` maps a float32 batch to calibrated probabilities (``EdgeClassifier.probabilities``).
    One batch of ``grid * grid + 1`` inputs is run (the first is the unoccluded input).
    """
    t0 = time.perf_counter()
    if not 1 <= grid <= spec.input_size:
        raise ValueError(f"grid must be in [1, {spec.input_size}], got {grid}")
    x = np.asarray(x, dtype=np.float32)
    chw = x if spec.layout == "NCHW" else np.transpose(x, (2, 0, 1))
    size = spec.input_size
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    fill = chw.mean(axis=(1, 2), keepdims=True)
    batch = np.repeat(chw[None], grid * grid + 1, axis=0)
    k = 1
    for i in range(grid):
        for j in range(grid):
            batch[k, :, edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = fill
            k += 1
    if spec.layout == "NHWC":
        batch = np.ascontiguousarray(np.transpose(batch, (0, 2, 3, 1)))
    probs = np.asarray(probabilities(batch), dtype=np.float64)
    base = probs[0]
    tgt = int(np.argmax(base)) if target is None else int(target)
    heat = (base[tgt] - probs[1:, tgt]).reshape(grid, grid)
    return Explanation(heat=heat, target=tgt, base_probability=float(base[tgt]), elapsed_ms=(time.perf_counter() - t0) * 1000)


def colourize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB float [0, 1] with :data:`_RAMP`."""
    v = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    t = (v - lo)[..., None]
    return _RAMP[lo] * (1 - t) + _RAMP[hi] * t


def overlay(gray: np.ndarray, heat: np.ndarray | None, display: int = 320, alpha: float = 0.6, floor: float = 0.01) -> np.ndarray:
    """The model's view of the image (``gray`` HxW in [0, 1]) with the heat map blended over it.

    Only positive heat (regions that support the answer) is coloured; it is scaled by its maximum, or
    by ``floor`` (one percentage point) when every drop is smaller, so the map shows where and a
    model that ignores every region shows (almost) no colour. The drop itself is reported beside it.
    Returns ``display x display x 3`` uint8.
    """
    base = Image.fromarray(np.ascontiguousarray(np.clip(gray, 0, 1), dtype=np.float32), mode="F")
    g = np.asarray(base.resize((display, display), Image.Resampling.BILINEAR), dtype=np.float64)
    rgb = np.repeat(g[..., None], 3, axis=2)
    if heat is not None:
        pos = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
        peak = max(float(pos.max()), floor)
        if pos.max() > 0:
            h = Image.fromarray(np.ascontiguousarray(pos / peak, dtype=np.float32), mode="F")
            h = np.asarray(h.resize((display, display), Image.Resampling.BICUBIC), dtype=np.float64).clip(0, 1)
            a = alpha * h[..., None]
            rgb = rgb * (1 - a) + colourize(h) * a
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
