"""Ed25519 signatures on bundle manifests, and the trust a runtime places in publishers' keys.

A signature covers the manifest's seal, and the seal covers every field of the manifest and (through
the ``files`` table) every byte of every file, so one signature vouches for the whole bundle. Keys are
PEM files (PKCS#8 private, SubjectPublicKeyInfo public) made by ``osteo-edge keygen``.

A runtime configured with trusted public keys (``--trusted-key`` or ``OSTEO_EDGE_TRUSTED_KEYS``) refuses
a bundle that is unsigned or signed by anyone else. Without that configuration an unsigned bundle
loads (the training/export workflow), a signed one must still verify against its own key, and the
bundle shipped in the package must be signed by a key shipped in the package.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import BundleError, ConfigError, require
from .records import SignatureRecord

ALGORITHM = "ed25519"
TRUST_ENV = "OSTEO_EDGE_TRUSTED_KEYS"
_CONTEXT = b"osteo-edge bundle signature v1\n"


def package_keys_dir() -> Path:
    """Public keys shipped with the package (``osteo_edge/keys``): they vouch for the shipped bundle."""
    return Path(__file__).resolve().parent.parent / "keys"


def _crypto():
    require("cryptography", "runtime")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519, InvalidSignature


def key_id(raw_public: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _message(seal_digest: str) -> bytes:
    return _CONTEXT + seal_digest.encode("ascii")


def generate_keypair(out_dir: str | os.PathLike, name: str = "osteo-edge") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub`` into ``out_dir``; refuses to overwrite."""
    from .atomic import atomic_write_bytes

    serialization, ed25519, _ = _crypto()
    out = Path(out_dir)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p}: exists; choose another --name or folder (keys are never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(priv_path, priv)
    os.chmod(priv_path, 0o600)
    atomic_write_bytes(pub_path, pub)
    return priv_path, pub_path


def _read_key_file(path: Path, private: bool):
    serialization, ed25519, _ = _crypto()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror or exc})") from exc
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        raise ConfigError(f"{path}: not a PEM {kind} key ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    want = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, want):
        raise ConfigError(f"{path}: not an Ed25519 key (make one with 'osteo-edge keygen')")
    return key


def _raw_public(pub) -> bytes:
    serialization, _, _ = _crypto()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_seal(seal_digest: str, private_key_path: str | os.PathLike) -> SignatureRecord:
    """An Ed25519 signature of ``seal_digest`` with the PEM private key at ``private_key_path``."""
    key = _read_key_file(Path(private_key_path), private=True)
    raw = _raw_public(key.public_key())
    sig = key.sign(_message(seal_digest))
    return SignatureRecord(ALGORITHM, key_id(raw), base64.b64encode(raw).decode("ascii"), base64.b64encode(sig).decode("ascii"))


def verify_signature(root: Path, seal_digest: str, sig: SignatureRecord) -> None:
    """The signature must verify against the public key it names; one-line BundleError otherwise."""
    _, ed25519, InvalidSignature = _crypto()
    if sig.algorithm != ALGORITHM:
        raise BundleError(f"{root}: signature algorithm {sig.algorithm!r} is not supported (expected {ALGORITHM})")
    try:
        raw = base64.b64decode(sig.public_key, validate=True)
        value = base64.b64decode(sig.value, validate=True)
        pub = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{root}: malformed signature record ({exc})") from exc
    if key_id(raw) != sig.key_id:
        raise BundleError(f"{root}: signature key id {sig.key_id} does not match its public key")
    try:
        pub.verify(value, _message(seal_digest))
    except InvalidSignature as exc:
        raise BundleError(f"{root}: signature does not verify; the bundle was modified after signing") from exc


@dataclass(frozen=True)
class TrustStore:
    """Public keys whose signatures a runtime accepts (by key id); empty = no trust policy."""

    keys: frozenset[str] = frozenset()
    sources: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike]) -> "TrustStore":
        """Keys from PEM public-key files or folders of ``*.pub`` files."""
        ids: set[str] = set()
        sources: list[str] = []
        for p in paths:
            p = Path(p)
            files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
            if p.is_dir() and not files:
                raise ConfigError(f"{p}: folder holds no *.pub public key")
            if not p.exists():
                raise ConfigError(f"{p}: no such trusted key file or folder")
            for f in files:
                ids.add(key_id(_raw_public(_read_key_file(f, private=False))))
                sources.append(str(f))
        return cls(frozenset(ids), tuple(sources))

    @classmethod
    def from_env(cls, extra: Iterable[str | os.PathLike] = ()) -> "TrustStore":
        """``extra`` paths plus those in ``OSTEO_EDGE_TRUSTED_KEYS`` (os.pathsep-separated)."""
        env = [x for x in os.environ.get(TRUST_ENV, "").split(os.pathsep) if x.strip()]
        return cls.from_paths([*extra, *env])

    @classmethod
    def package(cls) -> "TrustStore":
        """The keys shipped with the package (they sign the shipped bundle)."""
        d = package_keys_dir()
        return cls.from_paths([d]) if d.is_dir() and any(d.glob("*.pub")) else cls()

    def check(self, root: Path, sig: SignatureRecord | None) -> None:
        """Refuse an unsigned bundle or one signed by a key outside this store (when configured)."""
        if not self.configured:
            return
        if sig is None:
            raise BundleError(f"{root}: bundle is unsigned and this runtime only accepts bundles signed by a trusted key")
        if sig.key_id not in self.keys:
            raise BundleError(f"{root}: bundle is signed by key {sig.key_id}, which is not among this runtime's trusted keys")
