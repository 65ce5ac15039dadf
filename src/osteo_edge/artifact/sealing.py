"""Writing bundles: building a manifest, sealing it, recorded revisions (:func:`reseal`), signing,
finding build-machine paths, and building a bundle directory atomically. Reading and verifying a
bundle is :mod:`.manifest`'s job; this module writes what it reads."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import BundleError, ConfigError
from ..preprocess import PreprocessSpec
from .atomic import atomic_write_json, runtime_versions, write_dir_atomically
from .manifest import (
    BUNDLE_KIND, DISCLAIMER, MANIFEST, MANIFEST_VERSION, SEAL_ALGORITHM, UNSEALED_FIELDS, Bundle, plain_manifest, check_seal,
    hash_files, load_bundle, read_manifest, seal_digest, verify_files,
)
from .records import NORMAL_LABEL, Metrics, Provenance, Revision, SignatureRecord

log = logging.getLogger(__name__)


def _write_sealed(root: Path, manifest: Mapping[str, Any], signature: SignatureRecord | None = None) -> dict[str, Any]:
    m = plain_manifest({k: v for k, v in manifest.items() if k not in UNSEALED_FIELDS})
    m["manifest_version"] = MANIFEST_VERSION
    m["seal"] = {"algorithm": SEAL_ALGORITHM, "digest": seal_digest(m)}
    if signature is not None:
        m["signature"] = signature.to_dict()
    atomic_write_json(root / MANIFEST, m)
    return m


def build_manifest(
    root: str | os.PathLike,
    *,
    format: str,
    model_file: str,
    labels: Iterable[str],
    spec: PreprocessSpec,
    temperature: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
    metrics: Mapping[str, Any] | Metrics | None = None,
    provenance: Mapping[str, Any] | Provenance | None = None,
    versions: Mapping[str, str] | None = None,
    negative_label: str | None = None,
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
    negative = negative_label if negative_label is not None else (NORMAL_LABEL if NORMAL_LABEL in labels else None)
    if negative is not None and negative not in labels:
        raise ConfigError(f"negative label {negative!r} is not one of {labels}")
    manifest: dict[str, Any] = {
        "kind": BUNDLE_KIND,
        "manifest_version": MANIFEST_VERSION,
        "format": format,
        "model_file": model_file,
        "labels": labels,
        "negative_label": negative,
        "spec": spec.to_dict(),
        "temperature": float(temperature),
        "thresholds": dict(thresholds or {}),
        "metrics": dict(metrics.raw if isinstance(metrics, Metrics) else metrics or {}),
        "provenance": provenance.to_dict() if isinstance(provenance, Provenance) else dict(provenance or {}),
        "versions": dict(versions or runtime_versions()),
        "intended_use": DISCLAIMER,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "revisions": [],
        "files": hash_files(root),
    }
    if extra:
        manifest.update(extra)
    return manifest


def seal(root: str | os.PathLike, **fields: Any) -> "Bundle":
    """Hash every file in ``root`` and write its sealed manifest atomically; returns the verified bundle."""
    root = Path(root)
    _write_sealed(root, build_manifest(root, **fields))
    return load_bundle(root)


def reseal(root: str | os.PathLike, *, step: str, changed: Iterable[str] = (), **updates: Any) -> "Bundle":
    """Change fields of a sealed bundle (and files listed in ``changed``) as a recorded revision.

    The bundle must verify as it is (except the files named in ``changed``, which the caller has
    just rewritten). The new manifest records ``{revision, step, fields, files, previous_seal}``; a
    signature is dropped (it no longer covers the content) with a warning: sign the bundle again.
    """
    root = Path(root)
    changed = set(changed)
    old = read_manifest(root)
    previous = check_seal(root, old)
    verify_files(root, {k: v for k, v in old["files"].items() if k not in changed and (root / k).exists()})
    merged = {**old, **plain_manifest(updates)}
    merged["files"] = hash_files(root)
    fields = sorted(k for k in updates if old.get(k) != merged.get(k))
    files = sorted(k for k in set(old["files"]) | set(merged["files"]) if old["files"].get(k) != merged["files"].get(k))
    revisions = list(old.get("revisions") or [])
    revisions.append(Revision(len(revisions) + 1, step, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              tuple(fields), tuple(files), previous).to_dict())
    merged["revisions"] = revisions
    if old.get("signature"):
        log.warning("%s: re-sealed after %s; its signature no longer applies and was removed: sign it again", root, step)
    _write_sealed(root, merged)
    return load_bundle(root)


def upgrade_v1(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 manifest as version 2 (the fields version 1 implied made explicit), to be sealed."""
    m = dict(manifest)
    m["manifest_version"] = MANIFEST_VERSION
    m.setdefault("negative_label", NORMAL_LABEL if NORMAL_LABEL in m["labels"] else None)
    m["revisions"] = [Revision(1, "upgrade from manifest version 1", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                               ("manifest_version", "negative_label"), (), None).to_dict()]
    return m


def sign_bundle(root: str | os.PathLike, private_key: str | os.PathLike) -> "Bundle":
    """Sign a verified bundle with an Ed25519 private key (PEM); a version-1 bundle is sealed first."""
    from .signing import sign_seal

    root = Path(root)
    bundle = load_bundle(root)
    manifest = bundle.manifest
    if manifest["manifest_version"] == 1:
        manifest = _write_sealed(root, upgrade_v1(manifest))
    signature = sign_seal(manifest["seal"]["digest"], private_key)
    _write_sealed(root, manifest, signature)
    return load_bundle(root)


_ABSOLUTE = re.compile(r"""(?:^|[\s=:'"(])((?:/|[A-Za-z]:\\)[\w.~-]+(?:[/\\][\w.~-]+)+)""")


def build_machine_paths(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, path) of every absolute path a manifest holds, in values and inside commands.

    A bundle that travels must not carry the paths of the machine that built it: provenance records
    paths relative to the bundle, or files by name and content hash (:func:`split_reference`).
    """
    found: list[tuple[str, str]] = []

    def walk(v: Any, where: str) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():
                if where or k not in ("seal", "signature", "files"):
                    walk(x, f"{where}.{k}" if where else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")
        elif isinstance(v, str):
            found.extend((where, m) for m in _ABSOLUTE.findall(v))

    walk(manifest, "")
    return found


def write_bundle_dir(dest: str | os.PathLike, build: Any) -> Path:
    """Build a bundle in a temporary sibling directory and move it into place once it verifies.

    ``build(tmpdir)`` writes the files and calls :func:`seal`.
    """
    return write_dir_atomically(dest, build, load_bundle)
