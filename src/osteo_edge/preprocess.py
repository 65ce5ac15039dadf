"""The preprocessing contract: one spec, one reference implementation (numpy + Pillow only).

Every consumer (training, evaluation, calibration, export parity, the edge runtime, the demo, the
benchmarks) turns a file into model input through :func:`preprocess`, or through its parts in this
order::

    decode_image -> to_gray -> resize -> [training augmentation] -> finalize

Training inserts its random augmentation between :func:`resize` and :func:`finalize` and calls the
same functions, so a training sample without augmentation equals the runtime input for that file.

Memory: an image much larger than the model needs (shorter side over :data:`REDUCE_ABOVE` times
:func:`working_side`) is reduced inside the decoder, by an integer factor and before any float
conversion (JPEG: DCT scaling while decoding; others: ``Image.reduce``), keeping at least
:data:`REDUCE_KEEP` times what the final resize needs. :func:`decode_for` does this for a spec;
images of normal size are never reduced, so their model input does not change.

The spec travels inside every artifact (checkpoint, ONNX metadata, the manifest beside a TFLite
file). Nobody retypes a size, a mean or an interpolation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import ConfigError, choice_error
from .images import (  # noqa: F401 (decoding lives in images.py; these names are the contract's API too)
    BIT_DEPTH_POLICIES,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    REDUCE_ABOVE,
    REDUCE_KEEP,
    DecodedImage,
    ImageSource,
    decode_image,
    is_dicom,
    reduction_factor,
)

_log = logging.getLogger(__name__)

RESIZE_POLICIES = ("center_crop", "letterbox", "stretch", "knee", "knee_locator")
KNEE_POLICIES = ("knee", "knee_locator")  # one view per knee found
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
GRAYSCALE_POLICIES = ("replicate", "single")
LAYOUTS = ("NCHW", "NHWC")



@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a decoded radiograph into model input.

    - ``input_size``: the model sees ``input_size x input_size`` pixels.
    - ``resize``: ``center_crop`` (shorter side to ``input_size / crop_pct``, then a centred square
      crop), ``letterbox`` (whole image, aspect kept, padded with ``pad_value``), ``stretch``, or
      ``knee``: one square per knee centred on its joint line (:mod:`osteo_edge.framing`; a
      bilateral film gives two views, whose logits the model's users average, see :func:`frames`);
      ``knee_locator``: the same, with the knees found by the learned locator
      (:mod:`osteo_edge.locator`, int8 TFLite) instead of the intensity-profile rule.
    - ``locator``: for ``knee_locator``, the sha256 of the locator model the bundle was trained
      with (filled in from the installed locator when empty); a different locator is refused.
    - ``interpolation``: Pillow filter used for resizing (on float data, no 8-bit rounding).
    - ``grayscale``: radiographs are single-channel; ``replicate`` copies the channel to
      ``channels`` planes (for ImageNet-style backbones), ``single`` keeps one.
    - ``bit_depth``: ``scale`` divides by the full range of the smallest bit depth (8/10/12/14/16)
      holding the image, so a 16-bit copy of an 8-bit image gives the same input; ``minmax``
      stretches each image to [0, 1].
    - ``mean``/``std``: per-channel normalisation applied to [0, 1] intensities.
    - ``layout``: ``NCHW`` (torch, ONNX) or ``NHWC`` (TFLite).
    - ``normalize_in_graph``: when true the exported graph normalises itself and
      :func:`finalize` stops at [0, 1] intensities.
    """

    input_size: int = 224
    resize: str = "center_crop"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    grayscale: str = "replicate"
    channels: int = 3
    bit_depth: str = "scale"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    layout: str = "NCHW"
    normalize_in_graph: bool = False
    pad_value: float = 0.0
    version: int = field(default=1)
    locator: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or not 8 <= self.input_size <= 2048:
            raise ConfigError(f"input_size must be an integer in [8, 2048], got {self.input_size!r}")
        if self.resize not in RESIZE_POLICIES:
            raise choice_error("resize policy", self.resize, RESIZE_POLICIES)
        if self.interpolation not in INTERPOLATIONS:
            raise choice_error("interpolation", self.interpolation, INTERPOLATIONS)
        if self.grayscale not in GRAYSCALE_POLICIES:
            raise choice_error("grayscale policy", self.grayscale, GRAYSCALE_POLICIES)
        if self.bit_depth not in BIT_DEPTH_POLICIES:
            raise choice_error("bit-depth policy", self.bit_depth, BIT_DEPTH_POLICIES)
        if self.layout not in LAYOUTS:
            raise choice_error("layout", self.layout, LAYOUTS)
        if not 0.1 <= float(self.crop_pct) <= 1.0:
            raise ConfigError(f"crop_pct must be in [0.1, 1.0], got {self.crop_pct!r}")
        if self.resize == "knee_locator" and not self.locator:
            from .locator import installed_sha256

            object.__setattr__(self, "locator", installed_sha256())
        if self.locator and (self.resize != "knee_locator" or not _locator_pin_ok(self.locator)):
            raise ConfigError("locator is a sha256 (64 lowercase hex digits) and only for the knee_locator resize policy")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.grayscale == "single" and self.channels != 1:
            raise ConfigError("grayscale 'single' needs channels=1")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"mean and std need {self.channels} values each, got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {self.std}")

    # -- serialisation (json + validation, never eval) ---------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["locator"]:
            del d["locator"]  # older bundles have no such field: their spec JSON is unchanged
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        if not isinstance(data, dict):
            raise ConfigError(f"preprocess spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocess spec field(s) {unknown}; valid: {sorted(known)}")
        kwargs = dict(data)
        for key in ("mean", "std"):
            if key in kwargs:
                if not isinstance(kwargs[key], (list, tuple)):
                    raise ConfigError(f"preprocess spec field {key!r} must be a list of numbers")
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"preprocess spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Model input shape with batch 1 in this spec's layout."""
        s, c = self.input_size, self.channels
        return (1, c, s, s) if self.layout == "NCHW" else (1, s, s, c)

    def with_layout(self, layout: str) -> "PreprocessSpec":
        return dataclasses.replace(self, layout=layout)



# ------------------------------------------------------------------------------------------------
# decoding for a spec


def working_side(spec: PreprocessSpec) -> int:
    """Pixels the final resize needs on an image's shorter side: ``input_size / crop_pct`` for a
    centre crop, at most ``input_size`` for letterbox and stretch."""
    if spec.resize in KNEE_POLICIES:  # a knee crop can be a third of the shorter side
        return 3 * spec.input_size
    if spec.resize == "center_crop":
        return math.ceil(spec.input_size / spec.crop_pct)
    return spec.input_size


def decode_for(source: ImageSource, spec: PreprocessSpec) -> DecodedImage:
    """:func:`decode_image` for a consumer of ``spec``: its bit-depth policy, and a very large image
    reduced in the decoder to what the spec's resize needs (normal-size images are untouched)."""
    return decode_image(source, spec.bit_depth, need=working_side(spec))


# ------------------------------------------------------------------------------------------------
# the shared tail


def to_gray(decoded: DecodedImage) -> np.ndarray:
    """Single-channel float32 [0, 1] intensities (ITU-R 601 luma for colour input)."""
    px = decoded.pixels
    if px.ndim == 2:
        return px.astype(np.float32, copy=False)
    return (px[..., 0] * 0.299 + px[..., 1] * 0.587 + px[..., 2] * 0.114).astype(np.float32)


def _resize_float(arr: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize a float32 HxW array to (width, height) with a Pillow filter on 32-bit float data."""
    if (arr.shape[1], arr.shape[0]) == size:
        return arr.astype(np.float32, copy=True)
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    out = np.asarray(img.resize(size, resample=INTERPOLATIONS[interpolation]), dtype=np.float32)
    return out


def resize(gray: np.ndarray, spec: PreprocessSpec, view: int = 0) -> np.ndarray:
    """Resize HxW float intensities to ``spec.input_size`` square by the spec's policy (for
    ``knee``: the ``view``-th knee, left to right, clamped to the knees found)."""
    if gray.ndim != 2:
        raise ValueError(f"resize expects an HxW array, got shape {gray.shape}")
    if spec.resize in KNEE_POLICIES:
        boxes = knee_boxes_for(gray, spec)
        return _square(boxes[min(max(0, view), len(boxes) - 1)].crop(gray), spec)
    s = spec.input_size
    h, w = gray.shape
    if spec.resize == "stretch":
        out = _resize_float(gray, (s, s), spec.interpolation)
    elif spec.resize == "center_crop":
        short = s / spec.crop_pct
        scale = short / min(h, w)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        scaled = _resize_float(gray, (nw, nh), spec.interpolation)
        top, left = (nh - s) // 2, (nw - s) // 2
        out = scaled[top : top + s, left : left + s]
    else:  # letterbox
        scale = s / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        scaled = _resize_float(gray, (nw, nh), spec.interpolation)
        out = np.full((s, s), spec.pad_value, dtype=np.float32)
        top, left = (s - nh) // 2, (s - nw) // 2
        out[top : top + nh, left : left + nw] = scaled
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _square(crop: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    s = spec.input_size
    return np.clip(_resize_float(crop, (s, s), spec.interpolation), 0.0, 1.0).astype(np.float32)


def frames(gray: np.ndarray, spec: PreprocessSpec) -> list[np.ndarray]:
    """Every view the spec takes of one image: one for most policies, one per knee for ``knee``.
    A model's answer for the image is the mean of its logits over these views."""
    if gray.ndim != 2:
        raise ValueError(f"frames expects an HxW array, got shape {gray.shape}")
    if spec.resize not in KNEE_POLICIES:
        return [resize(gray, spec)]
    return [_square(b.crop(gray), spec) for b in knee_boxes_for(gray, spec)]


def knee_boxes_for(gray: np.ndarray, spec: PreprocessSpec) -> list:
    """The knee crops of a film for a knee policy: the heuristic framing or the learned locator."""
    if spec.resize == "knee":
        from .framing import knee_boxes

        return knee_boxes(gray)
    return spec_locator(spec).boxes(gray)


def spec_locator(spec: PreprocessSpec) -> Any:
    """The installed learned knee locator for a ``knee_locator`` spec, checked against the sha256 the
    model was trained with (a bundle loader calls this once, so a mismatch refuses the bundle)."""
    from .locator import default_locator

    loc = default_locator()
    if loc.sha256 != spec.locator:
        raise ConfigError(f"this model was trained with knee locator {spec.locator[:12]}; the installed locator is "
                          f"{loc.sha256[:12]} (install the osteo-edge version the bundle was built with)")
    return loc


def _locator_pin_ok(pin: str) -> bool:
    from .locator import is_sha256

    return is_sha256(pin)


def finalize(resized: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Normalise and lay out one resized HxW image as model input (no batch dimension)."""
    if resized.shape != (spec.input_size, spec.input_size):
        raise ValueError(f"finalize expects {spec.input_size}x{spec.input_size}, got {resized.shape}")
    planes = np.repeat(resized[None, :, :], spec.channels, axis=0).astype(np.float32)  # C,H,W
    if not spec.normalize_in_graph:
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
        planes = (planes - mean) / std
    if spec.layout == "NHWC":
        planes = np.transpose(planes, (1, 2, 0))
    return np.ascontiguousarray(planes, dtype=np.float32)


def preprocess(source: ImageSource | DecodedImage, spec: PreprocessSpec) -> np.ndarray:
    """The one reference path from a file (or decoded image) to model input, without batch dim."""
    decoded = source if isinstance(source, DecodedImage) else decode_for(source, spec)
    return finalize(resize(to_gray(decoded), spec), spec)


def preprocess_batch(sources: list[ImageSource], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(s, spec) for s in sources])
