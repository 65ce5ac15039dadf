#!/usr/bin/env bash
# `osteo-edge predict --json` with the shipped bundle on a folder mixing real knee radiographs (also
# as 16-bit PNG, DICOM MONOCHROME1 and an EXIF-rotated JPEG) with bad files; every file must be
# answered on its own line, exit 0. Output: benchmarks/runtime/predict_mixed.txt
set -uo pipefail
cd "$(dirname "$0")/../.."
D=$(mktemp -d)
S=../shared/data
cp "$S/knee/wani-mendeley/Normal/N1.JPEG" "$S/knee/wani-mendeley/Osteoporosis/$(ls $S/knee/wani-mendeley/Osteoporosis | head -1)" "$D/"
mkdir -p "$D/more/nested"
cp "$S/knee/2class-kaggle/Osteoporosis/$(ls $S/knee/2class-kaggle/Osteoporosis | head -1)" "$D/more/nested/"
cp "$S/spine/sriher/Normal/$(ls $S/spine/sriher/Normal | head -1)" "$D/spine.jpg"
.venv/bin/python - "$D" "$S/knee/wani-mendeley/Osteopenia/$(ls $S/knee/wani-mendeley/Osteopenia | head -1)" <<'PY'
import io, sys, numpy as np
from pathlib import Path
from PIL import Image
d, src = Path(sys.argv[1]), sys.argv[2]
g = np.asarray(Image.open(src).convert("L"))
Image.fromarray(g.astype(np.uint16) * 257).save(d / "knee_16bit.png")
ex = Image.Exif(); ex[0x0112] = 6
Image.fromarray(np.ascontiguousarray(np.rot90(g, 1))).save(d / "knee_exif_rotated.jpg", quality=95, exif=ex)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
m = FileMetaDataset(); m.MediaStorageSOPClassUID = SecondaryCaptureImageStorage; m.MediaStorageSOPInstanceUID = generate_uid(); m.TransferSyntaxUID = ExplicitVRLittleEndian
ds = Dataset(); ds.file_meta = m; ds.SOPClassUID = m.MediaStorageSOPClassUID; ds.SOPInstanceUID = m.MediaStorageSOPInstanceUID
ds.Modality = "DX"; ds.Rows, ds.Columns = g.shape; ds.SamplesPerPixel = 1; ds.PhotometricInterpretation = "MONOCHROME1"
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
ds.PixelData = (4095 - g.astype(np.uint16) * 16).tobytes(); ds.save_as(d / "knee_dicom", enforce_file_format=True)
no_pix = Dataset(); no_pix.file_meta = m; no_pix.Rows = 10; no_pix.save_as(d / "no_pixels.dcm", enforce_file_format=True)
(d / "empty.png").write_bytes(b"")
(d / "notes.jpg").write_text("not an image")
(d / "truncated.jpg").write_bytes(Path(src).read_bytes()[:3000])
Image.fromarray(np.full((300, 300), 90, np.uint8)).save(d / "blank.png")
Image.fromarray(np.full((40, 60), 90, np.uint8)).save(d / "tiny.png")
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 255, (240, 320, 3)).astype(np.uint8)).save(d / "colour_photo.png")
import struct, zlib
c = lambda t, x: struct.pack(">I", len(x)) + t + x + struct.pack(">I", zlib.crc32(t + x) & 0xFFFFFFFF)
(d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + c(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)) + c(b"IDAT", zlib.compress(b"\0" * 64)) + c(b"IEND", b""))
PY
mkdir -p "$D/a_directory.png"
{
  echo "\$ osteo-edge predict MIXED_FOLDER --json   (shipped bundle; folder built by benchmarks/runtime/predict_mixed.sh)"
  (cd "$D" && "$OLDPWD/.venv/bin/osteo-edge" predict . --json 2>/dev/null)
  echo "exit code: $?"
  echo "files in the folder: $(cd "$D" && find . -type f | wc -l); JSON lines above: one per file"
} | tee benchmarks/runtime/predict_mixed.txt
rm -rf "$D"
