"""The learned knee locator (issue 26): finds each knee joint in a film and returns a square crop
centred on it, in the torch-free runtime.

A small single-class centre-point detector (CenterNet style): the film is letterboxed to
``INPUT`` x ``INPUT`` (aspect kept, black pad, the preprocessing's own bit-depth scaling), an
EfficientNet-Lite0 trunk cut at stride 16 and a two-layer head give, per cell of the 16-pixel grid,
a joint score, the joint centre's offset inside the cell and the log of the crop side. Peaks above
``MIN_SCORE`` (at most two: one per knee, left to right) are the knees; a film with no peak above it
still gets its best peak, flagged by a low ``score`` (the input gate can use it).

The model is an int8 TFLite file shipped in ``osteo_edge/models/locator/`` with ``locator.json`` (its
sha256, input size, grid, thresholds and the accuracy measured on held-out films). It was trained by
``osteo-edge locator train`` (:mod:`osteo_edge.train.locator`) on the boxes in ``benchmarks/locator/knee_boxes.csv``.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BundleError, first_line, require
from ..framing import Box
from ..native import native_stderr_quiet

INPUT = 224
STRIDE = 16
GRID = INPUT // STRIDE
CHANNELS = 4  # joint score logit, dx, dy, log(side / INPUT)
MIN_SCORE = 0.3
MAX_KNEES = 2
MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "locator"
MODEL_FILE = "knee-locator.tflite"


@dataclass(frozen=True)
class Detection:
    """One knee: its square crop (original pixels) and the detector's joint score in [0, 1]."""

    box: Box
    score: float
    cx: float
    cy: float
    side: float


def letterbox(gray: np.ndarray, size: int = INPUT) -> tuple[np.ndarray, float, int, int]:
    """(size x size float32 image, scale, left pad, top pad): the film scaled to fit, aspect kept,
    centred on black. Original pixel ``x`` maps to ``x * scale + left``."""
    h, w = gray.shape
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F").resize((nw, nh), Image.Resampling.BILINEAR)
    out = np.zeros((size, size), dtype=np.float32)
    left, top = (size - nw) // 2, (size - nh) // 2
    out[top : top + nh, left : left + nw] = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    return out, scale, left, top


def model_input(letterboxed: np.ndarray) -> np.ndarray:
    """NHWC float input, three replicated planes normalised as Lite0 expects ((x - 0.5) / 0.5)."""
    x = (letterboxed - 0.5) / 0.5
    return np.ascontiguousarray(np.repeat(x[None, :, :, None], 3, axis=3), dtype=np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def peaks(out: np.ndarray, min_score: float = MIN_SCORE, max_knees: int = MAX_KNEES) -> list[tuple[float, float, float, float]]:
    """``(score, x, y, side)`` in letterboxed pixels from one output map (GRID x GRID x CHANNELS):
    3x3 local maxima of the score above ``min_score``, best first, at most ``max_knees``; the best
    cell whatever its score when none is above."""
    out = out.reshape(GRID, GRID, CHANNELS)
    score = _sigmoid(out[..., 0])
    padded = np.pad(score, 1, constant_values=-1.0)
    local = np.max([padded[1 + dy : 1 + dy + GRID, 1 + dx : 1 + dx + GRID] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    cand = np.argwhere((score >= local) & (score >= min_score))
    if cand.size == 0:
        cand = np.array([np.unravel_index(int(np.argmax(score)), score.shape)])
    kept: list[list[int]] = []
    for r, c in sorted(cand.tolist(), key=lambda rc: (-score[rc[0], rc[1]], rc[0], rc[1])):
        # int8 outputs often tie two neighbouring cells of one knee: a neighbour of a kept peak is not a knee
        if all(max(abs(r - kr), abs(c - kc)) > 1 for kr, kc in kept):
            kept.append([r, c])
    cand = kept[:max_knees]
    found = []
    for r, c in cand:
        x = (c + float(np.clip(out[r, c, 1], 0, 1))) * STRIDE
        y = (r + float(np.clip(out[r, c, 2], 0, 1))) * STRIDE
        side = float(np.exp(np.clip(out[r, c, 3], -4, 1))) * INPUT
        found.append((float(score[r, c]), x, y, side))
    return found


def to_box(cx: float, cy: float, side: float, h: int, w: int) -> Box:
    """A square of ``side`` centred on (cx, cy), kept inside an h x w image (as the heuristic framing)."""
    s = max(1, min(round(side), h, w))
    left = round(cx - s / 2)
    top = round(cy - s / 2)
    return Box(min(max(0, left), w - s), min(max(0, top), h - s), s)


def detections(out: np.ndarray, h: int, w: int, scale: float, left: int, top: int, min_score: float = MIN_SCORE) -> list[Detection]:
    """Knees of one film, left to right, in the film's own pixels."""
    found = []
    for score, x, y, side in peaks(out, min_score):
        cx, cy, s = (x - left) / scale, (y - top) / scale, side / scale
        found.append(Detection(to_box(cx, cy, s, h, w), score, cx, cy, s))
    return sorted(found, key=lambda d: d.cx)


class KneeLocator:
    """The int8 TFLite knee locator, run by LiteRT (XNNPACK), one film at a time."""

    def __init__(self, model_dir: str | Path = MODEL_DIR, threads: int | None = 1):
        model_dir = Path(model_dir)
        path = model_dir / MODEL_FILE
        meta_path = model_dir / "locator.json"
        if not path.is_file() or not meta_path.is_file():
            fix = "reinstall osteo-edge" if model_dir == MODEL_DIR else "train one with osteo-edge locator train --out DIR"
            raise BundleError(f"{model_dir}: no knee locator ({MODEL_FILE} and locator.json); {fix}")
        self.meta = _read_meta(meta_path)
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != self.meta.get("sha256"):
            raise BundleError(f"{path}: sha256 {digest[:12]} does not match locator.json ({str(self.meta.get('sha256'))[:12]})")
        self.sha256 = digest
        self.min_score = float(self.meta["min_score"])
        self._lock = threading.Lock()  # one interpreter: the demo answers two images at once
        require("ai_edge_litert", "runtime")
        from ai_edge_litert import interpreter

        try:
            with native_stderr_quiet():  # LiteRT's C++ INFO line about the XNNPACK delegate
                self._it = interpreter.Interpreter(model_content=blob, num_threads=threads)
                self._it.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError for bad flatbuffers
            raise BundleError(f"{path}: LiteRT cannot load the knee locator ({type(exc).__name__}: {first_line(exc, 200)})") from exc
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        if tuple(self._in["shape"]) != (1, INPUT, INPUT, 3) or int(np.prod(self._out["shape"])) != GRID * GRID * CHANNELS:
            raise BundleError(f"{path}: not a knee locator of this version (input {tuple(self._in['shape'])}, "
                              f"output {tuple(self._out['shape'])})")

    def run(self, x: np.ndarray) -> np.ndarray:
        """The raw output map (GRID * GRID * CHANNELS floats) for one NHWC input."""
        scale, zero = self._in["quantization"]
        if scale:
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(self._in["dtype"])
        with self._lock:
            self._it.set_tensor(self._in["index"], x)
            self._it.invoke()
            out = self._it.get_tensor(self._out["index"]).reshape(-1).copy()
        scale, zero = self._out["quantization"]
        return ((out.astype(np.float32) - zero) * scale) if scale else out.astype(np.float32)

    def detect(self, gray: np.ndarray) -> list[Detection]:
        """Every knee found in an HxW [0, 1] film, left to right (at least one)."""
        if gray.ndim != 2 or min(gray.shape) < 1:
            raise ValueError(f"the knee locator expects an HxW image, got shape {gray.shape}")
        h, w = gray.shape
        lb, scale, left, top = letterbox(gray)
        return detections(self.run(model_input(lb)), h, w, scale, left, top, self.min_score)

    def boxes(self, gray: np.ndarray) -> list[Box]:
        return [d.box for d in self.detect(gray)]


_DEFAULT: KneeLocator | None = None
_DEFAULT_LOCK = threading.Lock()


def default_locator() -> KneeLocator:
    """The shipped locator, loaded once per process (under a lock: threads may ask at once)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = KneeLocator()
        return _DEFAULT


def _read_meta(path: Path) -> dict[str, Any]:
    """locator.json, checked: a sha256 and a numeric score threshold; a one-line BundleError otherwise."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not is_sha256(meta.get("sha256")):
            raise ValueError("no sha256")
        meta["min_score"] = float(meta.get("min_score", MIN_SCORE))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not a knee locator description ({type(exc).__name__}: {first_line(exc, 120)})") from None
    return meta


def is_sha256(text: Any) -> bool:
    """A whole sha256 digest: 64 lowercase hex digits (how locator.json and a spec pin name the model)."""
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def installed_sha256() -> str:
    """The sha256 of the shipped locator model (from locator.json; the file is checked when loaded)."""
    meta = MODEL_DIR / "locator.json"
    if not meta.is_file():
        raise BundleError(f"{MODEL_DIR}: no knee locator installed (locator.json missing); reinstall osteo-edge")
    return str(_read_meta(meta)["sha256"])
