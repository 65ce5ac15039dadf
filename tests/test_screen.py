"""`osteo-edge screen`: a whole archive into the clinic record, resumable, on processes or Ray.

Answers equal `predict --json` for the same files; an undecodable file is recorded rejected and the
run goes on; a rerun skips what is answered and records nothing twice; a run killed with SIGKILL
loses nothing and records nothing twice when rerun; a film that kills its worker process is answered
rejected while the others are answered; a PACS (a real Orthanc) is queried with C-FIND
and fetched with C-GET through a spool that is empty afterwards; Ray (a local instance, slow) gives
the same record as the local engine.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osteo_edge.cli import app

from dicom_support import Orthanc, require_knee, require_programs, wait_until
from test_runtime_fixtures import knee_images

runner = CliRunner()
OSTEO_EDGE = Path(sys.executable).with_name("osteo-edge")


def _folder(tmp_path: Path, n: int, name: str = "archive") -> Path:
    """n real knee films (symlinks: the data is never copied) in a small tree, distinct by content."""
    root = tmp_path / name
    (root / "2024" / "01").mkdir(parents=True)
    seen, files = set(), []
    for f in knee_images(4 * n):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            files.append(f)
        if len(files) == n:
            break
    assert len(files) == n, "not enough distinct films in the shared data"
    for i, f in enumerate(files):
        (root / ("2024/01" if i % 2 else "") / f"{i:03d}-{f.name}").symlink_to(f)
    return root


def _rows(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM predictions WHERE note = 'screen' ORDER BY id")]
    con.close()
    return rows


def _answers(rows: list[dict]) -> dict[str, tuple]:
    """image key -> what was answered (no times): the comparable part of a record."""
    return {r["sop_instance_uid"] or r["sha256"]: (r["status"], r["label"], r["probabilities"], r["low_bmd_probability"], r["reason"],
                                                  r["bundle_seal"]) for r in rows}


def test_screen_equals_predict_records_rejects_and_reruns_without_duplicates(tmp_path):
    archive = _folder(tmp_path, 3)
    (archive / "2024" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (archive / "notes.txt").write_text("a side file, left out")
    db = tmp_path / "clinic" / "record.db"
    res = runner.invoke(app, ["screen", str(archive), "--record", str(db), "--progress-every", "0"])
    assert res.exit_code == 0, res.output
    assert "screening: 4/4 images, rate" in res.output  # the one-line progress of a log (stderr is no terminal)
    assert "4 inputs" in res.output and "1 hidden or side files left out" in res.output and "refer for DEXA" in res.output
    rows = _rows(db)
    assert len(rows) == 4 and {r["source"] for r in rows} == {"predict"}
    by_name = {r["input_name"]: r for r in rows}
    broken = by_name.pop("broken.png")
    assert broken["status"] == "rejected" and broken["reason"] == "invalid_image" and broken["sha256"]

    # the same files through predict --json: the same answers
    pred = runner.invoke(app, ["predict", *sorted(str(p) for p in archive.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")), "--json"])
    assert pred.exit_code == 0, pred.output
    answers = [json.loads(line) for line in pred.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 4
    for a in answers:
        r = by_name.get(Path(a["path"]).name) or broken
        assert r["status"] == a["status"] and r["label"] == a["label"] and r["reason"] == a["reason"], a["path"]
        assert json.loads(r["probabilities"]) == a["probabilities"] and r["low_bmd_probability"] == a["low_bmd_probability"]

    # the worklist: one row per referred film, owner-only, identifiers and P(low BMD)
    worklist = db.with_name("record-referrals.csv")
    listed = list(csv.DictReader(worklist.open()))
    refer = [r for r in rows if r["status"] == "refer"]
    assert len(listed) == len(refer) and stat.S_IMODE(worklist.stat().st_mode) == 0o600
    assert all(w["action"] == "refer for DEXA" and "not a diagnosis" in w["note"] for w in listed)
    assert {w["image"] for w in listed} == {r["sha256"] for r in refer}

    # a rerun answers nothing again and records nothing twice; its worklist still lists the referrals
    again = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert again.exit_code == 0, again.output
    assert "recorded 0 new answers" in again.output and "nothing new to answer" in again.output
    assert _rows(db) == rows
    assert len(list(csv.DictReader(worklist.open()))) == len(refer)


def test_resume_after_sigkill_loses_nothing_and_records_nothing_twice(tmp_path):
    n = 40
    archive = _folder(tmp_path, n)
    db = tmp_path / "record.db"
    argv = [str(OSTEO_EDGE), "screen", str(archive), "--record", str(db), "--workers", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: db.exists() and _count(db) > 0, 120, "the first recorded answers", step=0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes, mid-run
        proc.wait(timeout=30)
    before = _rows(db)
    assert 0 < len(before) < n, f"killed after {len(before)} of {n}: not mid-run"
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"recorded {n - len(before)} new answers" in res.stdout
    after = _rows(db)
    keys = [r["sha256"] for r in after]
    assert len(after) == n and len(set(keys)) == n  # nothing lost, nothing twice
    assert after[: len(before)] == before  # what was recorded before the kill is untouched
    # and the answers are those of an uninterrupted run
    fresh = tmp_path / "fresh.db"
    assert runner.invoke(app, ["screen", str(archive), "--record", str(fresh)]).exit_code == 0
    assert _answers(_rows(fresh)) == _answers(after)


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM predictions").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # the schema is not there yet
        return 0


def test_csv_list_missing_files_and_bad_sources(tmp_path):
    archive = _folder(tmp_path, 2)
    films = sorted(p for p in archive.rglob("*") if p.is_symlink())
    listing = tmp_path / "list.csv"
    listing.write_text("path,patient_id,film_date\n"
                       f"{films[0]},=HYPERLINK(\"x\"),2024-01-02\n"
                       f"{films[1].relative_to(tmp_path)},P-2,2024-01-03\n"
                       "archive/no-such-film.png,P-3,\n")
    db = tmp_path / "r.db"
    res = runner.invoke(app, ["screen", str(listing), "--record", str(db), "--worklist", str(tmp_path / "w.csv")])
    assert res.exit_code == 0, res.output
    assert "1 listed but not found (not recorded, e.g. " in res.output and "no-such-film.png" in res.output  # says which
    assert len(_rows(db)) == 2
    text = (tmp_path / "w.csv").read_text()
    if "P-2" not in text:  # the second film was not referred: no row for it
        assert all(r["status"] != "refer" for r in _rows(db) if r["input_name"] == films[1].name)
    assert "=HYPERLINK" not in text.replace("'=HYPERLINK", "")  # a formula cell is neutralised
    for argv, msg in [([str(tmp_path / "nothing-here"), "--record", str(db)], "no such folder"),
                      ([str(films[0]), "--record", str(db)], "predict"),
                      ([str(archive), "--pacs", "PACS@127.0.0.1:4242", "--record", str(db)], "not both"),
                      (["--pacs", "PACS@nowhere", "--record", str(db)], "AE@HOST:PORT"),
                      (["--pacs", "PACS@no-such-host.invalid:104", "--record", str(db)], "cannot reach no-such-host.invalid"),
                      (["--pacs", "PACS@127.0.0.1:4242", "--since", "last week", "--record", str(db)], "YYYY-MM-DD"),
                      ([str(archive), "--record", str(db), "--workers", "0"], "--workers")]:
        bad = runner.invoke(app, ["screen", *argv])
        assert bad.exit_code == 1, (argv, bad.output)
        assert msg in bad.output and "Traceback" not in bad.output


def _pacs_films(tmp_path: Path) -> list[tuple[Path, str, bool]]:
    """Four DICOM films (dcmtk's img2dcm from real knees): (file, SOP Instance UID, selected by the query)."""
    import pydicom

    from osteo_edge.dicom.samples import base_images

    specs = [("P1", "20240110", "KNEE", True), ("P2", "20240220", "KNEE", True), ("P3", "20240115", "CHEST", False),
             ("P4", "20190101", "KNEE", False)]
    out = []
    for i, (img, (pid, date, part, selected)) in enumerate(zip(knee_images(4), specs)):
        ds = pydicom.dcmread(base_images(img, tmp_path / f"src{i}")[8])
        ds.PatientID, ds.StudyDate, ds.BodyPartExamined, ds.AccessionNumber = pid, date, part, f"ACC{i}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        f = tmp_path / f"film{i}.dcm"
        ds.save_as(f)
        out.append((f, str(ds.SOPInstanceUID), selected))
    return out


def test_pacs_query_c_find_then_c_get_against_orthanc(tmp_path):
    require_programs("Orthanc", "img2dcm")
    require_knee()
    films = _pacs_films(tmp_path)
    db, spool = tmp_path / "clinic" / "record.db", tmp_path / "spool"
    # Orthanc answers C-FIND / C-GET from AE titles it knows; C-GET needs no route back (port unused)
    with Orthanc(tmp_path, {"screen": ("OSTEOEDGE-SCREEN", 1)}) as pacs:
        for f, _, _ in films:
            pacs.post("/instances", f.read_bytes())
        argv = ["screen", "--pacs", f"ORTHANC@127.0.0.1:{pacs.dicom_port}", "--since", "2024-01-01", "--until", "2024-12-31",
                "--record", str(db), "--spool", str(spool), "--batch", "1"]
        spool.mkdir()
        (spool / "1.2.3.4.dcm").write_bytes(b"an export named by SOP Instance UID")
        refused = runner.invoke(app, argv)  # a folder of someone's files is not a spool: refused, never emptied
        assert refused.exit_code == 1 and "not a screening spool" in refused.output, refused.output
        assert (spool / "1.2.3.4.dcm").exists()
        (spool / ".osteo-edge-screen-spool").write_text("")  # as a run killed mid-fetch left it
        (spool / "notes.txt").write_text("not the spool's: kept")
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, res.output
        rows = _rows(db)
        assert {r["sop_instance_uid"] for r in rows} == {uid for _, uid, sel in films if sel}  # date and body part filters
        # the spool is emptied as answers are recorded (the leftover too: named as the spool names files)
        assert sorted(f.name for f in spool.iterdir()) == [".osteo-edge-screen-spool", "notes.txt"]
        # the answer for a fetched film is the answer for the file itself
        pred = runner.invoke(app, ["predict", *(str(f) for f, _, sel in films if sel), "--json"])
        direct = {uid: json.loads(line) for (f, uid, sel), line in zip([x for x in films if x[2]], pred.stdout.splitlines())}
        for r in rows:
            d = direct[r["sop_instance_uid"]]
            assert (r["status"], r["label"], json.loads(r["probabilities"])) == (d["status"], d["label"], d["probabilities"])
        listed = {w["image"]: w for w in csv.DictReader(db.with_name("record-referrals.csv").open())}
        for r in rows:
            if r["status"] == "refer":
                assert listed[r["sop_instance_uid"]]["patient_id"] in ("P1", "P2") and listed[r["sop_instance_uid"]]["film_date"].startswith("2024")
        # a rerun fetches nothing and records nothing
        again = runner.invoke(app, argv)
        assert again.exit_code == 0 and "recorded 0 new answers" in again.output, again.output
        assert _rows(db) == rows


@pytest.mark.slow  # Ray's start-up alone is 20-30 s on the 2-core development machine
def test_ray_engine_gives_the_same_record_as_the_local_engine(tmp_path):
    pytest.importorskip("ray.data", reason="the cluster extra (ray[data]) is not installed")
    import ray

    archive = _folder(tmp_path, 4)
    (archive / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    local, on_ray = tmp_path / "local.db", tmp_path / "ray.db"
    assert runner.invoke(app, ["screen", str(archive), "--record", str(local), "--workers", "2"]).exit_code == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = runner.invoke(app, ["screen", str(archive), "--record", str(on_ray), "--engine", "ray", "--workers", "2"])
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    assert "engine ray" in res.output
    assert len(_rows(on_ray)) == 5 and _answers(_rows(on_ray)) == _answers(_rows(local))


_CRASHER = '''
import os
if os.environ.get("OSTEO_EDGE_TEST_CRASH"):  # only in this test's worker processes
    import osteo_edge.screen.work as _w
    _answer = _w.Screener.__call__
    def _crash(self, item):
        if "crash-me" in item.path:
            os._exit(139)  # as a native decoder's segfault would end the worker
        return _answer(self, item)
    _w.Screener.__call__ = _crash
'''


def test_a_film_that_kills_its_worker_is_recorded_rejected_and_the_run_goes_on(tmp_path, monkeypatch):
    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.screen.local import run_local
    from osteo_edge.screen.sources import ScreenItem
    from osteo_edge.screen.work import WorkerConfig

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CRASHER)  # loaded at start-up by the spawned workers only
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("OSTEO_EDGE_TEST_CRASH", "1")
    films = knee_images(2)
    crash = tmp_path / "crash-me.jpeg"
    crash.symlink_to(films[0])
    items = [ScreenItem(str(films[1])), ScreenItem(str(crash)), ScreenItem(str(films[0]))]
    seal = EdgeClassifier.load().bundle.seal
    got = []
    run_local(items, WorkerConfig(None, seal), 2, got.append)
    by_path = {o["path"]: o for o in got}
    assert sorted(by_path) == sorted(i.path for i in items)  # every film answered once
    dead = by_path[str(crash)]["prediction"]
    assert dead["status"] == "rejected" and "crashed its worker process twice" in dead["message"]
    assert all(by_path[str(f)]["prediction"]["status"] in ("ok", "refer") for f in films)


def test_a_version_1_record_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    from osteo_edge.dicom.record import SCHEMA_VERSION, ClinicRecord, InputIdentity
    from osteo_edge.edge_runtime import Prediction

    db = tmp_path / "record.db"
    bundle = {"bundle": "b", "format": "tflite-int8", "seal": "s" * 64, "model_sha256": "m" * 64}
    pred = Prediction("x.png", "refer", "Osteopenia", {"Normal": 0.2, "Osteopenia": 0.7, "Osteoporosis": 0.1}, "m", 1.0, 0.8, "low_bmd")
    with ClinicRecord(db) as rec:
        rec.append(pred, InputIdentity(sha256="a" * 64), bundle, "predict")
    raw = sqlite3.connect(db)  # back to what a version-1 osteo-edge wrote: no screening index
    raw.execute("DROP INDEX one_answer_per_screened_image")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with ClinicRecord(db) as rec:
        assert rec.answered("s" * 64) == {"a" * 64: ("refer", "Osteopenia", 0.8, "low_bmd")}  # a predict row counts as answered
        who = InputIdentity(sha256="b" * 64)
        assert rec.append_screened([(pred, who), (pred, who)], bundle) == 1  # the index is back: once per (image, seal)
        assert rec.append_screened([(pred, who)], {**bundle, "seal": "t" * 64}) == 1  # another model: its own row
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert [v for (v,) in raw.execute("SELECT version FROM schema ORDER BY rowid")] == [2, 2]
    assert raw.execute("SELECT count(*) FROM predictions").fetchone()[0] == 3


def test_unwritable_record_or_worklist_and_a_worklist_that_would_overwrite_the_record_are_one_line_errors(tmp_path):
    archive = _folder(tmp_path, 1)
    db = tmp_path / "clinic" / "record.db"
    assert runner.invoke(app, ["screen", str(archive), "--record", str(db)]).exit_code == 0
    before = db.read_bytes()
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{next(p for p in archive.rglob('*') if p.is_symlink())}\n")
    blocker = tmp_path / "a-file"  # a folder that cannot be made: a file is in the way
    blocker.write_text("x")
    (tmp_path / "w-dir.csv").mkdir()
    for argv, msg in [([str(archive), "--record", str(blocker / "record.db")], "cannot write the clinic record"),
                      ([str(archive), "--record", ""], "--record takes a database file path"),
                      ([str(archive), "--record", str(tmp_path)], "--record takes a database file path"),
                      ([str(archive), "--record", str(db), "--worklist", str(blocker / "w.csv")], "cannot write the referral worklist"),
                      ([str(archive), "--record", str(db), "--worklist", str(db)], "neither the record nor the source"),
                      ([str(listing), "--record", str(db), "--worklist", str(listing)], "neither the record nor the source"),
                      ([str(archive), "--record", str(db), "--worklist", str(tmp_path / "w.txt")], "ending in .csv"),
                      ([str(archive), "--record", str(db), "--worklist", str(tmp_path / "w-dir.csv")], "is a folder"),
                      ([str(archive), "--record", str(db), "--since", "2024-01-01"], "apply to --pacs")]:
        bad = runner.invoke(app, ["screen", *argv])
        assert bad.exit_code == 1, (argv, bad.output)
        assert msg in bad.output and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output
    assert db.read_bytes() == before and listing.read_text().startswith("path\n")  # neither overwritten by a worklist
    assert not (tmp_path / "w.txt").exists()


def test_a_file_that_cannot_be_read_is_counted_not_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    from osteo_edge.screen import work

    archive = _folder(tmp_path, 3)
    locked = sorted(p for p in archive.rglob("*") if p.is_symlink())[1]
    real = work.identify

    def identify(item):
        if item.path == str(locked):
            raise PermissionError(13, "Permission denied", item.path)  # as on a share the service account cannot read
        return real(item)

    monkeypatch.setattr(work, "identify", identify)
    db = tmp_path / "r.db"
    res = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert res.exit_code == 0, res.output
    assert "1 found but not readable" in res.output and "recorded 2 new answers" in res.output
    assert sorted(r["input_name"] for r in _rows(db)) == sorted(p.name for p in archive.rglob("*") if p.is_symlink() and p != locked)
    monkeypatch.setattr(work, "identify", real)  # readable again: the rerun answers it
    again = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert again.exit_code == 0 and "recorded 1 new answers" in again.output, again.output


def test_ctrl_c_mid_run_keeps_the_answers_back_says_so_in_one_line_and_the_rerun_finishes(tmp_path, monkeypatch):
    from osteo_edge.screen import run

    archive = _folder(tmp_path, 4)
    db = tmp_path / "r.db"
    add = run.Recorder.add

    def interrupted(self, outcome):
        add(self, outcome)
        if self.done == 2:
            raise KeyboardInterrupt  # Ctrl+C after the second answer

    monkeypatch.setattr(run.Recorder, "add", interrupted)
    before_term = signal.getsignal(signal.SIGTERM)
    res = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output and "run the same command again" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and len(_rows(db)) == 2
    assert signal.getsignal(signal.SIGTERM) == before_term  # the SIGTERM handler is put back after the run
    monkeypatch.setattr(run.Recorder, "add", add)
    again = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert again.exit_code == 0 and "recorded 2 new answers" in again.output, again.output
    assert len({r["sha256"] for r in _rows(db)}) == len(_rows(db)) == 4


def test_a_csv_row_with_more_cells_than_columns_is_a_one_line_error(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,patient_id\nfilm.png,P-1\nSmith, John/film.png,P-2\n")  # an unquoted comma in a path
    res = runner.invoke(app, ["screen", str(listing), "--record", str(tmp_path / "r.db")])
    assert res.exit_code == 1, res.output
    assert "line 3 has more cells" in res.output and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_the_worklist_names_files_by_absolute_path_when_the_source_was_given_relative(tmp_path, monkeypatch):
    archive = _folder(tmp_path, 4)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["screen", archive.name, "--record", "r.db"])
    assert res.exit_code == 0, res.output
    listed = list(csv.DictReader((tmp_path / "r-referrals.csv").open()))
    refer = [r for r in _rows(tmp_path / "r.db") if r["status"] == "refer"]
    assert len(listed) == len(refer) > 0  # the shared films: most are referred by the shipped model
    for w in listed:  # read later from another folder (the DEXA clinic's share): the path still leads to the film
        assert Path(w["file"]).is_absolute() and Path(w["file"]).exists(), w["file"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_driver_alone_leaves_no_orphan_worker_processes(tmp_path, sig):
    psutil = pytest.importorskip("psutil")
    archive = _folder(tmp_path, 40)
    db = tmp_path / "record.db"
    argv = [str(OSTEO_EDGE), "screen", str(archive), "--record", str(db), "--workers", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers: list = []
    try:
        wait_until(lambda: db.exists() and _count(db) > 0, 120, "the first recorded answers", step=0.01)
        workers += psutil.Process(proc.pid).children(recursive=True)
        assert workers, "no worker processes"
        proc.send_signal(sig)  # the driver only (a scheduler's timeout, systemd, kill PID), not its process group
        _, err = proc.communicate(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"orphan worker processes after {sig.name}: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for w in workers:  # never leave one behind, whatever failed
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
    if sig == signal.SIGTERM:  # as Ctrl+C: the answers back are recorded, one line says how to finish
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(_rows(db)) == len({r["sha256"] for r in _rows(db)}) == 40


def test_the_next_hint_is_a_command_that_runs_when_the_record_path_has_a_space(tmp_path):
    archive = _folder(tmp_path, 1)
    db = tmp_path / "clinic records" / "record.db"
    res = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert res.exit_code == 0, res.output
    hint = next(line for line in res.output.splitlines() if line.startswith("next: "))[len("next: "):]
    import shlex

    argv = shlex.split(hint)
    assert argv[:3] == ["osteo-edge", "record", "stats"] and argv[argv.index("--record") + 1] == str(db)
    follow = runner.invoke(app, argv[1:])  # the hint, as the IT person would paste it
    assert follow.exit_code == 0, follow.output


def test_a_full_disk_or_locked_record_mid_run_is_a_one_line_error_and_keeps_what_was_recorded(tmp_path, monkeypatch):
    from osteo_edge.dicom.record import ClinicRecord

    archive = _folder(tmp_path, 3)
    db = tmp_path / "r.db"
    films = sorted(p for p in archive.rglob("*") if p.is_symlink())
    films[0].rename(tmp_path / "later.png")  # the first run answers two films
    assert runner.invoke(app, ["screen", str(archive), "--record", str(db)]).exit_code == 0
    before = _rows(db)
    (tmp_path / "later.png").rename(films[0])

    def full(self, answers, bundle):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ClinicRecord, "append_screened", full)
    res = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert res.exit_code == 1, res.output
    assert "could not record answers (database or disk is full)" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and _rows(db) == before and len(before) == 2


def test_a_file_name_that_is_not_utf8_is_answered_recorded_and_listed(tmp_path):
    if sys.platform != "linux":
        pytest.skip("bytes file names: POSIX file systems")
    archive = _folder(tmp_path, 2)
    film = sorted(p for p in archive.rglob("*") if p.is_symlink())[0]
    latin1 = os.fsdecode(str(film.parent).encode() + b"/caf\xe9-" + film.name.encode())  # an old share's Latin-1 name
    os.rename(film, latin1)
    db = tmp_path / "r.db"
    res = runner.invoke(app, ["screen", str(archive), "--record", str(db)])
    assert res.exit_code == 0, res.output
    assert "recorded 2 new answers" in res.output and "Traceback" not in res.output
    names = {r["input_name"] for r in _rows(db)}
    assert "caf\ufffd-" + film.name in names  # the undecodable byte shown as U+FFFD, the rest as it is
    worklist = db.with_name("r-referrals.csv").read_text(encoding="utf-8")  # valid UTF-8, one line per referral
    assert len(worklist.strip().splitlines()) == 1 + sum(r["status"] == "refer" for r in _rows(db))


def test_more_local_workers_than_cpus_is_warned_about(tmp_path, monkeypatch, caplog):
    archive = _folder(tmp_path, 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with caplog.at_level("WARNING", logger="osteo_edge.screen.run"):
        res = runner.invoke(app, ["screen", str(archive), "--record", str(tmp_path / "r.db"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "--workers 2 on a machine with 1 CPUs" in res.output + caplog.text, res.output


def test_a_ray_address_that_does_not_answer_is_a_one_line_error_within_seconds(tmp_path):
    pytest.importorskip("ray")
    import time

    archive = _folder(tmp_path, 1)
    t0 = time.monotonic()
    res = runner.invoke(app, ["screen", str(archive), "--record", str(tmp_path / "r.db"), "--engine", "ray",
                              "--ray-address", "127.0.0.1:1"])  # nothing listens on port 1
    assert res.exit_code == 1, res.output
    assert "no Ray cluster answers there" in res.output and "Traceback" not in res.output
    assert time.monotonic() - t0 < 60  # ray.init alone retried silently for minutes
