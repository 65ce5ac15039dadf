"""The answer as a DICOM object the hospital's system files beside the image: a Comprehensive SR
holding a TID 1500 Measurement Report.

Why TID 1500: it is the one general-purpose SR template for an algorithm's findings on images that
PACS viewers (OHIF, Horos, Orthanc's Stone viewer, vendor viewers) and highdicom read back; a knee
screening result is a classification of one image, which TID 1500 carries as one TID 1501
measurement group (image-level, no region): the source image (TID 1600 image library and the group's
source image), the algorithm (name, version = the model seal), the finding site (SCT Knee), the
calibrated probability of each class and P(low BMD) as measurements (DCM 122157 "Probability" for the
class label is not enough on its own, so each carries its own concept), the screening status and the
predicted class as qualitative evaluations, and the result sentence, the gate reason and the
screening-aid statement as TEXT qualitative evaluations. Codes from DCM, SCT and UCUM where one exists
(pydicom's code dictionary); the class labels and statuses, which come from the model bundle, use the
local scheme 99OSTEOEDGE. TID 2000 (Basic Diagnostic Imaging Report) fits a radiologist's narrative,
not an algorithm's numbers; the CAD templates (TID 4000 mammography, 4100 chest) are disease-specific.

Patient and study come from the source header (highdicom copies them; Type 2 attributes it lacks are
written empty); the SR's UIDs are derived from the study and source UIDs and the model seal, so a
re-sent answer is the same object, and every answer in a study shares one result series.
"""

from __future__ import annotations

import copy
import functools
import re
import struct
import threading
from dataclasses import dataclass
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
    ds = copy.copy(source)
    for keyword in TYPE2_COPIED:
        if keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
    return ds


def public_text(text: str) -> str:
    """Text fit for the SR: no file system path of the node (spool, results) ever leaves it."""
    return _PATH_RE.sub("<file>", text)


def _concept(value: str, meaning: str) -> Any:
    return _code(value, meaning[:64])


def _label_code(label: str) -> Any:
    return _concept(f"CLASS-{label}"[:16], label)


def _report(pred: Prediction, source: Any, seal: str | None) -> Any:
    """The TID 1500 content tree for one answered image."""
    hd = require("highdicom", "dicom")
    from pydicom.sr.codedict import codes

    sr = hd.sr
    version = (seal or "unsealed")[:64]
    device = sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(seal), name="osteo-edge", manufacturer_name=MANUFACTURER, model_name="knee osteoporosis screening aid"),
    )
    unit = codes.UCUM.NoUnits
    measurements = [
        sr.Measurement(name=_concept(f"P-{label}"[:16], f"Probability of {label}"), value=float(p), unit=unit)
        for label, p in pred.probabilities.items()
    ]
    if pred.low_bmd_probability is not None:
        measurements.append(sr.Measurement(name=_concept("P-LOWBMD", "Probability of low bone mineral density"),
                                           value=float(pred.low_bmd_probability), unit=unit))
    evaluations = [sr.QualitativeEvaluation(_concept("STATUS", "Screening status"), _concept(f"STATUS-{pred.status}"[:16], pred.status))]
    if pred.label:
        evaluations.append(sr.QualitativeEvaluation(_concept("CLASS", "Predicted class"), _label_code(pred.label)))
    group = sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=sr.TrackingIdentifier(uid=_tracking_uid(str(source.SOPInstanceUID), seal),
                                                  identifier="osteo-edge knee screening"),
        finding_type=codes.DCM.Finding,
        algorithm_id=sr.AlgorithmIdentification(name="osteo-edge", version=version),
        finding_sites=[sr.FindingSite(codes.SCT.Knee)],
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    text = sr.CodedConcept(value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations")
    notes = [public_text(pred.message)[:1024]]
    if pred.reason:
        notes.append(f"Reason: {pred.reason}")
    notes.append(DISCLAIMER)
    group_item = group[0]
    group_item.ContentSequence.extend(
        sr.TextContentItem(text, note, relationship_type=sr.RelationshipTypeValues.CONTAINS) for note in notes)
    # No image library entries (TID 1600 descriptors need e.g. ImagerPixelSpacing and PatientOrientation, which
    # many radiographs lack): the measurement group cites the image, and so does the evidence sequence.
    return sr.MeasurementReport(observation_context=sr.ObservationContext(observer_device_context=device),
                                procedure_reported=_concept("KNEE-SCREEN", "Knee radiograph osteoporosis screening"),
                                imaging_measurements=[group])


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=list(parts))


def _tracking_uid(source_uid: str, seal: str | None) -> str:
    return _uid("osteo-edge-tracking", source_uid, (seal or "unsealed")[:64])


def device_uid(seal: str | None) -> str:
    """The observer device's UID: one per model (seal)."""
    return _uid("osteo-edge-device", seal or "unsealed")


def build_sr(pred: Prediction, source: Any, seal: str | None) -> Any:
    """The result SR (a pydicom Dataset) answering ``source`` (a pydicom header of the received image);
    what :func:`result_sr` encodes, read back."""
    import io

    import pydicom

    return pydicom.dcmread(io.BytesIO(result_sr(pred, source, seal)[1]))


def result_sr(pred: Prediction, source: Any, seal: str | None) -> tuple[str, bytes]:
    """(SOP Instance UID, Part 10 bytes) of the result SR answering ``source``: the SR of
    :func:`build_sr_highdicom`, made fast. highdicom takes 50-150 ms per SR on the loaded 2-core
    machine (its checks walk and deep-copy the tree) and pydicom 20-40 ms to encode it: more than the
    model. So highdicom builds one template per result shape (labels, which items are present) with
    sentinel values; its sequences are encoded once, with undefined lengths, so that each answer only
    replaces the sentinels' values (and their own length fields) in those bytes, and encodes the few
    top-level elements (UIDs, patient and study, times). The tests check the result is highdicom's."""
    import datetime

    source = evidence_header(source)
    template = _template(pred, seal)
    series_uid, sop_uid = result_uids(str(source.StudyInstanceUID), str(source.SOPInstanceUID), seal)
    uids = {_S_SOP: str(source.SOPInstanceUID), _S_CLASS: str(source.SOPClassUID), _S_STUDY: str(source.StudyInstanceUID),
            _S_SERIES: str(source.SeriesInstanceUID), _tracking_uid(_S_SOP, seal): _tracking_uid(str(source.SOPInstanceUID), seal)}
    texts, numbers, codes = _sentinel_values(pred)
    values = [*texts.values(), *codes.values()]
    if not all(v.isascii() for v in values):  # the byte path writes ASCII values only
        ds = _dataset_path(template, uids, texts, numbers, codes)
    else:
        ds = None
    top = _fresh(template.top)
    top.SOPInstanceUID = sop_uid
    top.SeriesInstanceUID = series_uid
    for keyword in _patient_study_keywords(str(source.SOPClassUID)):  # what highdicom copies from the evidence
        if keyword in source:
            top[keyword] = source[keyword]
    if "SpecificCharacterSet" in source:
        top.SpecificCharacterSet = source.SpecificCharacterSet
    elif "SpecificCharacterSet" in top:
        del top.SpecificCharacterSet
    now = datetime.datetime.now()
    top.ContentDate = top.InstanceCreationDate = now.strftime("%Y%m%d")
    top.ContentTime = top.InstanceCreationTime = now.strftime("%H%M%S.%f")
    if ds is not None:  # non-ASCII text: the slower path through pydicom
        for elem in top:
            ds[elem.tag] = elem
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        return sop_uid, sr_bytes(ds)
    swaps = _byte_swaps(uids, texts, numbers, codes)
    sequences = {}
    for tag, raw in template.sequences.items():
        for old, new in swaps:
            raw = raw.replace(old, new)
        sequences[tag] = raw
    return sop_uid, _encode(top, sequences, template.file_meta, sop_uid)


# -- the template path --------------------------------------------------------------------------
_TEMPLATES: dict[tuple, Any] = {}
_TEMPLATE_LOCK = threading.Lock()
_S_SOP, _S_STUDY, _S_SERIES = (f"2.25.9{i:02d}{'0' * 30}1" for i in range(3))
_S_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # the template's source is a Secondary Capture image (highdicom wants a known IOD)
_S_BASE = 9000.5  # sentinel probabilities: 9000.5, 9001.5, ... (never a probability)


@functools.lru_cache(maxsize=32)
def _patient_study_keywords(sop_class: str) -> tuple[str, ...]:
    """Root attributes of the Patient and Study modules of ``sop_class``'s IOD: what highdicom's
    ``copy_patient_and_study_information`` copies (from its own tables of the standard)."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    iod = get_sop_class_iod_map()[sop_class]
    attrs = get_module_attribute_map()
    return tuple(str(item["keyword"]) for module in get_iod_module_map()[iod] if module["ie"] in ("Patient", "Study")
                 for item in attrs[module["key"]] if len(item["path"]) == 0)


@dataclass
class _Template:
    top: Any  # the template's top-level elements that are not sequences (a pydicom Dataset)
    sequences: dict[int, bytes]  # tag -> the encoded sequence element (Explicit VR Little Endian, undefined lengths)
    file_meta: Any
    dataset: bytes  # the whole template, for the pydicom path


def _template(pred: Prediction, seal: str | None) -> _Template:
    import io

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    key = _shape(pred, seal)
    with _TEMPLATE_LOCK:
        found = _TEMPLATES.get(key)
        if found is not None:
            return found
        data = sr_bytes(build_sr_highdicom(_sentinel_prediction(pred), _sentinel_source(), seal))
        ds = pydicom.dcmread(io.BytesIO(data))
        top, sequences = pydicom.Dataset(), {}
        for elem in ds:
            if elem.VR != "SQ":
                top.add(elem)
                continue
            _undefined_lengths(elem)
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, False
            write_data_element(fp, elem, ["iso8859"])
            sequences[int(elem.tag)] = fp.getvalue()
        found = _TEMPLATES[key] = _Template(top, sequences, ds.file_meta, data)
        return found


def _fresh(ds: Any) -> Any:
    """A copy of a flat dataset whose elements can be set without touching the template's."""
    import pydicom

    out = pydicom.Dataset()
    for elem in ds:
        out.add(copy.copy(elem))
    return out


def _undefined_lengths(elem: Any) -> None:
    """Every sequence and item under ``elem`` with undefined length: a value may then change length
    without any enclosing length field changing."""
    elem.is_undefined_length = True
    for item in elem.value:
        item.is_undefined_length_sequence_item = True
        for sub in item:
            if sub.VR == "SQ":
                _undefined_lengths(sub)


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _short(vr: bytes, value: bytes) -> bytes:
    """An Explicit VR LE value with a 2-byte length: VR, length, value."""
    return vr + struct.pack("<H", len(value)) + value


def _byte_swaps(uids: dict[str, str], texts: dict[str, str], numbers: dict[float, float], codes: dict[str, str]) -> list[tuple[bytes, bytes]]:
    from pydicom.valuerep import DS

    swaps = []
    for old, new in uids.items():
        swaps.append((_short(b"UI", _pad(old.encode(), b"\0")), _short(b"UI", _pad(new.encode(), b"\0"))))
    for old, new in texts.items():  # TextValue is UT: VR, 2 reserved bytes, 4-byte length
        o, n = _pad(old.encode(), b" "), _pad(new.encode(), b" ")
        swaps.append((b"UT\0\0" + struct.pack("<I", len(o)) + o, b"UT\0\0" + struct.pack("<I", len(n)) + n))
    for old, new in codes.items():
        for vr in (b"SH", b"LO"):
            swaps.append((_short(vr, _pad(old.encode(), b" ")), _short(vr, _pad(new.encode(), b" "))))
    for old, new in numbers.items():
        swaps.append((_short(b"FD", struct.pack("<d", old)), _short(b"FD", struct.pack("<d", new))))
        o, n = str(DS(old, auto_format=True)).encode(), str(DS(new, auto_format=True)).encode()
        swaps.append((_short(b"DS", _pad(o, b" ")), _short(b"DS", _pad(n, b" "))))
    return swaps


def _encode(top: Any, sequences: dict[int, bytes], file_meta: Any, sop_uid: str) -> bytes:
    """Part 10 bytes: preamble, file meta, then the top-level elements and the ready sequences in tag order."""
    from pydicom.charset import convert_encodings
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element, write_file_meta_info

    meta = copy.copy(file_meta)
    meta.MediaStorageSOPInstanceUID = sop_uid
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    encodings = convert_encodings(top.get("SpecificCharacterSet", "ISO_IR 6"))
    elements = {int(e.tag): e for e in top}
    for tag in sorted({*elements, *sequences}):
        if tag in sequences:
            fp.write(sequences[tag])
        else:
            write_data_element(fp, elements[tag], encodings)
    return fp.getvalue()


def _dataset_path(template: _Template, uids: dict[str, str], texts: dict[str, str], numbers: dict[float, float],
                  codes: dict[str, str]) -> Any:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(template.dataset))
    _patch(ds, uids, texts, numbers, codes)
    return ds


def _shape(pred: Prediction, seal: str | None) -> tuple:
    return (seal, tuple(pred.probabilities), pred.low_bmd_probability is not None, pred.label is not None,
            pred.reason is not None)


def _sentinel_prediction(pred: Prediction) -> Prediction:
    import dataclasses

    probs = {label: _S_BASE + i for i, label in enumerate(pred.probabilities)}
    return dataclasses.replace(
        pred, status="@S", label="@L" if pred.label is not None else None, probabilities=probs, message="@@T0@@",
        reason="@@T1@@" if pred.reason is not None else None,
        low_bmd_probability=_S_BASE + len(probs) if pred.low_bmd_probability is not None else None)


def _sentinel_values(pred: Prediction) -> tuple[dict[str, str], dict[float, float], dict[str, str]]:
    texts = {"@@T0@@": public_text(pred.message)[:1024], "Reason: @@T1@@": f"Reason: {pred.reason}"}
    numbers = {_S_BASE + i: float(p) for i, p in enumerate(pred.probabilities.values())}
    if pred.low_bmd_probability is not None:
        numbers[_S_BASE + len(numbers)] = float(pred.low_bmd_probability)
    status = _concept(f"STATUS-{pred.status}"[:16], pred.status)
    codes = {"STATUS-@S": status.value, "@S": status.meaning}
    if pred.label is not None:
        label = _label_code(pred.label)
        codes.update({"CLASS-@L": label.value, "@L": label.meaning})
    return texts, numbers, codes


def _sentinel_source() -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = _S_CLASS, _S_SOP, _S_STUDY, _S_SERIES
    for keyword in TYPE2_COPIED:
        setattr(ds, keyword, "")
    ds.Modality = "OT"
    ds.Rows = ds.Columns = ds.SamplesPerPixel = 1  # what highdicom checks an image for
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def _patch(ds: Any, uids: dict[str, str], texts: dict[str, str], numbers: dict[float, float], codes: dict[str, str]) -> None:
    """Replace the template's sentinel values, everywhere in the tree, by the answer's."""
    from pydicom.valuerep import DS

    for elem in ds:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                _patch(item, uids, texts, numbers, codes)
        elif vr == "UI":
            if elem.value in uids:
                elem.value = uids[elem.value]
        elif elem.keyword == "TextValue":
            if elem.value in texts:
                elem.value = texts[elem.value]
        elif elem.keyword in ("CodeValue", "CodeMeaning"):
            if elem.value in codes:
                elem.value = codes[elem.value]
        elif elem.keyword == "FloatingPointValue":
            if float(elem.value) in numbers:
                elem.value = numbers[float(elem.value)]
        elif elem.keyword == "NumericValue":
            if float(elem.value) in numbers:
                elem.value = DS(numbers[float(elem.value)], auto_format=True)


def build_sr_highdicom(pred: Prediction, source: Any, seal: str | None) -> Any:
    """A highdicom ComprehensiveSR (TID 1500) answering ``source`` (a pydicom header of the received image)."""
    hd = require("highdicom", "dicom")
    source = evidence_header(source)
    series_uid, sop_uid = result_uids(str(source.StudyInstanceUID), str(source.SOPInstanceUID), seal)
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=_report(pred, source, seal), series_instance_uid=series_uid, series_number=9901,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description="osteo-edge screening aid (not a diagnosis)",
    )


def sr_bytes(sr: Any) -> bytes:
    """The SR as a DICOM Part 10 file (what the results folder holds)."""
    import io

    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
