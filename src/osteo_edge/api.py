"""The Python API for the common case: load a verified bundle, ask it about a knee radiograph.

For a notebook or a hospital script that needs no command line::

    import osteo_edge

    model = osteo_edge.load_bundle()                 # the shipped default, or load_bundle("path/to/bundle")
    answer = model.predict("knee.png")               # the record `osteo-edge predict --json` prints
    answer["status"], answer["low_bmd_probability"]  # 'ok' | 'refer' | 'rejected', P(low BMD)
    osteo_edge.verify_bundle("path/to/bundle", trusted_keys=["publisher.pub"])

Torch-free: it runs on the runtime extra alone. Loading verifies the bundle (seal, checksums,
signature, trust policy) exactly as ``osteo-edge predict`` does, and refuses with a one-line
:class:`~osteo_edge.errors.BundleError`. A screening aid, never a diagnosis: every answer's message
says so, and uncertain or low-BMD answers say "refer for DEXA".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .artifact.signing import TrustStore
from .edge_runtime.classifier import EdgeClassifier, open_bundle
from .preprocess import ImageSource

PathLike = str | os.PathLike


def _trust(trusted_keys: PathLike | Sequence[PathLike] | None) -> TrustStore:
    """``--trusted-key`` semantics: these public keys plus ``OSTEO_EDGE_TRUSTED_KEYS``. One path is a list of one
    (a string was read as a list of one-letter paths)."""
    if isinstance(trusted_keys, (str, os.PathLike)):
        trusted_keys = [trusted_keys]
    return TrustStore.from_env([os.fspath(k) for k in trusted_keys or []])


@dataclass
class Model:
    """A verified bundle opened for inference. ``classifier`` is the runtime's :class:`EdgeClassifier`."""

    classifier: EdgeClassifier

    @property
    def labels(self) -> list[str]:
        return list(self.classifier.labels)

    @property
    def info(self) -> dict[str, Any]:
        """Format, backend, labels, temperature, thresholds, seal and signer (as ``predict`` reports them)."""
        return self.classifier.info()

    def predict(self, image: ImageSource, name: str | None = None) -> dict[str, Any]:
        """Answer one image: a path, encoded bytes, a PIL image or a numpy array. Bad input is an
        answer with status ``rejected`` and the reason, never an exception."""
        return self.classifier.predict(image, name=name).record()

    def predict_many(self, images: Iterable[ImageSource]) -> list[dict[str, Any]]:
        """One record per image; one path or one image's bytes is a list of one (a string was read letter by letter)."""
        if isinstance(images, (str, bytes, bytearray, os.PathLike)):
            images = [images]
        return [self.predict(im) for im in images]


def load_bundle(path: PathLike | None = None, *, threads: int | None = None,
                trusted_keys: PathLike | Sequence[PathLike] | None = None) -> Model:
    """Verify and open a bundle (``None``: the one shipped with the package, checked against the
    package's keys). With ``trusted_keys`` (or ``OSTEO_EDGE_TRUSTED_KEYS``) set, an unsigned bundle or
    one signed by another key is refused."""
    return Model(EdgeClassifier.load(path, threads=threads, trust=_trust(trusted_keys)))


def verify_bundle(path: PathLike | None = None, *, trusted_keys: PathLike | Sequence[PathLike] | None = None) -> dict[str, Any]:
    """Check a bundle as ``osteo-edge verify`` does (seal, every file's checksum, the signature and,
    with trusted keys, its signer) without opening the model; raises a one-line
    :class:`~osteo_edge.errors.BundleError` when anything does not match. Returns what was verified."""
    trust = _trust(trusted_keys)
    b = open_bundle(path, trust)
    sig = b.signature
    return {"bundle": str(b.path), "format": b.format, "labels": list(b.labels), "seal": b.seal,
            "signed_by": sig.key_id if sig is not None else None,
            "signer_trusted": sig is not None and (trust.configured or path is None),
            "revisions": len(b.revisions), "verified": True}
