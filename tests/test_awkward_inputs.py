"""`osteo-edge predict` on a folder of awkward inputs, as a user runs it (a subprocess): every file gets
one JSON line, and no third-party library's traceback or log record reaches stderr.

The inputs: an empty file, a truncated PNG and JPEG, a text file named .png, a 12-bit JPEG DICOM
(compressed by dcmtk's ``dcmcjpeg +ee`` when installed), a DICOM whose JPEG data is corrupt, a DICOM
without pixel data, a PNG whose header claims a huge size, and a directory named like an image.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _huge_png(width: int = 200_000, height: int = 200_000) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with one tiny IDAT: a decompression bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _dicom(path: Path, pixels: np.ndarray | None, *, jpeg_garbage: bool = False) -> Path:
    """A CR DICOM: 12-bit MONOCHROME2 pixels (uncompressed), none at all, or JPEG Extended with corrupt data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGExtended12Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGExtended12Bit if jpeg_garbage else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.BodyPartExamined = "CR", "Test^Awkward", "0", "KNEE"
    if pixels is not None or jpeg_garbage:
        rows, cols = (64, 64) if pixels is None else pixels.shape
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if jpeg_garbage:
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xc1\x00\x0b\x0c" + b"\x13" * 200])  # SOF1 12-bit, then junk
        else:
            ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_awkward_folder(root: Path) -> tuple[Path, list[str]]:
    """The folder of awkward inputs and the names of the files in it (every one must be answered)."""
    pytest.importorskip("pydicom")
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:256, 0:256]
    grey = ((np.sin(xx / 17.0) + np.cos(yy / 23.0) + 2) * 60).astype(np.uint8)
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(_png(grey)[:300])
    (root / "truncated.jpg").write_bytes(_jpeg(grey)[:400])
    (root / "text.png").write_text("this is not an image\n", encoding="utf-8")
    (root / "huge_header.png").write_bytes(_huge_png())
    (root / "directory.png").mkdir()  # a directory named like an image (searched, holds nothing)
    twelve = (grey.astype(np.uint16) * 16).astype(np.uint16)  # 0..4080: 12-bit values
    _dicom(root / "no_pixels.dcm", None)
    _dicom(root / "jpeg12_corrupt.dcm", None, jpeg_garbage=True)
    dcmcjpeg = shutil.which("dcmcjpeg")
    if dcmcjpeg:  # a real 12-bit extended-process JPEG, made by dcmtk (Debian: apt-get install dcmtk)
        raw = _dicom(root.parent / "jpeg12_raw.dcm", twelve)
        subprocess.run([dcmcjpeg, "+ee", str(raw), str(root / "jpeg12.dcm")], check=True, capture_output=True)
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    return root, names


# A logging record in the CLI's format from a logger outside osteo_edge ("ERROR pydicom...: ...").
THIRD_PARTY_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) (?!osteo_edge)[\w.]+: ", re.M)


def test_every_awkward_input_gets_a_json_line_and_stderr_has_no_traceback(tmp_path: Path) -> None:
    folder, names = make_awkward_folder(tmp_path / "awkward")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, "-c", "from osteo_edge.cli import main; main()", "predict", str(folder), "--json"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not THIRD_PARTY_RECORD.search(proc.stderr), proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == names, proc.stdout
    by_name = {Path(r["path"]).name: r for r in rows}
    for name in ("empty.png", "truncated.png", "truncated.jpg", "text.png", "huge_header.png", "no_pixels.dcm", "jpeg12_corrupt.dcm"):
        assert by_name[name]["status"] == "rejected" and by_name[name]["reason"], by_name[name]
    if "jpeg12.dcm" in by_name:  # decoded (with a JPEG plugin) or refused with a reason: never a crash
        r = by_name["jpeg12.dcm"]
        assert r["status"] in ("ok", "refer", "rejected") and (r["status"] != "rejected" or r["reason"])
