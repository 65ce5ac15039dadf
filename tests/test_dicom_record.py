"""The clinic record: append-only (triggers), versioned, owner-only, one row per received instance;
`predict --record`, `record export` (formula cells neutralised) and `record stats`."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import stat

import pytest
from typer.testing import CliRunner

from osteo_edge.cli import app
from osteo_edge.dicom.record import SCHEMA_VERSION, ClinicRecord, InputIdentity, export_csv, stats
from osteo_edge.edge_runtime import Prediction
from osteo_edge.core.csvsafe import safe_cell
from osteo_edge.errors import ConfigError

from dicom_support import require_knee

runner = CliRunner()
BUNDLE = {"bundle": "b", "format": "tflite-int8", "seal": "s" * 64, "model_sha256": "m" * 64}


def _pred(status="ok", label="Normal"):
    probs = {"Normal": 0.7, "Osteopenia": 0.2, "Osteoporosis": 0.1} if label else {}
    return Prediction("x", status, label, probs, "msg", 12.5, 0.3 if label else None, None if label else "blank")


def test_safe_cell_neutralises_formulas():
    # the one shared helper (core.csvsafe): formula-like text quoted, plain numbers left as data
    assert [safe_cell(v) for v in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "ok", None, 0.25)] == [
        "'=1+1", "+1", "-2", "'@SUM(A1)", "'\tx", "'\rx", "ok", None, 0.25]


def test_record_is_append_only_versioned_and_owner_only(tmp_path):
    path = tmp_path / "clinic" / "record.db"
    with ClinicRecord(path) as rec:
        assert rec.append(_pred(), InputIdentity(sop_instance_uid="1.2.3", sha256="a"), BUNDLE, "serve")
        assert not rec.append(_pred("refer", "Osteopenia"), InputIdentity(sop_instance_uid="1.2.3"), BUNDLE, "serve")
        assert rec.append(_pred(), InputIdentity(sha256="a"), BUNDLE, "predict")
        assert rec.append(_pred(), InputIdentity(sha256="a"), BUNDLE, "predict")  # predict runs are all kept
        fix = rec.append_correction(1, "Osteoporosis", "ok", "DEXA T-score -2.8")
        rec.event("1.2.3", "forwarded", "PACS")
        rows = list(rec.rows())
    assert [r["kind"] for r in rows] == ["prediction", "prediction", "prediction", "correction"]
    assert rows[0]["label"] == "Normal" and rows[-1]["corrects"] == 1 and rows[-1]["id"] == fix
    assert rows[-1]["sop_instance_uid"] == "1.2.3" and rows[-1]["label"] == "Osteoporosis"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for sql in ("UPDATE predictions SET label = 'Normal' WHERE id = 4", "DELETE FROM predictions",
                "DELETE FROM events", "UPDATE schema SET version = 2"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute(sql)
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        ClinicRecord(path)


def test_not_a_record(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="not a clinic record"):
        ClinicRecord(tmp_path / "junk.db")
    with pytest.raises(ConfigError, match="no clinic record"):
        ClinicRecord(tmp_path / "missing.db", create=False)


def test_export_and_stats(tmp_path):
    with ClinicRecord(tmp_path / "r.db") as rec:
        rec.append(_pred(), InputIdentity(input_name="=HYPERLINK(\"x\").png", sha256="a"), BUNDLE, "predict")
        rec.append(_pred("rejected", None), InputIdentity(input_name="b.png"), BUNDLE, "predict")
        out, n = export_csv(rec, tmp_path / "out.csv")
        st = stats(rec)
        assert export_csv(rec, tmp_path / "none.csv", since="2999-01-01")[1] == 0
        with pytest.raises(ConfigError, match="--since"):
            export_csv(rec, tmp_path / "x.csv", since="yesterday")
    rows = list(csv.DictReader(out.open()))
    assert n == 2 and rows[0]["input_name"].startswith("'=") and rows[1]["status"] == "rejected"
    assert st.total == 2 and st.by_status == {"ok": 1, "rejected": 1} and st.by_label == {"Normal": 1, "-": 1}
    assert sum(st.per_day[next(iter(st.per_day))].values()) == 2


def test_cli_predict_record_export_stats(tmp_path):
    knee = require_knee()
    shutil.copy(knee, tmp_path / "knee.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    db = tmp_path / "rec" / "clinic.db"
    res = runner.invoke(app, ["predict", str(tmp_path / "knee.jpg"), str(tmp_path / "broken.png"), "--record", str(db), "--json"])
    assert res.exit_code == 0, res.output
    printed = [json.loads(line)["status"] for line in res.output.splitlines() if line.startswith("{")]
    res = runner.invoke(app, ["record", "export", "--record", str(db), "--csv", str(tmp_path / "e.csv")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert {"sop_instance_uid", "status", "label", "sha256", "bundle_seal", "model_sha256"} <= set(rows[0])
    assert [r["status"] for r in rows] == printed and printed[1] == "rejected" and len(rows[0]["sha256"]) == 64 and rows[0]["bundle_seal"]
    res = runner.invoke(app, ["record", "stats", "--record", str(db), "--png", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    assert "2 answers" in res.output and (tmp_path / "s.png").stat().st_size > 1000
    res = runner.invoke(app, ["record", "stats", "--record", str(tmp_path / "nope.db")])
    assert res.exit_code == 1 and "no clinic record" in res.output and "Traceback" not in res.output


def test_a_record_path_that_cannot_be_opened_or_is_not_a_record_is_one_line(tmp_path):
    """predict/serve/screen --record: an image given as the record keeps its mode and is refused; a
    place no file can be made is one line, not an OSError traceback."""
    import stat

    from osteo_edge.dicom.record import ClinicRecord
    from osteo_edge.errors import ConfigError

    image = tmp_path / "knee.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    image.chmod(0o644)
    with pytest.raises(ConfigError, match="not a clinic record"):
        ClinicRecord(image)
    assert stat.S_IMODE(image.stat().st_mode) == 0o644
    with pytest.raises(ConfigError, match="cannot open the clinic record here"):
        ClinicRecord("/proc/osteo-edge-no-such/record.db")
    fresh = ClinicRecord(tmp_path / "new" / "record.db")
    fresh.close() if hasattr(fresh, "close") else None
    assert stat.S_IMODE((tmp_path / "new" / "record.db").stat().st_mode) == 0o600


def test_predict_record_keeps_a_film_whose_name_is_not_utf8(tmp_path, shared_data):
    """An old share's Latin-1 file name (surrogate escapes in Python) is recorded with U+FFFD in place
    of its bad bytes, not a UnicodeEncodeError traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    films = os.fsencode(tmp_path / "films")
    os.makedirs(films)
    with open(films + b"/knee-\xe9t\xe9.jpg", "wb") as fh:
        fh.write((shared_data / "knee" / "wani-mendeley" / "Normal" / "N1.JPEG").read_bytes())
    record = tmp_path / "record.db"
    exe = os.fsencode(Path(sys.executable).parent / "osteo-edge")
    r = subprocess.run([exe, b"predict", b"--record", os.fsencode(record), films], capture_output=True)
    assert r.returncode == 0, r.stderr[-400:]
    names = [n for (n,) in sqlite3.connect(record).execute("SELECT input_name FROM predictions")]
    assert names == ["knee-\ufffdt\ufffd.jpg"]
