"""The clinic record: one SQLite database (WAL), append-only, versioned, owner-only.

Every answer from ``osteo-edge serve`` and ``osteo-edge predict --record`` is one row. Nothing is
ever changed or removed: SQLite triggers RAISE on UPDATE and DELETE, so a correction is a new row
(``kind = 'correction'``, ``corrects`` = the row it corrects). An instance received by the DICOM node
is recorded once (a unique index on its SOP Instance UID), however often it is sent. The database
holds no patient name; its file (and the WAL beside it) is 0600 in a folder we create 0700.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..edge_runtime.classifier import Prediction
from ..core.csvsafe import csv_text, utf8_text
from ..errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SCHEMA = [
    """CREATE TABLE predictions (
  id INTEGER PRIMARY KEY,
  recorded_at TEXT NOT NULL,
  source TEXT NOT NULL CHECK (source IN ('serve', 'predict')),
  kind TEXT NOT NULL DEFAULT 'prediction' CHECK (kind IN ('prediction', 'correction')),
  corrects INTEGER REFERENCES predictions(id),
  sop_instance_uid TEXT, study_instance_uid TEXT, series_instance_uid TEXT, sop_class_uid TEXT,
  transfer_syntax TEXT, calling_ae TEXT, input_name TEXT, sha256 TEXT,
  bundle TEXT, bundle_format TEXT, bundle_seal TEXT, model_sha256 TEXT,
  status TEXT NOT NULL, label TEXT, probabilities TEXT NOT NULL, low_bmd_probability REAL,
  reason TEXT, message TEXT, latency_ms REAL, result_uid TEXT, note TEXT)""",
    """CREATE UNIQUE INDEX one_answer_per_received_instance ON predictions(sop_instance_uid)
  WHERE source = 'serve' AND kind = 'prediction'""",
    """CREATE TABLE events (
  id INTEGER PRIMARY KEY, recorded_at TEXT NOT NULL, sop_instance_uid TEXT, event TEXT NOT NULL, detail TEXT)""",
    "CREATE TABLE schema (version INTEGER NOT NULL, applied_at TEXT NOT NULL)",
]
# Version 2 (osteo-edge screen): one answer per image (SOP Instance UID, else the file's sha256) per model
# seal among the rows a screening run writes (note = 'screen'), so that a rerun records nothing twice.
SCREEN_NOTE = "screen"
_V2 = ["""CREATE UNIQUE INDEX one_answer_per_screened_image ON predictions(coalesce(sop_instance_uid, sha256), bundle_seal)
  WHERE note = 'screen' AND kind = 'prediction'"""]
_TRIGGERS = [
    f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} BEGIN "
    f"SELECT RAISE(ABORT, 'the clinic record is append-only: {op} refused (add a correction row instead)'); END;"
    for t in ("predictions", "events", "schema") for op in ("UPDATE", "DELETE")
]
COLUMNS = (
    "id", "recorded_at", "source", "kind", "corrects", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
    "sop_class_uid", "transfer_syntax", "calling_ae", "input_name", "sha256", "bundle", "bundle_format", "bundle_seal",
    "model_sha256", "status", "label", "probabilities", "low_bmd_probability", "reason", "message", "latency_ms",
    "result_uid", "note",
)


@dataclass(frozen=True)
class InputIdentity:
    """What was answered: the SOP Instance UID (DICOM) and/or the file's sha256; never a patient name."""

    sha256: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_class_uid: str | None = None
    transfer_syntax: str | None = None
    calling_ae: str | None = None
    input_name: str | None = None


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _owner_only_file(path: Path) -> None:
    """Create the record owner-only (0600), or check that an existing file is an SQLite database
    before anything touches it (an image given as --record keeps its mode). One line on any OS error."""
    try:
        if path.exists():
            with open(path, "rb") as fh:
                head = fh.read(16)
            if head and head != b"SQLite format 3\x00":
                raise ConfigError(f"{path}: not a clinic record (not an SQLite database)")
        elif not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the clinic record here ({exc.strerror or type(exc).__name__})") from None


class ClinicRecord:
    """Open (or create) the record at ``path``. Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | os.PathLike, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise ConfigError(f"{self.path}: no clinic record here (create one with serve or predict --record)")
        if self.path.is_dir():
            raise ConfigError(f"{self.path}: is a directory; --record takes a database file path")
        _owner_only_file(self.path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path}: not a clinic record ({exc})") from exc

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version not in (0, 1):
            raise ConfigError(f"{self.path}: record schema version {version}; this osteo-edge reads version {SCHEMA_VERSION}")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:  # another process won
                self._db.execute("COMMIT")
                return
            for statement in [*_SCHEMA, *_TRIGGERS, *_V2] if version == 0 else _V2:  # 1 -> 2: the screen index
                self._db.execute(statement)
            self._db.execute("INSERT INTO schema VALUES (?, ?)", (SCHEMA_VERSION, now_utc()))
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ClinicRecord":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------
    def append(self, pred: Prediction, who: InputIdentity, bundle: dict[str, Any], source: str,
               result_uid: str | None = None) -> bool:
        """Record one answer. False (nothing written) when a received instance is already recorded."""
        return self._insert("predictions", self._row(pred, who, bundle, source, result_uid), ignore=source == "serve")

    @staticmethod
    def _row(pred: Prediction, who: InputIdentity, bundle: dict[str, Any], source: str, result_uid: str | None) -> dict[str, Any]:
        row = {
            "recorded_at": now_utc(), "source": source, "kind": "prediction", **who.__dict__,
            "bundle": bundle.get("bundle"), "bundle_format": bundle.get("format"), "bundle_seal": bundle.get("seal"),
            "model_sha256": bundle.get("model_sha256"), "status": pred.status, "label": pred.label,
            "probabilities": json.dumps(pred.probabilities, sort_keys=True), "low_bmd_probability": pred.low_bmd_probability,
            "reason": pred.reason, "message": pred.message, "latency_ms": pred.latency_ms, "result_uid": result_uid,
        }
        return {k: utf8_text(v) for k, v in row.items()}  # a file name that is not UTF-8: U+FFFD, still storable

    def append_many(self, answers: list[tuple[Prediction, InputIdentity, dict[str, Any], str, str | None]]) -> list[bool]:
        """:meth:`append` for several answers in one transaction (one fsync); per answer, whether it was new."""
        rows = [self._row(*a) for a in answers]
        out = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row, a in zip(rows, answers):
                    verb = "INSERT OR IGNORE" if a[3] == "serve" else "INSERT"
                    cur = self._db.execute(f"{verb} INTO predictions ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                                           list(row.values()))
                    out.append(cur.rowcount == 1)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return out

    def append_correction(self, row_id: int, label: str | None, status: str, note: str) -> int:
        """A correction of row ``row_id`` (e.g. a clinician's reading): a new row; the old one stays."""
        old = self.row(row_id)
        row = {k: old[k] for k in COLUMNS if k not in ("id", "recorded_at", "kind", "corrects", "label", "status", "note")}
        row.update(recorded_at=now_utc(), kind="correction", corrects=row_id, label=label, status=status, note=note)
        self._insert("predictions", row)
        return int(self._db.execute("SELECT max(id) FROM predictions").fetchone()[0])

    def event(self, sop_instance_uid: str | None, event: str, detail: str = "") -> None:
        self._insert("events", {"recorded_at": now_utc(), "sop_instance_uid": sop_instance_uid, "event": event, "detail": detail})

    def events_many(self, events: list[tuple[str | None, str, str]]) -> None:
        """Several (sop_instance_uid, event, detail) in one transaction (one fsync)."""
        at = now_utc()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO events (recorded_at, sop_instance_uid, event, detail) VALUES (?, ?, ?, ?)",
                                     [(at, *e) for e in events])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _insert(self, table: str, row: dict[str, Any], ignore: bool = False) -> bool:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        with self._lock:
            cur = self._db.execute(f"{verb} INTO {table} ({cols}) VALUES ({marks})", [utf8_text(v) for v in row.values()])
        return cur.rowcount == 1

    def append_screened(self, answers: list[tuple[Prediction, InputIdentity]], bundle: dict[str, Any]) -> int:
        """``osteo-edge screen``: answers in one transaction (source ``predict``, note ``screen``); an image
        already screened with this bundle seal is ignored (unique index). Returns how many were new."""
        new = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for pred, who in answers:
                    row = {**self._row(pred, who, bundle, "predict", None), "note": SCREEN_NOTE}
                    cur = self._db.execute(f"INSERT OR IGNORE INTO predictions ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                                           list(row.values()))
                    new += cur.rowcount == 1
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return new

    # -- reading ---------------------------------------------------------------------------
    def answered(self, seal: str) -> dict[str, tuple[str, str | None, float | None, str | None]]:
        """Image key (SOP Instance UID, else sha256) -> (status, label, P(low BMD), reason) of its first
        answer by the bundle with this seal, from any source: what a screening run skips."""
        q = ("SELECT coalesce(sop_instance_uid, sha256), status, label, low_bmd_probability, reason FROM predictions "
             "WHERE kind = 'prediction' AND bundle_seal = ? AND coalesce(sop_instance_uid, sha256) IS NOT NULL ORDER BY id DESC")
        with self._lock:
            found = self._db.execute(q, (seal,)).fetchall()
        return {k: (s, lab, p, r) for k, s, lab, p, r in found}  # id DESC: the first answer wins

    def has_instance(self, sop_instance_uid: str) -> bool:
        q = "SELECT 1 FROM predictions WHERE sop_instance_uid = ? AND source = 'serve' AND kind = 'prediction'"
        with self._lock:
            return self._db.execute(q, (sop_instance_uid,)).fetchone() is not None

    def has_event(self, sop_instance_uid: str, event: str) -> bool:
        with self._lock:
            q = "SELECT 1 FROM events WHERE sop_instance_uid = ? AND event = ?"
            return self._db.execute(q, (sop_instance_uid, event)).fetchone() is not None

    def delivered(self, sop_instance_uid: str, result_uid: str | None = None) -> bool:
        """Whether the result for this received instance (this result SR, when given) was delivered."""
        q = "SELECT detail FROM events WHERE sop_instance_uid = ? AND event IN ('delivered', 'forwarded')"
        with self._lock:
            found = [r[0] or "" for r in self._db.execute(q, (sop_instance_uid,)).fetchall()]
        return any(result_uid is None or d.startswith(result_uid) for d in found)

    def deliveries(self) -> dict[str, tuple[str, str]]:
        """Received instance UID -> (first delivery time, detail: SR UID and destination)."""
        q = ("SELECT sop_instance_uid, recorded_at, detail FROM events WHERE event IN ('delivered', 'forwarded') "
             "AND sop_instance_uid IS NOT NULL ORDER BY id")
        with self._lock:
            found = self._db.execute(q).fetchall()
        out: dict[str, tuple[str, str]] = {}
        for uid, at, detail in found:
            out.setdefault(uid, (at, detail))
        return out

    def count_instances(self) -> int:
        """Distinct SOP Instance UIDs answered by the node."""
        with self._lock:
            q = "SELECT count(*) FROM predictions WHERE source = 'serve' AND kind = 'prediction'"
            return int(self._db.execute(q).fetchone()[0])

    def row(self, row_id: int) -> dict[str, Any]:
        rows = list(self.rows(where="id = ?", args=(row_id,)))
        if not rows:
            raise ConfigError(f"{self.path}: no record row {row_id}")
        return rows[0]

    def rows(self, since: str | None = None, where: str = "1", args: tuple = (), until: str | None = None) -> Iterator[dict[str, Any]]:
        """Rows in id order; ``since``/``until``: bounds on recorded_at in its stored form (see :func:`time_bounds`)."""
        q = f"SELECT {', '.join(COLUMNS)} FROM predictions WHERE {where}"
        if since:
            q, args = q + " AND recorded_at >= ?", (*args, since)
        if until:
            q, args = q + " AND recorded_at <= ?", (*args, until)
        with self._lock:
            found = self._db.execute(q + " ORDER BY id", args).fetchall()
        for r in found:
            yield dict(zip(COLUMNS, r))

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            found = self._db.execute("SELECT recorded_at, sop_instance_uid, event, detail FROM events ORDER BY id").fetchall()
        return [dict(zip(("recorded_at", "sop_instance_uid", "event", "detail"), r)) for r in found]


# ------------------------------------------------------------------------------------------------
# export and statistics


EXPORT_COLUMNS = (*COLUMNS, "delivered_at", "delivered_to")


def export_csv(record: ClinicRecord, out: str | os.PathLike, since: str | None = None, until: str | None = None) -> tuple[Path, int]:
    """Every row recorded in [``since``, ``until``] (ISO 8601 dates or times; without a time zone: UTC)
    as CSV, with when and where its result SR was delivered (empty: not delivered yet); formula-like
    cells neutralised; the file owner-only (0600) like the record."""
    lo, hi = time_bounds(since, until)
    delivered = record.deliveries()
    rows = []
    for row in record.rows(lo, until=hi):
        at, detail = delivered.get(row["sop_instance_uid"] or "", (None, None)) if row["source"] == "serve" else (None, None)
        rows.append([*(row[c] for c in COLUMNS), at, detail])
    return owner_only_write(out, csv_text(EXPORT_COLUMNS, rows).encode("utf-8")), len(rows)


def owner_only_write(out: str | os.PathLike, data: bytes) -> Path:
    """Write atomically, 0600 from the first byte (never readable by others, even for a moment)."""
    from .spool import durable_write

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return durable_write(path, data)


def parse_time(text: str, option: str, end_of_day: bool = False) -> dt.datetime:
    """An ISO 8601 date or date-time, time zone included (``Z``, ``+01:00``), as an aware UTC time.
    No time zone: UTC. A date alone is the start of that day (``end_of_day``: its last millisecond)."""
    value = text.strip()
    try:
        if len(value) == 10 and value[4] == "-" and value[7] == "-":
            day = dt.date.fromisoformat(value)
            t = dt.datetime.combine(day, dt.time.max if end_of_day else dt.time.min)
        else:
            t = dt.datetime.fromisoformat(value)
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{option} {text!r} is not an ISO 8601 date or time (e.g. 2026-12-07, 2026-12-07T23:59, "
                          "2026-12-07T23:59+01:00, 2026-12-07T22:59Z)") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc)


def _stamp(t: dt.datetime) -> str:
    """The text form recorded_at is stored in (UTC, milliseconds), so that text order is time order."""
    return t.isoformat(timespec="milliseconds")


def time_bounds(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    lo = _stamp(parse_time(since, "--since")) if since is not None else None
    hi = _stamp(parse_time(until, "--until", end_of_day=True)) if until is not None else None
    if lo is not None and hi is not None and hi < lo:
        raise ConfigError(f"--until {until!r} is before --since {since!r}")
    return lo, hi


@dataclass(frozen=True)
class RecordStats:
    total: int
    by_status: dict[str, int]
    by_label: dict[str, int]
    per_day: dict[str, dict[str, int]]  # day -> status -> count


def stats(record: ClinicRecord, since: str | None = None, until: str | None = None) -> RecordStats:
    """Counts of answers (corrections excluded) by status, by label and per day (UTC)."""
    status, label, days = Counter(), Counter(), {}
    total = 0
    lo, hi = time_bounds(since, until)
    for row in record.rows(lo, where="kind = 'prediction'", until=hi):
        total += 1
        status[row["status"]] += 1
        label[row["label"] or "-"] += 1
        days.setdefault(row["recorded_at"][:10], Counter())[row["status"]] += 1
    return RecordStats(total, dict(status), dict(label), {d: dict(c) for d, c in sorted(days.items())})


def stats_png(st: RecordStats, out: str | os.PathLike) -> Path | None:
    """Answers per day, stacked by status, as a PNG; None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = list(st.per_day)
    fig, ax = plt.subplots(figsize=(max(4, len(days) * 0.6 + 2), 3))
    bottom = [0] * len(days)
    for status in ("ok", "refer", "rejected"):
        vals = [st.per_day[d].get(status, 0) for d in days]
        ax.bar(days, vals, bottom=bottom, label=status)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("answers")
    ax.set_title("osteo-edge clinic record: answers per day (UTC)")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    plt.close(fig)
    return owner_only_write(out, buf.getvalue())


def bundle_identity(clf: Any) -> dict[str, Any]:
    """What the record keeps about the model: bundle path, format, seal and the model file's sha256."""
    b = clf.bundle
    return {"bundle": str(b.path), "format": b.format, "seal": b.seal, "model_sha256": b.model_sha256}


def identify_file(path: str | os.PathLike) -> InputIdentity:
    """sha256 of a file and, for a DICOM file, its UIDs (never the patient's name or ID)."""
    from ..artifact import sha256_file
    from ..preprocess import is_dicom

    p = Path(path)
    if not p.is_file():
        return InputIdentity(input_name=p.name)
    with open(p, "rb") as fh:
        head = fh.read(132)
    uids: dict[str, str | None] = {}
    if is_dicom(head):
        uids = dicom_uids(p)
    return InputIdentity(sha256=sha256_file(p), input_name=p.name, **uids)


def dicom_uids(path: str | os.PathLike) -> dict[str, str | None]:
    """SOP Instance/Study/Series/Class UIDs and transfer syntax of a DICOM file (header only, quietly)."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # an unreadable header: the sha256 still identifies the input
        log.debug("%s: no DICOM header read", path, exc_info=True)
        return {}
    return header_uids(ds)


def header_uids(ds: Any) -> dict[str, str | None]:
    """The UIDs :func:`dicom_uids` keeps, from a header already read."""
    meta = getattr(ds, "file_meta", None)
    return {
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")) or None,
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")) or None,
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")) or None,
        "sop_class_uid": str(ds.get("SOPClassUID", "")) or None,
        "transfer_syntax": str(meta.get("TransferSyntaxUID", "")) or None if meta is not None else None,
    }


def record_predictions(path: str | os.PathLike, preds: list[Prediction], clf: Any) -> int:
    """``predict --record``: append every answer (identity = file sha256, and UIDs for DICOM)."""
    bundle = bundle_identity(clf)
    with ClinicRecord(path) as rec:
        for pred in preds:
            rec.append(pred, identify_file(pred.path), bundle, source="predict")
    return len(preds)
