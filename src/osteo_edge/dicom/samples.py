"""Knee radiographs as DICOM in every transfer syntax, written by third-party encoders (tests, benchmarks).

``img2dcm`` (dcmtk) makes a Secondary Capture from a real knee image; a 12-bit copy of it holds the
same pixels times 16 (BitsStored 12); ``dcmconv``/``dcmcrle``/``dcmcjpeg``/``dcmcjpls`` (dcmtk) and
``gdcmconv`` (GDCM) compress it. Nothing here is used when serving.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import DependencyError, InvalidImageError, require
from .decode import TRANSFER_SYNTAXES, TransferSyntax

TOOLS = ("img2dcm", "dcmconv", "dcmcrle", "dcmcjpeg", "dcmcjpls", "gdcmconv", "storescu", "echoscu")


def missing_tools(tools: tuple[str, ...] = TOOLS) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
    except FileNotFoundError as exc:
        raise DependencyError(f"{argv[0]} is not installed (Debian: dcmtk, libgdcm-tools)") from exc
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidImageError(f"{' '.join(argv)} failed: {err[-1] if err else exc.returncode}") from exc


def base_images(image: str | Path, out: Path, modality: str = "CR") -> dict[int, Path]:
    """8-bit and 12-bit uncompressed (explicit VR) DICOMs of one knee image: {8: path, 12: path}."""
    pydicom = require("pydicom", "runtime")
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    bmp = out / "knee.bmp"
    Image.open(image).convert("L").save(bmp)
    p8 = out / "knee8.dcm"
    _run(["img2dcm", "-i", "BMP", str(bmp), str(p8), "-k", f"Modality={modality}"])
    ds = pydicom.dcmread(p8)
    pixels = ds.pixel_array.astype("<u2") * 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.tobytes()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    p12 = out / "knee12.dcm"
    ds.save_as(p12)
    return {8: p8, 12: p12}


def encode(ts: TransferSyntax, src: Path, dst: Path) -> Path:
    """Write ``src`` in transfer syntax ``ts`` with its third-party encoder."""
    _run([a.format(src=src, dst=dst) for a in ts.encoder])
    return dst


def all_syntaxes(image: str | Path, out: Path) -> dict[str, Path]:
    """One file per transfer syntax of the table (name -> path), plus ``base8``/``base12``."""
    bases = base_images(image, out)
    files = {"base8": bases[8], "base12": bases[12]}
    for ts in TRANSFER_SYNTAXES:
        files[ts.name] = encode(ts, bases[ts.bits], out / f"{ts.name}.dcm")
    return files


def storescu_config(ts_uid: str, path: Path) -> list[str]:
    """storescu arguments that propose exactly ``ts_uid`` for CR, DX and SC (``-xf CONFIG PROFILE``).

    storescu's -x* flags cover most syntaxes but not JPEG Lossless process 14 (non-SV1); a
    configuration file covers every one the same way."""
    classes = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
               "1.2.840.10008.5.1.4.1.1.7")
    pcs = "\n".join(f"PresentationContext{i} = {c}\\Only" for i, c in enumerate(classes, 1))
    path.write_text(
        f"[[TransferSyntaxes]]\n[Only]\nTransferSyntax1 = {ts_uid}\n\n"
        f"[[PresentationContexts]]\n[Radiographs]\n{pcs}\n\n"
        "[[Profiles]]\n[Send]\nPresentationContexts = Radiographs\n"
    )
    return ["-xf", str(path), "Send"]


def new_instance_uid(path: Path) -> str:
    """Give a DICOM file a new SOP Instance UID with dcmtk's ``dcmodify -gin`` (pixel data untouched)."""
    _run(["dcmodify", "-nb", "-gin", str(path)])
    pydicom = require("pydicom", "runtime")
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
