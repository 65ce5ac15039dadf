"""Every result delivered at least once, with dcmtk's storescp as the PACS: down then back (every SR
arrives, none twice, over few associations), hung (answers keep flowing), and a node SIGKILLed with
results in its outbox (delivered after the restart). The record says per result whether and when."""

from __future__ import annotations

import copy
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from osteo_edge.cli import app
from osteo_edge.dicom.node import Destination, Node, NodeConfig

from dicom_support import free_port, require_knee, require_programs, wait_until

STORESCP = "/usr/bin/storescp" if Path("/usr/bin/storescp").exists() else "storescp"
STORESCU = "/usr/bin/storescu" if Path("/usr/bin/storescu").exists() else "storescu"
CLI = "from osteo_edge.cli import main; main()"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    require_programs("img2dcm", "storescu", "storescp")
    from osteo_edge.dicom.samples import base_images

    out = tmp_path_factory.mktemp("outbox")
    base = pydicom.dcmread(base_images(require_knee(), out)[8])
    paths = []
    for i in range(8):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        paths.append(out / f"img{i}.dcm")
        ds.save_as(paths[-1])
    return paths


class StoreSCP:
    """dcmtk's storescp as the PACS: every received object a file of its own (+uf: a second copy of
    the same SR is a second file), its log counting associations."""

    def __init__(self, root: Path, port: int) -> None:
        self.dir = root / "pacs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = root / "storescp.log"
        self.proc = subprocess.Popen([STORESCP, "-aet", "PACS", "+uf", "-od", str(self.dir), "-v", str(port)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: subprocess.run(["/usr/bin/echoscu" if Path("/usr/bin/echoscu").exists() else "echoscu", "-aec", "PACS",
                                           "127.0.0.1", str(port)], capture_output=True).returncode == 0, 30, "storescp")

    def received(self) -> list[str]:
        """SOP Instance UIDs of the objects received, one per received copy."""
        return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted(self.dir.iterdir()) if p.is_file()]

    def associations(self) -> int:
        return self.log.read_text(errors="replace").count("Association Received")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _config(tmp_path, pacs_port, **timing):
    """A node forwarding to the PACS at ``pacs_port``; the timing fields (retry_max, forward_timeout)
    set after construction, so that this file runs unchanged against a node without them (and fails
    there for what it checks, not for a keyword)."""
    cfg = NodeConfig(record=tmp_path / "r.db", port=0, forward=Destination("PACS", "127.0.0.1", pacs_port))
    for name, value in {"retry_max": 2.0, **timing}.items():
        setattr(cfg, name, value)
    return cfg


def _outbox(node):
    return len(list((node.spool.root / "unsent").glob("*.dcm")))


def _storescu(port, files):
    return subprocess.run([STORESCU, "-aet", "MODALITY", "-aec", "OSTEOEDGE", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def _export(db: Path, out: Path) -> list[dict]:
    res = CliRunner().invoke(app, ["record", "export", "--record", str(db), "--csv", str(out)])
    assert res.exit_code == 0, res.output
    return list(csv.DictReader(out.open()))


def test_pacs_down_then_back_every_result_arrives_once(images, tmp_path):
    pacs_port = free_port()
    cfg = _config(tmp_path, pacs_port, forward_timeout=5.0)
    pacs = None
    try:
        with Node(cfg) as node:
            assert _storescu(node.port, images).returncode == 0
            wait_until(lambda: node.record.count_instances() == len(images) and node.idle(), 120, "every answer")
            wait_until(lambda: any(e["event"] == "forward_failed" for e in node.record.events()), 30, "a failed delivery")
            assert _outbox(node) == len(images)  # kept, not dropped
            rows = _export(tmp_path / "r.db", tmp_path / "before.csv")
            assert [r["delivered_at"] for r in rows] == [""] * len(images)
            pacs = StoreSCP(tmp_path, pacs_port)  # the PACS comes back
            wait_until(lambda: _outbox(node) == 0, 60, "the outbox delivered")
            wait_until(lambda: len(pacs.received()) >= len(images), 30, "every SR at the PACS")
            answers = {r["result_uid"] for r in node.record.rows()}
        time.sleep(1)
        got = pacs.received()
        assert sorted(got) == sorted(answers) and len(set(got)) == len(images)  # every SR, none twice
        assert pacs.associations() < len(images)  # associations reused for a batch
        rows = _export(tmp_path / "r.db", tmp_path / "after.csv")
        assert all(r["delivered_at"] >= r["recorded_at"] and r["delivered_to"].endswith(f"PACS@127.0.0.1:{pacs_port}") for r in rows)
    finally:
        if pacs is not None:
            pacs.stop()


def test_a_hung_pacs_never_delays_the_answers(images, tmp_path):
    pacs_port = free_port()
    pacs = StoreSCP(tmp_path, pacs_port)
    pacs.proc.send_signal(signal.SIGSTOP)  # accepts TCP connections (the kernel does), answers nothing
    cfg = _config(tmp_path, pacs_port, forward_timeout=4.0)
    try:
        with Node(cfg) as node:
            t0 = time.monotonic()
            assert _storescu(node.port, images).returncode == 0
            wait_until(lambda: node.record.count_instances() == len(images) and node.idle(), 40, "every answer while the PACS hangs")
            answered_in = time.monotonic() - t0
            assert _outbox(node) == len(images) and pacs.received() == []
            assert answered_in < 4.0 * 2, answered_in  # not one forwarding timeout per image
            wait_until(lambda: any("within 4 s" in (e["detail"] or "") for e in node.record.events()), 30, "the timeout recorded")
            pacs.proc.send_signal(signal.SIGCONT)  # the PACS recovers
            wait_until(lambda: _outbox(node) == 0, 60, "the outbox delivered")
            answers = {r["result_uid"] for r in node.record.rows()}
        wait_until(lambda: len(pacs.received()) >= len(images), 30, "every SR at the PACS")
        assert sorted(pacs.received()) == sorted(answers)
    finally:
        pacs.stop()


def _serve(db, port, pacs_port, log):
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--record", str(db), "--port", str(port), "--threads", "1",
                             "--forward", f"PACS@127.0.0.1:{pacs_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    echoscu = "/usr/bin/echoscu" if Path("/usr/bin/echoscu").exists() else "echoscu"
    wait_until(lambda: proc.poll() is not None or subprocess.run([echoscu, "-aec", "OSTEOEDGE", "127.0.0.1", str(port)],
                                                                 capture_output=True).returncode == 0, 60, "serve", step=0.3)
    assert proc.poll() is None, "serve exited"
    return proc


def test_sigkill_with_results_in_the_outbox_delivers_them_after_restart(images, tmp_path):
    db = tmp_path / "rec" / "r.db"
    pacs_port = free_port()
    log = open(tmp_path / "serve.log", "ab")
    proc = _serve(db, free_port(), pacs_port, log)
    unsent = db.with_name("r.db.spool") / "unsent"
    try:
        port = _port_of(proc, tmp_path)
        assert _storescu(port, images).returncode == 0
        wait_until(lambda: len(list(unsent.glob("*.dcm"))) == len(images), 120, "every result in the outbox")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    pacs = StoreSCP(tmp_path, pacs_port)
    try:
        proc = _serve(db, free_port(), pacs_port, log)
        try:
            wait_until(lambda: len(pacs.received()) >= len(images), 60, "the outbox delivered after the restart")
            wait_until(lambda: not list(unsent.glob("*.dcm")), 30, "the outbox empty")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        got = pacs.received()
        assert len(got) == len(set(got)) == len(images)
        rows = _export(db, tmp_path / "e.csv")
        assert sorted(r["result_uid"] for r in rows) == sorted(got) and all(r["delivered_at"] for r in rows)
    finally:
        pacs.stop()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "results waiting in the outbox" in text and "Traceback" not in text


def _port_of(proc, tmp_path):
    return int(proc.args[proc.args.index("--port") + 1])
