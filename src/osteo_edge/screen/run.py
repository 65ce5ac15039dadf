"""The screening run: source -> engine (local processes or Ray) -> the one clinic record -> worklist.

The driver alone writes the record: answers arrive from the workers, are buffered, and go in as one
transaction every ``flush_every`` answers (or second). A SIGKILL loses at most the buffered answers
(never half a transaction: SQLite WAL), and the rerun answers them again; the record's unique index
on (image, seal) among screening rows means nothing is recorded twice. Images the record already
answers for this bundle's seal are skipped by the workers (files: after hashing; a PACS: before
fetching, from the C-FIND answers).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..core.progress import Progress, fmt_duration, no_progress
from ..errors import ConfigError
from .pacs import PacsQuery, PacsSource
from ..core.csvsafe import utf8_text
from .sources import ScreenItem, source_items
from .work import WorkerConfig

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
REFER_ACTION = "refer for DEXA"
WORKLIST_COLUMNS = ("patient_id", "accession_number", "study_instance_uid", "image", "file", "film_date",
                    "p_low_bmd", "label", "reason", "action", "note")


@dataclass(frozen=True)
class ScreenJob:
    """One screening run. ``source``: a folder tree or CSV file list; or ``pacs`` (``AE@HOST:PORT``) + ``query``."""

    record: Path
    source: Path | None = None
    pacs: str | None = None
    query: PacsQuery = field(default_factory=PacsQuery)
    model: str | None = None
    workers: int = 1
    engine: str = "local"
    worklist: Path | None = None  # default: <record>-referrals.csv beside the record
    trusted_keys: tuple[str, ...] = ()
    ray_address: str | None = None
    spool: Path | None = None  # PACS files; default: <record folder>/screen-spool
    batch: int = 32  # PACS images per C-GET association
    calling_ae: str = "OSTEOEDGE-SCREEN"
    flush_every: int = 32

    def check(self) -> None:
        if (self.source is None) == (self.pacs is None):
            raise ConfigError("give SOURCE (a folder tree or a CSV list of files) or --pacs AE@HOST:PORT, not both")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; valid: {', '.join(ENGINES)}")
        if self.source is not None and (self.query.since or self.query.until or self.spool is not None):
            raise ConfigError("--since, --until and --spool apply to --pacs; a folder or file list is screened whole")
        if not self.record.name or self.record.is_dir():
            raise ConfigError(f"{self.record}: is a directory; --record takes a database file path")
        wl, guarded = self.worklist_path(), [self.record, *([self.source] if self.source is not None else [])]
        if wl.suffix.lower() != ".csv" or any(_same_file(wl, g) for g in guarded):
            raise ConfigError(f"--worklist {wl}: the worklist is a CSV file of its own (a path ending in .csv, "
                              "neither the record nor the source)")
        if wl.is_dir():
            raise ConfigError(f"--worklist {wl}: is a folder; give a CSV file path")

    def worklist_path(self) -> Path:
        return self.worklist or self.record.with_name(self.record.stem + "-referrals.csv")


@dataclass
class ScreenResult:
    engine: str
    workers: int
    inputs: int = 0
    answered: Counter = field(default_factory=Counter)  # status -> count, answered in this run
    already: Counter = field(default_factory=Counter)  # status -> count, answered before (skipped)
    missing: int = 0  # listed, but no such file (nothing recorded)
    missing_examples: list = field(default_factory=list)  # the first few such paths, to say which
    unreadable: int = 0  # there, but cannot be read (permissions, I/O error; nothing recorded, a rerun tries again)
    not_fetched: int = 0  # the PACS did not deliver them (a rerun tries again)
    duplicates: int = 0  # the same image again under another name in this run (recorded once)
    left_out: int = 0  # hidden and side files in the folder tree
    recorded: int = 0
    worklist: Path | None = None
    referrals: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0  # sum over answered images of identify + decode + inference time in the workers
    seal: str = ""
    startup_seconds: float = 0.0  # engine start to the first answer back (worker start-up, model load, Ray start)
    cpu_seconds: float = 0.0  # sum over answered images of the workers' CPU time for them

    @property
    def cpu_ms_per_image(self) -> float:
        """CPU time one image costs a worker (hashing, header, decode, inference): what a free core takes."""
        n = sum(self.answered.values())
        return 1000 * self.cpu_seconds / n if n else 0.0

    @property
    def images_per_second(self) -> float:
        n = sum(self.answered.values())
        return n / self.seconds if self.seconds > 0 else 0.0

    @property
    def ms_per_image(self) -> float:
        n = sum(self.answered.values())
        return 1000 * self.busy_seconds / n if n else 0.0


class Recorder:
    """The driver's side: buffer answers, record them in one transaction per flush, keep the worklist."""

    def __init__(self, rec: Any, bundle: dict[str, Any], answered: dict[str, tuple], result: ScreenResult,
                 progress: Progress, total: int | None, flush_every: int, release: Callable[[str], None]) -> None:
        self.rec, self.bundle, self.known, self.result = rec, bundle, answered, result
        self.progress, self.total, self.flush_every, self.release = progress, total, flush_every, release
        self.buffer: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.referrals: dict[str, list[Any]] = {}
        self.done = 0
        self.first: float | None = None  # when the first answer arrived
        self.t0 = self.last_flush = time.perf_counter()
        self.progress("screening", 0, total)

    def add(self, outcome: dict[str, Any]) -> None:
        res, key, state = self.result, outcome.get("key"), outcome.get("state")
        if state == "answered" and self.first is None:
            self.first = time.perf_counter()
        if state == "missing":
            res.missing += 1
            if len(res.missing_examples) < 3:
                res.missing_examples.append(utf8_text(outcome["path"]))
        elif state == "unreadable":
            res.unreadable += 1
        elif key in self.seen:
            res.duplicates += 1
        elif state == "skipped":
            self.seen.add(key)
            status, label, p, reason = self.known[key]
            res.already[status] += 1
            if status == "refer":
                self._refer(outcome, key, label, p, reason)
        else:
            self.seen.add(key)
            pred = outcome["prediction"]
            res.answered[pred["status"]] += 1
            res.busy_seconds += outcome["seconds"] + outcome["identify_seconds"]
            res.cpu_seconds += outcome.get("cpu_seconds", 0.0)
            if pred["status"] == "refer":
                self._refer(outcome, key, pred["label"], pred["low_bmd_probability"], pred["reason"])
        self.buffer.append(outcome)
        self.done += 1
        if len(self.buffer) >= self.flush_every or time.perf_counter() - self.last_flush > 1.0:
            self.flush()
        self._report()  # per answer: a bar redraws at its own pace, a log line prints every N seconds

    def _refer(self, outcome: dict[str, Any], key: str, label: Any, p: Any, reason: Any) -> None:
        from ..edge_runtime.classifier import SHORT_DISCLAIMER

        m = outcome.get("meta") or {}
        # absolute: the worklist is read from another folder; a PACS's spooled copy is gone after the run
        file = os.path.abspath(outcome["path"]) if self.release is _keep else ""
        row = (m.get("patient_id", ""), m.get("accession_number", ""), m.get("study_instance_uid", ""), key, file,
               m.get("film_date", ""), "" if p is None else round(float(p), 4), label or "", reason or "", REFER_ACTION,
               SHORT_DISCLAIMER)
        self.referrals[key] = [utf8_text(v) for v in row]  # a file name that is not UTF-8: still one CSV line

    def flush(self) -> None:
        from ..dicom.record import InputIdentity
        from ..edge_runtime import Prediction

        new = [o for o in self.buffer if o.get("state") == "answered" and o.get("key")]
        if new:
            answers = [(Prediction(**_cleaned(o["prediction"])), InputIdentity(**_cleaned(o["identity"]))) for o in new]
            try:
                self.result.recorded += self.rec.append_screened(answers, self.bundle)
            except sqlite3.OperationalError as exc:  # disk full, locked longer than the timeout: the batch is rolled back
                raise ConfigError(f"{self.rec.path}: could not record answers ({exc}); those already recorded are kept: "
                                  "fix that, then run the same command again") from exc
        for o in self.buffer:
            self.release(o["path"])
        self.buffer.clear()
        self.last_flush = time.perf_counter()

    def _report(self) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        info: dict[str, Any] = {"rate": f"{rate:.1f}/s"}
        if self.total and rate > 0:
            info["eta"] = fmt_duration((self.total - self.done) / rate)
        self.progress("screening", self.done, self.total, **info)


def _cleaned(d: dict[str, Any]) -> dict[str, Any]:
    return {k: utf8_text(v) for k, v in d.items()}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _writable(path: Path, what: str) -> None:
    """Fail before the run, in one line, when ``path``'s folder cannot take a new file."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # as the record's folder
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the {what} here ({exc.strerror or exc}); choose a folder you can write") from exc


def _open_record(path: Path) -> Any:
    from ..dicom.record import ClinicRecord

    try:
        return ClinicRecord(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create or open the clinic record here ({exc.strerror or exc}); "
                          "choose a folder you can write") from exc


def _keep(path: str) -> None:
    """Files of a folder or list stay where they are."""


def screen(job: ScreenJob, progress: Progress = no_progress) -> ScreenResult:
    """Run ``job``: every image of its source answered once per model seal in the record; see the module doc."""
    from ..artifact.signing import TrustStore
    from ..dicom.record import bundle_identity
    from ..edge_runtime import EdgeClassifier

    job.check()
    _writable(job.record, "clinic record")  # before the model loads and the run starts: one line, not a traceback at the end
    _writable(job.worklist_path(), "referral worklist")
    cpus = os.cpu_count() or 1
    if job.engine == "local" and job.workers > cpus:
        log.warning("--workers %d on a machine with %d CPUs: the extra workers add memory (a model each), not speed",
                    job.workers, cpus)
    clf = EdgeClassifier.load(job.model, threads=1, trust=TrustStore.from_env(list(job.trusted_keys)))
    bundle = bundle_identity(clf)
    res = ScreenResult(job.engine, job.workers, seal=clf.bundle.seal)
    with _open_record(job.record) as rec:
        known = rec.answered(clf.bundle.seal)
        items, before, release, pacs = _items(job, known, res)
        config = WorkerConfig(None if job.model is None else str(Path(job.model).resolve()), clf.bundle.seal,
                              frozenset(known), tuple(job.trusted_keys))
        recorder = Recorder(rec, bundle, known, res, progress, res.inputs, job.flush_every, release)
        for outcome in before:
            recorder.add(outcome)
        if pacs is not None:
            items = pacs.fetch(items, before_batch=recorder.flush)
        t0 = time.perf_counter()
        try:
            _run_engine(job, items, config, recorder.add, clf)
        finally:  # Ctrl+C or an engine error: the answers already back are kept (a rerun does the rest)
            recorder.flush()
        res.seconds = time.perf_counter() - t0
        res.startup_seconds = (recorder.first - t0) if recorder.first is not None else 0.0
        if pacs is not None:
            res.not_fetched = len(pacs.not_fetched)
    res.referrals = len(recorder.referrals)
    try:
        res.worklist = _write_worklist(job.worklist_path(), recorder.referrals.values())
    except OSError as exc:
        raise ConfigError(f"{job.worklist_path()}: the referral worklist could not be written ({exc.strerror or exc}); "
                          f"the {res.recorded} new answers are in the record: rerun with --worklist PATH to write it") from exc
    return res


def _items(job: ScreenJob, known: dict[str, tuple], res: ScreenResult) -> tuple[Iterable[Any], list[dict[str, Any]], Callable[[str], None], Any]:
    """(items, or PACS instances to fetch; outcomes known without the engine; what to do with a file once
    recorded; the PACS source or None)."""
    if job.source is not None:
        items, res.left_out = source_items(job.source)
        res.inputs = len(items)
        return items, [], _keep, None
    spool = job.spool or job.record.parent / "screen-spool"
    pacs = PacsSource(job.pacs, job.query, spool, job.calling_ae, job.batch)
    found = pacs.find()
    res.inputs = len(found)
    todo, before = [], []
    for inst in found:  # answered before: never fetched; their referrals still go on the worklist
        if inst.sop_uid in known:
            before.append({"path": "", "key": inst.sop_uid, "meta": inst.meta, "state": "skipped"})
        else:
            todo.append(inst)
    return todo, before, pacs.release, pacs


def _run_engine(job: ScreenJob, items: Iterable[ScreenItem], config: WorkerConfig, on_outcome: Callable, clf: Any) -> None:
    if job.engine == "ray":
        from .ray_engine import CHUNK, run_ray

        # a PACS: one Ray Data pipeline per fetched batch, so the spool stays bounded
        run_ray(items, config, job.workers, on_outcome, address=job.ray_address, chunk=job.batch if job.pacs else CHUNK)
    else:
        from .local import run_local

        run_local(items, config, job.workers, on_outcome, clf=clf)


def _write_worklist(path: Path, rows: Iterable[list[Any]]) -> Path:
    """The referral worklist: one row per referred image, highest P(low BMD) first; owner-only (0600),
    written atomically; formula-like cells neutralised."""
    from ..core.csvsafe import csv_text
    from ..dicom.record import owner_only_write

    ordered = sorted(rows, key=lambda r: -(r[6] if isinstance(r[6], float) else -1.0))
    return owner_only_write(path, csv_text(WORKLIST_COLUMNS, ordered).encode("utf-8"))
