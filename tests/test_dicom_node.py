"""The DICOM node with real peers on loopback: dcmtk's echoscu/storescu send every transfer syntax,
the result SR arrives at a real Orthanc (checked through its REST API) and references the source;
refusals (unknown calling AE, wrong SOP class, truncated, oversized) get clean statuses and one log
line each while the node keeps serving."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from osteo_edge.dicom.decode import TRANSFER_SYNTAXES
from osteo_edge.dicom.node import STATUS, Destination, Node, NodeConfig
from osteo_edge.dicom.record import ClinicRecord
from osteo_edge.dicom.samples import all_syntaxes, new_instance_uid, storescu_config
from osteo_edge.errors import ConfigError

from dicom_support import free_port, require_knee, require_programs

DCMTK = ("img2dcm", "dcmconv", "dcmcrle", "dcmcjpeg", "dcmcjpls", "gdcmconv", "dcmodify", "storescu", "echoscu")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    require_programs(*DCMTK)
    return all_syntaxes(require_knee(), tmp_path_factory.mktemp("node-syntaxes"))


def wait_until(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def storescu(port, files, ts_uid, cfg_dir, aet="STORESCU", aec="OSTEOEDGE"):
    args = storescu_config(ts_uid, cfg_dir / f"{ts_uid}.cfg")
    return subprocess.run(["storescu", "-aet", aet, "-aec", aec, *args, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_forward_parse():
    assert Destination.parse("PACS@127.0.0.1:4242") == Destination("PACS", "127.0.0.1", 4242)
    for bad in ("PACS", "PACS@host", "@h:1", "P@h:99999", "P@h:x"):
        with pytest.raises(ConfigError, match="AE@HOST:PORT"):
            Destination.parse(bad)


def test_every_syntax_from_storescu_is_answered_like_the_file(samples, tmp_path):
    files = {}
    for ts in TRANSFER_SYNTAXES:  # one new SOP Instance UID per file (dcmodify), so each is answered
        files[ts.name] = tmp_path / f"{ts.name}.dcm"
        shutil.copy(samples[ts.name], files[ts.name])
        new_instance_uid(files[ts.name])
    cfg = NodeConfig(record=tmp_path / "rec" / "r.db", results=tmp_path / "results", port=0)
    with Node(cfg) as node:
        assert subprocess.run(["echoscu", "-aec", "OSTEOEDGE", "127.0.0.1", str(node.port)], timeout=30).returncode == 0
        for ts in TRANSFER_SYNTAXES:
            res = storescu(node.port, [files[ts.name]], ts.uid, tmp_path)
            assert res.returncode == 0, (ts.name, res.stderr)
        wait_until(lambda: node.record.count_instances() == len(TRANSFER_SYNTAXES) and node.idle(), what="answers")
        rows = {r["sop_instance_uid"]: r for r in node.record.rows()}
        for ts in TRANSFER_SYNTAXES:
            want = node.clf.predict(samples[f"base{ts.bits}"])
            got = rows[str(pydicom.dcmread(files[ts.name], stop_before_pixels=True).SOPInstanceUID)]
            assert got["transfer_syntax"] == ts.uid and got["calling_ae"] == "STORESCU"
            assert (got["status"], got["label"]) == (want.status, want.label), ts.name
            if ts.lossless:
                assert json.loads(got["probabilities"]) == want.probabilities, ts.name
        assert len(list((tmp_path / "results").glob("*.dcm"))) == len(TRANSFER_SYNTAXES)
        assert list(node.spool.incoming.iterdir()) == []


def _orthanc(tmp_path):
    require_programs("Orthanc")
    dicom_port, http_port = free_port(), free_port()
    conf = {"Name": "osteo-edge-test", "StorageDirectory": str(tmp_path / "orthanc-db"), "IndexDirectory": str(tmp_path / "orthanc-db"),
            "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": []}
    (tmp_path / "orthanc.json").write_text(json.dumps(conf))
    proc = subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"

    def up():
        try:
            return urllib.request.urlopen(f"{url}/system", timeout=2).status == 200
        except OSError:
            return False

    wait_until(up, 30, "Orthanc")
    return proc, dicom_port, url


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_result_sr_arrives_at_orthanc_and_references_the_source(samples, tmp_path):
    proc, dicom_port, url = _orthanc(tmp_path)
    try:
        cfg = NodeConfig(record=tmp_path / "r.db", port=0, forward=Destination("ORTHANC", "127.0.0.1", dicom_port))
        src_uid = str(pydicom.dcmread(samples["jpeg-ls"], stop_before_pixels=True).SOPInstanceUID)
        with Node(cfg) as node:
            assert storescu(node.port, [samples["jpeg-ls"]], TRANSFER_SYNTAXES[8].uid, tmp_path).returncode == 0
            wait_until(lambda: node.record.delivered(src_uid), what="delivery")
            row = next(node.record.rows())
        wait_until(lambda: len(_get(f"{url}/instances")) == 1, 30, "the SR in Orthanc")
        oid = _get(f"{url}/instances")[0]
        tags = _get(f"{url}/instances/{oid}/simplified-tags")
        assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.33" and tags["SOPInstanceUID"] == row["result_uid"]
        text = json.dumps(tags)
        assert src_uid in text and row["label"] in text and "not a diagnosis" in text
        assert tags["StudyInstanceUID"] == str(pydicom.dcmread(samples["jpeg-ls"], stop_before_pixels=True).StudyInstanceUID)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _scu_store(port, dataset, aet="TESTSCU", syntax=None):
    """pynetdicom as the sending peer: the exact C-STORE status (None: association refused)."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    if isinstance(dataset, Path):
        meta = pydicom.dcmread(dataset, stop_before_pixels=True)
        ae.add_requested_context(meta.SOPClassUID, str(meta.file_meta.TransferSyntaxUID))
    else:
        ae.add_requested_context(dataset.SOPClassUID, syntax or "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="OSTEOEDGE")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()


def test_refusals_are_clean_and_the_node_keeps_serving(samples, tmp_path, caplog):
    ct = pydicom.dcmread(samples["base8"])
    ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ct.file_meta.MediaStorageSOPClassUID = ct.SOPClassUID
    truncated = tmp_path / "truncated.dcm"
    data = samples["base8"].read_bytes()
    truncated.write_bytes(data[: len(data) - 50_000])
    cfg = NodeConfig(record=tmp_path / "r.db", port=0, allow_ae=["STORESCU", "TESTSCU"], max_bytes=400_000)
    caplog.set_level(logging.INFO, logger="osteo_edge.dicom.node")
    with Node(cfg) as node:
        res = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "OSTEOEDGE", "127.0.0.1", str(node.port)], capture_output=True, timeout=30)
        assert res.returncode != 0 and b"Rejected" in res.stdout + res.stderr
        assert _scu_store(node.port, ct) == STATUS["sop_class_not_supported"] == 0x0122
        assert _scu_store(node.port, truncated) == STATUS["cannot_understand"]
        assert _scu_store(node.port, samples["base12"]) == STATUS["out_of_resources"]  # 512 KB > 400 KB limit
        assert _scu_store(node.port, samples["base8"]) == 0  # still serving
        for cls in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1"):
            ds = pydicom.dcmread(samples["base8"])  # CR, DX for presentation, DX for processing
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = cls
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.PatientName, ds.PatientID = "DOE^JANE", "PID-4711"
            assert _scu_store(node.port, ds) == 0, cls
        wait_until(lambda: node.record.count_instances() == 4 and node.idle(), what="the good instances")
    everything = "\n".join(r.getMessage() for r in caplog.records) + (tmp_path / "r.db").read_bytes().decode("latin-1")
    everything += (tmp_path / "r.db-wal").read_bytes().decode("latin-1") if (tmp_path / "r.db-wal").exists() else ""
    assert "DOE" not in everything and "PID-4711" not in everything  # patient identifiers: not logged, not recorded
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(refusals) == 4, refusals
    assert all("\n" not in m for m in refusals)
    for words in ("'STRANGER'", "not a radiograph", "truncated", "over the 400000-byte limit (--max-mb 0.38147)"):
        assert any(words in m for m in refusals), words
    assert all(r.levelno < logging.ERROR for r in caplog.records if r.name.startswith("osteo_edge"))


def test_a_sender_streaming_past_the_cap_is_aborted_and_the_node_keeps_serving(samples, tmp_path, caplog):
    """A dataset several times --max-bytes (dcmtk's storescu as the sender) is cut off mid-stream by an
    A-ABORT once the association has sent more than stream_cap bytes, before pynetdicom holds it whole."""
    import numpy as np

    from osteo_edge.dicom.node import stream_cap

    big = pydicom.dcmread(samples["base8"])
    big.Rows, big.Columns = 2400, 2000  # 4.8 MB of 8-bit pixels
    big.PixelData = np.random.default_rng(0).integers(0, 255, (2400, 2000), dtype=np.uint8).tobytes()
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / "big.dcm"
    big.save_as(path)
    cfg = NodeConfig(record=tmp_path / "r.db", port=0, allow_ae=["STORESCU", "TESTSCU"], max_bytes=400_000)
    assert stream_cap(cfg.max_bytes) < 4_800_000
    caplog.set_level(logging.INFO, logger="osteo_edge.dicom.node")
    with Node(cfg) as node:
        res = storescu(node.port, [path], str(big.file_meta.TransferSyntaxUID), tmp_path)
        assert res.returncode != 0 or "abort" in (res.stdout + res.stderr).lower(), res.stdout + res.stderr
        assert _scu_store(node.port, samples["base8"]) == 0  # still serving
        wait_until(lambda: node.record.count_instances() == 1 and node.idle(), what="the good instance")
        assert node._streamed == {}  # nothing left counted for closed associations
    aborted = [r.getMessage() for r in caplog.records if "aborted" in r.getMessage()]
    assert len(aborted) == 1 and f"--max-mb {400_000 / 2**20:g}" in aborted[0] and "\n" not in aborted[0]
    assert not any("max-bytes" in r.getMessage() for r in caplog.records)  # the option is --max-mb


def test_serve_cli_port_in_use_is_one_line(tmp_path):
    import socket

    from typer.testing import CliRunner

    from osteo_edge.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["serve", "--record", str(tmp_path / "r.db"), "--port", str(port)])
    assert res.exit_code == 1 and "cannot listen on 127.0.0.1" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["serve", "--record", str(tmp_path / "r.db"), "--forward", "PACS"])
    assert res.exit_code == 1 and "AE@HOST:PORT" in res.output


def test_unreachable_destination_keeps_the_result_and_records_the_answer(samples, tmp_path):
    cfg = NodeConfig(record=tmp_path / "r.db", port=0, forward=Destination("NOBODY", "127.0.0.1", free_port()))
    with Node(cfg) as node:
        assert _scu_store(node.port, samples["base8"]) == 0
        wait_until(lambda: node.record.count_instances() == 1 and node.idle(), what="the answer")
        wait_until(lambda: node.record.events(), what="the failed delivery recorded")
        events = node.record.events()
        unsent = list((node.spool.root / "unsent").glob("*.dcm"))
    assert {e["event"] for e in events} == {"forward_failed"} and len(unsent) == 1
    assert pydicom.dcmread(unsent[0]).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
