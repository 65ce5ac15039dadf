"""The bundle contract: every answer-changing manifest field is sealed; signatures and trusted keys.

Edits are made to a copy of the shipped bundle, as a user with a text editor would make them, and
each edited copy is then handed to ``predict``, ``bench`` and the ``demo`` through the real CLI.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osteo_edge.artifact import load_bundle, reseal, seal, seal_digest, sign_bundle
from osteo_edge.artifact.signing import TRUST_ENV, TrustStore, generate_keypair, package_keys_dir
from osteo_edge.cli import app
from osteo_edge.edge_runtime import EdgeClassifier, default_bundle_path
from osteo_edge.edge_runtime.classifier import open_bundle
from osteo_edge.errors import BundleError
from osteo_edge.preprocess import PreprocessSpec
from conftest import KNEE

REPO = Path(__file__).resolve().parents[1]

runner = CliRunner()

# Every manifest field that changes an answer, edited the way a person (or a script) would.
EDITS = {
    "labels reordered": lambda m: m["labels"].reverse(),
    "min_confidence threshold": lambda m: m["thresholds"].update(min_confidence=0.0),
    "low_bmd threshold": lambda m: m["thresholds"].update(low_bmd=0.99),
    "temperature": lambda m: m.update(temperature=m["temperature"] * 3),
    "spec": lambda m: m["spec"].update(interpolation="bilinear"),
    "gate": lambda m: m["gate"]["ood"].update(threshold=1e9),
    "negative label": lambda m: m.update(negative_label="Osteoporosis"),
    "format": lambda m: m.update(format="tflite"),
}


def _copy_shipped(dst: Path) -> Path:
    shutil.copytree(default_bundle_path(), dst)
    return dst


def _edit(root: Path, fn, recompute_seal: bool = False) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    if recompute_seal:
        m["seal"]["digest"] = seal_digest(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


@pytest.fixture(scope="module")
def knee(shared_data) -> Path:
    return sorted((KNEE / "multiclass-kaggle" / "Osteoporosis").iterdir())[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    a = generate_keypair(d, "alice")
    b = generate_keypair(d, "bob")
    return {"alice": a, "bob": b}


def test_shipped_bundle_is_sealed_signed_and_trusted():
    b = open_bundle(None)  # checks the seal, every file and the signature against the package's keys
    assert b.version == 2 and b.seal and b.signature is not None
    assert b.signature.key_id in TrustStore.package().keys
    assert list(package_keys_dir().glob("*.pub"))
    assert b.negative_label == "Normal"


def test_no_shipped_manifest_holds_a_build_machine_path():
    from osteo_edge.artifact import build_machine_paths, load_bundle

    shipped = sorted((REPO / "src" / "osteo_edge" / "models").glob("*/manifest.json"))
    assert shipped
    for manifest in shipped:
        b = load_bundle(manifest.parent)
        assert build_machine_paths(b.manifest) == [], manifest
        prov = b.provenance
        assert prov.split_csv == {"name": "split.csv", "sha256": prov.split_sha256} or prov.split_csv is None
        assert prov.parent is None or not Path(prov.parent.path).is_absolute()


def test_build_machine_paths_are_found_in_values_and_commands():
    from osteo_edge.artifact import build_machine_paths, split_reference

    m = {"provenance": {"split_csv": "/tmp/x/split.csv", "command": "osteo-edge export --split /tmp/x/split.csv --out b",
                        "parent": {"path": "../../runs/r"}, "win": "C:\\data\\split.csv"},
         "metrics": {"protocol": "test 15% / val 15%"}, "export": {"io": "quantizes/dequantizes"},
         "signature": {"value": "ab/cd+/ef=="}}
    assert sorted(build_machine_paths(m)) == [("provenance.command", "/tmp/x/split.csv"),
                                              ("provenance.split_csv", "/tmp/x/split.csv"), ("provenance.win", "C:\\data\\split.csv")]
    assert split_reference("/nowhere/split.csv", "abc") == {"name": "split.csv", "sha256": "abc"}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_edited_field_is_refused_by_predict_bench_and_demo(tmp_path, field, knee, monkeypatch):
    bundle = _copy_shipped(tmp_path / "b")
    assert runner.invoke(app, ["predict", str(knee), "--model", str(bundle), "--json"]).exit_code == 0
    _edit(bundle, EDITS[field])

    r = runner.invoke(app, ["predict", str(knee), "--model", str(bundle), "--json"])
    assert r.exit_code == 1 and "seal mismatch" in r.output, r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output  # one line, no answer printed

    r = runner.invoke(app, ["bench", "--model", str(bundle), "--runs", "5", "--warmup", "1", "--no-torch-reference"])
    assert r.exit_code == 1 and "seal mismatch" in r.output, r.output

    import osteo_edge.demo.app as demo_app

    def must_not_launch(*a, **k):
        raise AssertionError("the demo launched a tampered bundle")

    monkeypatch.setattr(demo_app, "launch_app", must_not_launch)
    r = runner.invoke(app, ["demo", "--model", str(bundle), "--port", "7999"])
    assert r.exit_code == 1 and "seal mismatch" in r.output, r.output


def test_reordered_labels_would_have_flipped_the_answer(tmp_path, knee):
    """Why the seal matters: with a recomputed seal (no signature policy) the flip goes through."""
    bundle = _copy_shipped(tmp_path / "b")
    before = EdgeClassifier.load(bundle).predict(knee)
    m = json.loads((bundle / "manifest.json").read_text())
    m.pop("signature")
    (bundle / "manifest.json").write_text(json.dumps(m))
    _edit(bundle, EDITS["labels reordered"], recompute_seal=True)
    after = EdgeClassifier.load(bundle, trust=TrustStore()).predict(knee)
    assert after.label != before.label  # the attack a seal alone cannot stop: hence signatures


def test_signature_and_trusted_keys(tmp_path, keys, knee, monkeypatch):
    alice_priv, alice_pub = keys["alice"]
    _, bob_pub = keys["bob"]
    bundle = _copy_shipped(tmp_path / "b")

    # signed by the package key, not by alice
    with pytest.raises(BundleError, match="not among this runtime's trusted keys"):
        open_bundle(bundle, TrustStore.from_paths([alice_pub]))

    sign_bundle(bundle, alice_priv)
    assert open_bundle(bundle, TrustStore.from_paths([alice_pub])).signature.key_id in TrustStore.from_paths([alice_pub]).keys
    with pytest.raises(BundleError, match="signed by key .* not among"):
        open_bundle(bundle, TrustStore.from_paths([bob_pub]))
    r = runner.invoke(app, ["predict", str(knee), "--model", str(bundle), "--trusted-key", str(alice_pub), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(knee), "--model", str(bundle), "--trusted-key", str(bob_pub)])
    assert r.exit_code == 1 and "not among" in r.output

    # an attacker who edits the labels and recomputes the seal cannot recompute alice's signature
    _edit(bundle, EDITS["labels reordered"], recompute_seal=True)
    with pytest.raises(BundleError, match="signature does not verify"):
        open_bundle(bundle, TrustStore())

    # unsigned: accepted without a trust policy, refused with one (option or environment)
    _edit(bundle, lambda m: m.pop("signature"))
    assert open_bundle(bundle, TrustStore()).signature is None
    with pytest.raises(BundleError, match="unsigned"):
        open_bundle(bundle, TrustStore.from_paths([alice_pub]))
    monkeypatch.setenv(TRUST_ENV, str(alice_pub))
    for cmd in (["predict", str(knee), "--model", str(bundle)],
                ["bench", "--model", str(bundle), "--runs", "5", "--warmup", "1", "--no-torch-reference"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 1 and "unsigned" in r.output, r.output


def test_sign_and_verify_commands(tmp_path):
    r = runner.invoke(app, ["keygen", "--out", str(tmp_path / "k"), "--name", "clinic"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "k" / "clinic.key").stat().st_mode & 0o777 == 0o600
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "k"), "--name", "clinic"]).exit_code == 1  # never overwrites
    bundle = _copy_shipped(tmp_path / "b")
    r = runner.invoke(app, ["sign", str(bundle), "--key", str(tmp_path / "k" / "clinic.key")])
    assert r.exit_code == 0 and "next:" in r.output, r.output
    r = runner.invoke(app, ["verify", str(bundle), "--trusted-key", str(tmp_path / "k")])
    assert r.exit_code == 0 and "signer trusted" in r.output, r.output
    r = runner.invoke(app, ["verify", str(bundle), "--trusted-key", str(package_keys_dir())])
    assert r.exit_code == 1 and "not among" in r.output
    r = runner.invoke(app, ["sign", str(bundle), "--key", str(tmp_path / "k" / "clinic.pub")])
    assert r.exit_code == 1 and "not a PEM private key" in r.output


def test_version_1_bundle_still_loads(tmp_path, knee):
    bundle = _copy_shipped(tmp_path / "v1")
    m = json.loads((bundle / "manifest.json").read_text())
    for k in ("seal", "signature", "negative_label", "revisions"):
        m.pop(k)
    m["manifest_version"] = 1
    (bundle / "manifest.json").write_text(json.dumps(m))
    clf = EdgeClassifier.load(bundle, trust=TrustStore())
    assert clf.bundle.version == 1 and clf.bundle.negative_label == "Normal"
    assert clf.predict(knee).low_bmd_probability is not None
    with pytest.raises(BundleError, match="unsigned"):
        EdgeClassifier.load(bundle, trust=TrustStore.package())


def _tiny(root: Path, payload: bytes, provenance=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(payload)
    return seal(root, format="onnx", model_file="model.onnx", labels=["Normal", "Osteoporosis"],
                spec=PreprocessSpec(input_size=64), provenance=provenance or {"command": "train"})


def test_lineage_is_checked_when_the_parent_is_present(tmp_path):
    parent = _tiny(tmp_path / "runs" / "p", b"weights-1")
    child = _tiny(tmp_path / "out" / "c", b"int8", parent.child_provenance(tmp_path / "out" / "c", "export"))
    assert load_bundle(child.path).provenance.parent.path == "../../runs/p"
    reseal(parent.path, step="evaluate", temperature=1.3)  # a recorded revision of the same parent: fine
    assert load_bundle(child.path).parent_dir() == parent.path.resolve()
    shutil.rmtree(parent.path)
    _tiny(tmp_path / "runs" / "p", b"weights-2")  # retrained in place: not the parent the child came from
    with pytest.raises(BundleError, match="no longer the bundle it was made from"):
        load_bundle(child.path)
    shutil.rmtree(parent.path)
    assert load_bundle(child.path).parent_dir() is None  # parent absent (a clinic machine): nothing to check


def test_key_files_are_standard_rfc8410_pem(tmp_path):
    """keygen's files are the PKCS#8 / SubjectPublicKeyInfo PEM that OpenSSL and `cryptography` use,
    and a key made by `cryptography` signs bundles that verify here."""
    crypto = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from osteo_edge.artifact.signing import generate_keypair, public_key_of, sign_seal

    priv, pub = generate_keypair(tmp_path, "k")
    theirs = crypto.load_pem_private_key(priv.read_bytes(), password=None)
    raw = theirs.public_key().public_bytes(crypto.Encoding.Raw, crypto.PublicFormat.Raw)
    assert raw == public_key_of(pub)
    assert crypto.load_pem_public_key(pub.read_bytes()).public_bytes(crypto.Encoding.Raw, crypto.PublicFormat.Raw) == raw
    other = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "o.key").write_bytes(other.private_bytes(crypto.Encoding.PEM, crypto.PrivateFormat.PKCS8, crypto.NoEncryption()))
    rec = sign_seal("ab" * 32, tmp_path / "o.key")
    other.public_key().verify(base64.b64decode(rec.value), b"osteo-edge bundle signature v1\n" + ("ab" * 32).encode())
