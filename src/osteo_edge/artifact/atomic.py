"""Atomic file and directory writes, file hashing and version records (shared by every writer).

A file is written to a temporary name in the same directory, fsynced and renamed; a directory is
built in a temporary sibling, verified, then moved into place. A crash never leaves a half-written
file or bundle that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from ..preprocess import PreprocessSpec


# ------------------------------------------------------------------------------------------------
# atomic writes


def _umask() -> int:
    # os.umask can only be read by setting it; do so briefly (restored at once).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp result (created 0600/0700) the permissions a normal create would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


class atomic_path:
    """Context manager yielding a temporary path beside ``path``; renamed onto it on success.

    For writers that need a file name (``torch.save``, ``plt.savefig``, converters)::

        with atomic_path(run / "best.pt") as tmp:
            torch.save(state, tmp)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is None:
            _default_mode(self.tmp)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover - numpy is a base dependency
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, PreprocessSpec):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def runtime_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python and of the packages that matter, for provenance."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("osteo-edge", "numpy", "pillow", *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out



def write_dir_atomically(dest: str | os.PathLike, build: Callable[[Path], Any], verify: Callable[[Path], Any]) -> Path:
    """Build a directory in a temporary sibling, verify it, then move it into place.

    ``build(tmpdir)`` writes the content; ``verify(tmpdir)`` must pass before anything is replaced.
    If ``dest`` exists it is replaced only after the new directory is complete; on any error the
    temporary directory is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    _default_mode(tmp, directory=True)
    try:
        build(tmp)
        verify(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


