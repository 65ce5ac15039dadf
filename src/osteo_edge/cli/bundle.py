"""`osteo-edge keygen`, `sign` and `verify`: publisher keys and signed, verifiable model bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import TRUSTED_KEY_HELP, console, handle_errors, next_step, trust_store


@handle_errors
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for NAME.key (private, kept secret, mode 0600) and NAME.pub (public, give it to clinics).")],
    name: Annotated[str, typer.Option("--name", help="File name stem of the key pair.")] = "osteo-edge",
) -> None:
    """Make an Ed25519 key pair for signing model bundles. Existing files are never overwritten."""
    from ..artifact.signing import TrustStore, generate_keypair

    priv, pub = generate_keypair(out, name)
    (kid,) = TrustStore.from_paths([pub]).keys
    console.print(f"wrote {priv} (private: keep it secret, off the clinic machines)\nwrote {pub} (public key id {kid})",
                  highlight=False, soft_wrap=True)
    next_step(f"osteo-edge sign BUNDLE --key {priv}")


@handle_errors
def sign(
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory to sign (it must verify first).", show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM) from 'osteo-edge keygen'.")],
) -> None:
    """Seal and sign a model bundle so that a clinic's runtime can trust its publisher, not the file."""
    from ..artifact import sign_bundle

    b = sign_bundle(bundle, key)
    sig = b.signature
    assert sig is not None
    console.print(f"signed {bundle}: seal {b.seal[:16]}..., key id {sig.key_id}", highlight=False, soft_wrap=True)
    next_step(f"osteo-edge verify {bundle} --trusted-key PUBLIC_KEY.pub")


@handle_errors
def verify(
    bundle: Annotated[Optional[Path], typer.Argument(help="Model bundle directory (default: the bundle shipped with the package).", show_default=False)] = None,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP)] = None,
) -> None:
    """Check a bundle: manifest seal, every file's checksum, the signature and, with trusted keys, its signer."""
    from ..edge_runtime.classifier import open_bundle

    trust = trust_store(trusted_key)
    b = open_bundle(bundle, trust)
    sig = b.signature
    lines = [
        f"bundle: {b.path}",
        f"format: {b.format}; labels: {', '.join(b.labels)}; manifest version {b.version}",
        f"seal: {b.seal or 'none (version-1 manifest)'}",
        f"signature: {'key id ' + sig.key_id if sig else 'none'}"
        + ("; signer trusted" if trust.configured or bundle is None else "; no trusted keys configured"),
        f"revisions: {len(b.revisions)}" + "".join(f"\n  {r.revision}. {r.step} ({r.at}): fields {', '.join(r.fields) or '-'}"
                                                    for r in b.revisions),
        "verified: every file matches its checksum and the manifest matches its seal",
    ]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)
    next_step(f"osteo-edge predict KNEE.png{'' if bundle is None else ' --model ' + str(bundle)}")


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)
    app.command("sign")(sign)
    app.command("verify")(verify)
