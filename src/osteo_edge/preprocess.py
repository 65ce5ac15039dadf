"""The preprocessing contract: one spec, one reference implementation (numpy + Pillow only).

Every consumer (training, evaluation, calibration, export parity, the edge runtime, the demo, the
benchmarks) turns a file into model input through :func:`preprocess`, or through its parts in this
order::

    decode_image -> to_gray -> resize -> [training augmentation] -> finalize

Training inserts its random augmentation between :func:`resize` and :func:`finalize` and calls the
same functions, so a training sample without augmentation equals the runtime input for that file.

The spec travels inside every artifact (checkpoint, ONNX metadata, the manifest beside a TFLite
file). Nobody retypes a size, a mean or an interpolation.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, InvalidImageError, choice_error

_log = logging.getLogger(__name__)

# Input-size limits of the decoder. Pillow's own bomb guard only warns below 89 Mpx; we refuse
# earlier and with one line, before any pixel data is decoded.
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 40_000_000  # e.g. 6324 x 6324; real radiographs are at most ~4k x 5k (20 Mpx)

RESIZE_POLICIES = ("center_crop", "letterbox", "stretch")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
BIT_DEPTH_POLICIES = ("scale", "minmax")
GRAYSCALE_POLICIES = ("replicate", "single")
LAYOUTS = ("NCHW", "NHWC")

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a decoded radiograph into model input.

    - ``input_size``: the model sees ``input_size x input_size`` pixels.
    - ``resize``: ``center_crop`` (shorter side to ``input_size / crop_pct``, then a centred square
      crop), ``letterbox`` (whole image, aspect kept, padded with ``pad_value``) or ``stretch``.
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


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: float32 intensities in [0, 1], ``HxW`` (gray) or ``HxWx3`` (colour)."""

    pixels: np.ndarray
    format: str  # PNG, JPEG, TIFF, DICOM, ... ("ARRAY" for in-memory input)
    mode: str  # the source mode (L, RGB, I;16, CMYK, ...)
    bits: int  # bits per sample of the source
    size: tuple[int, int]  # (width, height) after orientation

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


# ------------------------------------------------------------------------------------------------
# decoding


def _read_bytes(source: ImageSource) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "<bytes>"
    path = Path(os.fspath(source))
    if not path.exists():
        raise InvalidImageError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidImageError(f"{path}: is a directory, not an image file")
    size = path.stat().st_size
    if size == 0:
        raise InvalidImageError(f"{path}: empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise InvalidImageError(f"{path}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise InvalidImageError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _effective_max(arr: np.ndarray, native_bits: int) -> float:
    """Full-range value of the smallest standard bit depth (8/10/12/14/16) that holds the data.

    A 12-bit detector image stored in a 16-bit PNG is scaled by 4095, not 65535, and a 16-bit
    copy of an 8-bit image (v * 257) gives exactly the 8-bit intensities.
    """
    if native_bits <= 8:
        return 255.0
    peak = float(arr.max()) if arr.size else 0.0
    for bits in (8, 10, 12, 14, 16):
        if bits <= native_bits and peak <= 2**bits - 1:
            return float(2**bits - 1)
    return float(2**native_bits - 1)


def _scale_unit(arr: np.ndarray, native_bits: int, policy: str) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    if policy == "minmax" or native_bits == 0:
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return np.zeros_like(arr, dtype=np.float32)
        return ((arr - lo) / (hi - lo)).astype(np.float32)
    return np.clip(arr / _effective_max(arr, native_bits), 0.0, 1.0).astype(np.float32)


def _from_pil(img: Image.Image, fmt: str, policy: str) -> DecodedImage:
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
    if img.mode == "CMYK":
        img = img.convert("RGB")
    if img.mode in ("RGBA", "LA"):
        # Composite on black: a radiograph's background is dark.
        base = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(base, img.convert("RGBA")).convert("RGB" if img.mode == "RGBA" else "L")
    if img.mode == "1":
        img = img.convert("L")
    if img.mode in ("L", "RGB"):
        arr = np.asarray(img, dtype=np.uint8)
        bits = 8
    elif img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint16)
        bits = 16
    elif img.mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        bits = 16 if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535 else 0
        if bits == 0:
            arr = arr.astype(np.float64)
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        bits = 0
    else:
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise InvalidImageError(f"unsupported image mode {mode!r}") from exc
        arr = np.asarray(img, dtype=np.uint8)
        bits = 8
    if not np.isfinite(arr).all():
        raise InvalidImageError("image contains NaN or infinite values")
    pixels = _scale_unit(arr, bits, policy)
    return DecodedImage(pixels=pixels, format=fmt, mode=mode, bits=bits, size=(img.width, img.height))


def _decode_dicom(data: bytes, name: str, policy: str) -> DecodedImage:
    """A 2-D MONOCHROME DICOM through pydicom and its pixel plugins (every transfer syntax in
    ``osteo_edge.dicom.decode.TRANSFER_SYNTAXES`` with the ``runtime`` extra). pydicom's warnings are
    caught here and logged at debug level: they never reach the user's screen."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _decode_dicom_quiet(data, name)
        finally:
            for w in caught:
                _log.debug("%s: %s: %s", name, w.category.__name__, w.message)


def _decode_dicom_quiet(data: bytes, name: str) -> DecodedImage:
    from .errors import require

    pydicom = require("pydicom", "runtime")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types for bad files
        raise InvalidImageError(f"{name}: unreadable DICOM ({type(exc).__name__}: {_one_line(exc)})") from exc
    if "PixelData" not in ds:
        raise InvalidImageError(f"{name}: DICOM file has no pixel data")
    for tag in ("Rows", "Columns", "BitsStored", "PhotometricInterpretation"):
        if tag not in ds:
            raise InvalidImageError(f"{name}: DICOM file lacks the {tag} tag")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > MAX_PIXELS:
        raise InvalidImageError(f"{name}: DICOM image is {cols}x{rows}, over the {MAX_PIXELS}-pixel limit")
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidImageError(
            f"{name}: DICOM photometric interpretation {photometric!r} is not a radiograph (MONOCHROME1/2)"
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise many types (RuntimeError, ValueError, ...)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f" ({ts.name})" if ts is not None else ""
        raise InvalidImageError(f"{name}: DICOM pixel data{what} cannot be decoded ({type(exc).__name__}: {_one_line(exc)})") from exc
    if arr.ndim != 2:
        raise InvalidImageError(f"{name}: DICOM has {arr.ndim}-D pixel data; a single 2-D radiograph is needed")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(arr, ds).astype(np.float64)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_window or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    unit = np.zeros_like(arr, dtype=np.float32) if hi <= lo else ((arr - lo) / (hi - lo)).astype(np.float32)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return DecodedImage(pixels=unit, format="DICOM", mode=photometric, bits=int(ds.BitsStored), size=(cols, rows))


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


def decode_image(source: ImageSource, bit_depth: str = "scale") -> DecodedImage:
    """Decode a file, bytes, PIL image or array into float32 [0, 1] intensities.

    The format is found from the content, never the file extension. EXIF orientation is applied.
    Raises :class:`InvalidImageError` (one line) for anything that is not a usable image.
    """
    if bit_depth not in BIT_DEPTH_POLICIES:
        raise choice_error("bit-depth policy", bit_depth, BIT_DEPTH_POLICIES)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
            raise InvalidImageError(f"array of shape {arr.shape} is not an HxW or HxWx3 image")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(arr.dtype, 0)
        if bits == 0 and arr.dtype.kind == "f" and arr.size and 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0:
            pixels = arr.astype(np.float32)
        else:
            pixels = _scale_unit(arr, bits, bit_depth)
        return DecodedImage(pixels=pixels, format="ARRAY", mode=str(arr.dtype), bits=bits, size=(arr.shape[1], arr.shape[0]))
    if isinstance(source, Image.Image):
        _check_pixels(source.size, "<image>")
        return _from_pil(ImageOps.exif_transpose(source), source.format or "IMAGE", bit_depth)

    data, name = _read_bytes(source)
    if is_dicom(data):
        return _decode_dicom(data, name, bit_depth)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx; our own, lower limit is checked right below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"{name}: not a recognised image (JPEG, PNG, TIFF, BMP or DICOM)") from exc
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{name}: image too large, over the {MAX_PIXELS}-pixel limit (decompression bomb guard)") from exc
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise InvalidImageError(f"{name}: unreadable image header ({exc})") from exc
    fmt = img.format or "UNKNOWN"
    _check_pixels(img.size, name)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{name}: image too large (decompression bomb guard)") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise InvalidImageError(f"{name}: truncated or corrupt {fmt} data ({exc})") from exc
    try:
        return _from_pil(img, fmt, bit_depth)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{name}: {exc}") from exc


def _check_pixels(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InvalidImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise InvalidImageError(f"{name}: image is {w}x{h} = {w * h} pixels, over the {MAX_PIXELS}-pixel limit")


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


def resize(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize HxW float intensities to ``spec.input_size`` square by the spec's policy."""
    if gray.ndim != 2:
        raise ValueError(f"resize expects an HxW array, got shape {gray.shape}")
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
    decoded = source if isinstance(source, DecodedImage) else decode_image(source, spec.bit_depth)
    return finalize(resize(to_gray(decoded), spec), spec)


def preprocess_batch(sources: list[ImageSource], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(s, spec) for s in sources])
