"""The Python API: ``osteo_edge.load_bundle(path).predict(image)`` gives the record ``predict --json``
prints, ``osteo_edge.verify_bundle`` checks a bundle, and neither needs torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import osteo_edge
from osteo_edge.errors import BundleError

OSTEO_EDGE = str(Path(sys.executable).parent / "osteo-edge")


def _knees(shared_data: Path, n: int) -> list[Path]:
    files = sorted((shared_data / "knee").rglob("*.jp*g"))
    return files[:: max(1, len(files) // n)][:n]  # spread over the sources


def test_predict_gives_the_record_that_predict_json_prints(shared_data):
    files = _knees(shared_data, 4)
    model = osteo_edge.load_bundle()
    ours = [model.predict(str(f)) for f in files]
    cli = subprocess.run([OSTEO_EDGE, "predict", "--json", *map(str, files)], capture_output=True, text=True, check=True)
    theirs = [json.loads(line) for line in cli.stdout.splitlines()]
    for a, b in zip(ours, theirs, strict=True):
        a.pop("latency_ms"), b.pop("latency_ms")
        assert a == b
    assert all("refer for DEXA" in r["message"] for r in ours if r["status"] == "refer")
    assert all("not a diagnosis" in r["message"] for r in ours), ours


def test_predict_takes_bytes_and_rejects_garbage_without_raising(shared_data):
    files = _knees(shared_data, 1)
    model = osteo_edge.load_bundle()
    from_bytes = model.predict(files[0].read_bytes(), name="knee")
    from_path = model.predict(str(files[0]), name="knee")
    from_bytes.pop("latency_ms"), from_path.pop("latency_ms")
    assert from_bytes == from_path
    bad = model.predict(b"not an image at all", name="junk")
    assert bad["status"] == "rejected" and bad["label"] is None and bad["reason"] == "invalid_image"
    assert model.labels == list(model.info["labels"])


def test_verify_bundle_and_a_tampered_copy_is_refused(tmp_path):
    shipped = Path(osteo_edge.__file__).parent / "models" / "default"
    ok = osteo_edge.verify_bundle()
    assert ok["verified"] and ok["signed_by"] and ok["signer_trusted"]
    copy = tmp_path / "copy"
    shutil.copytree(shipped, copy)
    assert osteo_edge.verify_bundle(copy)["seal"] == ok["seal"]
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["thresholds"]["low_bmd"] = 0.99  # an edited operating point
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        osteo_edge.verify_bundle(copy)
    with pytest.raises(BundleError):
        osteo_edge.load_bundle(copy)


def test_a_foreign_signer_is_refused_when_keys_are_trusted(tmp_path):
    from osteo_edge.artifact.signing import generate_keypair

    _, other_pub = generate_keypair(tmp_path / "keys", "someone-else")
    shipped = Path(osteo_edge.__file__).parent / "models" / "default"
    with pytest.raises(BundleError):
        osteo_edge.verify_bundle(shipped, trusted_keys=[other_pub])


def test_the_api_never_imports_torch():
    code = ("import sys, osteo_edge; m = osteo_edge.load_bundle(); "
            "import numpy as np; m.predict(np.zeros((300, 300), np.uint8), name='blank'); "
            "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_one_trusted_key_may_be_given_as_a_path(tmp_path):
    """A single path (not in a list) was iterated letter by letter: 'k: no such trusted key file or folder'."""
    from osteo_edge.artifact.signing import generate_keypair

    _, other_pub = generate_keypair(tmp_path / "keys", "someone-else")
    for given in (str(other_pub), Path(other_pub)):
        with pytest.raises(BundleError, match="(?i)trust|signed"):
            osteo_edge.verify_bundle(trusted_keys=given)


def test_predict_many_takes_one_path_as_a_list_of_one(shared_data):
    """A single path string was iterated letter by letter: five 'no such file' answers for 'a.png'."""
    f = _knees(shared_data, 1)[0]
    model = osteo_edge.load_bundle()
    for one in (str(f), f, f.read_bytes()):
        answers = model.predict_many(one)
        assert len(answers) == 1 and answers[0]["status"] != "rejected", answers
