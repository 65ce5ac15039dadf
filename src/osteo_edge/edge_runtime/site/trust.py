"""The clinic's one-step trust set-up: a trust file with the shipped publisher's key and the site's key.

Once written, every entry point on the machine (``predict``, ``verify``, ``bench``, ``demo``,
``serve``, :class:`~osteo_edge.edge_runtime.EdgeClassifier`) refuses an unsigned bundle or one
signed by any other key (:meth:`osteo_edge.artifact.signing.TrustStore.from_env`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ...artifact.signing import (
    TRUST_FILE_ENV, default_trust_files, key_id, package_keys_dir, public_key_of, public_key_of_private, write_trust_file,
)


def write_clinic_trust(path: str | os.PathLike | None = None, public_keys: Iterable[str | os.PathLike] = (),
                       private_keys: Iterable[str | os.PathLike] = (), package: bool = True) -> tuple[Path, list[str]]:
    """Write the trust file at ``path`` (default: ``OSTEO_EDGE_TRUST_FILE``, else this user's, see :func:`default_trust_files`) holding the
    package's keys (``package``), the given public keys and the public halves of the given private keys.
    Returns the path and the key ids it holds."""
    raw = []
    if package:
        raw += [public_key_of(p) for p in sorted(package_keys_dir().glob("*.pub"))]
    raw += [public_key_of(p) for p in public_keys]
    raw += [public_key_of_private(p) for p in private_keys]
    named = os.environ.get(TRUST_FILE_ENV, "").strip()
    target = Path(path) if path is not None else Path(named) if named else default_trust_files()[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_trust_file(target, raw)
    return target, list(dict.fromkeys(key_id(k) for k in raw))
