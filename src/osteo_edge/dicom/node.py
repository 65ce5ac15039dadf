"""``osteo-edge serve``: a DICOM node (pynetdicom) that answers radiographs.

C-ECHO is answered; C-STORE of CR, DX (for presentation and for processing) and Secondary Capture
images is accepted; SR, KO and presentation states (what a study re-sent from a PACS carries beside
its images) are accepted and ignored. An accepted image is written to the spool durably BEFORE the
success status goes back; one worker answers the spool in order (EdgeClassifier.predict on the
spooled file), writes the result SR to the results folder and/or the durable outbox, appends the
answer to the clinic record (once per SOP Instance UID), then removes the spooled file. A separate
forwarding thread (``outbox.Forwarder``) delivers the outbox to ``--forward`` with its own timeouts
and retries, so a slow or dead PACS never delays an answer. On restart the spool and the outbox are
finished first. One log line per instance and event (received, answered, delivered), with UIDs and
AE titles, never a patient's name. One node per record: a lock file beside it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import queue
import threading
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OsteoEdgeError, first_line, require
from .admission import (  # noqa: F401 (RADIOGRAPH_SOP_CLASSES, STATUS: the node's table, handed on)
    NON_IMAGE_CLASSES, RADIOGRAPH_SOP_CLASSES, STATUS, check_dataset, class_name, non_image, problem_free_study, read_header,
)
from .decode import accepted_syntaxes
from .nodelock import NodeLock
from .outbox import Destination, Forwarder, Outbox
from .spool import Spool, durable_write, fsync_dir, valid_uid

log = logging.getLogger(__name__)

DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "OSTEOEDGE"
DEFAULT_MAX_BYTES = 200 * 1024 * 1024  # preprocess.MAX_FILE_BYTES: the decoder refuses more anyway
STREAM_SLACK = 1024 * 1024  # PDU/PDV headers and command sets on top of a dataset
MAX_PDU = 1024 * 1024  # the largest PDU the node receives (pynetdicom's default: 16 KB)


def stream_cap(max_bytes: int) -> int:
    """Bytes of P-DATA one association may send without a completed C-STORE before it is aborted:
    twice the dataset limit (a dataset a little over it still gets a clean 0xA700 status), so a
    sender streaming gigabytes cannot fill memory."""
    return 2 * max_bytes + STREAM_SLACK


@dataclass
class NodeConfig:
    record: Path
    spool: Path | None = None  # default: beside the record, <record>.spool
    results: Path | None = None  # results kept for pick-up here (SR files)
    port: int = DEFAULT_PORT
    ae_title: str = DEFAULT_AE_TITLE
    bind: str = "127.0.0.1"
    allow_ae: list[str] = field(default_factory=list)  # empty: any calling AE title
    forward: Destination | None = None
    model: Path | None = None
    trust: Any = None
    threads: int | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    forward_timeout: float = 10.0  # every network wait of the forwarding thread (connect, association, C-STORE)
    retry_max: float = 60.0  # longest pause between delivery attempts (backoff from 1 s, doubling)

    def check(self) -> "NodeConfig":
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port (1-65535)")
        if not self.ae_title or len(self.ae_title) > 16 or not self.ae_title.isascii():
            raise ConfigError(f"--ae-title {self.ae_title!r} must be 1-16 ASCII characters")
        for ae in self.allow_ae:
            if not ae or len(ae) > 16:
                raise ConfigError(f"--allow-ae {ae!r} must be 1-16 characters")
        if self.max_bytes < 1024:
            raise ConfigError(f"--max-mb {self.max_bytes / 2**20:g} is below 1 KB (0.001)")
        if not 0 < self.forward_timeout <= 600:
            raise ConfigError(f"--forward-timeout {self.forward_timeout:g} must be above 0 and at most 600 seconds")
        if not 0 < self.retry_max <= 3600:
            raise ConfigError(f"--retry-max {self.retry_max:g} must be above 0 and at most 3600 seconds")
        if self.spool is None:
            self.spool = self.record.with_name(self.record.name + ".spool")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Node:
    """A running DICOM node: ``start()``, ``wait()``/``stop()``. Use as a context manager in tests."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config.check()
        self._queue: queue.Queue[Path] = queue.Queue()
        self._stop = threading.Event()
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self._committer: threading.Thread | None = None
        self._commits: queue.Queue[tuple[list[_Answer], int]] = queue.Queue(maxsize=4)
        self.clf: Any = None
        self.record: Any = None
        self.spool: Spool | None = None
        self.port: int = config.port
        self.answered = 0
        self._streamed: dict[int, int] = {}  # P-DATA bytes per association since its last C-STORE
        self._stream_lock = threading.Lock()
        self.outbox: Outbox | None = None
        self.forwarder: Forwarder | None = None
        self._lock: NodeLock | None = None
        self.started_at: float | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "Node":
        from ..edge_runtime import EdgeClassifier
        from .record import ClinicRecord

        require("pynetdicom", "dicom")
        require("highdicom", "dicom")
        cfg = self.config
        if not is_loopback(cfg.bind):
            log.warning("binding %s: reachable from other machines; restrict it with a firewall and --allow-ae", cfg.bind)
        self._lock = NodeLock.acquire(cfg)  # one node per record and spool, before anything is touched
        try:
            self.clf = EdgeClassifier.load(cfg.model, threads=cfg.threads, trust=cfg.trust)
            self.record = ClinicRecord(cfg.record)
            self.spool = Spool(cfg.spool)
        except BaseException:
            self._lock.release()
            raise
        if cfg.results is not None:
            cfg.results.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.outbox = Outbox(self.spool.root / "unsent")
        pending = self.spool.pending()
        for path in pending:
            self._queue.put(path)
        if pending:
            log.info("finishing %d instances left in the spool", len(pending))
        if cfg.forward is not None:
            waiting = len(self.outbox)
            if waiting:
                log.info("%d results waiting in the outbox for %s: delivering them first", waiting, cfg.forward)
            self.forwarder = Forwarder(self.outbox, cfg.forward, cfg.ae_title, self._delivered, self._not_delivered,
                                       timeout=cfg.forward_timeout, retry=(1.0, cfg.retry_max)).start()
        elif len(self.outbox):
            log.warning("%d results wait in %s and no --forward is given: they are not delivered", len(self.outbox), self.outbox.root)
        self._worker = threading.Thread(target=self._work, name="osteo-edge-worker", daemon=True)
        self._worker.start()
        self._committer = threading.Thread(target=self._commit_loop, name="osteo-edge-committer", daemon=True)
        self._committer.start()
        self.started_at = time.time()
        try:
            self._server = self._make_ae().start_server((cfg.bind, cfg.port), block=False, evt_handlers=self._handlers())
        except OSError as exc:
            self.stop(drain=False)
            raise ConfigError(f"cannot listen on {cfg.bind}:{cfg.port} ({exc.strerror or exc}); choose another --port or --bind") from None
        self.port = self._server.server_address[1]
        self._lock.update(port=self.port, started_at=self.started_at)
        log.info("DICOM node %s listening on %s:%d (model %s, record %s)", cfg.ae_title, cfg.bind, self.port,
                 self.clf.bundle.format, cfg.record)
        return self

    def _make_ae(self) -> Any:
        from pynetdicom import AE, StoragePresentationContexts
        from pynetdicom.sop_class import Verification

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.add_supported_context(Verification)
        syntaxes = accepted_syntaxes()

        # Every storage class is negotiated, so that a wrong one gets a C-STORE status (0x0122) and a log line.
        for ctx in StoragePresentationContexts:
            ae.add_supported_context(ctx.abstract_syntax, syntaxes)
        for uid in (*RADIOGRAPH_SOP_CLASSES, *NON_IMAGE_CLASSES):
            if uid not in {c.abstract_syntax for c in ae.supported_contexts}:
                ae.add_supported_context(uid, syntaxes)
        ae.require_calling_aet = list(cfg.allow_ae)
        ae.require_called_aet = True  # an association addressed to another AE title is refused
        ae.maximum_associations = 8
        ae.maximum_pdu_size = MAX_PDU  # a radiograph in a few PDUs, not dozens of 16 KB ones: less Python per image
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        return ae

    def _handlers(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        return [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_REJECTED, self._on_rejected),
                (evt.EVT_DATA_RECV, self._on_data), (evt.EVT_CONN_CLOSE, self._on_close)]

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stop accepting, then (``drain``) let the worker finish the spool and the forwarder the
        outbox (a few seconds at most: what is left is delivered after the next start), then close
        the record and release the lock."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if drain:
            deadline = time.monotonic() + timeout
            while self._queue.unfinished_tasks and time.monotonic() < deadline:
                time.sleep(0.05)
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
        if self._committer is not None:
            self._committer.join(timeout=10)
        if self.forwarder is not None:
            if drain and self.forwarder.failures == 0:
                deadline = time.monotonic() + 5
                while not self.forwarder.idle() and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.forwarder.stop(timeout=self.config.forward_timeout + 5)
            self.forwarder = None
        if self.record is not None:
            self.record.close()
            self.record = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C, SIGTERM turned into KeyboardInterrupt by the CLI)."""
        try:
            while not self._stop.is_set():
                time.sleep(0.5)
        finally:
            self.stop()

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def idle(self) -> bool:
        """Every received image answered (the outbox may still hold results to deliver)."""
        return self._queue.unfinished_tasks == 0

    # -- the forwarder's callbacks (its thread) ----------------------------------------------
    def _delivered(self, batch: list[tuple[str | None, str, Destination]]) -> None:
        self.record.events_many([(source_uid, "delivered", f"{sr_uid} to {dest}") for source_uid, sr_uid, dest in batch])
        for source_uid, sr_uid, dest in batch:
            log.info("delivered result %s (for %s) to %s", sr_uid, source_uid or "?", dest)

    def _not_delivered(self, error: str, waiting: int) -> None:
        self.record.event(None, "forward_failed", f"{self.config.forward}: {error} ({waiting} waiting)")

    # -- events (pynetdicom threads) --------------------------------------------------------
    def _on_echo(self, event: Any) -> int:
        log.debug("C-ECHO from %s", _peer(event))
        return STATUS["success"]

    def _on_rejected(self, event: Any) -> None:
        allowed = self.config.allow_ae
        calling = str(event.assoc.requestor.ae_title or "").strip()
        called = str(getattr(getattr(event.assoc.requestor, "primitive", None), "called_ae_title", "") or "").strip()
        if allowed and calling not in allowed:
            why = "is not in --allow-ae"
        elif called and called != self.config.ae_title:
            why = f"called AE {called!r}, not this node's {self.config.ae_title!r} (--ae-title)"
        else:
            why = "(too many associations or a bad request)"
        log.warning("association refused: calling AE %r (%s) %s", calling, event.assoc.requestor.address, why)

    def _on_data(self, event: Any) -> None:
        """Count the P-DATA bytes of each association (each complete PDU, before pynetdicom assembles
        the dataset in memory) and abort one that streams more than :func:`stream_cap` without a C-STORE
        completing. A single PDU is buffered whole by pynetdicom before this runs: the bound holds for
        senders that keep to the negotiated maximum PDU length."""
        data = event.data
        if not data or data[0] != 0x04:  # P-DATA-TF only
            return
        key = id(event.assoc)
        with self._stream_lock:
            total = self._streamed.get(key, 0) + len(data)
            self._streamed[key] = total
        cap = stream_cap(self.config.max_bytes)
        if total > cap and total - len(data) <= cap:
            log.warning("association from %s aborted: more than %d bytes streamed without a complete C-STORE "
                        "(--max-mb %g)", _peer(event), cap, self.config.max_bytes / 2**20)
            event.assoc.abort()

    def _on_close(self, event: Any) -> None:
        with self._stream_lock:
            self._streamed.pop(id(event.assoc), None)

    def _on_store(self, event: Any) -> int:
        with self._stream_lock:
            self._streamed.pop(id(event.assoc), None)  # this dataset is complete: count the next one afresh
        req = event.request
        sop_class, uid = str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)
        who = _peer(event)
        kind = non_image(sop_class)
        if kind is not None:  # a study re-sent with its SR, KO or PR: those are not ours to answer
            log.info("ignored %s (%s) from %s: not an image", uid, kind, who)
            return STATUS["success"]
        if sop_class not in RADIOGRAPH_SOP_CLASSES:
            return _refuse("sop_class_not_supported", f"C-STORE {uid} from {who}: SOP class {class_name(sop_class)} is not a radiograph (CR, DX, SC)")
        size = req.DataSet.getbuffer().nbytes
        if size > self.config.max_bytes:
            return _refuse("out_of_resources", f"C-STORE {uid} from {who}: dataset of {size} bytes is over the "
                                               f"{self.config.max_bytes}-byte limit (--max-mb {self.config.max_bytes / 2**20:g})")
        if not valid_uid(uid):
            return _refuse("dataset_does_not_match", f"C-STORE from {who}: invalid SOP Instance UID {uid[:70]!r}")
        data = event.encoded_dataset()
        problem = check_dataset(data, sop_class, uid)
        if problem is not None:
            return _refuse(problem[0], f"C-STORE {uid} from {who}: {problem[1]}")
        info = {"calling_ae": event.assoc.requestor.ae_title.strip(), "received_at": time.time(),
                "transfer_syntax": str(event.context.transfer_syntax), "study_uid": problem_free_study(data)}
        try:
            path = self.spool.put(uid, data, info)  # durable before the success status goes back
        except (OSError, OsteoEdgeError) as exc:
            return _refuse("out_of_resources", f"C-STORE {uid} from {who}: spool write failed ({exc})")
        self._queue.put(path)
        log.info("received %s (%s, study %s) from %s", uid, RADIOGRAPH_SOP_CLASSES[sop_class], info["study_uid"] or "?", who)
        return STATUS["success"]

    # -- the worker ------------------------------------------------------------------------
    def _work(self) -> None:
        """Answer the spool in order, in batches of what has arrived (up to BATCH): each image is
        read, classified and given its SR here; the committer thread then makes the batch durable
        (result files, record rows, spool removal: one folder fsync, one SQLite transaction), while
        this thread already classifies the next batch: the fsync waits overlap the model."""
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            answers: list[_Answer] = []
            try:
                answers = self._answer_batch(batch)
            finally:
                self._commits.put((answers, len(batch)))  # the committer marks the batch done, in order

    def _commit_loop(self) -> None:
        while not (self._stop.is_set() and self._commits.empty()):
            try:
                answers, n = self._commits.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if answers:
                    self._commit(answers)
            except Exception as exc:
                for answer in answers:
                    self._failed(answer.path, exc)
            finally:
                for _ in range(n):
                    self._queue.task_done()

    def _failed(self, path: Path, exc: Exception) -> None:
        """One bad instance never stops the node: it is kept in spool/failed, logged and recorded."""
        log.error("could not answer %s (%s: %s); kept in %s", path.stem, type(exc).__name__, first_line(exc), self.spool.root / "failed")
        log.debug("worker error", exc_info=True)
        if path.exists():
            self.spool.fail(path)
        try:
            self.record.event(path.stem, "answer_failed", f"{type(exc).__name__}: {first_line(exc)}; kept in spool/failed")
        except Exception:  # the record itself failing: the log line above already says it
            log.debug("could not record the failure", exc_info=True)

    def _answer_batch(self, paths: list[Path]) -> list["_Answer"]:
        answers = []
        for path in paths:
            try:
                answer = self._answer(path)
            except Exception as exc:
                self._failed(path, exc)
                continue
            if answer is not None:
                answers.append(answer)
        return answers

    def _answer(self, path: Path) -> "_Answer | None":
        """Read, classify and build the SR of one spooled image (nothing written yet)."""
        from .record import InputIdentity, header_uids
        from .sr import result_sr

        try:
            raw = path.read_bytes()  # read once: header, pixels and sha256 all come from these bytes
        except FileNotFoundError:  # a duplicate already answered and removed
            return None
        info = self.spool.info(path)
        header = read_header(raw)
        uids = header_uids(header)
        uid = uids.get("sop_instance_uid") or path.stem
        pred = self.clf.predict(raw, name=uid)
        if str(path) in pred.message:  # a decoder message naming the spooled file: the UID says which image
            pred = dataclasses.replace(pred, message=pred.message.replace(str(path), uid))
        try:
            result_uid, data = result_sr(pred, header, self.clf.bundle.seal)
        except Exception as exc:  # an image header the SR cannot cite: the answer is still recorded
            log.warning("no result SR for %s (%s: %s)", uid, type(exc).__name__, first_line(exc))
            result_uid = data = None
        who = InputIdentity(sha256=hashlib.sha256(raw).hexdigest(), calling_ae=info.get("calling_ae"), **uids)
        return _Answer(path, uid, pred, who, result_uid, data)

    def _commit(self, answers: list["_Answer"]) -> None:
        """Results kept and queued for delivery, then recorded, then out of the spool: in that order,
        so that a crash at any point leaves the image in the spool (answered again, the same SR)."""
        from .record import bundle_identity

        cfg = self.config
        queued = False
        for a in answers:
            if a.data is None:
                continue
            if cfg.results is not None:
                durable_write(cfg.results / f"{a.result_uid}.dcm", a.data, sync_dir=False)
            if cfg.forward is not None and not self.record.delivered(a.uid, a.result_uid):
                self.outbox.put(a.result_uid, a.data, a.uid, sync_dir=False)
                queued = True
        if cfg.results is not None:
            fsync_dir(cfg.results)
        if queued:
            fsync_dir(self.outbox.root)
            self.forwarder.notify()
        bundle = bundle_identity(self.clf)
        new = self.record.append_many([(a.pred, a.who, bundle, "serve", a.result_uid) for a in answers])
        self.spool.done_many([a.path for a in answers])
        for a, fresh in zip(answers, new):
            self.answered += 1
            pred = a.pred
            p = f" P(low BMD) {pred.low_bmd_probability:.2f}" if pred.low_bmd_probability is not None else ""
            log.info("answered %s: %s %s%s, result %s%s", a.uid, pred.status, pred.label or pred.reason or "", p,
                     a.result_uid or "none", "" if fresh else " (already recorded: not recorded again)")


@dataclass
class _Answer:
    path: Path
    uid: str
    pred: Any
    who: Any
    result_uid: str | None
    data: bytes | None


BATCH = 16  # images made durable together at most


# ------------------------------------------------------------------------------------------------
# helpers


def _refuse(status: str, message: str) -> int:
    log.warning("refused %s", message)
    return STATUS[status]


def _peer(event: Any) -> str:
    r = event.assoc.requestor
    return f"{r.ae_title.strip()}@{r.address}"


