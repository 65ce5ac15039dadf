"""`osteo-edge bench`: host report (table, JSON, PNG), the torch fp32 parent in the same run, and the
raspberrypi target over SSH against an sshd on 127.0.0.1 that the test starts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osteo_edge.artifact import load_bundle, seal
from osteo_edge.bench.local import BenchRequest, accuracy_of, add_speedups, find_parent
from osteo_edge.bench.targets import TARGETS, run_bench
from osteo_edge.cli import app
from osteo_edge.errors import ConfigError

from test_runtime_fixtures import export_onnx, make_onnx_bundle

runner = CliRunner()
SIZE = 32


@pytest.fixture(scope="module")
def parent_and_export(tmp_path_factory):
    """A torch training run (contract 1) and an ONNX bundle exported from it whose provenance names it."""
    torch = pytest.importorskip("torch")
    from osteo_edge.modeling.models import build_model

    root = tmp_path_factory.mktemp("bench")
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = build_model("cnn", 3, weights="none", width=4).eval()
    torch.save(model.state_dict(), run / "model.pt")
    from osteo_edge.preprocess import PreprocessSpec

    spec = PreprocessSpec(input_size=SIZE, grayscale="single", channels=1, mean=(0.5,), std=(0.5,))
    labels = ["Normal", "Osteopenia", "Osteoporosis"]
    seal(run, format="torch", model_file="model.pt", labels=labels, spec=spec,
         metrics={"test": {"macro_f1": 0.61}}, extra={"arch": {"name": "cnn", "num_classes": 3, "width": 4}})
    exp = root / "export"
    exp.mkdir()
    with torch.no_grad():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.zeros(1, 1, SIZE, SIZE), str(exp / "model.onnx"), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"])
    seal(exp, format="onnx", model_file="model.onnx", labels=labels, spec=spec, metrics={"test": {"macro_f1": 0.6, "accuracy": 0.7}, "val": {"macro_f1": 0.9}},
         provenance=load_bundle(run).child_provenance(exp, "test"))
    return run, exp


def test_targets_table():
    assert set(TARGETS) == {"host", "raspberrypi"}
    with pytest.raises(ConfigError, match="valid: host, raspberrypi"):
        run_bench("jetson", BenchRequest(bundles=[Path("x")]))
    with pytest.raises(ConfigError, match="no model bundle"):
        run_bench("host", BenchRequest(bundles=[]))


def _b(manifest):
    from osteo_edge.artifact import Bundle

    return Bundle(Path("b"), manifest)


def test_accuracy_prefers_test_macro_f1():
    assert accuracy_of(_b({"metrics": {"val": {"macro_f1": 0.9}, "test": {"accuracy": 0.7, "macro_f1": 0.6}}})) == {"metric": "test.macro_f1", "value": 0.6}
    assert accuracy_of(_b({"metrics": {"val": {"accuracy": 0.9}}})) == {"metric": "val.accuracy", "value": 0.9}
    assert accuracy_of(_b({"metrics": {}})) is None


def test_headline_metric_is_common_to_all_rows():
    from osteo_edge.bench.local import choose_headline, parent_test_accuracy, test_metrics

    child = _b({"metrics": {"test": {"accuracy": 0.79, "macro_f1": 0.78, "vs_parent": {"parent_accuracy": 0.81}}}})
    ref = {"role": "reference", "status": "ok", "test_metrics": {**test_metrics(_b({"metrics": {"val": {"macro_f1": 0.9}}})), "accuracy": parent_test_accuracy(child)}}
    mod = {"role": "model", "status": "ok", "test_metrics": test_metrics(child)}
    choose_headline([ref, mod])  # the parent has no test macro-F1: accuracy is the common metric
    assert ref["accuracy"] == {"metric": "test.accuracy", "value": 0.81}
    assert mod["accuracy"] == {"metric": "test.accuracy", "value": 0.79}


def test_speedups_are_ratios_of_one_run():
    rows = [
        {"role": "reference", "status": "ok", "path": "/r", "p50_ms": 30.0, "file_bytes": 400},
        {"role": "model", "status": "ok", "parent": "/r", "p50_ms": 10.0, "file_bytes": 100},
        {"role": "model", "status": "ok", "parent": None, "p50_ms": 5.0, "file_bytes": 100},
    ]
    add_speedups(rows)
    assert rows[1]["speedup_vs_torch_fp32"] == 3.0 and rows[1]["size_ratio_vs_torch_fp32"] == 4.0
    assert "speedup_vs_torch_fp32" not in rows[2]


def test_bench_host_with_torch_parent(parent_and_export, tmp_path):
    run, exp = parent_and_export
    from osteo_edge.artifact import load_bundle

    assert find_parent(load_bundle(exp)) == run.resolve()
    out = tmp_path / "bench" / "host.json"
    res = runner.invoke(app, ["bench", "--model", str(exp), "--target", "host", "--threads", "1", "--runs", "20", "--warmup", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    assert report["machine"]["arch"] and report["machine"]["cpu"] and report["settings"]["threads"] == 1
    rows = {r["role"]: r for r in report["results"]}
    m, ref = rows["model"], rows["reference"]
    assert m["status"] == ref["status"] == "ok", report
    for key in ("format", "precision", "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "load_ms", "peak_rss_mb", "file_bytes"):
        assert m[key] is not None, key
    assert m["format"] == "onnx" and m["precision"] == "fp32" and ref["format"] == "torch"
    assert m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"]
    assert m["speedup_vs_torch_fp32"] == pytest.approx(ref["p50_ms"] / m["p50_ms"], rel=1e-2)
    assert m["accuracy"] == {"metric": "test.macro_f1", "value": 0.6}
    # torch and the exported graph agree on the same input (same sample image, same spec)
    assert max(abs(a - b) for a, b in zip(m["logits_sample"], ref["logits_sample"])) < 1e-4
    assert "torch" in res.stdout and "status: ok = measured" in res.stdout


def _orphan(exp: Path, dest: Path, arch: dict | None) -> Path:
    """A copy of the exported model whose parent run is not at hand (no parent in its provenance)."""
    dest.mkdir()
    shutil.copy(exp / "model.onnx", dest / "model.onnx")
    b = load_bundle(exp)
    seal(dest, format="onnx", model_file="model.onnx", labels=b.labels, spec=b.spec, metrics={"test": {"macro_f1": 0.6}},
         provenance={"command": "tests: orphan"}, extra={"arch": arch} if arch else None)
    return dest


def test_bench_same_architecture_reference_when_the_parent_run_is_absent(parent_and_export, tmp_path):
    """No parent run here: a torch fp32 model of the bundle's arch record (random weights) is timed in the
    same run, at every thread count, and labelled as a latency-only reference."""
    run, exp = parent_and_export
    orphan = _orphan(exp, tmp_path / "orphan", {"name": "cnn", "num_classes": 3, "width": 4})
    out = tmp_path / "host.json"
    res = runner.invoke(app, ["bench", "--model", str(orphan), "--threads", "1,2", "--runs", "8", "--warmup", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["settings"]["threads"] == [1, 2]
    refs = [r for r in report["results"] if r["role"] == "reference"]
    models = [r for r in report["results"] if r["role"] == "model"]
    assert sorted(r["threads"] for r in refs) == sorted(r["threads"] for r in models) == [1, 2]
    for ref in refs:
        assert ref["status"] == "ok" and ref["reference_kind"] == "same architecture, latency only" and ref["weights"] == "random"
        assert ref["format"] == "torch" and ref["accuracy"] is None and ref["arch_record"]["name"] == "cnn"
    for m in models:
        ref = next(r for r in refs if r["threads"] == m["threads"])
        assert m["parent"] == ref["path"] and m["speedup_reference"] == "same architecture, latency only"
        assert m["speedup_vs_torch_fp32"] == pytest.approx(ref["p50_ms"] / m["p50_ms"], rel=1e-2)
    assert "same architecture, latency only" in res.stdout and "random weights" in res.stdout


def test_bench_says_why_there_is_no_torch_reference(parent_and_export, tmp_path, monkeypatch):
    run, exp = parent_and_export
    no_arch = _orphan(exp, tmp_path / "no-arch", None)
    report = run_bench("host", BenchRequest(bundles=[no_arch], runs=5, warmup=0, threads=1))
    assert not [r for r in report["results"] if r["role"] == "reference"]
    assert any("no architecture record" in n for n in report["notes"]), report["notes"]
    import osteo_edge.bench.local as bench_mod

    monkeypatch.setattr(bench_mod, "torch_available", lambda: False)
    orphan = _orphan(exp, tmp_path / "orphan", {"name": "cnn", "num_classes": 3, "width": 4})
    report = run_bench("host", BenchRequest(bundles=[orphan], runs=5, warmup=0, threads=1))
    (ref,) = [r for r in report["results"] if r["role"] == "reference"]
    assert ref["status"] == "skipped" and "'.[train]'" in ref["error"]
    assert any(n.startswith("no torch fp32 speed-up: torch is not installed") for n in report["notes"])


def test_threads_option_is_validated(tmp_path):
    from osteo_edge.bench.targets import parse_threads

    assert parse_threads("1,2") == (1, 2) and parse_threads("2") == (2,)
    for bad in ("0", "a", "", "1,-2"):
        with pytest.raises(ConfigError, match="positive integers"):
            parse_threads(bad)
    with pytest.raises(ConfigError, match="for --target host"):
        run_bench("raspberrypi", BenchRequest(bundles=[tmp_path], threads_list=(1, 2)))


def test_bench_failed_bundle_is_a_row(tmp_path):
    b = make_onnx_bundle(tmp_path / "b")
    (b / "model.onnx").write_bytes(b"broken")
    report = run_bench("host", BenchRequest(bundles=[b], runs=5, warmup=0, threads=1))
    assert report["results"][0]["status"] == "failed" and "checksum" in report["results"][0]["error"]


def test_raspberrypi_without_host_is_a_usage_error_naming_host(tmp_path):
    """Issue 23, item 7: no exit 0 under an EMULATED header with host-only rows; one line naming --host."""
    b = make_onnx_bundle(tmp_path / "b")
    res = runner.invoke(app, ["bench", "--model", str(b), "--target", "raspberrypi", "--runs", "5", "--warmup", "0", "--threads", "1"])
    assert res.exit_code == 2, res.output
    error = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1 and "--host user@address" in error[0] and "--emulate" in error[0], res.output
    assert "EMULATED" not in res.output and "benchmarks/" not in res.output
    for bad in (["--host", "pi@127.0.0.1", "--emulate"], ["--target", "host", "--emulate"], ["--target", "host", "--host", "pi@x"]):
        args = ["bench", "--model", str(b), "--target", "raspberrypi", *bad] if bad[0] != "--target" else ["bench", "--model", str(b), *bad]
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Error:" in r.output, (bad, r.output)
    with pytest.raises(ConfigError, match="--host user@address"):
        run_bench("raspberrypi", BenchRequest(bundles=[b], runs=5, warmup=0, threads=1))


def test_raspberrypi_emulate_without_kit_fails_in_one_line(tmp_path):
    b = make_onnx_bundle(tmp_path / "b")
    res = runner.invoke(app, ["bench", "--model", str(b), "--target", "raspberrypi", "--emulate", "--runs", "5", "--warmup", "0",
                              "--threads", "1", "--emulator-dir", str(tmp_path / "no-kit")])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no aarch64 emulation kit" in lines[0] and "--emulator-dir" in lines[0], res.output
    assert ".sh" not in res.output  # no pointer to a script that only the repository has


# -- SSH on loopback ----------------------------------------------------------------------------------

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def loopback_sshd(tmp_path):
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("sshd/ssh not installed (apt-get install -y openssh-server openssh-client)")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nStrictModes no\nUsePAM no\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    user = os.environ.get("USER") or __import__("getpass").getuser()
    opts = ["-p", str(port), "-i", str(d / "client"), "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "LogLevel=ERROR"]
    deadline = time.time() + 10
    while time.time() < deadline:
        r = subprocess.run(["ssh", "-o", "BatchMode=yes", *opts, f"{user}@127.0.0.1", "true"], capture_output=True)
        if r.returncode == 0:
            break
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start here: {proc.stdout.read().decode(errors='replace').strip()[-200:]}")
        time.sleep(0.3)
    else:
        proc.terminate()
        pytest.skip(f"could not log in to the loopback sshd: {r.stderr.decode(errors='replace').strip()[-200:]}")
    yield f"{user}@127.0.0.1", opts
    proc.terminate()
    proc.wait(timeout=10)


def test_raspberrypi_over_ssh_loopback(loopback_sshd, tmp_path):
    host, opts = loopback_sshd
    b = make_onnx_bundle(tmp_path / "bundle")
    out = tmp_path / "pi.json"
    remote_dir = tmp_path / "remote"
    args = ["bench", "--model", str(b), "--target", "raspberrypi", "--host", host, "--runs", "10", "--warmup", "1", "--threads", "1",
            "--remote-python", sys.executable, "--remote-dir", str(remote_dir), "--json", str(out)]
    for o in opts:
        args.append(f"--ssh-option={o}")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["target"] == "raspberrypi" and report["host"] == host and report["kind"] == "measured"
    (row,) = report["results"]
    assert row["status"] == "ok" and row["path"] == str(b) and row["p50_ms"] > 0
    # the runtime and bundle really went over: the copy is on the "device"
    assert (remote_dir / "pkg" / "osteo_edge" / "edge_runtime" / "classifier.py").is_file()
    assert any((remote_dir / "bundles").iterdir())
    assert not (remote_dir / "pkg" / "osteo_edge" / "models").exists()


def test_ssh_errors_are_one_line(tmp_path):
    b = make_onnx_bundle(tmp_path / "b")
    res = runner.invoke(app, ["bench", "--model", str(b), "--target", "raspberrypi", "--host", "bad host;rm", "--runs", "5"])
    assert res.exit_code == 1 and "--host must look like" in res.output
    port = _free_port()  # nothing listens there
    res = runner.invoke(app, ["bench", "--model", str(b), "--target", "raspberrypi", "--host", "pi@127.0.0.1", "--runs", "5",
                              f"--ssh-option=-p{port}", "--ssh-option=-oConnectTimeout=5"])
    assert res.exit_code == 1 and "copying the bundles and runtime failed" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_raspberrypi_emulated_matches_host(tmp_path):
    """Runs only where the aarch64 kit exists (benchmarks/runtime/setup_arm64_emulation.sh)."""
    from osteo_edge.bench.emulate import kit_dir, kit_problem

    kit = kit_dir(BenchRequest(bundles=[]))
    if kit_problem(kit):
        pytest.skip(kit_problem(kit))
    b = make_onnx_bundle(tmp_path / "b")
    report = run_bench("raspberrypi", BenchRequest(bundles=[b], runs=5, warmup=1, threads=1, emulate=True))
    emu = [r for r in report["results"] if r.get("emulated_cpu")]
    assert report["kind"] == "emulated" and {r["emulated_cpu"] for r in emu} == {"cortex-a72", "cortex-a76"}
    for r in emu:
        assert r["status"] == "ok" and r["arch"] == "aarch64" and r["latency_note"] == "emulated, not a Pi latency"
        assert r["max_abs_diff_vs_host"] < 1e-4
    assert report["estimates"] and all("estimate" in e["text"] for e in report["estimates"])


def test_mac_count_of_a_known_graph(tmp_path):
    from osteo_edge.bench.emulate import count_macs, pi_estimates

    pytest.importorskip("onnx")
    from test_runtime_fixtures import tiny_torch_model

    path = export_onnx(tiny_torch_model(), tmp_path / "m.onnx")
    # conv 3->8 3x3 stride 2 on 32x32: 8*16*16 outputs x 27; conv 8->8 3x3 stride 2: 8*8*8 x 72; linear 8->3: 24
    assert count_macs(path) == 8 * 16 * 16 * 27 + 8 * 8 * 8 * 72 + 24
    est = pi_estimates({"name": "m", "format": "onnx", "precision": "fp32", "p50_ms": 1.0}, 10**9, threads=1)
    if est:  # needs /proc/cpuinfo with a clock
        assert {e["device"].split(" (")[0] for e in est} == {"Raspberry Pi 4", "Raspberry Pi 5"}
        assert all(e["estimated_p50_ms"] > 0 and "estimate" in e["text"] for e in est)
