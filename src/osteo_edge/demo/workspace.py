"""Where the demo keeps patient data while it works, and how it makes sure nothing is left behind.

Every upload (gradio's upload cache, ``GRADIO_TEMP_DIR``), every result image and every batch CSV
lives in ONE folder per demo process::

    <base>/run-<pid>-<random>/        0700, files 0600 (owner only)
        gradio/                       gradio's upload and result cache
        views/                        heat-map PNGs handed to the page
        results/                      batch CSVs offered for download
        .lock                         held (flock) while the process lives

``<base>`` is ``$OSTEO_EDGE_DEMO_TMP`` or ``<system temp>/osteo-edge-demo-<uid>`` (created 0700 and
refused when another user owns it or it is a symbolic link). A file is deleted
:data:`KEEP_SECONDS` after it was written (checked every :data:`SWEEP_SECONDS`); the whole folder is
deleted when the demo stops (Ctrl+C, SIGTERM, normal exit). A process killed outright (SIGKILL, a
power cut) cannot clean up: the next demo start removes every run folder whose owner is gone
(its lock is free).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

ENV_BASE = "OSTEO_EDGE_DEMO_TMP"
KEEP_SECONDS = 10 * 60  # uploads, heat maps and CSVs older than this are deleted
SWEEP_SECONDS = 60  # how often the age check runs
_NO_LOCK_GRACE = 60.0  # a run folder without a lock file (a start that died at once) after this long


def default_base() -> Path:
    """``$OSTEO_EDGE_DEMO_TMP``, else ``<system temp>/osteo-edge-demo-<uid>``."""
    env = os.environ.get(ENV_BASE)
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"osteo-edge-demo-{uid}"


def _private_dir(path: Path) -> Path:
    """Create ``path`` 0700, or check an existing one is a real directory owned by this user."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the demo's private folder {path} ({exc.strerror or exc}); set {ENV_BASE}") from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a plain folder (a link?); refusing to keep patient data there; set {ENV_BASE}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to another user; refusing to keep patient data there; set {ENV_BASE}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def _try_lock(fh: Any) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False when another process holds it."""
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    except OSError:
        return False


def _chmod(path: Path, mode: int) -> None:
    try:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    except OSError:
        pass


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep_dead(base: Path, keep: Path | None = None) -> list[Path]:
    """Remove the run folders under ``base`` whose process is gone (lock free); returns them."""
    removed = []
    for run in sorted(base.glob("run-*")):
        if keep is not None and run == keep or not run.is_dir() or run.is_symlink():
            continue
        lock = run / ".lock"
        try:
            with open(lock, "rb") as fh:
                dead = _try_lock(fh)
        except FileNotFoundError:
            dead = time.time() - run.stat().st_mtime > _NO_LOCK_GRACE
        except OSError:
            dead = False
        if dead:
            _remove(run)
            removed.append(run)
    if removed:
        log.info("removed %d folder(s) left by demo runs that did not stop cleanly", len(removed))
    return removed


def sweep_old(root: Path, max_age: float, now: float | None = None) -> int:
    """Delete the files under ``root`` older than ``max_age`` seconds (and emptied folders below
    its first level); the lock file stays. Returns the number of files deleted."""
    now = time.time() if now is None else now
    n = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        d = Path(dirpath)
        for name in filenames:
            f = d / name
            if f.name == ".lock" and d == root:
                continue
            try:
                if now - f.lstat().st_mtime > max_age:
                    f.unlink()
                    n += 1
            except OSError:
                pass
        if d != root and d.parent != root:
            try:
                d.rmdir()  # only succeeds when empty
            except OSError:
                pass
    return n


class Workspace:
    """This process's private folder (see the module doc). ``close()`` deletes it."""

    def __init__(self, base: str | os.PathLike | None = None, keep_seconds: float = KEEP_SECONDS, sweep_seconds: float = SWEEP_SECONDS):
        self.base = _private_dir(Path(base) if base is not None else default_base())
        self.keep_seconds = float(keep_seconds)
        self.sweep_seconds = float(sweep_seconds)
        self.path = self.base / f"run-{os.getpid()}-{secrets.token_hex(4)}"
        self.path.mkdir(mode=0o700)
        self._lock = open(self.path / ".lock", "wb")  # noqa: SIM115 - held for the life of the process
        os.chmod(self._lock.name, 0o600)
        _try_lock(self._lock)
        sweep_dead(self.base, keep=self.path)
        for sub in ("gradio", "views", "results"):
            (self.path / sub).mkdir(mode=0o700)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = False

    @property
    def gradio_dir(self) -> Path:
        return self.path / "gradio"

    def folder(self, name: str) -> Path:
        """A private sub-folder (``views``, ``results``), made again if a sweep removed it."""
        d = self.path / name
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def start_sweeper(self) -> "Workspace":
        """Delete files older than ``keep_seconds`` every ``sweep_seconds`` (a daemon thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._sweep_loop, name="osteo-edge-demo-sweeper", daemon=True)
            self._thread.start()
        return self

    def tighten(self) -> None:
        """Owner-only modes on everything inside (gradio copies bundled example files with the
        package's 0644; new files of a serving demo are 0600 already, umask 077)."""
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in dirnames:
                _chmod(Path(dirpath) / name, 0o700)
            for name in filenames:
                _chmod(Path(dirpath) / name, 0o600)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            self.tighten()
            n = sweep_old(self.path, self.keep_seconds)
            if n:
                log.debug("deleted %d file(s) older than %.0f s from %s", n, self.keep_seconds, self.path)

    def close(self) -> None:
        """Stop the sweeper and delete the folder with everything in it."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        _remove(self.path)
        try:
            self._lock.close()
        except OSError:
            pass


_ACTIVE: Workspace | None = None
_ACTIVE_LOCK = threading.Lock()


def active_workspace(base: str | os.PathLike | None = None) -> Workspace:
    """The process's workspace, created (and swept) on first use, deleted at interpreter exit.

    Points gradio's upload cache (``GRADIO_TEMP_DIR``) into it: called by :func:`~.app.build_app`
    before gradio creates its app, so every upload of this process lands there.
    """
    global _ACTIVE
    with _ACTIVE_LOCK:
        if _ACTIVE is None or _ACTIVE.closed:
            _ACTIVE = Workspace(base).start_sweeper()
            atexit.register(_ACTIVE.close)
        ws = _ACTIVE
    os.environ["GRADIO_TEMP_DIR"] = str(ws.gradio_dir)
    return ws


def close_active() -> None:
    """Delete the process's workspace now (the demo stopped)."""
    global _ACTIVE
    with _ACTIVE_LOCK:
        ws, _ACTIVE = _ACTIVE, None
    if ws is not None:
        ws.close()
