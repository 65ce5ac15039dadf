"""The durable outbox: every result SR owed to the PACS is delivered at least once.

A result is written to ``SPOOL/unsent/<SR SOP Instance UID>_<source SOP Instance UID>.dcm``
durably, before the image it answers leaves the spool. One forwarding thread of
its own (never the thread that answers images) sends what the outbox holds over one association per
batch, with its own timeouts; a result leaves the outbox only after the PACS answered its C-STORE
with a success (or warning) status, and the clinic record gets one ``delivered`` event per result
(time, SR UID, destination). A failure is retried with exponential backoff while the node runs; at
start-up whatever the outbox holds is sent first. A result sent and acknowledged just before a crash,
whose file was not yet removed, is sent again after the restart: the same SR (its UIDs derive from
the image and the model), which a PACS files once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .spool import _fsync_dir, durable_write, valid_uid

log = logging.getLogger(__name__)

# C-STORE statuses a sender may treat as stored (PS3.4 B.2.3: success and the warnings).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
SR_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@dataclass(frozen=True)
class Destination:
    """Where results go by C-STORE: ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        from ..errors import ConfigError

        ae, sep, rest = text.partition("@")
        host, sep2, port = rest.rpartition(":")
        if not (sep and sep2 and ae and host and port.isdigit() and 0 < int(port) < 65536 and len(ae) <= 16):
            raise ConfigError(f"--forward {text!r} is not AE@HOST:PORT (e.g. PACS@127.0.0.1:4242)")
        return cls(ae, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Outbox:
    """The folder of results not yet delivered (``SPOOL/unsent``), oldest first."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for tmp in self.root.glob(".*.tmp"):  # a write a crash interrupted
            tmp.unlink(missing_ok=True)

    def put(self, sr_uid: str, data: bytes, source_uid: str | None, sync_dir: bool = True) -> Path:
        """Keep one result durably until it is delivered (the same UIDs again replace it). One file,
        ``<SR UID>_<source UID>.dcm``: the name says which image it answers (one fsync, no side file)."""
        if not valid_uid(sr_uid) or (source_uid is not None and not valid_uid(source_uid)):
            raise ValueError(f"invalid UID {sr_uid[:80]!r} / {str(source_uid)[:80]!r}")
        return durable_write(self.root / (f"{sr_uid}_{source_uid}.dcm" if source_uid else f"{sr_uid}.dcm"), data, sync_dir)

    def pending(self) -> list[Path]:
        files = []
        for p in self.root.glob("*.dcm"):
            if p.name.startswith("."):
                continue
            try:
                files.append((p.stat().st_mtime_ns, p.name, p))
            except FileNotFoundError:  # delivered meanwhile
                continue
        return [p for _, _, p in sorted(files)]

    def __len__(self) -> int:
        return sum(1 for p in self.root.glob("*.dcm") if not p.name.startswith("."))

    @staticmethod
    def uids(path: Path) -> tuple[str, str | None]:
        """(SR UID, UID of the image it answers) of an outbox file."""
        sr_uid, _, source = path.stem.partition("_")
        return sr_uid, source or None

    def done_many(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        _fsync_dir(self.root)


class Forwarder:
    """The thread that empties the :class:`Outbox` into ``dest``.

    ``on_delivered([(source_uid, sr_uid, dest), ...])`` (a batch) and ``on_failed(error, waiting)`` are
    called from this thread (the node records them). ``timeout`` bounds every network wait (connect, association,
    each C-STORE); ``retry`` is (first, longest) pause in seconds between failed attempts.
    """

    def __init__(self, outbox: Outbox, dest: Destination, calling_ae: str, on_delivered: Callable[[list[tuple[str | None, str, Destination]]], None],
                 on_failed: Callable[[str, int], None], timeout: float = 10.0, retry: tuple[float, float] = (1.0, 60.0),
                 batch: int = 64, linger: float = 2.0) -> None:
        self.outbox, self.dest, self.calling_ae = outbox, dest, calling_ae
        self.on_delivered, self.on_failed = on_delivered, on_failed
        self.timeout, self.retry, self.batch, self.linger = timeout, retry, batch, linger
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # consecutive failed attempts
        self.last_error: str | None = None
        self.delivered = 0
        self.associations = 0

    def start(self) -> "Forwarder":
        from pynetdicom import _config

        # Send an outbox file's bytes as they are (pynetdicom otherwise reads the whole file into a
        # dataset and encodes it again: ~25 ms per SR here). Applies to C-STOREs of files only.
        _config.STORE_SEND_CHUNKED_DATASET = True
        self._thread = threading.Thread(target=self._run, name="osteo-edge-forwarder", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def idle(self) -> bool:
        return len(self.outbox) == 0

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if delay:
                self._stop.wait(delay)
                if self._stop.is_set():
                    return
            elif not self.outbox.pending():
                self._wake.wait(1.0)  # also polls the folder: a result put there by another writer
                self._wake.clear()
                continue
            self._wake.clear()
            try:
                error = self._deliver_all()
            except Exception as exc:  # never let the thread die: the outbox is on disk, retry later
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                log.debug("forwarder error", exc_info=True)
            if error is None:
                self.failures, delay = 0, 0.0
                continue
            self.failures += 1
            first, longest = self.retry
            delay = min(longest, first * 2 ** (self.failures - 1))
            self.last_error = error
            waiting = len(self.outbox)
            log.warning("results not delivered to %s (%s); %d waiting in the outbox, next try in %.0f s",
                        self.dest, error, waiting, delay)
            self.on_failed(error, waiting)

    def _associate(self) -> tuple[Any, str | None]:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        for sop_class in ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.34"):
            for syntax in SR_SYNTAXES:  # one context per syntax: the file's own is always there to pick
                ae.add_requested_context(sop_class, syntax)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title)
        if assoc.is_established:
            self.associations += 1
            no_delay(assoc)
            return assoc, None
        if assoc.is_rejected:
            return None, "association rejected (check the PACS allows this node's AE title)"
        if assoc.is_aborted:
            return None, f"association aborted or no answer within {self.timeout:.0f} s"
        return None, "peer unreachable (connection refused or timed out)"

    def _deliver_all(self) -> str | None:
        """Send everything the outbox holds over one association, lingering briefly for more;
        None when the outbox is empty, else why it stopped. Each batch's deliveries are recorded
        together and then leave the outbox together (one transaction, one folder fsync)."""
        items = self.outbox.pending()
        if not items:
            return None
        assoc, error = self._associate()
        if assoc is None:
            return error
        try:
            idle_since = time.monotonic()
            while not self._stop.is_set():
                items = self.outbox.pending()[: self.batch]
                if not items:
                    if time.monotonic() - idle_since > self.linger:
                        return None
                    self._wake.wait(0.1)
                    self._wake.clear()
                    continue
                sent: list[Path] = []
                try:
                    for path in items:
                        error = self._send_one(assoc, path)
                        if error is not None:
                            return error
                        sent.append(path)
                finally:
                    self._settle(sent)
                idle_since = time.monotonic()
            return None
        finally:
            if assoc.is_established:
                assoc.release()

    def _settle(self, sent: list[Path]) -> None:
        """Record the delivered results first, then remove them: a crash in between re-sends the same
        SRs after the restart (at least once), never loses one."""
        if not sent:
            return
        batch = []
        for path in sent:
            sr_uid, source = self.outbox.uids(path)
            batch.append((source, sr_uid, self.dest))
        self.on_delivered(batch)
        self.outbox.done_many(sent)
        self.delivered += len(sent)

    def _send_one(self, assoc: Any, path: Path) -> str | None:
        sr_uid, _ = self.outbox.uids(path)
        try:
            status = assoc.send_c_store(path)
        except FileNotFoundError:  # delivered meanwhile (another batch)
            return None
        except (OSError, ValueError, AttributeError) as exc:  # an unreadable file or no accepted context
            return f"{sr_uid}: {type(exc).__name__}: {str(exc)[:200]}"
        code = getattr(status, "Status", None)
        if code is None:
            return f"no C-STORE response within {self.timeout:.0f} s (connection lost or PACS hung)"
        if int(code) not in STORED:
            return f"PACS answered status 0x{int(code):04X} for {sr_uid}"
        return None


def no_delay(assoc: Any) -> None:
    """TCP_NODELAY on an association's socket. pynetdicom leaves Nagle's algorithm on, and a C-STORE
    is written in several sends: the peer's delayed ACK then holds each request or response for
    ~40 ms (measured: 60 SRs to storescp took 8 s, about 0.1 s each)."""
    import socket

    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # no socket (yet), or not TCP: nothing to tune
        log.debug("TCP_NODELAY not set", exc_info=True)
