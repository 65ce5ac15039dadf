"""Model bundles: sealed, optionally signed directories that leave nothing to guess.

``atomic`` (atomic writes, hashing), ``manifest`` (the manifest, its seal, reading and verifying), ``sealing``
(building, sealing, re-sealing and signing),
``records`` (typed records of the manifest's fields) and ``signing`` (Ed25519 signatures and trust).
"""

from __future__ import annotations

from .atomic import (
    atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, runtime_versions, sha256_file,
    write_dir_atomically,
)
from .manifest import (
    BUNDLE_KIND, DISCLAIMER, MANIFEST, MANIFEST_VERSION, Bundle, canonical_json, check_seal, hash_files, list_files, load_bundle,
    read_manifest, seal_digest, verify_files,
)
from .sealing import build_machine_paths, build_manifest, reseal, seal, sign_bundle, write_bundle_dir
from .records import (
    NORMAL_LABEL, ArchRef, Calibration, Metrics, ParentRef, Provenance, Revision, SignatureRecord, SplitMetrics,
    VsParent, split_reference,
)

__all__ = [
    "ArchRef", "BUNDLE_KIND", "Bundle", "Calibration", "DISCLAIMER", "MANIFEST", "MANIFEST_VERSION", "Metrics",
    "NORMAL_LABEL", "ParentRef", "Provenance", "Revision", "SignatureRecord", "SplitMetrics", "VsParent",
    "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "build_machine_paths", "build_manifest",
    "canonical_json", "check_seal", "hash_files", "list_files", "load_bundle", "read_manifest", "reseal",
    "runtime_versions", "seal", "seal_digest", "sign_bundle", "sha256_file", "split_reference", "verify_files", "write_bundle_dir",
    "write_dir_atomically",
]
