"""Bundled example images for the demo: drawn by this module, never taken from a dataset.

The shipped files under ``osteo_edge/demo/examples/`` are the output of :func:`make_examples` (a test
regenerates them and compares pixels), so they are licence-clean: synthetic drawings of a knee in
an anteroposterior view, one of them as a 12-bit DICOM file, and an obvious non-radiograph (a
colour "photograph") that the input gate must refuse. They are for trying the app, not for judging
the model: a drawing is not a patient.

numpy + Pillow (+ pydicom for the DICOM example) only.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifact import atomic_write_bytes

log = logging.getLogger(__name__)

HEIGHT, WIDTH = 320, 256  # the drawing; PAD dark columns are added on each side
PAD = 20


@dataclass(frozen=True)
class Example:
    file: str
    title: str
    description: str


EXAMPLES: tuple[Example, ...] = (
    Example("synthetic_knee_a.png", "Synthetic knee A (PNG)", "drawn knee, dense trabecular texture, thick cortex"),
    Example("synthetic_knee_b.dcm", "Synthetic knee B (DICOM)", "drawn knee, sparser texture, thinner cortex; 12-bit DICOM"),
    Example("synthetic_knee_c.tif", "Synthetic knee C (16-bit TIFF)", "drawn knee, medium texture; 16-bit TIFF"),
    Example("colour_photo.jpg", "Not a radiograph (colour photo)", "a drawn colour landscape: the input gate must refuse it"),
)


def examples_dir() -> Path:
    """The folder of bundled example images (package data)."""
    return Path(__file__).resolve().parent / "examples"


def example_paths() -> list[Path]:
    """Paths of the bundled examples that exist, in :data:`EXAMPLES` order."""
    root = examples_dir()
    return [root / e.file for e in EXAMPLES if (root / e.file).is_file()]


# ------------------------------------------------------------------------------------------------
# drawing helpers (float images in [0, 1], rows x cols)


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(img: np.ndarray, sigma_y: float, sigma_x: float | None = None) -> np.ndarray:
    """Separable Gaussian blur with edge padding."""
    sigma_x = sigma_y if sigma_x is None else sigma_x
    out = img.astype(np.float64)
    for axis, sigma in ((0, sigma_y), (1, sigma_x)):
        if sigma <= 0:
            continue
        k = _gauss_kernel(sigma)
        r = k.size // 2
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, padded)
    return out


def _bone_masks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Femur, tibia and fibula masks of an AP knee view (boolean, HEIGHT x WIDTH)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    cx = WIDTH / 2 + rng.uniform(-6, 6)
    joint = HEIGHT * 0.5 + rng.uniform(-8, 8)

    # Femur: a shaft that flares into two rounded condyles with a notch between them.
    t = np.clip((yy - (joint - 130)) / 100.0, 0.0, 1.0)  # 0 on the shaft, 1 above the condyles
    half = 30 + 40 * t**2
    femur = (np.abs(xx - cx) < half) & (yy < joint - 40)
    for side in (-1, 1):
        femur |= ((xx - (cx + side * 36)) ** 2 / 40**2 + (yy - (joint - 38)) ** 2 / 33**2) < 1
    notch = ((xx - cx) ** 2 / 13**2 + (yy - (joint - 6)) ** 2 / 24**2) < 1
    femur &= ~notch

    # Tibia: a wide plateau narrowing into the shaft.
    top = joint + 10
    u = np.clip((yy - top) / 90.0, 0.0, 1.0)
    t_half = 84 - 50 * u**0.8
    tibia = (np.abs(xx - cx - 4) < t_half) & (yy >= top + 3 * np.cos((xx - cx) / 22.0))
    spine = ((xx - cx) ** 2 / 10**2 + (yy - top) ** 2 / 9**2) < 1  # tibial spines
    tibia |= spine

    # Fibula: a thin bone on the lateral side, with a head near the tibial plateau.
    fx = cx + 70 - 0.06 * (yy - top)
    fibula = (np.abs(xx - fx) < 9) & (yy > top + 28)
    fibula |= ((xx - (cx + 72)) ** 2 / 14**2 + (yy - (top + 34)) ** 2 / 12**2) < 1
    return femur, tibia, fibula & ~tibia


def synthetic_knee(
    seed: int, density: float = 1.0, cortex: float = 1.0, exposure: float = 1.0, tissue: float = 0.13, bone_gain: float = 1.0
) -> np.ndarray:
    """A drawn AP knee radiograph, float64 [0, 1], ``HEIGHT x (WIDTH + 2 * PAD)``.

    ``density`` scales the trabecular texture and ``cortex`` the cortical rim (1.0 = typical);
    ``exposure`` scales the overall brightness, ``tissue`` the soft tissue and ``bone_gain`` the bone.
    The frame has dark film edges and a saturated side marker, like a real film (which also keeps a
    DICOM copy, stretched to its full range by the decoder, close to the 8-bit one). Not a patient;
    for trying the app only.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    femur, tibia, fibula = _bone_masks(rng)
    bone = femur | tibia | fibula

    # Soft tissue: a blurred band around the bones.
    leg = _blur((np.abs(xx - WIDTH / 2) < 108).astype(np.float64), 10)
    img = 0.03 + tissue * leg

    # Trabecular texture: mostly vertical streaks of filtered noise.
    noise = _blur(rng.standard_normal((HEIGHT, WIDTH)), 2.5, 0.9)
    noise = (noise - noise.mean()) / (noise.std() + 1e-9)
    trab = np.clip(0.5 + 0.25 * noise * density, 0.0, 1.0)
    marrow = 0.30 + 0.22 * density * trab

    # Cortex: the rim of each bone, where the blurred mask falls below 1.
    soft_mask = _blur(bone.astype(np.float64), 2.0 + 1.5 * cortex)
    rim = bone & (soft_mask < 0.93)
    thick = np.sqrt(np.clip(_blur(bone.astype(np.float64), 7.0), 0.0, 1.0))  # projected thickness
    bone_img = np.where(bone, marrow * (0.55 + 0.45 * thick), 0.0) + np.where(rim, 0.10 + 0.16 * cortex, 0.0)
    bone_img = _blur(bone_img, 1.4)
    img = img + bone_gain * bone_img

    # Heel effect / exposure gradient, film grain, then the detector's response.
    img *= exposure * (0.92 + 0.12 * (1 - yy / HEIGHT))
    img += 0.015 * rng.standard_normal((HEIGHT, WIDTH))
    img = np.pad(np.clip(img, 0.0, 1.0), ((0, 0), (PAD, PAD)), constant_values=0.0)  # collimated film edge
    return _side_marker(img)


def _side_marker(img: np.ndarray) -> np.ndarray:
    """A lead side marker ("R") in the top-left corner, saturated as on real films."""
    y, x = 10, 8
    img[y : y + 18, x : x + 3] = 1.0  # stem
    img[y : y + 3, x : x + 11] = 1.0  # top of the bowl
    img[y + 8 : y + 11, x : x + 11] = 1.0  # bottom of the bowl
    img[y : y + 11, x + 9 : x + 12] = 1.0  # side of the bowl
    for k in range(8):  # leg
        img[y + 10 + k, x + 4 + k : x + 7 + k] = 1.0
    return img


def colour_photo(seed: int = 7) -> np.ndarray:
    """A drawn colour 'photograph' (sky, sun, hills), float64 ``HEIGHT x WIDTH x 3``: not a radiograph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    sky_t = yy / HEIGHT
    img = np.stack([0.35 + 0.3 * sky_t, 0.6 + 0.2 * sky_t, 0.95 - 0.1 * sky_t], axis=-1)
    sun = ((xx - 190) ** 2 + (yy - 60) ** 2) < 26**2
    img[sun] = (1.0, 0.85, 0.2)
    hill = yy > HEIGHT * 0.62 + 30 * np.sin(xx / 40.0)
    img[hill] = (0.2, 0.55, 0.15)
    img += 0.03 * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# writing


def _png_bytes(arr8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr8).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jpeg_bytes(arr8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr8).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _tiff16_bytes(arr16: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr16.astype(np.uint16)).save(buf, format="TIFF", compression="tiff_deflate")
    return buf.getvalue()


def _dicom_bytes(arr12: np.ndarray, name: str) -> bytes:
    from ..errors import require

    pydicom = require("pydicom", "runtime")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"osteo-edge demo example {name}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"osteo-edge demo study {name}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"osteo-edge demo series {name}"])
    ds.Modality = "OT"
    ds.PatientName = "SYNTHETIC^DRAWING"
    ds.PatientID = "SYNTHETIC"
    ds.StudyDescription = "osteo-edge demo example (synthetic drawing, not a patient)"
    ds.ContentDate = _dt.date(2024, 1, 1).strftime("%Y%m%d")
    ds.Rows, ds.Columns = arr12.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = arr12.astype("<u2").tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def render_examples() -> dict[str, bytes]:
    """The bytes of every example file, by file name (deterministic)."""
    knee_a = synthetic_knee(seed=11, density=1.15, cortex=1.2, exposure=0.8, tissue=0.2)
    knee_b = synthetic_knee(seed=23, density=0.75, cortex=0.7, exposure=0.8, tissue=0.2)
    knee_c = synthetic_knee(seed=37, density=0.85, cortex=0.9, exposure=0.8, tissue=0.2)
    photo = colour_photo(seed=7)
    to8 = lambda a: np.round(a * 255).astype(np.uint8)  # noqa: E731
    return {
        "synthetic_knee_a.png": _png_bytes(to8(knee_a)),
        "synthetic_knee_b.dcm": _dicom_bytes(np.round(knee_b * 4095), "synthetic_knee_b"),
        "synthetic_knee_c.tif": _tiff16_bytes(np.round(knee_c * 65535)),
        "colour_photo.jpg": _jpeg_bytes(to8(photo)),
    }


def make_examples(dest: str | os.PathLike | None = None) -> list[Path]:
    """Write the example files into ``dest`` (default: the package's examples folder), atomically."""
    root = Path(dest) if dest is not None else examples_dir()
    written = []
    for name, data in render_examples().items():
        written.append(atomic_write_bytes(root / name, data))
        log.info("wrote %s (%d bytes)", root / name, len(data))
    return written
