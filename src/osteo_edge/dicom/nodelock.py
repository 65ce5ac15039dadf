"""One ``serve`` per record and spool (:class:`NodeLock`, an OS file lock holding the node's details)
and what ``osteo-edge record status`` reads: is a node running, what waits, what failed last."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

class NodeLock:
    """One ``serve`` per record and per spool: an exclusive ``flock`` on ``RECORD.lock`` (holding JSON
    about the node for ``record status``) and on ``SPOOL/.lock``, released by the OS when the process
    ends, however it ends."""

    def __init__(self, path: Path, fd: int, info: dict[str, Any]) -> None:
        self.path, self._fd, self.info = path, fd, info
        self._spool_fd = -1

    @staticmethod
    def path_for(record: Path) -> Path:
        return record.with_name(record.name + ".lock")

    @classmethod
    def acquire(cls, cfg: Any) -> "NodeLock":
        """Lock ``cfg.record`` and ``cfg.spool`` (a :class:`~.node.NodeConfig`) or refuse in one line."""
        import fcntl

        path = cls.path_for(cfg.record)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            other = read_lock(path)
            who = f"pid {other.get('pid')}, {other.get('ae_title')} on port {other.get('port')}" if other else "another process"
            raise ConfigError(f"{cfg.record}: another osteo-edge serve is running on this record ({who}); "
                              "stop it first or give another --record") from None
        info = {"pid": os.getpid(), "ae_title": cfg.ae_title, "bind": cfg.bind, "port": cfg.port, "spool": str(cfg.spool),
                "forward": str(cfg.forward) if cfg.forward else None, "started_at": time.time()}
        lock = cls(path, fd, info)
        lock._write()
        spool_lock = cfg.spool / ".lock"
        cfg.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock._spool_fd = os.open(spool_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock._spool_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.release()
            raise ConfigError(f"{cfg.spool}: another osteo-edge serve uses this spool (with another record); "
                              "stop it first or give another --spool") from None
        return lock

    def update(self, **kw: Any) -> None:
        self.info.update(kw)
        self._write()

    def _write(self) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self.info).encode(), 0)

    def release(self) -> None:
        import fcntl

        for name in ("_spool_fd", "_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                setattr(self, name, -1)


def read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def node_running(record: Path) -> dict[str, Any] | None:
    """The running node's lock information (pid, port, start time) when a ``serve`` holds ``record``."""
    import fcntl

    path = NodeLock.path_for(record)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_lock(path) or {"pid": None}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class NodeStatus:
    """What ``osteo-edge record status`` shows: is a node running, what waits, what went wrong last."""

    record: Path
    running: bool
    pid: int | None
    listening: str | None
    forward: str | None
    uptime_s: float | None
    answered: int
    delivered: int
    backlog: int  # images received, not yet answered (spool/incoming)
    outbox: int  # results not yet delivered (spool/unsent)
    failed: int  # images the worker could not answer (spool/failed)
    oldest_waiting_s: float | None  # age of the oldest result in the outbox
    last_error: dict[str, Any] | None  # the last forward_failed / answer_failed event


def node_status(record: Path, spool: Path | None = None) -> NodeStatus:
    """Read the record (read-only), the spool folders and the lock of ``serve --record record``."""
    from .record import ClinicRecord

    lock = node_running(record)
    if spool is None:
        spool = Path(lock["spool"]) if lock and lock.get("spool") else record.with_name(record.name + ".spool")

    def count(sub: str) -> tuple[int, float | None]:
        files = [p for p in (spool / sub).glob("*.dcm") if not p.name.startswith(".")] if (spool / sub).is_dir() else []
        ages = []
        for p in files:
            try:
                ages.append(time.time() - p.stat().st_mtime)
            except FileNotFoundError:
                pass
        return len(files), (max(ages) if ages else None)

    backlog, _ = count("incoming")
    outbox, oldest = count("unsent")
    failed, _ = count("failed")
    with ClinicRecord(record, create=False) as rec:
        answered = rec.count_instances()
        delivered = len(rec.deliveries())
        errors = [e for e in rec.events() if e["event"] in ("forward_failed", "answer_failed")]
    started = lock.get("started_at") if lock else None
    return NodeStatus(
        record=record, running=lock is not None, pid=lock.get("pid") if lock else None,
        listening=f"{lock.get('ae_title')}@{lock.get('bind')}:{lock.get('port')}" if lock else None,
        forward=lock.get("forward") if lock else None, uptime_s=time.time() - started if started else None,
        answered=answered, delivered=delivered, backlog=backlog, outbox=outbox, failed=failed, oldest_waiting_s=oldest,
        last_error=errors[-1] if errors else None,
    )
