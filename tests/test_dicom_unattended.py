"""What a hospital needs to leave the node alone, with real peers (dcmtk, Orthanc) on loopback: one
result series per study (never shared across patients), answers for anonymised images lacking Type 2
attributes, a study re-sent from the PACS with our own SR in it accepted whole."""

from __future__ import annotations

import copy
import stat
import subprocess
import urllib.request
from pathlib import Path

import pydicom
import pytest

from osteo_edge.dicom.node import Destination, Node, NodeConfig
from osteo_edge.dicom.sr import result_uids

from dicom_support import Orthanc, free_port, require_knee, require_programs, wait_until

SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.34")


@pytest.fixture(scope="module")
def base8(tmp_path_factory):
    require_programs("img2dcm", "storescu", "echoscu")
    from osteo_edge.dicom.samples import base_images

    return base_images(require_knee(), tmp_path_factory.mktemp("unattended"))[8]


def make_instance(base: Path, out: Path, patient: str, study_uid: str, drop: tuple[str, ...] = ()) -> Path:
    """A copy of ``base`` as a new instance of ``study_uid`` for ``patient`` (name and ID), without ``drop``."""
    ds = pydicom.dcmread(base)
    ds = copy.deepcopy(ds)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"{patient}^TEST", f"ID-{patient}", "19500101", "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for keyword in drop:
        if keyword in ds:
            delattr(ds, keyword)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


def storescu(port, files, aec="OSTEOEDGE", aet="STORESCU", timeout=120):
    return subprocess.run(["/usr/bin/storescu" if Path("/usr/bin/storescu").exists() else "storescu", "-aet", aet, "-aec", aec,
                           "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True, timeout=timeout)


def test_result_uids_one_series_per_study():
    s1, i1 = result_uids("1.2.3", "1.2.3.1", "seal")
    s2, i2 = result_uids("1.2.3", "1.2.3.2", "seal")
    s3, i3 = result_uids("1.2.4", "1.2.4.1", "seal")
    assert s1 == s2 != s3 and len({i1, i2, i3}) == 3
    assert result_uids("1.2.3", "1.2.3.1", "seal") == (s1, i1)  # deterministic: a re-sent answer is the same object
    assert result_uids("1.2.3", "1.2.3.1", "other seal")[0] != s1  # another model: another series


def test_studies_of_different_patients_get_distinct_result_series(base8, tmp_path):
    """Two patients, three images (two in one study), the SRs forwarded to a real Orthanc: two SR series,
    each in its patient's study."""
    node_port = free_port()
    work = tmp_path / "in"
    study_a, study_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    a1 = make_instance(base8, work / "a1.dcm", "ALPHA", study_a)
    a2 = make_instance(base8, work / "a2.dcm", "ALPHA", study_a)
    b1 = make_instance(base8, work / "b1.dcm", "BRAVO", study_b)
    with Orthanc(tmp_path, {"osteo": ("OSTEOEDGE", node_port)}) as pacs:
        cfg = NodeConfig(record=tmp_path / "r.db", port=node_port, results=tmp_path / "results",
                         forward=Destination("ORTHANC", "127.0.0.1", pacs.dicom_port))
        with Node(cfg) as node:
            res = storescu(node.port, [a1, a2, b1])
            assert res.returncode == 0, res.stderr
            wait_until(lambda: len(pacs.get("/instances")) == 3, 60, "three SRs in Orthanc")
            srs = [pacs.get(f"/instances/{i}/simplified-tags") for i in pacs.get("/instances")]
            by_patient = {}
            for t in srs:
                assert t["SOPClassUID"] in SR_CLASSES and t["Modality"] == "SR"
                by_patient.setdefault(t["PatientID"], []).append(t)
            assert {k: len(v) for k, v in by_patient.items()} == {"ID-ALPHA": 2, "ID-BRAVO": 1}
            series_a = {t["SeriesInstanceUID"] for t in by_patient["ID-ALPHA"]}
            series_b = {t["SeriesInstanceUID"] for t in by_patient["ID-BRAVO"]}
            assert len(series_a) == 1 and len(series_b) == 1 and series_a != series_b  # one series per study
            assert {t["StudyInstanceUID"] for t in by_patient["ID-ALPHA"]} == {study_a}
            assert {t["StudyInstanceUID"] for t in by_patient["ID-BRAVO"]} == {study_b}
    sr_files = sorted((tmp_path / "results").glob("*.dcm"))
    assert len(sr_files) == 3


def test_a_study_resent_from_the_pacs_with_our_sr_succeeds(base8, tmp_path):
    """The PACS holds a study with its images and our SR (and a Key Object Selection would do the same):
    it sends the whole study to the node; every object gets a success status, so the push succeeds."""
    node_port = free_port()
    study = pydicom.uid.generate_uid()
    images = [make_instance(base8, tmp_path / "in" / f"a{i}.dcm", "ALPHA", study) for i in range(2)]
    with Orthanc(tmp_path, {"osteo": ("OSTEOEDGE", node_port)}) as pacs:
        cfg = NodeConfig(record=tmp_path / "r.db", port=node_port, forward=Destination("ORTHANC", "127.0.0.1", pacs.dicom_port))
        with Node(cfg) as node:
            assert storescu(pacs.dicom_port, images, aec="ORTHANC").returncode == 0  # the modality stores at the PACS
            assert storescu(node.port, images).returncode == 0  # ... and at the node, which answers to the PACS
            wait_until(lambda: len(pacs.get("/instances")) == 4, 60, "two SRs beside the two images in Orthanc")
            (oid,) = pacs.get("/studies")
            pacs.post("/modalities/osteo/store", {"Resources": [oid], "Synchronous": True})  # HTTP 500 if any object is refused
            wait_until(node.idle, 60, "the node idle")
            assert node.record.count_instances() == 2  # the images again: recorded once; the SRs: ignored
            assert len(pacs.get("/instances")) == 4  # the answers re-sent are the same objects: no new SR
            sr = next(i for i in pacs.get("/instances") if pacs.get(f"/instances/{i}/simplified-tags")["Modality"] == "SR")
            sr_file = tmp_path / "sr.dcm"
            with urllib.request.urlopen(f"{pacs.url}/instances/{sr}/file", timeout=10) as r:
                sr_file.write_bytes(r.read())
            res = storescu(node.port, [sr_file])  # dcmtk, directly: status 0000, not 0122
            assert res.returncode == 0 and "0x0122" not in res.stdout + res.stderr, res.stderr


def test_missing_type2_attributes_are_written_empty(base8, tmp_path):
    """An anonymised image without PatientBirthDate, PatientSex, AccessionNumber, StudyID,
    ReferringPhysicianName still gets its SR (those attributes present and empty)."""
    dropped = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyTime")
    src = make_instance(base8, tmp_path / "anon.dcm", "ANON", pydicom.uid.generate_uid(), drop=dropped)
    cfg = NodeConfig(record=tmp_path / "r.db", port=0, results=tmp_path / "results")
    with Node(cfg) as node:
        assert storescu(node.port, [src]).returncode == 0
        wait_until(lambda: node.record.count_instances() == 1 and node.idle(), what="the answer")
        row = next(node.record.rows())
    assert row["result_uid"]
    sr_path = tmp_path / "results" / f"{row['result_uid']}.dcm"
    assert stat.S_IMODE(sr_path.stat().st_mode) == 0o600  # owner-only, like the record
    sr = pydicom.dcmread(sr_path)
    for keyword in dropped:
        assert keyword in sr and not sr[keyword].value, keyword
    assert sr.PatientID == "ID-ANON"
