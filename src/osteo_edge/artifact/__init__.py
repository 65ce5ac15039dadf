"""Model bundles: sealed, optionally signed directories that leave nothing to guess.

``atomic`` (atomic writes, hashing), ``manifest`` (the manifest, its seal, reading and verifying),
``records`` (typed records of the manifest's fields) and ``signing`` (Ed25519 signatures and trust).
"""

from __future__ import annotations

from .atomic import (
    atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, runtime_versions, sha256_file,
    write_dir_atomically,
)
from .manifest import (
    BUNDLE_KIND, DISCLAIMER, MANIFEST, MANIFEST_VERSION, Bundle, build_machine_paths, build_manifest, canonical_json, check_seal,
    hash_files, list_files, load_bundle, read_manifest, reseal, seal, seal_digest, sign_bundle,
    verify_files,
    write_bundle_dir,
)
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
