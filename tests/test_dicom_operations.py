"""Running the node unattended: its log (one line per image and event, UTC times, UIDs, no patient
names, no third-party chatter), `record status`, `record export --since/--until` on real ISO 8601
times, owner-only files, one node per record, the called AE title, a printed echoscu line that works,
no internal path in a result, and `record stats --png` saying when it cannot draw."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from osteo_edge.cli import app
from osteo_edge.dicom.node import Destination, Node, NodeConfig
from osteo_edge.dicom.record import ClinicRecord, InputIdentity, export_csv
from osteo_edge.edge_runtime import Prediction
from osteo_edge.errors import ConfigError

from dicom_support import free_port, require_knee, require_programs, wait_until

runner = CliRunner()
BUNDLE = {"bundle": "b", "format": "tflite-int8", "seal": "s" * 64, "model_sha256": "m" * 64}
ECHOSCU = "/usr/bin/echoscu" if Path("/usr/bin/echoscu").exists() else "echoscu"
STORESCU = "/usr/bin/storescu" if Path("/usr/bin/storescu").exists() else "storescu"
CLI = "from osteo_edge.cli import main; main()"


def _pred():
    return Prediction("x", "ok", "Normal", {"Normal": 0.7, "Osteopenia": 0.2, "Osteoporosis": 0.1}, "msg", 12.5, 0.3, None)


@pytest.fixture(scope="module")
def base8(tmp_path_factory):
    require_programs("img2dcm", "storescu", "echoscu")
    from osteo_edge.dicom.samples import base_images

    return base_images(require_knee(), tmp_path_factory.mktemp("ops"))[8]


def _copy(base, out, **attrs):
    ds = copy.deepcopy(pydicom.dcmread(base))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(out)
    return out


def test_since_and_until_are_times_not_text(tmp_path):
    with ClinicRecord(tmp_path / "r.db") as rec:
        rec.append(_pred(), InputIdentity(sha256="a"), BUNDLE, "predict")
        t = dt.datetime.fromisoformat(next(rec.rows())["recorded_at"])

        def n(since=None, until=None):
            return export_csv(rec, tmp_path / "x.csv", since, until)[1]

        later, earlier = t + dt.timedelta(minutes=1), t - dt.timedelta(minutes=1)
        assert n(since=later.strftime("%Y-%m-%d %H:%M")) == 0  # a space instead of T: still a time (was: text order)
        assert n(since=earlier.strftime("%Y-%m-%d %H:%M")) == 1
        plus2 = dt.timezone(dt.timedelta(hours=2))
        assert n(since=later.astimezone(plus2).isoformat()) == 0  # the same instant in another zone
        assert n(since=earlier.astimezone(plus2).isoformat()) == 1
        assert n(until=earlier.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()) == 0
        assert n(until=later.strftime("%Y-%m-%dT%H:%MZ")) == 1
        assert n(since=t.strftime("%Y-%m-%d"), until=t.strftime("%Y-%m-%d")) == 1  # a date alone: the whole day
        for bad in ("yesterday", "2026-13-01", "07/12/2026", "2026-12-07T25:00"):
            with pytest.raises(ConfigError, match="ISO 8601"):
                n(since=bad)
        with pytest.raises(ConfigError, match="--until"):
            n(since="2026-12-07", until="2026-12-06")
    res = runner.invoke(app, ["record", "export", "--record", str(tmp_path / "r.db"), "--csv", str(tmp_path / "y.csv"), "--until", "soon"])
    assert res.exit_code == 1 and "--until 'soon' is not an ISO 8601" in res.output and "Traceback" not in res.output


def test_export_and_chart_are_owner_only_and_a_missing_matplotlib_is_said(tmp_path, monkeypatch):
    with ClinicRecord(tmp_path / "r.db") as rec:
        rec.append(_pred(), InputIdentity(sha256="a"), BUNDLE, "predict")
    res = runner.invoke(app, ["record", "export", "--record", str(tmp_path / "r.db"), "--csv", str(tmp_path / "e.csv")])
    assert res.exit_code == 0 and stat.S_IMODE((tmp_path / "e.csv").stat().st_mode) == 0o600
    pytest.importorskip("matplotlib")
    res = runner.invoke(app, ["record", "stats", "--record", str(tmp_path / "r.db"), "--png", str(tmp_path / "s.png")])
    assert res.exit_code == 0 and stat.S_IMODE((tmp_path / "s.png").stat().st_mode) == 0o600
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    res = runner.invoke(app, ["record", "stats", "--record", str(tmp_path / "r.db"), "--png", str(tmp_path / "t.png")])
    assert res.exit_code == 0 and "matplotlib is not installed" in res.output and not (tmp_path / "t.png").exists()


def test_serve_logs_one_line_per_image_and_its_echoscu_line_works(base8, tmp_path):
    """The real CLI with --allow-ae: the printed echoscu line passes; each image gives one 'received'
    and one 'answered' line at the default level, each with a UTC time and the UID, no patient name and
    nothing from pynetdicom."""
    port = free_port()
    files = [_copy(base8, tmp_path / f"i{i}.dcm", PatientName="DOE^JANE", PatientID="PID-4711") for i in range(3)]
    err = open(tmp_path / "serve.err", "wb")
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--record", str(tmp_path / "r.db"), "--port", str(port),
                             "--allow-ae", "CR_ROOM1", "--threads", "1"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        hint = next(ln for ln in lines if ln.startswith("test it:")).split(":", 1)[1].split()
        assert hint[0] == "echoscu"
        assert subprocess.run([ECHOSCU, *hint[1:]], capture_output=True, timeout=30).returncode == 0, hint
        res = subprocess.run([STORESCU, "-aet", "CR_ROOM1", "-aec", "OSTEOEDGE", "127.0.0.1", str(port), *map(str, files)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        db = tmp_path / "r.db"
        wait_until(lambda: db.exists() and ClinicRecord(db, create=False).count_instances() == 3, 60, "three answers")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        err.close()
    log = (tmp_path / "serve.err").read_text()
    assert "DOE" not in log and "PID-4711" not in log and "pynetdicom" not in log and "Traceback" not in log
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        mine = [ln for ln in log.splitlines() if uid in ln]
        assert [ln.split()[2] for ln in mine] == ["received", "answered"], mine
        assert all(re.match(stamp, ln) for ln in mine), mine
    assert len(log.splitlines()) <= 3 * 2 + 4, log  # start-up and shutdown lines, nothing else


def test_one_serve_per_record_and_the_called_ae_title_is_checked(tmp_path, caplog):
    require_programs("echoscu")
    caplog.set_level(logging.INFO, logger="osteo_edge.dicom.node")
    with Node(NodeConfig(record=tmp_path / "r.db", port=0)) as node:
        try:  # the real CLI, in its own process: a second node on the record must exit at once
            res = subprocess.run([sys.executable, "-c", CLI, "serve", "--record", str(tmp_path / "r.db"), "--port", "0"],
                                 capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("a second serve on the same record kept running")
        assert res.returncode == 1 and "another osteo-edge serve is running on this record" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert subprocess.run([ECHOSCU, "-aec", "OSTEOEDGE", "127.0.0.1", str(node.port)], capture_output=True).returncode == 0
        wrong = subprocess.run([ECHOSCU, "-aec", "SOMEONE_ELSE", "127.0.0.1", str(node.port)], capture_output=True, text=True)
        assert wrong.returncode != 0 and "Rejected" in wrong.stdout + wrong.stderr
        wait_until(lambda: any("SOMEONE_ELSE" in r.getMessage() for r in caplog.records), 10, "the refusal logged")
        (line,) = [r.getMessage() for r in caplog.records if "SOMEONE_ELSE" in r.getMessage()]
        assert "called AE 'SOMEONE_ELSE', not this node's 'OSTEOEDGE'" in line
    with Node(NodeConfig(record=tmp_path / "r.db", port=0)) as node:  # the lock goes with the node
        with pytest.raises(ConfigError, match="another osteo-edge serve uses this spool"):  # another record, the same spool
            Node(NodeConfig(record=tmp_path / "other.db", port=0, spool=node.spool.root)).start()


def test_record_status_shows_backlog_outbox_and_the_last_error(base8, tmp_path):
    db = tmp_path / "r.db"
    cfg = NodeConfig(record=db, port=0, forward=Destination("PACS", "127.0.0.1", free_port()))
    with Node(cfg) as node:
        res = subprocess.run([STORESCU, "-aec", "OSTEOEDGE", "127.0.0.1", str(node.port), str(_copy(base8, tmp_path / "a.dcm"))],
                             capture_output=True, timeout=60)
        assert res.returncode == 0
        wait_until(lambda: node.idle() and any(e["event"] == "forward_failed" for e in node.record.events()), 60, "a failed delivery")
        res = runner.invoke(app, ["record", "status", "--record", str(db)])
        assert res.exit_code == 0, res.output
        out = res.output
        assert "running (pid" in out and f":{node.port}" in out and "answered:   1" in out and "delivered:  0" in out
        assert "backlog:    0" in out and "outbox:     1 results not yet delivered" in out
        assert "forward_failed" in out and "PACS@127.0.0.1" in out
        res = runner.invoke(app, ["record", "status", "--record", str(db), "--json"])
        assert '"outbox": 1' in res.output and '"running": true' in res.output
    res = runner.invoke(app, ["record", "status", "--record", str(db)])
    assert "not running" in res.output and "outbox:     1" in res.output


def test_no_internal_path_in_a_result(base8, tmp_path):
    """A radiograph the gate rejects with a decoder message that named the spooled file: the SR and the
    record say the UID, never the node's spool path."""
    src = _copy(base8, tmp_path / "ybr.dcm", PhotometricInterpretation="YBR_FULL")
    cfg = NodeConfig(record=tmp_path / "r.db", port=0, results=tmp_path / "results", spool=tmp_path / "SPOOLDIR")
    with Node(cfg) as node:
        assert subprocess.run([STORESCU, "-aec", "OSTEOEDGE", "127.0.0.1", str(node.port), str(src)], capture_output=True).returncode == 0
        wait_until(lambda: node.record.count_instances() == 1 and node.idle(), 60, "the answer")
        row = next(node.record.rows())
    assert row["status"] == "rejected"
    sr = (tmp_path / "results" / f"{row['result_uid']}.dcm").read_bytes()
    assert b"photometric" in sr and b"SPOOLDIR" not in sr and b"incoming" not in sr and str(tmp_path).encode() not in sr
    assert "SPOOLDIR" not in row["message"]
