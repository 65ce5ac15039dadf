"""Model bundles: a directory with the model file(s) and a ``manifest.json`` that leaves nothing to guess.

The manifest holds the labels in order, the preprocessing spec, the decision thresholds, the
temperature, the input gate, metrics, provenance, versions and the sha256 of every file. Version 2
manifests carry a **seal**: the sha256 of the canonical JSON of every other field, so an edited label
order, threshold, temperature, spec or gate is refused exactly like a changed weight. A bundle may
also carry an Ed25519 **signature** over the seal (:mod:`.signing`).

Sealed means sealed: a step that changes a sealed bundle (evaluation storing calibration, the gate
calibration) goes through :func:`reseal`, which verifies the bundle first, records a numbered
revision (the step, the fields and files it changed, the seal before) and drops a signature that no
longer covers the content. Children pin their parent's seal; when the parent is present, loading
checks that it is still the bundle (or a recorded revision of the bundle) the child was made from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import BundleError, ConfigError
from ..preprocess import PreprocessSpec
from .atomic import _json_default, sha256_file
from .records import (
    NORMAL_LABEL, ArchRef, Calibration, Metrics, ParentRef, Provenance, Revision, SignatureRecord,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BUNDLE_KIND = "osteo-edge-bundle"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
DISCLAIMER = (
    "Screening aid only, not a diagnosis. Uncertain or low-BMD results: refer for DEXA. "
    "Not a medical device."
)
REQUIRED_FIELDS = ("kind", "manifest_version", "format", "model_file", "labels", "spec", "files")
UNSEALED_FIELDS = ("seal", "signature")  # everything else is covered by the seal
SEAL_ALGORITHM = "sha256-canonical-json-v1"
_SEAL_CONTEXT = b"osteo-edge manifest v2\n"


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




# ------------------------------------------------------------------------------------------------
# the seal


def canonical_json(manifest: Mapping[str, Any]) -> bytes:
    """The bytes the seal covers: every field but ``seal`` and ``signature``, keys sorted, no spaces."""
    body = {k: v for k, v in manifest.items() if k not in UNSEALED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default).encode("ascii")


def seal_digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(_SEAL_CONTEXT + canonical_json(manifest)).hexdigest()


def plain_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest as it will read back from JSON (numpy scalars, paths and specs made plain)."""
    return json.loads(json.dumps(manifest, default=_json_default))


def check_seal(root: Path, manifest: Mapping[str, Any]) -> str | None:
    """Verify a version-2 manifest's seal; returns the digest (``None`` for a version-1 manifest)."""
    if manifest["manifest_version"] == 1:
        return None
    s = manifest.get("seal")
    if not isinstance(s, Mapping) or s.get("algorithm") != SEAL_ALGORITHM or not isinstance(s.get("digest"), str):
        raise BundleError(f"{root}: manifest has no valid seal; the bundle is incomplete or was tampered with")
    digest = seal_digest(manifest)
    if digest != s["digest"]:
        raise BundleError(f"{root}: manifest.json was edited after sealing (seal mismatch); rebuild the bundle "
                          "with osteo-edge rather than editing it")
    return digest


# ------------------------------------------------------------------------------------------------
# reading


def read_json_manifest(root: Path, name: str, noun: str, hint: str = "") -> dict[str, Any]:
    """``root/name`` as a JSON object; one-line BundleError when the folder, the file or the JSON is not right.
    Shared by model bundles and tabular runs."""
    if not root.exists():
        raise BundleError(f"{root}: no such {noun}")
    if not root.is_dir():
        raise BundleError(f"{root}: a {noun} is a directory with a {name}")
    mpath = root / name
    if not mpath.is_file():
        raise BundleError(f"{root}: not a {noun} (no {name}){hint}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: manifest must be a JSON object")
    return manifest


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest as stored (versions 1 and 2), structurally checked but not yet verified."""
    root = Path(root)
    mpath = root / MANIFEST
    manifest = read_json_manifest(root, MANIFEST, "model bundle")
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: incomplete manifest, missing {missing}")
    if manifest["kind"] != BUNDLE_KIND:
        raise BundleError(f"{mpath}: kind {manifest['kind']!r} is not {BUNDLE_KIND!r}")
    if manifest["manifest_version"] not in READABLE_VERSIONS:
        raise BundleError(f"{mpath}: manifest version {manifest['manifest_version']!r} is not supported "
                          f"(this osteo-edge reads {', '.join(map(str, READABLE_VERSIONS))})")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{mpath}: 'files' must map file names to checksums")
    return manifest


def _check_structure(root: Path, manifest: Mapping[str, Any]) -> None:
    if manifest["model_file"] not in manifest["files"]:
        raise BundleError(f"{root}: model file {manifest['model_file']!r} is not listed in the manifest")
    labels = manifest["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{root}: manifest labels must be a list of at least two names")
    neg = manifest.get("negative_label")
    if neg is not None and neg not in labels:
        raise BundleError(f"{root}: negative label {neg!r} is not one of the labels {labels}")
    try:
        PreprocessSpec.from_dict(manifest["spec"])
    except ConfigError as exc:
        raise BundleError(f"{root}: invalid preprocess spec in manifest ({exc})") from exc


def load_bundle(root: str | os.PathLike, verify: bool = True, trust: Any = None) -> "Bundle":
    """Read and (by default) verify a bundle; any mismatch raises a one-line :class:`BundleError`.

    Verification: the seal (version 2), every file's sha256, the signature when there is one, the
    trust policy when ``trust`` (a :class:`~.signing.TrustStore`) is configured, and the lineage when
    the parent bundle is present.
    """
    root = Path(root)
    manifest = read_manifest(root)
    _check_structure(root, manifest)
    bundle = Bundle(path=root, manifest=manifest)
    if not verify:
        return bundle
    digest = check_seal(root, manifest)
    verify_files(root, manifest["files"])
    sig = bundle.signature
    if sig is not None:
        from .signing import verify_signature

        if digest is None:
            raise BundleError(f"{root}: a version-1 manifest cannot carry a signature")
        verify_signature(root, digest, sig)
    if trust is not None:
        trust.check(root, sig)
    if digest is None:
        log.warning("%s: version-1 bundle: its manifest is not sealed, so edits to it cannot be detected; "
                    "'osteo-edge sign' seals and signs it", root)
    bundle.verify_lineage()
    return bundle


# ------------------------------------------------------------------------------------------------
# the bundle


@dataclass(frozen=True)
class Bundle:
    """A (verified) model bundle; every field is read through a typed property."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.manifest["manifest_version"])

    @property
    def seal(self) -> str | None:
        s = self.manifest.get("seal")
        return s.get("digest") if isinstance(s, Mapping) else None

    @property
    def signature(self) -> SignatureRecord | None:
        return SignatureRecord.from_dict(self.manifest.get("signature"))

    @property
    def format(self) -> str:
        return str(self.manifest["format"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def negative_label(self) -> str | None:
        """The class whose complement is "low BMD" (``Normal``); ``None`` when the labels have none."""
        if self.version >= 2:
            return self.manifest.get("negative_label")
        return NORMAL_LABEL if NORMAL_LABEL in self.labels else None

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["spec"])

    @property
    def temperature(self) -> float:
        return float(self.manifest.get("temperature", 1.0))

    @property
    def thresholds(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in (self.manifest.get("thresholds") or {}).items()}

    @property
    def calibration(self) -> Calibration:
        t = self.thresholds
        details = (self.manifest.get("training") or {}).get("calibration") or {}
        return Calibration(self.temperature, t.get("min_confidence"), t.get("low_bmd"), details)

    @property
    def metrics(self) -> Metrics:
        return Metrics.from_dict(self.manifest.get("metrics"))

    @property
    def provenance(self) -> Provenance:
        return Provenance.from_dict(self.manifest.get("provenance"))

    @property
    def arch(self) -> ArchRef | None:
        return ArchRef.from_dict(self.manifest.get("arch"))

    @property
    def gate(self) -> Mapping[str, Any] | None:
        """The input gate's record (read by :class:`osteo_edge.edge_runtime.gate.Gate`)."""
        return self.manifest.get("gate")

    @property
    def training(self) -> Mapping[str, Any]:
        return dict(self.manifest.get("training") or {})

    @property
    def compression(self) -> Mapping[str, Any] | None:
        return self.manifest.get("compression")

    @property
    def pruning(self) -> Mapping[str, Any] | None:
        return self.manifest.get("pruning")

    @property
    def export_info(self) -> Mapping[str, Any] | None:
        return self.manifest.get("export")

    @property
    def revisions(self) -> list[Revision]:
        return [Revision.from_dict(r) for r in self.manifest.get("revisions") or []]

    @property
    def intended_use(self) -> str:
        return str(self.manifest.get("intended_use") or DISCLAIMER)

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.manifest.get("versions") or {})

    @property
    def created(self) -> str | None:
        return self.manifest.get("created")

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    @property
    def model_sha256(self) -> str:
        return str(self.manifest["files"][self.manifest["model_file"]]["sha256"])

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: {name} is not listed in the manifest")
        return self.path / name

    def known_seals(self) -> set[str]:
        """This bundle's seal and the seals of its earlier revisions."""
        seals = {self.seal} | {r.previous_seal for r in self.revisions}
        return {s for s in seals if s}

    def as_parent(self, child_dir: str | os.PathLike) -> ParentRef:
        """The reference a child bundle written at ``child_dir`` keeps of this bundle."""
        rel = os.path.relpath(self.path.resolve(), Path(child_dir).resolve())
        return ParentRef(path=Path(rel).as_posix(), format=self.format, seal=self.seal,
                         manifest_sha256=None if self.seal else sha256_file(self.path / MANIFEST),
                         model_sha256=self.model_sha256, compression=self.compression, pruning=self.pruning)

    def parent_dir(self) -> Path | None:
        """The parent bundle's directory when the provenance names one that is present."""
        ref = self.provenance.parent
        if ref is None:
            return None
        for cand in (ref.resolve(self.path), Path.cwd() / ref.path):
            if (cand / MANIFEST).is_file():
                return cand.resolve()
        return None

    def verify_lineage(self) -> None:
        """When the parent is present, it must be the bundle (or a revision of the bundle) pinned."""
        ref, pdir = self.provenance.parent, self.parent_dir()
        if ref is None or ref.seal is None or pdir is None:
            return  # version-1 records pinned a file hash that any later evaluation changed: not checkable
        if ref.seal not in load_bundle(pdir, verify=False).known_seals():
            raise BundleError(f"{self.path}: its parent {ref.path} is no longer the bundle it was made from "
                              "(seal differs); rebuild this bundle from the current parent")

    def child_provenance(self, child_dir: str | os.PathLike, command: str | None) -> Provenance:
        """Provenance for a bundle made from this one and written at ``child_dir``."""
        return self.provenance.child(command, self.as_parent(child_dir))
