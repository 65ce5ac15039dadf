"""Model bundles: round trip, verification, tampering, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from osteo_edge.artifact import (
    DISCLAIMER,
    atomic_path,
    atomic_write_json,
    load_bundle,
    reseal,
    seal,
    write_bundle_dir,
)
from osteo_edge.errors import BundleError, ConfigError
from osteo_edge.preprocess import PreprocessSpec

LABELS = ["Normal", "Osteopenia", "Osteoporosis"]
SPEC = PreprocessSpec(input_size=64, interpolation="bicubic")


def _make(root, payload=b"\x00model-bytes\x01"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(payload)
    (root / "notes").mkdir(exist_ok=True)
    (root / "notes" / "card.md").write_text("model card")
    return seal(
        root, format="onnx", model_file="model.onnx", labels=LABELS, spec=SPEC, temperature=1.7,
        thresholds={"min_confidence": 0.55, "low_bmd": 0.4}, metrics={"accuracy": 0.8},
        provenance={"command": "osteo-edge export ..."},
    )


def test_round_trip(tmp_path):
    b = _make(tmp_path / "b")
    again = load_bundle(tmp_path / "b")
    assert again.labels == LABELS and again.spec == SPEC and again.temperature == 1.7
    assert again.thresholds == {"min_confidence": 0.55, "low_bmd": 0.4}
    assert again.model_path.read_bytes() == b"\x00model-bytes\x01"
    assert set(again.manifest["files"]) == {"model.onnx", "notes/card.md"}
    assert again.manifest["intended_use"] == DISCLAIMER
    assert "python" in again.manifest["versions"]
    assert b.file("notes/card.md").read_text() == "model card"


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda r: (r / "model.onnx").write_bytes(b"evil"), "checksum mismatch for model.onnx"),
        (lambda r: (r / "notes" / "card.md").unlink(), "notes/card.md is missing"),
        (lambda r: (r / "manifest.json").write_text("{broken"), "not valid JSON"),
        (lambda r: (r / "manifest.json").unlink(), "no manifest.json"),
        (lambda r: _edit(r, lambda m: m.pop("labels")), "missing \\['labels'\\]"),
        (lambda r: _edit(r, lambda m: m.update(labels=["Normal"])), "at least two"),
        (lambda r: _edit(r, lambda m: m["spec"].update(input_size="big")), "invalid preprocess spec"),
        (lambda r: _edit(r, lambda m: m["files"].update({"../x": {"sha256": "0"}})), "seal mismatch"),
        (lambda r: _edit(r, lambda m: m["files"].update({"../x": {"sha256": "0"}}), reseal=True), "outside the bundle"),
        (lambda r: _edit(r, lambda m: m.update(kind="something-else")), "is not 'osteo-edge-bundle'"),
    ],
)
def test_tampered_or_incomplete_bundle_refused(tmp_path, tamper, match):
    root = tmp_path / "b"
    _make(root)
    tamper(root)
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(root)
    assert "\n" not in str(info.value)


def _edit(root, fn, reseal=False):
    """Edit the manifest as a person would; ``reseal`` also recomputes the seal as an attacker would."""
    from osteo_edge.artifact import seal_digest

    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    if reseal:
        m["seal"]["digest"] = seal_digest(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such model bundle"):
        load_bundle(tmp_path / "absent")
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="is a directory"):
        load_bundle(tmp_path / "f")


def test_seal_validates(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match="labels"):
        seal(tmp_path, format="onnx", model_file="model.onnx", labels=["A", "A"], spec=SPEC)
    with pytest.raises(BundleError, match="not in the bundle"):
        seal(tmp_path, format="onnx", model_file="missing.onnx", labels=LABELS, spec=SPEC)


def test_reseal_adds_files_and_refuses_silent_changes(tmp_path):
    root = tmp_path / "b"
    _make(root)
    (root / "metrics.json").write_text("{}")
    first_seal = load_bundle(root).seal
    b = reseal(root, step="evaluate", temperature=2.0)
    assert b.temperature == 2.0 and "metrics.json" in b.manifest["files"]
    (rev,) = b.revisions
    assert (rev.revision, rev.step, rev.fields, rev.files, rev.previous_seal) == (1, "evaluate", ("temperature",), ("metrics.json",), first_seal)
    (root / "model.onnx").write_bytes(b"changed behind our back")
    with pytest.raises(BundleError, match="checksum mismatch"):
        reseal(root, step="x", temperature=3.0)
    b = reseal(root, step="requantize", temperature=3.0, changed=["model.onnx"])
    assert b.temperature == 3.0 and [r.step for r in b.revisions] == ["evaluate", "requantize"]
    assert b.known_seals() == {first_seal, b.revisions[1].previous_seal, b.seal}
    _edit(root, lambda m: m.update(temperature=9.0))
    with pytest.raises(BundleError, match="seal mismatch"):
        reseal(root, step="y", temperature=1.0)


def test_write_bundle_dir_is_atomic(tmp_path):
    dest = tmp_path / "bundle"
    _make(dest)
    before = (dest / "manifest.json").read_text()

    def broken(tmp):
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("crash mid-export")

    with pytest.raises(RuntimeError):
        write_bundle_dir(dest, broken)
    assert (dest / "manifest.json").read_text() == before  # old bundle untouched
    assert load_bundle(dest).labels == LABELS
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no half-written leftovers

    write_bundle_dir(dest, lambda tmp: _make(tmp, payload=b"new"))
    assert load_bundle(dest).model_path.read_bytes() == b"new"


def test_atomic_helpers_leave_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(ZeroDivisionError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            1 / 0
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_written_files_get_normal_permissions(tmp_path):
    """mkstemp/mkdtemp create 0600/0700; a shipped bundle must be readable by other users."""
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        write_bundle_dir(tmp_path / "bundle", lambda d: _make(d))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bundle" / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_child_provenance_chains_commands(tmp_path):
    parent = _make(tmp_path / "p")  # provenance: {"command": "osteo-edge export ..."}
    child = parent.child_provenance(tmp_path / "c", "osteo-edge quantize")
    assert child.parent.path == "../p" and child.parent.seal == parent.seal and child.command == "osteo-edge quantize"
    assert child.parent.model_sha256 == parent.model_sha256 and not os.path.isabs(child.parent.path)
    assert child.parent_command == "osteo-edge export ..."
    assert child.lineage == ("osteo-edge export ...",)
    again = type(parent)(parent.path, {**parent.manifest, "provenance": child.to_dict()})
    grand = again.child_provenance(tmp_path / "g", None)
    assert grand.command == "" and grand.lineage == ("osteo-edge export ...", "osteo-edge quantize")
