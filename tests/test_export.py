"""Export: every format from a tiny model, reload through the edge runtime, golden parity, refusal of bad bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from test_export_fixtures import KNEE, LABELS, make_run, make_split

pytestmark = pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")

FORMATS = [
    "onnx",
    "onnx-int8",
    pytest.param("tflite", marks=pytest.mark.tflite),
    pytest.param("tflite-int8", marks=pytest.mark.tflite),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {"root": root, "split": make_split(root / "split"), "run": make_run(root / "run")}


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_every_format_reloads_and_matches_torch(tiny: dict[str, Path], fmt: str) -> None:
    from osteo_edge.artifact import load_bundle
    from osteo_edge.modeling.loading import load_run
    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.export import GOLDEN_TOLERANCE, export_model, torch_logits
    from osteo_edge.export.golden import split_inputs
    from osteo_edge.core.stats import softmax
    from osteo_edge.formats import get_format

    out = tiny["root"] / f"bundle-{fmt}"
    res = export_model(tiny["run"], fmt, out, split=tiny["split"], calib_size=4, golden_size=4, command="pytest export")
    record = get_format(fmt)
    bundle = load_bundle(out)  # verifies every checksum
    m = bundle.manifest
    assert m["format"] == fmt and bundle.labels == LABELS
    assert bundle.spec.layout == record.layout and bundle.spec.input_size == 32
    assert bundle.temperature == pytest.approx(1.5) and bundle.thresholds["low_bmd"] == 0.5
    assert m["provenance"]["command"] == "pytest export" and m["provenance"]["lineage"] == ["tests: make_run"]
    assert m["provenance"]["parent"]["path"] == "../run" and bundle.parent_dir() == tiny["run"].resolve()
    assert m["provenance"]["parent"]["seal"] == load_bundle(tiny["run"]).seal
    assert m["export"]["golden_parity"]["passed"] and m["export"]["golden_parity"]["inputs"]["source"] == "split:test"
    if record.precision == "int8":
        assert m["export"]["calibration"] == {"source": "split:train", "n": 4, "subset": "train"}
    test = m["metrics"]["test"]
    assert test["n_images"] == 6 and 0.0 <= test["accuracy"] <= 1.0
    assert "ci95" in test["headline"]["accuracy"]

    # reload through the edge runtime and compare with torch on all test images, independently of export
    clf = EdgeClassifier.load(out)
    model, parent = load_run(tiny["run"])
    ref_in = split_inputs(tiny["split"], parent.spec, subset="test", labels=LABELS)
    cand_in = split_inputs(tiny["split"], clf.spec, subset="test", labels=LABELS)
    p_ref = softmax(torch_logits(model, ref_in.x), parent.temperature)
    p_cand = np.asarray(clf.probabilities(cand_in.x))
    assert np.abs(p_ref - p_cand).max() <= GOLDEN_TOLERANCE[record.precision]["max_abs_dp"]
    if record.precision == "fp32":
        assert (p_ref.argmax(1) == p_cand.argmax(1)).all()
    pred = clf.predict(ref_in.paths[0])
    assert pred.status in ("ok", "refer", "rejected") and set(pred.probabilities) <= set(LABELS)
    assert res.size_bytes == bundle.model_path.stat().st_size


def test_onnx_carries_spec_metadata(tiny: dict[str, Path]) -> None:
    import onnx

    from osteo_edge.export import export_model

    out = tiny["root"] / "meta-onnx"
    export_model(tiny["run"], "onnx", out, golden_size=2)
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(props["osteo_edge.labels"]) == LABELS
    assert json.loads(props["osteo_edge.spec"])["input_size"] == 32


def test_golden_check_catches_a_wrong_model(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An exporter that writes the wrong network is refused and leaves no bundle behind."""
    from osteo_edge import export as export_pkg
    from osteo_edge.modeling.loading import load_run
    from osteo_edge.errors import ParityError
    from osteo_edge.export.onnx_export import to_onnx

    other, _ = load_run(make_run(tiny["root"] / "other-run", flip=True))

    def wrong(ctx: export_pkg.ExportContext) -> None:
        to_onnx(other, ctx, ctx.out_file)

    monkeypatch.setitem(export_pkg.EXPORTERS, "onnx", wrong)
    out = tiny["root"] / "wrong"
    with pytest.raises(ParityError, match="golden"):
        export_pkg.export_model(tiny["run"], "onnx", out, split=tiny["split"], golden_size=4)
    assert not out.exists()


def test_golden_check_numbers() -> None:
    from osteo_edge.export import golden_check

    ref = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    ok = golden_check(ref, ref + 1e-6, 1.0, "fp32")
    assert ok["passed"] and ok["agreement"] == 1.0
    bad = golden_check(ref, ref[:, ::-1].copy(), 1.0, "fp32")
    assert not bad["passed"] and "delta p" in bad["why"]
    assert not golden_check(ref, ref[:1], 1.0, "fp32")["passed"]  # wrong shape
    assert not golden_check(ref, np.full_like(ref, np.nan), 1.0, "int8")["passed"]


def test_corrupted_bundle_is_refused(tiny: dict[str, Path]) -> None:
    from osteo_edge.artifact import load_bundle
    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.errors import BundleError
    from osteo_edge.export import export_model

    out = tiny["root"] / "corrupt"
    export_model(tiny["run"], "onnx", out, golden_size=2)
    model = out / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(out)
    with pytest.raises(BundleError, match="checksum"):
        EdgeClassifier.load(out)


def test_export_refuses_bad_input(tiny: dict[str, Path], tmp_path: Path) -> None:
    from osteo_edge.errors import BundleError, ConfigError
    from osteo_edge.export import export_model

    with pytest.raises(ConfigError, match="valid: onnx"):
        export_model(tiny["run"], "coreml", tmp_path / "x")
    with pytest.raises(ConfigError):
        export_model(tiny["run"], "torch", tmp_path / "x")
    with pytest.raises(BundleError):
        export_model(tmp_path / "no-such-run", "onnx", tmp_path / "x")
    onnx_bundle = tiny["root"] / "meta-src"
    export_model(tiny["run"], "onnx", onnx_bundle, golden_size=1)
    with pytest.raises(BundleError, match="not a torch run"):
        export_model(onnx_bundle, "onnx", tmp_path / "y")


def test_export_cli(tiny: dict[str, Path]) -> None:
    from osteo_edge.cli import app

    out = tiny["root"] / "cli-onnx-int8"
    res = CliRunner().invoke(app, ["export", "--model", str(tiny["run"]), "--format", "onnx", "--int8", "--split", str(tiny["split"]),
                                   "--calib-size", "3", "--golden", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "onnx-int8" in res.output and "next:" in res.output and "osteo-edge parity" in res.output
    assert (out / "model.onnx").is_file() and json.loads((out / "manifest.json").read_text())["format"] == "onnx-int8"
    bad = CliRunner().invoke(app, ["export", "--model", str(tiny["root"] / "nope"), "--format", "onnx", "--out", str(tiny["root"] / "z")])
    assert bad.exit_code == 1 and "no such model bundle" in bad.output
