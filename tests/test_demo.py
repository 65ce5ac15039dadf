"""The offline demo: service, heat map, model card, examples, offline settings, API under load, CLI.

The app is built on a tiny ONNX bundle made inside the tests (test_runtime_fixtures), so nothing here
depends on the shipped model. The browser test is in test_demo_browser.py (marker ``browser``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_runtime_fixtures import LABELS, SIZE, knee_images, make_onnx_bundle, png_bytes

from osteo_edge.artifact import DISCLAIMER, load_bundle
from osteo_edge.demo.card import NOT_RECORDED, model_card_markdown
from osteo_edge.demo.examples import EXAMPLES, examples_dir, render_examples
from osteo_edge.demo.explain import occlusion_map, overlay
from osteo_edge.demo.service import DemoService
from osteo_edge.edge_runtime import EdgeClassifier, Gate
from osteo_edge.preprocess import PreprocessSpec, decode_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    prov = {
        "data": ["knee/multiclass-kaggle", "knee/wani-mendeley"],
        "protocol": "group-aware stratified split, duplicate groups kept together, conflicting labels dropped",
        "split_sha256": "ab" * 32,
        "command": "osteo-edge train --tiny",
    }
    root = make_onnx_bundle(tmp_path_factory.mktemp("demo") / "bundle", provenance=prov, thresholds={"min_confidence": 0.2, "low_bmd": 0.5})
    return root


@pytest.fixture(scope="module")
def clf(bundle_dir: Path) -> EdgeClassifier:
    return EdgeClassifier.load(bundle_dir, threads=1)


@pytest.fixture()
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """Inputs a person might drop on the app by mistake."""
    d = tmp_path / "bad"
    d.mkdir()
    files = {
        "empty": d / "empty.png",
        "text": d / "notes.png",
        "truncated": d / "truncated.png",
        "colour": d / "holiday.png",
        "tiny": d / "tiny.png",
        "blank": d / "blank.png",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_bytes(b"patient notes, not an image\n" * 10)
    good = png_bytes((np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8))
    files["truncated"].write_bytes(good[: len(good) // 3])
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, np.linspace(0, 255, 200).astype(np.uint8)[None, :]
    files["colour"].write_bytes(png_bytes(rgb))
    files["tiny"].write_bytes(png_bytes(np.full((20, 20), 128, np.uint8)))
    files["blank"].write_bytes(png_bytes(np.full((300, 300), 90, np.uint8)))
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# examples


def test_bundled_examples_are_the_generators_output():
    """The shipped example files are exactly what examples.py draws (so their origin is known)."""
    rendered = render_examples()
    assert sorted(rendered) == sorted(e.file for e in EXAMPLES)
    for name, data in rendered.items():
        shipped = examples_dir() / name
        assert shipped.is_file(), f"{name} missing from the package; run osteo_edge.demo.examples.make_examples()"
        a, b = decode_image(data).pixels, decode_image(shipped).pixels
        assert a.shape == b.shape
        tol = 3 / 255 if name.endswith(".jpg") else 1e-6  # JPEG encoders may differ by a level
        assert float(np.abs(a - b).max()) <= tol, name
        assert shipped.stat().st_size < 300_000


def test_examples_pass_or_fail_the_rule_gate_as_labelled():
    gate = Gate()
    for e in EXAMPLES:
        verdict = gate.check(decode_image(examples_dir() / e.file))
        if e.file.startswith("synthetic_knee"):
            assert verdict.ok, (e.file, verdict)
        else:
            assert not verdict.ok and verdict.code == "colour", (e.file, verdict)
    assert decode_image(examples_dir() / "synthetic_knee_b.dcm").format == "DICOM"
    assert decode_image(examples_dir() / "synthetic_knee_c.tif").bits == 16


# ------------------------------------------------------------------------------------------------
# heat map


def _region_model(spec: PreprocessSpec, calls: list[int]):
    """Probabilities that depend only on the top-left quadrant's brightness (class 0 when bright)."""
    h = spec.input_size // 2

    def probs(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        chw = batch if spec.layout == "NCHW" else np.transpose(batch, (0, 3, 1, 2))
        s = chw[:, 0, :h, :h].mean(axis=(1, 2)) * 4.0
        z = np.stack([s, -s, np.zeros_like(s)], axis=1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return probs


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_occlusion_map_finds_the_region_the_model_uses(layout):
    spec = PreprocessSpec(input_size=32, layout=layout)
    gray = np.zeros((32, 32), np.float32)
    gray[:16, :16] = 1.0  # bright top-left: the model's evidence for class 0
    from osteo_edge.preprocess import finalize

    x = finalize(gray, spec)
    calls: list[int] = []
    e = occlusion_map(_region_model(spec, calls), x, spec, grid=4)
    assert calls == [17]  # one batch: the input and 16 occluded copies
    assert e.target == 0 and e.heat.shape == (4, 4)
    assert (e.heat[:2, :2] > 0.01).all()  # hiding the evidence lowers P(class 0)
    assert np.abs(e.heat[2:, :]).max() < 1e-6 and np.abs(e.heat[:, 2:]).max() < 1e-6
    img = overlay(gray, e.heat, display=64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    tl, br = img[:24, :24].astype(int), img[40:, 40:].astype(int)
    assert np.abs(tl[..., 0] - tl[..., 2]).mean() > 10  # coloured where the evidence is
    assert np.abs(br[..., 0] - br[..., 2]).max() == 0  # plain grey elsewhere


def test_overlay_without_heat_is_grey():
    img = overlay(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), np.zeros((8, 8)), display=48)
    assert img.shape == (48, 48, 3) and (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


# ------------------------------------------------------------------------------------------------
# model card


def test_model_card_comes_from_the_manifest(bundle_dir, tmp_path):
    b = load_bundle(bundle_dir)
    md = model_card_markdown(b)
    for text in ("knee/wani-mendeley", "group-aware stratified split", "macro_f1", "0.500", "Normal, Osteopenia, Osteoporosis", "not a diagnosis", DISCLAIMER):
        assert text in md, text
    # Confidence intervals in either common shape are shown; missing facts say so.
    rich = make_onnx_bundle(tmp_path / "ci", provenance={"command": "x"})
    m = json.loads((rich / "manifest.json").read_text())
    m["metrics"] = {"test": {"pooled": {"macro_f1": {"value": 0.71, "ci95": [0.64, 0.78], "n": 64}}, "wani": {"accuracy": {"point": 0.6, "lo": 0.5, "hi": 0.7}, "ece": {"value": 0.1, "ci95": [float("nan"), float("nan")]}}}}
    from osteo_edge.artifact import Bundle

    md2 = model_card_markdown(Bundle(rich, m))
    assert "test / pooled / macro_f1 | 0.710 (95% CI 0.640 to 0.780), n=64" in md2
    assert "test / wani / accuracy | 0.600 (95% CI 0.500 to 0.700)" in md2
    assert "test / wani / ece | 0.100 |" in md2  # an interval that could not be computed is not shown
    assert md2.count(NOT_RECORDED) >= 2  # no training data, no split protocol in this manifest


# ------------------------------------------------------------------------------------------------
# the service (no UI)


def test_analyse_real_radiograph_gives_label_probabilities_and_heat_map(clf):
    svc = DemoService(clf, grid=4)
    r = svc.analyse(knee_images(1)[0])
    p = r.prediction
    assert p.status in ("ok", "refer") and p.label in LABELS
    assert set(p.probabilities) == set(LABELS) and abs(sum(p.probabilities.values()) - 1) < 1e-4
    assert r.view is not None and r.view.shape[2] == 3 and r.explanation is not None and r.explanation.heat.shape == (4, 4)
    assert p.latency_ms is not None and r.total_ms >= p.latency_ms
    r2 = svc.analyse(knee_images(1)[0], explain=False)
    assert r2.explanation is None and r2.view is not None


def test_bad_inputs_are_answered_not_raised(clf, bad_files, tmp_path):
    svc = DemoService(clf, grid=2)
    expected = {"empty": "empty file", "text": "not a recognised image", "truncated": "truncated", "colour": "colour",
                "tiny": "at least", "blank": "blank"}
    for key, path in bad_files.items():
        r = svc.analyse(path)
        assert r.prediction.status == "rejected" and r.view is None, key
        assert expected[key] in r.prediction.message, (key, r.prediction.message)
    r = svc.analyse(tmp_path / "does-not-exist.png")
    assert r.prediction.status == "rejected" and "no such file" in r.prediction.message


def test_batch_table_and_csv(clf, bad_files, tmp_path):
    svc = DemoService(clf, workdir=tmp_path / "work")
    knees = knee_images(3)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "k.png").write_bytes(knees[2].read_bytes())
    (folder / "notes.txt").write_text("skipped: not an image suffix")
    seen: list[tuple[int, int]] = []
    preds, csv_path = svc.batch([knees[0], knees[1], bad_files["colour"], folder], progress=lambda label, done, total: seen.append((done, total)))
    assert len(preds) == 4 and seen[0] == (0, 4) and seen[-1] == (4, 4)
    assert [p.status == "rejected" for p in preds] == [False, False, True, False]
    assert csv_path.parent == tmp_path / "work"
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[:6] == ["path", "status", "label", "p_Normal", "p_Osteopenia", "p_Osteoporosis"]
    assert len(lines) == 5 and lines[3].startswith("holiday.png,rejected,")
    headers, rows = svc.table(preds)
    assert headers[3:6] == [f"P({lab})" for lab in LABELS] and len(rows) == 4 and rows[2][1] == "rejected"
    from osteo_edge.demo.service import folder_images
    from osteo_edge.errors import ConfigError

    assert folder_images(["/u/a.png", "/u/scan", "/u/notes.txt", "/u/.DS_Store", "/u/table.CSV"]) == ["/u/a.png", "/u/scan"]
    with pytest.raises(ConfigError, match="no files"):
        svc.batch([])
    with pytest.raises(ConfigError, match="batch limit"):
        DemoService(clf, max_batch=2).batch(knees)


# ------------------------------------------------------------------------------------------------
# offline settings and import hygiene


def test_host_warning():
    from osteo_edge.demo import host_warning

    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert host_warning(host) is None, host
    assert "all network interfaces" in host_warning("0.0.0.0")
    assert "all network interfaces" in host_warning("::")
    assert "non-loopback" in host_warning("192.168.1.20")
    assert "not a loopback" in host_warning("clinic-laptop.local")


def test_import_is_light_and_build_app_is_offline(bundle_dir):
    """Importing the demo pulls neither gradio nor torch; build_app switches analytics off before
    gradio is imported and never imports torch."""
    code = f"""
import os, sys
os.environ.pop("GRADIO_ANALYTICS_ENABLED", None)
import osteo_edge, osteo_edge.demo, osteo_edge.cli.demo
assert "gradio" not in sys.modules and "torch" not in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'torch'))
assert "GRADIO_ANALYTICS_ENABLED" not in os.environ
from osteo_edge.edge_runtime import EdgeClassifier
app = osteo_edge.demo.build_app(EdgeClassifier.load({str(bundle_dir)!r}))
assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
assert app.analytics_enabled is False
import gradio.analytics
assert gradio.analytics.analytics_enabled() is False
assert "torch" not in sys.modules and "timm" not in sys.modules
cfg = app.get_config_file()
assert cfg["analytics_enabled"] is False
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_labels_and_thresholds_come_from_the_bundle(tmp_path):
    """A two-class bundle with other names: the app shows those names, nothing hard-coded."""
    root = make_onnx_bundle(tmp_path / "two", labels=["Normal", "Low BMD"], thresholds={"min_confidence": 0.99, "low_bmd": 0.01})
    clf2 = EdgeClassifier.load(root, threads=1)
    svc = DemoService(clf2, grid=2)
    r = svc.analyse(knee_images(1)[0])
    assert set(r.prediction.probabilities) == {"Normal", "Low BMD"}
    assert r.prediction.status == "refer"  # min_confidence 0.99 from this bundle
    from osteo_edge.demo.app import status_markdown

    md = status_markdown(r, clf2.thresholds)
    assert "refer for DEXA" in md and "(uncertain)" in md and "1%" in md
    assert svc.table([r.prediction])[0][3:5] == ["P(Normal)", "P(Low BMD)"]
    assert "Normal, Low BMD" in model_card_markdown(clf2.bundle)


# ------------------------------------------------------------------------------------------------
# the app's API under load


class _OutboundGuard:
    """Records (and refuses) every connection or name lookup that is not for the loopback address."""

    def __init__(self, monkeypatch):
        self.seen: list[str] = []
        real_connect, real_connect_ex, real_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

        def local(host) -> bool:
            return str(host) in ("127.0.0.1", "localhost", "::1") or str(host).startswith("127.")

        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
                self.seen.append(f"connect {address}")
                raise OSError("outbound connection refused by the test")
            return real_connect(sock, address)

        def connect_ex(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
                self.seen.append(f"connect_ex {address}")
                return 111
            return real_connect_ex(sock, address)

        def getaddrinfo(host, *a, **kw):
            if host is not None and not local(host if isinstance(host, str) else host.decode()):
                self.seen.append(f"lookup {host}")
                raise socket.gaierror(socket.EAI_NONAME, "name lookups are refused by the test")
            return real_gai(host, *a, **kw)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_twenty_concurrent_predictions_through_the_api(clf, bad_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub (gradio_client's dependency) reads those variables once, at import; another
    # test may have imported it already (timm does), so set its constants too.
    import sys

    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    guard = _OutboundGuard(monkeypatch)
    from osteo_edge.demo import build_app, launch_app

    app = build_app(clf, grid=4)
    url = launch_app(app, "127.0.0.1", free_port(), block=False, quiet=True)
    try:
        from gradio_client import Client, handle_file

        knees = knee_images(5)
        start = threading.Barrier(20)

        def one(i: int):
            client = Client(url, verbose=False, analytics_enabled=False)  # one client per worker
            start.wait(timeout=60)
            src = knees[i % len(knees)] if i != 19 else bad_files["text"]
            t0 = time.perf_counter()
            out = client.predict(handle_file(str(src)), True, api_name="/predict")
            return i, out, time.perf_counter() - t0

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(one, range(20)))
    finally:
        app.close()
    assert len(results) == 20
    for i, (status_md, label, image, timing), _ in results:
        if i == 19:
            assert "rejected" in status_md and "`notes.png`: not a recognised image" in status_md and not label and image is None
            assert "/tmp" not in status_md and "gradio" not in status_md  # no server paths shown
            continue
        assert "Status:" in status_md and "Latency" in timing, status_md
        conf = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert set(conf) == set(LABELS) and abs(sum(conf.values()) - 1) < 1e-3
        assert label["label"] in status_md
        assert Path(image).is_file()
    assert guard.seen == [], guard.seen


# ------------------------------------------------------------------------------------------------
# the command


def test_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from osteo_edge.cli import app

    r = CliRunner().invoke(app, ["demo", "--model", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such model bundle" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["demo", "--model", str(tmp_path), "--port", "70000"])
    assert r.exit_code == 2 and "--port" in r.output  # a usage error (README exit codes)


def test_cli_serves_on_loopback(bundle_dir, tmp_path):
    """`osteo-edge demo` starts, answers HTTP 200 on 127.0.0.1 and prints where and the disclaimer."""
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    env.pop("GRADIO_ANALYTICS_ENABLED", None)
    cmd = [sys.executable, "-c", "from osteo_edge.cli import main; main()", "demo", "--model", str(bundle_dir), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    status = resp.status
                    page = resp.read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert "osteo-edge" in page
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out and "not a diagnosis" in out
    assert "warning" not in out.lower()


def test_result_images_are_written_atomically_and_pruned(clf, tmp_path, monkeypatch):
    import osteo_edge.demo.service as service

    monkeypatch.setattr(service, "KEEP_VIEWS", 3)
    svc = DemoService(clf, workdir=tmp_path / "work")
    view = np.zeros((16, 16, 3), np.uint8)
    paths = [svc.view_file(view) for _ in range(5)]
    assert len(set(paths)) == 5  # one new file per answer, never rewritten in place
    left = sorted((tmp_path / "work" / "views").iterdir())
    assert len(left) == 3 and paths[-1] in left
    assert np.array_equal(np.asarray(Image.open(paths[-1])), view)


def test_model_card_shows_per_source_metrics_beside_the_shortcut(tmp_path):
    """Issue 17: a bundle whose manifest has per-source metrics shows them, with each source's shortcut bar."""
    from osteo_edge.artifact import load_bundle, reseal
    from osteo_edge.demo.card import model_card_markdown

    root = make_onnx_bundle(tmp_path / "b")
    per_source = {
        "protocol": "held-out test radiographs",
        "per_source": [{"source": "wani-mendeley", "n": 20, "accuracy": 0.7, "accuracy_ci95": {"lo": 0.5, "hi": 0.85}}],
        "shortcut": [{"source": "wani-mendeley", "shortcut_accuracy": 0.55, "margin_points": 15.0, "beats_shortcut": True}],
    }
    reseal(root, step="test", metrics={"test": {"accuracy": 0.6}, "test_per_source": per_source,
                                       "cv_5fold": {"lever": "E7", "n": 272, "pooled_acc": 0.7, "wani_acc": 0.6, "wani_bar": 0.563,
                                                    "wani_normal": "5/18", "lowbmd_auc_kaggle": 0.9, "lowbmd_auc_wani": 0.6}})
    card = model_card_markdown(load_bundle(root))
    assert "### Per source, beside the shortcut" in card
    assert "| wani-mendeley | 20 | 0.700 [0.500, 0.850] | 0.550 | 15.000 |" in card
    assert "Wani Normal recalled 5/18" in card
