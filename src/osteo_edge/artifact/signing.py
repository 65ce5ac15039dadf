"""Ed25519 signatures on bundle manifests, and the trust a runtime places in publishers' keys.

A signature covers the manifest's seal, and the seal covers every field of the manifest and (through
the ``files`` table) every byte of every file, so one signature vouches for the whole bundle. Keys are
PEM files (PKCS#8 private, SubjectPublicKeyInfo public, RFC 8410: the same files OpenSSL and the
``cryptography`` package read and write) made by ``osteo-edge keygen``. The Ed25519 arithmetic is
libsodium's, through PyNaCl (5.6 MB installed, against 15.5 MB for ``cryptography``: the runtime
install stays small); the two fixed DER envelopes of RFC 8410 are read and written here.

A runtime configured with trusted public keys (``--trusted-key``, ``OSTEO_EDGE_TRUSTED_KEYS`` or this
machine's **trust file**) refuses a bundle that is unsigned or signed by anyone else. The trust file
is the one-step clinic set-up: a text file of PEM public keys (written by ``osteo-edge site trust`` or
``site calibrate --trust-file``) at ``OSTEO_EDGE_TRUST_FILE`` when that is set, else at the user's
``~/.config/osteo-edge/trusted-keys.pem`` and the machine's ``/etc/osteo-edge/trusted-keys.pem``
(whichever exist); every entry point that reads ``OSTEO_EDGE_TRUSTED_KEYS`` reads it too. Without that configuration an unsigned bundle
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
TRUST_FILE_ENV = "OSTEO_EDGE_TRUST_FILE"
TRUST_FILE_NAME = "trusted-keys.pem"
_CONTEXT = b"osteo-edge bundle signature v1\n"


def package_keys_dir() -> Path:
    """Public keys shipped with the package (``osteo_edge/keys``): they vouch for the shipped bundle."""
    return Path(__file__).resolve().parent.parent / "keys"


def _nacl():
    require("nacl", "runtime")  # PyNaCl: a base dependency; the hint names a fix if it is missing
    import nacl.exceptions
    import nacl.signing

    return nacl.signing, nacl.exceptions.BadSignatureError


# RFC 8410 DER envelopes of an Ed25519 key (OID 1.3.101.112): PKCS#8 v1 / v2 (with the public key)
# private keys and SubjectPublicKeyInfo public keys.
_PKCS8_V1 = bytes.fromhex("302e020100300506032b657004220420")
_PKCS8_V2 = bytes.fromhex("3053020101300506032b657004220420")
_PKCS8_V2_PUB = bytes.fromhex("a123032100")
_SPKI = bytes.fromhex("302a300506032b6570032100")
_PEM_LABEL = {True: "PRIVATE KEY", False: "PUBLIC KEY"}


def _pem(der: bytes, private: bool) -> bytes:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    label = _PEM_LABEL[private]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode("ascii")


def _unpem(data: bytes, private: bool) -> bytes:
    """The DER body of a PEM block with the expected label; ValueError otherwise."""
    label = _PEM_LABEL[private]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError("not ASCII PEM text") from exc
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if begin not in text or end not in text:
        raise ValueError(f"no '{begin}' block")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError("bad base64 in the PEM block") from exc


def _raw_key(der: bytes, private: bool) -> bytes | None:
    """The 32-byte seed (private) or public key inside an RFC 8410 envelope; None if not Ed25519."""
    if not private:
        return der[len(_SPKI):] if der.startswith(_SPKI) and len(der) == len(_SPKI) + 32 else None
    if der.startswith(_PKCS8_V1) and len(der) == len(_PKCS8_V1) + 32:
        return der[len(_PKCS8_V1):]
    if der.startswith(_PKCS8_V2) and len(der) == len(_PKCS8_V2) + 32 + len(_PKCS8_V2_PUB) + 32:
        return der[len(_PKCS8_V2) : len(_PKCS8_V2) + 32]
    return None


def key_id(raw_public: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _message(seal_digest: str) -> bytes:
    return _CONTEXT + seal_digest.encode("ascii")


def generate_keypair(out_dir: str | os.PathLike, name: str = "osteo-edge") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub`` into ``out_dir``; refuses to overwrite."""
    from .atomic import atomic_write_bytes

    signing, _ = _nacl()
    out = Path(out_dir)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p}: exists; choose another --name or folder (keys are never overwritten)")
    key = signing.SigningKey.generate()
    priv = _pem(_PKCS8_V1 + bytes(key), private=True)
    pub = _pem(_SPKI + bytes(key.verify_key), private=False)
    atomic_write_bytes(priv_path, priv)
    os.chmod(priv_path, 0o600)
    atomic_write_bytes(pub_path, pub)
    return priv_path, pub_path


def _read_key_file(path: Path, private: bool) -> bytes:
    """The raw 32-byte Ed25519 seed (private) or public key of a PEM key file; one-line ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror or exc})") from exc
    try:
        der = _unpem(data, private)
    except ValueError as exc:
        kind = "private" if private else "public"
        raise ConfigError(f"{path}: not a PEM {kind} key ({exc})") from exc
    raw = _raw_key(der, private)
    if raw is None:
        raise ConfigError(f"{path}: not an Ed25519 key (make one with 'osteo-edge keygen')")
    return raw


def public_key_of(path: str | os.PathLike) -> bytes:
    """The raw public key of a PEM public key file."""
    return _read_key_file(Path(path), private=False)


def sign_seal(seal_digest: str, private_key_path: str | os.PathLike) -> SignatureRecord:
    """An Ed25519 signature of ``seal_digest`` with the PEM private key at ``private_key_path``."""
    signing, _ = _nacl()
    key = signing.SigningKey(_read_key_file(Path(private_key_path), private=True))
    raw = bytes(key.verify_key)
    sig = key.sign(_message(seal_digest)).signature
    return SignatureRecord(ALGORITHM, key_id(raw), base64.b64encode(raw).decode("ascii"), base64.b64encode(sig).decode("ascii"))


def verify_signature(root: Path, seal_digest: str, sig: SignatureRecord) -> None:
    """The signature must verify against the public key it names; one-line BundleError otherwise."""
    signing, BadSignature = _nacl()
    if sig.algorithm != ALGORITHM:
        raise BundleError(f"{root}: signature algorithm {sig.algorithm!r} is not supported (expected {ALGORITHM})")
    try:
        raw = base64.b64decode(sig.public_key, validate=True)
        value = base64.b64decode(sig.value, validate=True)
        if len(raw) != 32 or len(value) != 64:
            raise ValueError(f"an Ed25519 key is 32 bytes and a signature 64, got {len(raw)} and {len(value)}")
        pub = signing.VerifyKey(raw)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{root}: malformed signature record ({exc})") from exc
    if key_id(raw) != sig.key_id:
        raise BundleError(f"{root}: signature key id {sig.key_id} does not match its public key")
    try:
        pub.verify(_message(seal_digest), value)
    except BadSignature as exc:
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
                ids.add(key_id(_read_key_file(f, private=False)))
                sources.append(str(f))
        return cls(frozenset(ids), tuple(sources))

    @classmethod
    def from_env(cls, extra: Iterable[str | os.PathLike] = ()) -> "TrustStore":
        """``extra`` paths plus those in ``OSTEO_EDGE_TRUSTED_KEYS`` (os.pathsep-separated) plus the keys
        of this machine's trust file(s) (:func:`trust_files`)."""
        env = [x for x in os.environ.get(TRUST_ENV, "").split(os.pathsep) if x.strip()]
        store = cls.from_paths([*extra, *env])
        ids, sources = set(store.keys), list(store.sources)
        for f in trust_files():
            ids |= read_trust_file(f)
            sources.append(f"trust file {f}")
        return cls(frozenset(ids), tuple(sources))

    @classmethod
    def package(cls) -> "TrustStore":
        """The keys shipped with the package (they sign the shipped bundle)."""
        d = package_keys_dir()
        return cls.from_paths([d]) if d.is_dir() and any(d.glob("*.pub")) else cls()

    def check(self, root: Path, sig: SignatureRecord | None) -> None:
        """Refuse an unsigned bundle or one signed by a key outside this store (when configured)."""
        if not self.configured:
            return
        files = [x for x in self.sources if x.startswith("trust file ")]
        where = f" (this machine's {', '.join(files)})" if files else ""
        if sig is None:
            raise BundleError(f"{root}: bundle is unsigned and this runtime only accepts bundles signed by a trusted key{where}")
        if sig.key_id not in self.keys:
            raise BundleError(f"{root}: bundle is signed by key {sig.key_id}, which is not among this runtime's trusted keys{where}")


# ------------------------------------------------------------------------------------------------
# the machine's trust file


def default_trust_files() -> list[Path]:
    """Where a trust file is looked for when ``OSTEO_EDGE_TRUST_FILE`` is not set: the user's, then the machine's."""
    if os.name == "nt":
        user = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "osteo-edge" / TRUST_FILE_NAME
        machine = Path(os.environ.get("PROGRAMDATA") or "C:/ProgramData") / "osteo-edge" / TRUST_FILE_NAME
    else:
        user = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "osteo-edge" / TRUST_FILE_NAME
        machine = Path("/etc/osteo-edge") / TRUST_FILE_NAME
    return [user, machine]


def trust_files() -> list[Path]:
    """The trust file(s) in force: ``OSTEO_EDGE_TRUST_FILE`` when set (it must exist; set to an empty
    string: none), else those of :func:`default_trust_files` that exist."""
    named = os.environ.get(TRUST_FILE_ENV)
    if named is not None:
        if not named.strip():
            return []
        p = Path(named)
        if not p.is_file():
            raise ConfigError(f"{p}: no such trust file ({TRUST_FILE_ENV}); write one with 'osteo-edge site trust'")
        return [p]
    return [p for p in default_trust_files() if p.is_file()]


def read_trust_file(path: str | os.PathLike) -> set[str]:
    """Key ids of the PEM public keys in a trust file; a file without one is refused (one line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read trust file ({exc})") from exc
    end = f"-----END {_PEM_LABEL[False]}-----"
    ids = set()
    for block in (b for b in text.split(end) if "-----BEGIN" in b):
        raw = _raw_key(_unpem_checked(path, (block + end).encode("ascii")), private=False)
        if raw is None:
            raise ConfigError(f"{path}: holds a public key that is not Ed25519")
        ids.add(key_id(raw))
    if not ids:
        raise ConfigError(f"{path}: trust file holds no PEM public key")
    return ids


def _unpem_checked(path: Path, data: bytes) -> bytes:
    try:
        return _unpem(data, private=False)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a trust file of PEM public keys ({exc})") from exc


def public_pem(raw_public: bytes) -> bytes:
    """A PEM public key (SubjectPublicKeyInfo) for a raw Ed25519 public key."""
    return _pem(_SPKI + raw_public, private=False)


def public_key_of_private(path: str | os.PathLike) -> bytes:
    """The raw public key that belongs to a PEM private key file."""
    signing, _ = _nacl()
    return bytes(signing.SigningKey(_read_key_file(Path(path), private=True)).verify_key)


def write_trust_file(path: str | os.PathLike, raw_keys: Iterable[bytes]) -> Path:
    """Write a trust file holding ``raw_keys`` (raw Ed25519 public keys), one PEM block each, atomically."""
    from .atomic import atomic_write_bytes

    keys = list(dict.fromkeys(bytes(k) for k in raw_keys))
    if not keys:
        raise ConfigError("a trust file needs at least one public key")
    body = b"".join(b"# key id " + key_id(k).encode("ascii") + b"\n" + public_pem(k) for k in keys)
    return atomic_write_bytes(path, b"# osteo-edge trusted publisher keys: bundles signed by any other key are refused\n" + body)
