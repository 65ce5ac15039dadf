"""The command line reads well in a terminal, a pipe and a log (issue 15).

- every --help shows each default once, no "<bool>", no help line ending in " ." (eaten markup);
- predict / bench / parity / evaluate at 80 columns (a terminal) and piped: no line breaks a path
  or a header word;
- one status model: P(low BMD) over the threshold is ``refer`` in the table, JSON, CSV and demo;
- each quick-start command prints the README's next command.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperOption
from typer.testing import CliRunner

from osteo_edge.cli import app

REPO = Path(__file__).resolve().parents[1]
KNEE = REPO.parent / "shared" / "data" / "knee"
NARROW = {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}  # an 80-column terminal, without colour codes
PIPED = {"COLUMNS": "80", "TTY_COMPATIBLE": "0"}  # a pipe, a file, a CI log
LAYOUTS = [pytest.param(NARROW, id="80-columns"), pytest.param(PIPED, id="piped")]
needs_data = pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")


def _invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def assert_unbroken(output: str, *words: str) -> None:
    """Every path / header word is whole on one line of the output."""
    lines = output.splitlines()
    for w in words:
        assert any(w in line for line in lines), f"{w!r} is broken across lines or missing:\n{output}"


# ------------------------------------------------------------------------------------------------
# help


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _expects_default(p) -> bool:
    if isinstance(p.show_default, str):
        return True
    if p.default is None or p.show_default is False:
        return False
    return not (p.is_flag and not p.secondary_opts and p.default is False)  # a plain off switch: nothing to show


def test_help_shows_every_default_and_no_bool_or_eaten_markup() -> None:
    root = typer.main.get_command(app)
    seen = 0
    for path, cmd in _commands(root):
        res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400", "TTY_COMPATIBLE": "0"})
        assert res.exit_code == 0, (path, res.output)
        text = res.output
        assert "<bool>" not in text, path
        for line in text.splitlines():
            body = line.strip().strip("│").rstrip()
            assert not body.endswith(" ."), (path, line)
        rows: dict[str, str] = {}  # an option's row with its wrapped continuation lines
        key = None
        for ln in text.splitlines():
            body = ln.strip("│ ")
            if body.startswith("--") and len(ln.lstrip("│")) - len(ln.lstrip("│ ")) <= 3:
                key = body.split()[0]
                rows[key] = ln
            elif key and ln.startswith("    ") and body:
                rows[key] += " " + body
            else:
                key = None
        for p in cmd.params:
            if not isinstance(p, TyperOption) or not p.opts or p.name == "help":
                continue
            if _expects_default(p):
                row = rows[p.opts[0]]
                assert "[default: " in row, (path, p.opts[0], row)
                seen += 1
    assert seen > 40  # the walk really saw the commands' options


def test_validation_errors_read_as_plain_sentences() -> None:
    res = _invoke(["export", "--model", "x", "--format", "foo", "--out", "y"], PIPED)
    assert res.exit_code == 2 and "Value error" not in res.output and "'foo' is not one of" in res.output


# ------------------------------------------------------------------------------------------------
# predict: layouts and the status model


def _images() -> list[Path]:
    return [KNEE / "wani-mendeley" / "Osteoporosis" / "OS1.JPEG", KNEE / "multiclass-kaggle" / "Normal" / "normal_0001.png"]


@needs_data
@pytest.mark.parametrize("env", LAYOUTS)
def test_predict_keeps_paths_and_headers_whole(env: dict[str, str], tmp_path: Path) -> None:
    csv_out = tmp_path / "a folder with a long name" / "answers.csv"
    csv_out.parent.mkdir()
    res = _invoke(["predict", *_images(), "--csv", csv_out], env)
    assert res.exit_code == 0, res.output
    assert_unbroken(res.output, *map(str, _images()), str(csv_out), "P(Osteoporosis)", "P(low BMD)", "status", "message")
    assert "next: osteo-edge demo" in res.output


@needs_data
def test_low_bmd_over_threshold_is_refer_everywhere(tmp_path: Path) -> None:
    from osteo_edge.demo.app import status_markdown
    from osteo_edge.demo.service import DemoService
    from osteo_edge.edge_runtime import EdgeClassifier

    clf = EdgeClassifier.load()
    thr = clf.thresholds["low_bmd"]
    img = next(p for p in _images() if (clf.predict(p).low_bmd_probability or 0) >= thr)
    p = clf.predict(img)
    assert p.status == "refer" and "low_bmd" in p.reason and "low BMD suspected" in p.message and "refer for DEXA" in p.message

    csv_out = tmp_path / "a.csv"
    table = _invoke(["predict", img, "--csv", csv_out], PIPED)
    row = next(ln for ln in table.output.splitlines() if ln.startswith(str(img)))
    assert row.split()[1] == "refer", table.output
    assert "1 inputs: 0 ok, 1 refer, 0 rejected." in table.output
    js = json.loads(_invoke(["predict", img, "--json"], PIPED).stdout)
    assert js["status"] == "refer" and js["reason"] == p.reason
    with open(csv_out, newline="") as fh:
        assert next(csv.DictReader(fh))["status"] == "refer"

    svc = DemoService(clf, workdir=tmp_path / "demo")
    result = svc.analyse(img, explain=False)
    assert result.prediction.status == "refer"
    md = status_markdown(result, clf.thresholds)
    assert "Status: refer for DEXA" in md and "low BMD suspected" in md
    _, rows = svc.table([result.prediction])
    assert rows[0][1] == "refer for DEXA"


def test_status_model_is_one_function() -> None:
    from osteo_edge.edge_runtime.classifier import decide

    thr = {"min_confidence": 0.6, "low_bmd": 0.57}
    assert decide("Normal", 0.9, 0.1, thr)[:1] == ("ok",) and decide("Normal", 0.9, 0.1, thr)[2] is None
    status, sentence, reason = decide("Osteoporosis", 0.9, 0.92, thr)
    assert (status, reason) == ("refer", "low_bmd") and "low BMD suspected" in sentence and "refer for DEXA" in sentence
    status, sentence, reason = decide("Osteopenia", 0.4, 0.95, thr)
    assert (status, reason) == ("refer", "uncertain,low_bmd") and sentence.count("refer for DEXA") == 1
    assert decide("Normal", 0.5, 0.5, thr)[:1] == ("refer",)  # uncertain alone


# ------------------------------------------------------------------------------------------------
# bench


@needs_data
@pytest.mark.parametrize("env", LAYOUTS)
def test_bench_keeps_headers_whole_and_names_its_metric(env: dict[str, str], tmp_path: Path) -> None:
    js = tmp_path / "bench report" / "host.json"
    js.parent.mkdir()
    res = _invoke(["bench", "--no-torch-reference", "--runs", "5", "--warmup", "1", "--json", js], env)
    assert res.exit_code == 0, res.output
    assert_unbroken(res.output, "p50 ms", "p90 ms", "peak RSS MB", "file MB", "vs torch fp32", "test macro-F1", str(js))
    assert not re.search(r"(?m)^\s*accuracy\b", res.output)  # no column called "accuracy" holding a macro-F1
    assert "next: osteo-edge demo" in res.output


# ------------------------------------------------------------------------------------------------
# parity and evaluate on tiny fixtures


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not KNEE.is_dir():
        pytest.skip("needs ../shared/data")
    pytest.importorskip("torch")
    from osteo_edge.export import export_model
    from test_export_fixtures import make_run, make_split

    root = tmp_path_factory.mktemp("output") / "a rather long folder name for paths"
    split = make_split(root / "split")
    run = make_run(root / "run")
    good = root / "good-onnx"
    export_model(run, "onnx", good, golden_size=2, evaluate=False)
    bad = root / "bad-onnx"  # same labels and spec, opposite answers: fails the agreement gate
    export_model(make_run(root / "flipped", flip=True), "onnx", bad, golden_size=2, evaluate=False)
    return {"root": root, "split": split, "run": run, "good": good, "bad": bad}


@pytest.mark.parametrize("env", LAYOUTS)
def test_parity_keeps_paths_and_headers_whole(exported: dict[str, Path], env: dict[str, str]) -> None:
    js = exported["root"] / f"parity-{env['TTY_COMPATIBLE']}.json"
    res = _invoke(["parity", "--reference", exported["run"], "--candidate", exported["good"], "--split", exported["split"],
                   "--json", js], env)
    assert res.exit_code == 0, res.output
    assert_unbroken(res.output, "accuracy", "decision agreement", "top-1 agreement", "p95 |dp|", "max |dp|", "mean |dp|", "PASS",
                    str(js), str(js.with_suffix(".png")))
    assert f"next: osteo-edge predict --model {shlex.quote(str(exported['good']))}" in res.output


def test_parity_failure_says_what_to_try(exported: dict[str, Path]) -> None:
    res = _invoke(["parity", "--reference", exported["run"], "--candidate", exported["bad"], "--split", exported["split"]], PIPED)
    # issue 23 item 6: the hint looks before changing anything, never a command that overwrites the bundle
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "gate failed" in res.output and "next: osteo-edge parity" in out and "--explain" in out
    cmd = out.split("next:")[1].split("(")[0]  # the command itself; the reason after it may name others
    assert "osteo-edge export" not in cmd and "quantize" not in cmd


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not KNEE.is_dir():
        pytest.skip("needs ../shared/data")
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from osteo_edge.train.config import TrainConfig
    from osteo_edge.train.engine import train
    from test_train import make_tiny_split

    root = tmp_path_factory.mktemp("eval") / "a rather long folder name for paths"
    split = make_tiny_split(root / "split")
    train(TrainConfig(split=str(split), arch="cnn", img_size=32, epochs=1, batch_size=4, weights="none", threads=1), root / "run")
    return {"split": split, "run": root / "run"}


@pytest.mark.parametrize("env", LAYOUTS)
def test_evaluate_keeps_paths_and_headers_whole(trained: dict[str, Path], env: dict[str, str]) -> None:
    res = _invoke(["evaluate", "--model", trained["run"], "--split", trained["split"], "--bootstrap", "20", "--threads", "1"], env)
    assert res.exit_code == 0, res.output
    out = trained["run"] / "eval" / "test"
    assert_unbroken(res.output, "pooled", "low_bmd_auroc", "multiclass-kaggle", str(out / "metrics.json"), str(out / "predictions.csv"))
    assert re.search(r"multiclass-kaggle \(n=\d+\)", res.output), res.output  # each source's n beside its intervals
    assert not re.search(r"\{'|': |\{\"", res.output), res.output  # no Python reprs (dicts) in user output
    assert f"next: osteo-edge export --model {shlex.quote(str(trained['run']))} --format tflite --int8" in res.output


# ------------------------------------------------------------------------------------------------
# README quick start: each step prints the README's next command


def quick_start() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    cmds = [ln.split("#", 1)[0].strip() for ln in joined.splitlines()]
    return [shlex.split(c) for c in cmds if c.startswith("osteo-edge")]


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _positional(argv: list[str], start: int) -> list[str]:
    out = []
    for a in argv[start:]:
        if a.startswith("--"):
            break
        out.append(a)
    return out


def test_each_quick_start_step_suggests_the_readme_next_command() -> None:
    from osteo_edge.cli import _steps

    recheck = [s for s in quick_start() if "--images" in s]  # issue 22: the shipped bundle re-checked, torch-free
    assert recheck and recheck[0][1:6] == ["parity", "--reference", "models/default-fp32", "--candidate", "default"]
    steps = [s for s in quick_start() if "--images" not in s]
    names = [" ".join(s[1:3]) if s[1] == "data" else s[1] for s in steps]
    assert names == ["data audit", "data split", "train", "evaluate", "export", "parity", "predict", "demo", "bench", "serve", "record"]
    audit, split, train, evaluate, export, parity, predict, demo, bench = steps[:9]  # the pipeline; serve/record: the hospital side
    got = [
        _steps.after_audit(_positional(audit, 3), _opt(audit, "--out")),
        _steps.after_split(str(Path(_opt(split, "--out")) / "split.csv")),
        _steps.after_train(_opt(train, "--out"), _opt(train, "--split")),
        _steps.after_evaluate(_opt(evaluate, "--model"), _opt(evaluate, "--split")),
        _steps.after_export(_opt(export, "--model"), _opt(export, "--out"), _opt(export, "--split")),
        _steps.after_parity(_opt(parity, "--candidate")),
        _steps.after_predict(None),  # a clinic user's next step: the demo, not a benchmark (issue 23)
    ]
    assert shlex.split(_steps.after_bench(None)) == demo  # bench (the engineer's check) also points at the demo
    for i, line in enumerate(got):
        want = steps[i + 1]
        if want[1] == "predict":  # the README's predict uses the shipped bundle; after parity the new one is named
            assert shlex.split(line) == ["osteo-edge", "predict", "--model", _opt(parity, "--candidate"), *want[2:]]
        else:
            assert shlex.split(line) == want, (names[i], line)


@needs_data
def test_data_audit_next_line_is_the_readme_split(tmp_path: Path, knee_sources: list[Path]) -> None:
    from osteo_edge.cli import _steps

    # the command prints exactly what _steps builds (checked against the README above)
    src = [str(KNEE / "wani-mendeley")]
    res = _invoke(["data", "audit", *src, "--out", tmp_path / "audit", "--no-plots"], PIPED)
    assert res.exit_code == 0, res.output
    assert f"next: {_steps.after_audit(src, tmp_path / 'audit')}" in res.output and "--members one" in res.output


# ------------------------------------------------------------------------------------------------
# noise


@needs_data
def test_predict_prints_no_litert_delegate_line(tmp_path: Path) -> None:
    img = _images()[1]
    r = subprocess.run([sys.executable, "-c", "from osteo_edge.cli import main; main()", "predict", str(img)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr
    assert "XNNPACK" not in r.stderr + r.stdout and r.stderr == ""


@pytest.mark.tflite
def test_export_tflite_int8_prints_no_tensorflow_logs(exported: dict[str, Path]) -> None:
    pytest.importorskip("tensorflow")
    out = exported["root"] / "tflite-int8"
    r = subprocess.run([sys.executable, "-c", "from osteo_edge.cli import main; main()", "export", "--model", str(exported["run"]),
                        "--format", "tflite", "--int8", "--split", str(exported["split"]), "--calib-size", "3", "--golden", "2",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr
    for noise in ("cuInit", "CUDA", "absl", "I0000", "oneDNN", "fully_quantize", "XNNPACK", "tensorflow", "INFO"):
        assert noise not in r.stderr, r.stderr
    assert r.stderr.strip() == "" and "next: osteo-edge parity" in r.stdout
