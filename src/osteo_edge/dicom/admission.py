"""What the DICOM node accepts: radiograph SOP classes (CR, DX, Secondary Capture), the non-image
objects a study carries (SR, KO, presentation states: accepted and ignored), the DIMSE statuses it
answers with, and the checks on a received dataset (readable, whole, what its C-STORE said)."""

from __future__ import annotations

import io
import warnings
from typing import Any

from ..errors import first_line

RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
# Objects a study sent from a PACS carries beside its images (our own result SR among them): accepted
# and ignored, so that a study-level send succeeds. SR (every SR class, Key Object Selection
# included) and presentation states, by UID prefix.
NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report / Key Object Selection",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State",
}
NON_IMAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.35", "1.2.840.10008.5.1.4.1.1.88.59",
    "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.11.2", "1.2.840.10008.5.1.4.1.1.11.3",
    "1.2.840.10008.5.1.4.1.1.11.4",
)


def non_image(sop_class: str) -> str | None:
    """What a non-image object is (accepted and ignored), or None for anything else."""
    return next((name for prefix, name in NON_IMAGE_PREFIXES.items() if sop_class.startswith(prefix)), None)


# C-STORE statuses (PS3.4 B.2.3, PS3.7 C): one name per refusal the node gives.
STATUS = {
    "success": 0x0000,
    "sop_class_not_supported": 0x0122,
    "out_of_resources": 0xA700,
    "dataset_does_not_match": 0xA900,
    "cannot_understand": 0xC000,
    "processing_failure": 0x0110,
}


def class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid



def read_header(data: bytes) -> Any:
    """The dataset without its pixel data (quietly: warnings are for check_dataset)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def check_dataset(data: bytes, sop_class: str, uid: str) -> tuple[str, str] | None:
    """(status name, reason) when a received dataset is unreadable, truncated or not what the
    command said it is; None when it is a whole radiograph instance."""
    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            pixels = ds.get("PixelData")
        except Exception as exc:  # pydicom raises many types for damaged data
            return "cannot_understand", f"unreadable dataset ({type(exc).__name__}: {first_line(exc)})"
    worry = [str(w.message) for w in caught if "end of file" in str(w.message).lower() or "truncat" in str(w.message).lower()]
    if worry:
        return "cannot_understand", f"truncated dataset ({worry[0][:120]})"
    if pixels is None or "Rows" not in ds or "Columns" not in ds:
        return "cannot_understand", "no pixel data (or no Rows/Columns)"
    if str(ds.get("SOPInstanceUID", "")) != uid or str(ds.get("SOPClassUID", "")) != sop_class:
        return "dataset_does_not_match", "SOP Class/Instance UID in the dataset differ from the C-STORE request"
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("BitsAllocated", 8)) // 8
        if len(pixels) < need:
            return "cannot_understand", f"truncated pixel data ({len(pixels)} of {need} bytes)"
    return None


def problem_free_study(data: bytes) -> str | None:
    """The Study Instance UID of a received dataset, for the log line (header only, quietly)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID")
    except Exception:  # already checked by check_dataset; a log line never fails a C-STORE
        return None
    return str(uid) if uid else None
