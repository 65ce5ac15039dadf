"""The node's spool: a received instance is on disk (fsync, rename, fsync of the folder) before the
sender hears "stored". A worker empties it; whatever is left after a crash is finished on restart.

Layout (owner-only, 0700 folders, 0600 files)::

    spool/incoming/<SOP Instance UID>.dcm    the instance as received (file meta + dataset)
    spool/incoming/<SOP Instance UID>.json   who sent it, when (written first)
    spool/failed/                            instances the worker could not answer (kept, logged)
    spool/unsent/                            the outbox: results not yet delivered to --forward (outbox.py)
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and UID_RE.match(uid) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    _fsync_dir(path)


def durable_write(path: Path, data: bytes, sync_dir: bool = True) -> Path:
    """Write ``data`` to a temporary 0600 file beside ``path``, fsync, rename, fsync the folder
    (``sync_dir=False``: the caller fsyncs the folder once for several files)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)
    return path


class Spool:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root}: the spool must be a folder")
        for sub in ("", "incoming", "failed", "unsent"):
            d = self.root / sub
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        for tmp in (self.root / "incoming").glob(".*.tmp"):  # a write a crash interrupted: never acknowledged
            tmp.unlink(missing_ok=True)

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    def put(self, uid: str, data: bytes, info: dict[str, Any]) -> Path:
        """Store one instance durably; returns its path. ``uid`` must be a valid DICOM UID."""
        if not valid_uid(uid):
            raise ConfigError(f"invalid SOP Instance UID {uid[:80]!r}")
        durable_write(self.incoming / f"{uid}.json", json.dumps(info).encode(), sync_dir=False)  # the next fsync covers both
        return durable_write(self.incoming / f"{uid}.dcm", data)

    def pending(self) -> list[Path]:
        """Instances received and not yet answered, oldest first."""
        files = [p for p in self.incoming.glob("*.dcm") if not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def info(self, path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return {}

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        _fsync_dir(self.incoming)

    def done_many(self, paths: list[Path]) -> None:
        """Remove answered instances, one folder fsync for all."""
        for path in paths:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
        _fsync_dir(self.incoming)

    def fail(self, path: Path) -> Path:
        """Keep an instance the worker could not answer out of the way (never deleted)."""
        dest = self.root / "failed" / path.name
        os.replace(path, dest)
        path.with_suffix(".json").unlink(missing_ok=True)
        return dest
