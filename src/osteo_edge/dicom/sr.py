"""The answer as a DICOM object the hospital's system files beside the image: a Comprehensive SR.

Built with highdicom: a container "osteo-edge knee screening result" holding the status, the label,
the calibrated probability of every class, P(low BMD), the gate reason, the model seal and the
screening-aid statement, and an image reference to the source instance. Patient and study come from
the source header (highdicom copies them); the SR's UIDs are derived from the source UID and the
model seal, so a re-sent answer is the same object, not a second one.
"""

from __future__ import annotations

import re
from typing import Any

from ..artifact import DISCLAIMER
from ..edge_runtime.classifier import Prediction
from ..errors import require

SCHEME = "99OSTEOEDGE"  # private coding scheme (DICOM PS3.16 8.2: 99 prefix = local)
MANUFACTURER = "osteo-edge"


def _code(value: str, meaning: str, scheme: str = SCHEME) -> Any:
    hd = require("highdicom", "dicom")
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


# Type 2 attributes of the patient and study modules that highdicom copies from the source image:
# required to be present, allowed to be empty (PS3.3). Anonymised images often lack them.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName")
_PATH_RE = re.compile(r"(?<![\w.%])(?:[A-Za-z]:)?[\\/][\w.\-~]+(?:[\\/][\w.\-~]*)*")


def result_uids(study_uid: str, source_uid: str, seal: str | None) -> tuple[str, str]:
    """(series UID, SOP instance UID) of the SR answering ``source_uid`` of study ``study_uid`` with
    the model ``seal``: one result series per study (never shared across studies, so across patients),
    one result instance per source image; both the same whenever the same image is answered again."""
    from pydicom.uid import generate_uid

    seal = seal or "unsealed"
    return (generate_uid(entropy_srcs=["osteo-edge-series", study_uid, seal]),
            generate_uid(entropy_srcs=["osteo-edge-sr", study_uid, source_uid, seal]))


def evidence_header(source: Any) -> Any:
    """A copy of the source header with every Type 2 attribute the SR copies present (empty when
    the source lacks it): a missing PatientBirthDate is never a reason to drop the answer."""
    import copy

    ds = copy.copy(source)
    for keyword in TYPE2_COPIED:
        if keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
    return ds


def public_text(text: str) -> str:
    """Text fit for the SR: no file system path of the node (spool, results) ever leaves it."""
    return _PATH_RE.sub("<file>", text)


def _items(pred: Prediction, source: Any, seal: str | None) -> list[Any]:
    hd = require("highdicom", "dicom")
    sr = hd.sr
    contains = sr.RelationshipTypeValues.CONTAINS
    unit = _code("1", "no units", "UCUM")
    items = [
        sr.ImageContentItem(_code("OE001", "Source radiograph"), source.SOPClassUID, source.SOPInstanceUID,
                            relationship_type=contains),
        sr.TextContentItem(_code("OE002", "Screening status"), pred.status, relationship_type=contains),
        sr.TextContentItem(_code("OE003", "Predicted class"), pred.label or "none (rejected)", relationship_type=contains),
    ]
    for i, (label, p) in enumerate(pred.probabilities.items()):
        items.append(sr.NumContentItem(_code(f"OE1{i:02d}", f"Calibrated probability of {label}"), float(p), unit,
                                       relationship_type=contains))
    if pred.low_bmd_probability is not None:
        items.append(sr.NumContentItem(_code("OE004", "Probability of low bone mineral density"), float(pred.low_bmd_probability),
                                       unit, relationship_type=contains))
    if pred.reason:
        items.append(sr.TextContentItem(_code("OE005", "Input gate reason"), pred.reason, relationship_type=contains))
    items += [
        sr.TextContentItem(_code("OE006", "Result message"), public_text(pred.message)[:1024], relationship_type=contains),
        sr.TextContentItem(_code("OE007", "Model seal"), seal or "unsealed", relationship_type=contains),
        sr.TextContentItem(_code("OE008", "Screening aid statement"), DISCLAIMER, relationship_type=contains),
    ]
    return items


def build_sr(pred: Prediction, source: Any, seal: str | None) -> Any:
    """A highdicom ComprehensiveSR answering ``source`` (a pydicom header of the received image)."""
    hd = require("highdicom", "dicom")
    source = evidence_header(source)
    root = hd.sr.ContainerContentItem(_code("OE000", "osteo-edge knee osteoporosis screening result"))
    for item in _items(pred, source, seal):
        root.ContentSequence = [*getattr(root, "ContentSequence", []), item]
    series_uid, sop_uid = result_uids(str(source.StudyInstanceUID), str(source.SOPInstanceUID), seal)
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=root, series_instance_uid=series_uid, series_number=9901,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description="osteo-edge screening aid (not a diagnosis)",
    )


def sr_bytes(sr: Any) -> bytes:
    """The SR as a DICOM Part 10 file (what the results folder holds)."""
    import io

    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
