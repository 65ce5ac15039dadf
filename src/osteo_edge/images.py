"""Decoding an image file, bytes, a PIL image or an array into float32 intensities, safely.

The first step of the preprocessing contract (:mod:`osteo_edge.preprocess`): the format is found
from the content, never the extension; EXIF orientation is applied; 16-bit and DICOM pixel data are
scaled by a bit-depth policy; anything that is not a usable image raises a one-line
:class:`~osteo_edge.errors.InvalidImageError`. Limits (:data:`MAX_FILE_BYTES`, :data:`MAX_PIXELS`) are
checked before any pixel data is decoded, and an image far larger than its consumer needs is
reduced inside the decoder (see :func:`reduction_factor`).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError, choice_error, first_line

_log = logging.getLogger(__name__)

# Input-size limits of the decoder. Pillow's own bomb guard only warns below 89 Mpx; we refuse
# earlier and with one line, before any pixel data is decoded.
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 40_000_000  # e.g. 6324 x 6324; real radiographs are at most ~4k x 5k (20 Mpx)
# Early reduction of very large images: only when the shorter side is over REDUCE_ABOVE times what
# the model needs, and never below REDUCE_KEEP times that (the final resize does the real resampling).
REDUCE_ABOVE = 4
REDUCE_KEEP = 2

BIT_DEPTH_POLICIES = ("scale", "minmax")

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: float32 intensities in [0, 1], ``HxW`` (gray) or ``HxWx3`` (colour)."""

    pixels: np.ndarray
    format: str  # PNG, JPEG, TIFF, DICOM, ... ("ARRAY" for in-memory input)
    mode: str  # the source mode (L, RGB, I;16, CMYK, ...)
    bits: int  # bits per sample of the source
    size: tuple[int, int]  # (width, height) of the source after orientation
    reduced: int = 1  # integer factor the decoder shrank the pixels by (1 = full size)

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


# ------------------------------------------------------------------------------------------------
# decoding


def _open_source(source: str | os.PathLike | bytes | bytearray) -> tuple[bytes | io.BufferedReader, str]:
    """The bytes of ``source`` (bytes input, or a DICOM file), or an open binary file (any other
    file: Pillow then reads only what it needs, the file is never held in memory twice)."""
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
        fh = path.open("rb")
    except OSError as exc:
        raise InvalidImageError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        head = fh.read(132)
        fh.seek(0)
        if is_dicom(head):
            with fh:
                return fh.read(), str(path)
    except OSError as exc:
        fh.close()
        raise InvalidImageError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return fh, str(path)


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def reduction_factor(size: tuple[int, int], need: int | None) -> int:
    """The integer factor a ``size`` (w, h) image may be shrunk by in the decoder for a consumer that
    needs ``need`` pixels on the shorter side: 1 unless that side is over ``REDUCE_ABOVE * need``;
    the result keeps at least ``REDUCE_KEEP * need``."""
    short = min(size)
    if not need or short <= REDUCE_ABOVE * need:
        return 1
    return max(1, short // (REDUCE_KEEP * need))


def _effective_max(arr: np.ndarray, native_bits: int, peak: float | None = None) -> float:
    """Full-range value of the smallest standard bit depth (8/10/12/14/16) that holds the data.

    A 12-bit detector image stored in a 16-bit PNG is scaled by 4095, not 65535, and a 16-bit
    copy of an 8-bit image (v * 257) gives exactly the 8-bit intensities. ``peak``: the maximum of
    the full-size image when ``arr`` is a reduced copy (averaging lowers the maximum).
    """
    if native_bits <= 8:
        return 255.0
    if peak is None:
        peak = float(arr.max()) if arr.size else 0.0
    for bits in (8, 10, 12, 14, 16):
        if bits <= native_bits and peak <= 2**bits - 1:
            return float(2**bits - 1)
    return float(2**native_bits - 1)


def _scale_unit(arr: np.ndarray, native_bits: int, policy: str, extrema: tuple[float, float] | None = None) -> np.ndarray:
    """[0, 1] intensities. ``extrema``: (min, max) of the full-size image when ``arr`` is reduced."""
    arr = arr.astype(np.float32, copy=False)
    if policy == "minmax" or native_bits == 0:
        lo, hi = extrema if extrema is not None else (float(arr.min()), float(arr.max()))
        if hi <= lo:
            return np.zeros_like(arr, dtype=np.float32)
        out = (arr - lo) / (hi - lo)
        return (np.clip(out, 0.0, 1.0) if extrema is not None else out).astype(np.float32)
    peak = extrema[1] if extrema is not None else None
    return np.clip(arr / _effective_max(arr, native_bits, peak), 0.0, 1.0).astype(np.float32)


def _flatten_mode(img: Image.Image) -> Image.Image:
    """Palette, CMYK, alpha and bilevel images as L or RGB (alpha composited on black)."""
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
    return img


def _pil_array(img: Image.Image, mode: str) -> tuple[np.ndarray, int]:
    """The pixels of a flattened image as an array, and the source bit depth (0 = not integer)."""
    if img.mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.uint8), 8
    if img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16), 16
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        bits = 16 if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535 else 0
        return (arr.astype(np.float64) if bits == 0 else arr), bits
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32), 0
    try:
        img = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InvalidImageError(f"unsupported image mode {mode!r}") from exc
    return np.asarray(img, dtype=np.uint8), 8


def _from_pil(img: Image.Image, fmt: str, policy: str, *, source_mode: str | None = None,
              size: tuple[int, int] | None = None, extrema: tuple[float, float] | None = None,
              reduced: int = 1) -> DecodedImage:
    """A loaded, upright PIL image as a :class:`DecodedImage`. The keywords describe the full-size
    source when ``img`` is a reduced copy of it (see :func:`_load_reduced`)."""
    mode = source_mode or img.mode
    img = _flatten_mode(img)
    arr, bits = _pil_array(img, mode)
    if not np.isfinite(arr).all():
        raise InvalidImageError("image contains NaN or infinite values")
    pixels = _scale_unit(arr, bits, policy, extrema)
    return DecodedImage(pixels=pixels, format=fmt, mode=mode, bits=bits, size=size or (img.width, img.height), reduced=reduced)


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90)


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """Box-average ``img`` by an integer ``factor`` without a full-size copy. The sides are first
    trimmed to whole boxes, centred (under ``factor`` pixels in all), so every output pixel is one
    full box and the picture is not stretched. Pillow cannot reduce 16-bit images directly; they
    are reduced in bands of ``factor`` rows, aligned with the boxes (the same result as a
    whole-image reduce of the 32-bit image)."""
    w, h = img.size
    left, top = (w % factor) // 2, (h % factor) // 2
    box = (left, top, left + w - w % factor, top + h - h % factor)
    if not img.mode.startswith("I;16"):
        return img.reduce(factor, box=box)
    out = Image.new("I", ((box[2] - box[0]) // factor, (box[3] - box[1]) // factor))
    for row, y in enumerate(range(box[1], box[3], factor)):
        band = img.crop((box[0], y, box[2], y + factor)).convert("I")
        out.paste(band.reduce(factor), (0, row))
    return out


def _load_reduced(img: Image.Image, need: int) -> tuple[Image.Image, dict[str, Any]]:
    """Decode an opened, much-too-large image at a fraction of its size: JPEG by DCT scaling while
    decoding (``draft``), then an integer box reduction (``Image.reduce``) before any float
    conversion, then the EXIF orientation on the small image. Returns the small image and the
    :func:`_from_pil` keywords describing the full-size source."""
    mode = img.mode
    method = _ORIENTATION.get(img.getexif().get(0x0112, 1))
    w, h = img.size
    factor = reduction_factor((w, h), need)
    img.draft(img.mode, (max(1, w // factor), max(1, h // factor)))  # a no-op for formats without it
    img.load()
    img = _flatten_mode(img)
    lo_hi = img.getextrema()
    bands = lo_hi if isinstance(lo_hi[0], tuple) else (lo_hi,)
    extrema = (float(min(b[0] for b in bands)), float(max(b[1] for b in bands)))
    rest = reduction_factor(img.size, need)
    small = _reduce(img, rest) if rest > 1 else img
    del img
    if method is not None:
        small = small.transpose(method)
    size = (h, w) if method in _SWAPS_SIDES else (w, h)
    return small, {"source_mode": mode, "size": size, "extrema": extrema, "reduced": max(1, round(min(w, h) / min(small.size)))}


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


def _missing_decoder_hint(uid: str) -> str:
    """What to install when pydicom has no working plugin for ``uid`` ("" when that is not why)."""
    try:
        from pydicom.pixels import get_decoder

        missing = " ".join(get_decoder(uid).missing_dependencies)
    except Exception:  # not a compressed syntax pydicom knows: not a missing-decoder case
        return ""
    if "pylibjpeg-libjpeg" in missing:  # JPEG lossless, 12-bit JPEG extended, JPEG-LS
        from .errors import install_hint

        return f"its decoder comes with the dicom extra; {install_hint('dicom')}"
    return ""


def _decode_dicom_quiet(data: bytes, name: str) -> DecodedImage:
    from .errors import require

    pydicom = require("pydicom", "runtime")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types for bad files
        raise InvalidImageError(f"{name}: unreadable DICOM ({type(exc).__name__}: {first_line(exc)})") from exc
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
        hint = _missing_decoder_hint(str(ts)) if ts is not None else ""
        if hint:
            raise InvalidImageError(f"{name}: DICOM pixel data{what} cannot be decoded here: {hint}") from exc
        raise InvalidImageError(f"{name}: DICOM pixel data{what} cannot be decoded ({type(exc).__name__}: {first_line(exc)})") from exc
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


def decode_image(source: ImageSource, bit_depth: str = "scale", *, need: int | None = None) -> DecodedImage:
    """Decode a file, bytes, PIL image or array into float32 [0, 1] intensities.

    The format is found from the content, never the file extension. EXIF orientation is applied.
    ``need``: the pixels the caller needs on the shorter side (:func:`working_side`); a file image
    whose shorter side is over ``REDUCE_ABOVE * need`` is decoded reduced (see the module doc,
    :func:`decode_for`). Raises :class:`InvalidImageError` (one line) for anything that is not a
    usable image.
    """
    if bit_depth not in BIT_DEPTH_POLICIES:
        raise choice_error("bit-depth policy", bit_depth, BIT_DEPTH_POLICIES)
    if isinstance(source, np.ndarray):
        return _decode_array(source, bit_depth)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, "<image>")
        return _from_pil(ImageOps.exif_transpose(source), source.format or "IMAGE", bit_depth)

    src, name = _open_source(source)
    if isinstance(src, bytes):
        if is_dicom(src):
            return _decode_dicom(src, name, bit_depth)
        src = io.BytesIO(src)
    with src:
        return _decode_file(src, name, bit_depth, need)


def _decode_array(arr: np.ndarray, bit_depth: str) -> DecodedImage:
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


def _decode_file(fp: Any, name: str, bit_depth: str, need: int | None) -> DecodedImage:
    """A non-DICOM image file (open binary file) through Pillow, reduced early when far too large."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx; our own, lower limit is checked right below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"{name}: not a recognised image (JPEG, PNG, TIFF, BMP or DICOM)") from exc
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{name}: image too large, over the {MAX_PIXELS}-pixel limit (decompression bomb guard)") from exc
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise InvalidImageError(f"{name}: unreadable image header ({exc})") from exc
    fmt = img.format or "UNKNOWN"
    _check_pixels(img.size, name)
    source: dict[str, Any] = {}
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if reduction_factor(img.size, need) > 1:
            img, source = _load_reduced(img, int(need or 0))
        else:
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"{name}: image too large (decompression bomb guard)") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise InvalidImageError(f"{name}: truncated or corrupt {fmt} data ({exc})") from exc
    try:
        return _from_pil(img, fmt, bit_depth, **source)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{name}: {exc}") from exc


def _check_pixels(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InvalidImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise InvalidImageError(f"{name}: image is {w}x{h} = {w * h} pixels, over the {MAX_PIXELS}-pixel limit")
