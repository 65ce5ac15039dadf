"""Model bundles: a directory with the model file(s) and a ``manifest.json`` that leaves nothing to guess.

The manifest holds the labels in order, the preprocessing spec, the decision thresholds, the
temperature, metrics, provenance, versions and the sha256 of every file in the bundle. Loading
verifies every checksum and refuses a bundle that does not match. Every write is atomic: a file is
written to a temporary name in the same directory and renamed, and the manifest is written last,
so a crash never leaves a half-written bundle that verifies.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import BundleError, ConfigError
from .preprocess import PreprocessSpec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BUNDLE_KIND = "osteo-edge-bundle"
MANIFEST_VERSION = 1
DISCLAIMER = (
    "Screening aid only, not a diagnosis. Uncertain or low-BMD results: refer for DEXA. "
    "Not a medical device."
)
REQUIRED_FIELDS = ("kind", "manifest_version", "format", "model_file", "labels", "spec", "files")


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


# ------------------------------------------------------------------------------------------------
# the manifest


def list_files(root: Path, manifest: str = MANIFEST) -> list[str]:
    """Every file below ``root`` except the manifest and hidden (temporary) files, sorted."""
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != manifest and not p.name.startswith("."):
            files.append(p.relative_to(root).as_posix())
    return files


def hash_files(root: Path, manifest: str = MANIFEST) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` table: sha256 and size of every file in ``root``."""
    return {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
        for name in list_files(root, manifest)
    }



def build_manifest(
    root: str | os.PathLike,
    *,
    format: str,
    model_file: str,
    labels: Iterable[str],
    spec: PreprocessSpec,
    temperature: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest dict for the files now in ``root`` (every file is hashed)."""
    root = Path(root)
    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"labels must be at least two distinct names, got {labels}")
    if not float(temperature) > 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    if not (root / model_file).is_file():
        raise BundleError(f"{root}: model file {model_file!r} is not in the bundle")
    files = hash_files(root)
    manifest: dict[str, Any] = {
        "kind": BUNDLE_KIND,
        "manifest_version": MANIFEST_VERSION,
        "format": format,
        "model_file": model_file,
        "labels": labels,
        "spec": spec.to_dict(),
        "temperature": float(temperature),
        "thresholds": dict(thresholds or {}),
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
        "versions": dict(versions or runtime_versions()),
        "intended_use": DISCLAIMER,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    if extra:
        manifest.update(extra)
    return manifest


def seal(root: str | os.PathLike, **fields: Any) -> "Bundle":
    """Hash every file in ``root`` and write its manifest atomically; returns the verified bundle."""
    root = Path(root)
    manifest = build_manifest(root, **fields)
    atomic_write_json(root / MANIFEST, manifest)
    return load_bundle(root)


def reseal(root: str | os.PathLike, **updates: Any) -> "Bundle":
    """Re-hash a bundle after files were added or changed, updating manifest fields in place.

    The existing manifest must still verify for the files it already listed and that were not
    deliberately rewritten: callers pass ``changed=[names]`` for those.
    """
    root = Path(root)
    changed = set(updates.pop("changed", ()))
    old = read_manifest(root)
    verify_files(root, {k: v for k, v in old["files"].items() if k not in changed and (root / k).exists()})
    merged = {**old, **updates}
    merged["files"] = hash_files(root)
    atomic_write_json(root / MANIFEST, merged)
    return load_bundle(root)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    root = Path(root)
    if not root.exists():
        raise BundleError(f"{root}: no such model bundle")
    if not root.is_dir():
        raise BundleError(f"{root}: a model bundle is a directory with a {MANIFEST}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: manifest must be a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: incomplete manifest, missing {missing}")
    if manifest["kind"] != BUNDLE_KIND:
        raise BundleError(f"{mpath}: kind {manifest['kind']!r} is not {BUNDLE_KIND!r}")
    if manifest["manifest_version"] != MANIFEST_VERSION:
        raise BundleError(
            f"{mpath}: manifest version {manifest['manifest_version']!r} is not supported (expected {MANIFEST_VERSION})"
        )
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{mpath}: 'files' must map file names to checksums")
    return manifest


def verify_files(root: Path, files: Mapping[str, Any], noun: str = "bundle") -> None:
    """Check every listed file against its sha256; one-line :class:`BundleError` on any mismatch."""
    for name, entry in files.items():
        path = root / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise BundleError(f"{root}: manifest names a file outside the {noun}: {name!r}")
        if not path.is_file():
            raise BundleError(f"{root}: {noun} is incomplete, {name} is missing")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if not expected:
            raise BundleError(f"{root}: manifest has no sha256 for {name}")
        if sha256_file(path) != expected:
            raise BundleError(f"{root}: checksum mismatch for {name}; the {noun} was modified or is corrupt")



@dataclass(frozen=True)
class Bundle:
    """A verified model bundle."""

    path: Path
    manifest: dict[str, Any]

    @property
    def format(self) -> str:
        return str(self.manifest["format"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["spec"])

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.manifest.get("thresholds", {}))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {name} is not listed in the manifest")
        return self.path / name


def child_provenance(parent: Bundle, command: str | None, parent_record: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance for a bundle made from ``parent``: the parent's record plus this step's command,
    the parent's command and the whole chain of commands (``lineage``) that led here."""
    provenance = dict(parent.manifest.get("provenance", {}))
    earlier = provenance.get("lineage") or [c for c in [provenance.get("parent_command")] if c]
    provenance.update({
        "parent": dict(parent_record),
        "command": command or "",
        "parent_command": provenance.get("command", ""),
        "lineage": [*earlier, provenance.get("command", "")],
    })
    return provenance


def load_bundle(root: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read and (by default) verify a bundle; any mismatch raises a one-line :class:`BundleError`."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest["model_file"] not in manifest["files"]:
        raise BundleError(f"{root}: model file {manifest['model_file']!r} is not listed in the manifest")
    labels = manifest["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{root}: manifest labels must be a list of at least two names")
    try:
        PreprocessSpec.from_dict(manifest["spec"])
    except ConfigError as exc:
        raise BundleError(f"{root}: invalid preprocess spec in manifest ({exc})") from exc
    if verify:
        verify_files(root, manifest["files"])
    return Bundle(path=root, manifest=manifest)


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


def write_bundle_dir(dest: str | os.PathLike, build: Any) -> Path:
    """Build a bundle in a temporary sibling directory and move it into place once it verifies.

    ``build(tmpdir)`` writes the files and calls :func:`seal`.
    """
    return write_dir_atomically(dest, build, load_bundle)
