"""osteo-edge release: the step runner's skipping (fast), the recipe's validation, stripping build paths,
and a tiny model released end to end (train -> QAT -> fp32 + int8 TFLite -> gate -> parity -> per-source
-> strip paths -> sign -> card -> verify), then released again with every step skipped."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_export_fixtures import KNEE, LABELS

# -- the step runner: skipped when its sealed output exists and matches ---------------------------------


def _tiny_bundle(folder: Path, value: float = 0.5) -> Path:
    from osteo_edge.artifact import atomic_write_bytes, seal
    from osteo_edge.preprocess import PreprocessSpec

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "model.bin", b"weights")
    seal(folder, format="onnx", model_file="model.bin", labels=LABELS, spec=PreprocessSpec(input_size=32),
         temperature=1.0, thresholds={"min_confidence": value, "low_bmd": 0.5}, metrics={}, provenance={"command": "tests"})
    return folder


_MADE = itertools.count()


def _steps(tmp: Path, calls: list[str], option: int = 1):
    from osteo_edge.artifact import reseal
    from osteo_edge.release.steps import Step

    a, b = tmp / "a", tmp / "b.txt"

    def make_a() -> str:
        calls.append("make")
        _tiny_bundle(a, value=0.5 + 0.01 * next(_MADE))  # a new bundle each time it runs
        return "made"

    def touch_a() -> str:  # an in-place step: re-seals the bundle the first step made
        calls.append("touch")
        reseal(a, step="touch", thresholds={"min_confidence": 0.7, "low_bmd": 0.5})
        return "touched"

    def write_b() -> str:
        calls.append("write")
        b.write_text(f"report {option}")
        return "written"

    return [Step("make", [a], make_a, {"option": 0}), Step("touch", [a], touch_a, {}, ("make",)),
            Step("write", [b], write_b, {"option": option}, ("touch",))]


def test_steps_run_once_then_skip_and_rerun_what_changed(tmp_path: Path) -> None:
    from osteo_edge.release.steps import StepLog, run_steps

    calls: list[str] = []
    out = [o.status for o in run_steps(_steps(tmp_path, calls), StepLog(tmp_path))]
    assert out == ["ran", "ran", "ran"] and calls == ["make", "touch", "write"]
    log = json.loads((tmp_path / "release.json").read_text())
    assert set(log["steps"]) == {"make", "touch", "write"}
    # the same steps again: every output is there and matches (the bundle's earlier seal is a recorded revision)
    calls.clear()
    assert [o.status for o in run_steps(_steps(tmp_path, calls), StepLog(tmp_path))] == ["skipped"] * 3 and calls == []
    assert "skip make" in (tmp_path / "steps.log").read_text()
    # a changed option reruns that step only
    assert [o.status for o in run_steps(_steps(tmp_path, calls, option=2), StepLog(tmp_path))] == ["skipped", "skipped", "ran"]
    assert calls == ["write"]
    # an output edited by hand reruns it; a bundle that no longer verifies reruns its step and every step after it
    calls.clear()
    (tmp_path / "b.txt").write_text("edited")
    assert [o.status for o in run_steps(_steps(tmp_path, calls, option=2), StepLog(tmp_path))] == ["skipped", "skipped", "ran"]
    calls.clear()
    (tmp_path / "a" / "model.bin").write_bytes(b"tampered")
    assert [o.status for o in run_steps(_steps(tmp_path, calls, option=2), StepLog(tmp_path))] == ["ran", "ran", "ran"]
    assert calls == ["make", "touch", "write"]


def test_a_step_that_leaves_no_valid_output_is_an_error(tmp_path: Path) -> None:
    from osteo_edge.errors import OsteoEdgeError
    from osteo_edge.release.steps import Step, StepLog, run_steps

    with pytest.raises(OsteoEdgeError, match="no valid output"):
        run_steps([Step("nothing", [tmp_path / "never"], lambda: "ok")], StepLog(tmp_path))
    assert "nothing" not in json.loads((tmp_path / "release.json").read_text())["steps"] if (tmp_path / "release.json").exists() else True


# -- the recipe and the build paths -------------------------------------------------------------------------


def test_recipe_reads_yaml_and_refuses_unknown_options(tmp_path: Path) -> None:
    from osteo_edge.errors import ConfigError
    from osteo_edge.release.recipe import Recipe, read_recipe

    assert read_recipe(None) == Recipe() and Recipe().quantize == {"method": "qat", "epochs": 3, "lr": 1e-5}
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ntrain: {arch: cnn, epochs: 1}\nquantize: null\ngate: {synthetic: 40}\n")
    r = read_recipe(p)
    assert r.name == "x" and r.quantize is None and r.gate == {"crossfit": True, "synthetic": 40} and r.train["epochs"] == 1
    for text, msg in (("train: {arhc: cnn}\n", "arhc"), ("quantize: {epochz: 1}\n", "epochz"), ("shipping: {}\n", "shipping"),
                      ("train: {split: s.csv}\n", "--split"), ("gate: null\n", "gate"), ("train: {arch: nope}\n", "nope")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            read_recipe(p)
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_recipe(p)
    p.write_bytes(b"\xff\xfe\x00name")  # not UTF-8: was a UnicodeDecodeError traceback
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_recipe(p)
    toml = tmp_path / "r.toml"  # read as JSON, and said "not valid toml"
    toml.write_text("a = 1\n")
    with pytest.raises(ConfigError, match=r"not valid JSON \(a recipe is .yaml"):
        read_recipe(toml)


def test_strip_build_paths_names_the_split_by_content(tmp_path: Path) -> None:
    from osteo_edge.artifact import build_machine_paths, load_bundle, reseal
    from osteo_edge.release.portable import strip_build_paths

    b = _tiny_bundle(tmp_path / "b")
    split = tmp_path / "split.csv"
    split.write_text("path,label,group,split\n")
    from osteo_edge.artifact import sha256_file

    reseal(b, step="test", provenance={"command": f"osteo-edge export --split {split} --out b", "split_csv": str(split),
                                       "split_sha256": sha256_file(split), "lineage": [f"osteo-edge train --split {split}"]})
    assert build_machine_paths(load_bundle(b).manifest)
    removed = strip_build_paths(b)
    assert {p for _, p in removed} == {str(split)}
    m = load_bundle(b).manifest
    assert not build_machine_paths(m) and m["provenance"]["split_csv"]["name"] == "split.csv"
    assert m["provenance"]["lineage"] == ["osteo-edge train --split split.csv"]
    assert strip_build_paths(b) == []  # nothing left: no re-seal


def test_strip_build_paths_makes_the_parent_relative_from_the_export_command(tmp_path: Path) -> None:
    from osteo_edge.errors import ConfigError
    from osteo_edge.release.portable import portable_provenance

    prov = {"command": "osteo-edge export --model runs/qat --format tflite --out out/bundle",
            "parent": {"path": "/build/machine/runs/qat", "seal": "x"}, "lineage": ["osteo-edge train --split /build/s.csv"]}
    out = portable_provenance(prov)
    assert out["parent"] == {"path": "../../runs/qat", "seal": "x"} and out["lineage"] == ["osteo-edge train --split s.csv"]
    with pytest.raises(ConfigError, match="relative"):  # typed with absolute paths: nothing to rebuild it from
        portable_provenance({**prov, "command": "osteo-edge export --model /build/machine/runs/qat --out /o"})


def test_release_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from osteo_edge.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["release", "--split", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o"), "--key", str(tmp_path / "k")])
    assert res.exit_code == 1 and "no such file" in res.output and "Traceback" not in res.output
    bad = tmp_path / "r.json"
    bad.write_text('{"quantize": {"bits": 4}}')
    res = runner.invoke(app, ["release", "--split", str(bad), "--out", str(tmp_path / "o"), "--key", str(bad), "--recipe", str(bad)])
    assert res.exit_code == 1 and "bits" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")
def test_release_refuses_what_a_later_step_would_fail_on_before_training(tmp_path: Path) -> None:
    from osteo_edge.artifact.signing import generate_keypair
    from osteo_edge.cli import app
    from test_export_fixtures import make_split

    split = make_split(tmp_path / "split")  # no folds: a cross-fitted gate cannot be fitted on it
    key, _ = generate_keypair(tmp_path, "k")
    args = ["release", "--split", str(split), "--out", str(tmp_path / "o"), "--key", str(key)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "--crossfit needs a split with folds" in res.output
    recipe = tmp_path / "r.json"
    for section, msg in (({"gate": {"crossfit": False, "non_knee": [str(tmp_path / "none")]}}, "no such folder"),
                         ({"gate": {"crossfit": False}, "parity": {"pool_members": "some"}}, "pool_members"),
                         ({"gate": {"crossfit": False}, "cv_result": str(tmp_path / "none.json")}, "evaluate --cv")):
        recipe.write_text(json.dumps(section))
        res = CliRunner().invoke(app, [*args, "--recipe", str(recipe)])
        assert res.exit_code == 1 and msg in res.output, res.output
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def test_release_plan_names_each_steps_inputs(tmp_path: Path) -> None:
    """Without QAT the exports read the fp32 run; every in-place step reads the step before it, so a rerun
    of one reruns what follows; verify is always checked."""
    from osteo_edge.artifact.signing import generate_keypair
    from osteo_edge.core.progress import no_progress
    from osteo_edge.release.pipeline import ReleasePaths, release_steps
    from osteo_edge.release.recipe import Recipe

    split = tmp_path / "split.csv"
    split.write_text("path,label,group,split\n")
    key, _ = generate_keypair(tmp_path, "k")
    paths = ReleasePaths(tmp_path / "out", tmp_path / "out" / "bundle", tmp_path / "out" / "reference")
    plan = release_steps(split, split, Recipe.from_dict({"quantize": None}), paths, key, [], no_progress)
    by = {s.name: s for s in plan}
    assert [s.name for s in plan] == ["train", "export-reference", "export-int8", "gate", "parity", "per-source", "strip-paths",
                                      "sign", "card", "verify"]
    assert by["export-int8"].inputs == ("train",) and by["gate"].inputs == ("export-reference", "export-int8")
    assert by["sign"].inputs == ("strip-paths",) and by["verify"].done() is False
    with_qat = release_steps(split, split, Recipe(), paths, key, [], no_progress)
    assert [s.name for s in with_qat][:2] == ["train", "quantize"] and with_qat[2].inputs == ("quantize",)


# -- a tiny model released end to end --------------------------------------------------------------------------

TINY_RECIPE = {
    "name": "tiny",
    "train": {"arch": "cnn", "img_size": 32, "epochs": 1, "batch_size": 8, "weights": "none", "threads": 1, "patience": 1},
    "quantize": {"method": "qat", "epochs": 1, "calib_size": 4, "lr": 1e-4},
    "export": {"calib_size": 8, "golden": 2, "threads": 1},
    "gate": {"crossfit": True, "synthetic": 40, "package_images": False, "min_accept": 0.9},
    "parity": {"threads": 1},
}


@pytest.mark.slow
@pytest.mark.tflite
@pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")
def test_release_builds_a_signed_path_free_bundle_pair_and_resumes(tmp_path: Path) -> None:
    from osteo_edge.artifact import build_machine_paths, load_bundle
    from osteo_edge.artifact.signing import generate_keypair
    from osteo_edge.cli import app
    from osteo_edge.edge_runtime import EdgeClassifier
    from test_train import make_tiny_split

    split = make_tiny_split(tmp_path / "split", {"train": 8, "val": 2, "test": 2})
    key, pub = generate_keypair(tmp_path / "keys", "release-test")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    out = tmp_path / "rel"
    args = ["release", "--split", str(split), "--out", str(out), "--key", str(key), "--recipe", str(recipe)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code in (0, 1), res.output  # 1: the tiny int8 file failed a parity gate (reported, bundles built)
    log = json.loads((out / "release.json").read_text())
    assert list(log["steps"]) == ["train", "quantize", "export-reference", "export-int8", "gate", "parity", "per-source",
                                  "strip-paths", "sign", "card", "verify"]
    from osteo_edge.artifact.signing import TrustStore

    trust = TrustStore.from_paths([pub])
    for folder, fmt in ((out / "bundle", "tflite-int8"), (out / "reference", "tflite")):
        b = load_bundle(folder, trust=trust)  # signed by the release key, sealed, no build-machine path
        assert b.format == fmt and b.gate is not None and not build_machine_paths(b.manifest)
        assert "test_per_source" in b.manifest["metrics"]
        assert {"gate calibration", "per-source metrics"} <= {r.step for r in b.revisions}
    assert "parity" in load_bundle(out / "bundle").manifest["metrics"]
    parity = json.loads((out / "parity.json").read_text())
    assert Path(parity["candidates"][0]["path"]).resolve() == (out / "bundle").resolve()
    assert parity["passed"] == (res.exit_code == 0)
    assert (out / "MODEL_CARD.md").read_text().strip() and (out / "per_source.md").is_file()
    assert EdgeClassifier.load(out / "bundle").labels == LABELS
    # again: every step but the final check is skipped, and nothing changes
    seal = load_bundle(out / "bundle").seal
    res2 = CliRunner().invoke(app, args)
    assert res2.exit_code == res.exit_code, res2.output
    assert load_bundle(out / "bundle").seal == seal
    text = (out / "steps.log").read_text()
    for step in ("train", "quantize", "export-int8", "gate", "parity", "sign"):
        assert f"skip {step}:" in text
    # a changed gate section reruns the gate and what reads it, not the training, QAT or exports
    from osteo_edge.release.pipeline import release
    from osteo_edge.release.recipe import Recipe

    changed = Recipe.from_dict({**TINY_RECIPE, "gate": {**TINY_RECIPE["gate"], "synthetic": 44}})
    again = release(split, out, key, recipe=changed)
    status = {o.name: o.status for o in again.outcomes}
    assert [n for n, s in status.items() if s == "skipped"] == ["train", "quantize", "export-reference", "export-int8"]
    b = load_bundle(out / "bundle", trust=trust)
    assert b.seal != seal and [r.step for r in b.revisions].count("gate calibration") == 2


def test_a_killed_training_is_resumed_only_with_the_same_config(tmp_path: Path) -> None:
    from osteo_edge.release.pipeline import _same_config
    from osteo_edge.train.config import config_yaml_text, resolve_config

    cfg = resolve_config(None, {"arch": "cnn", "epochs": 1, "split": "s.csv"})
    run = tmp_path / "fp32"
    assert not _same_config(run, cfg)
    run.mkdir()
    (run / "config.yaml").write_text(config_yaml_text(cfg))
    assert _same_config(run, cfg)
    assert not _same_config(run, resolve_config(None, {"arch": "cnn", "epochs": 2, "split": "s.csv"}))
    (run / "config.yaml").write_text("epochs: [broken\n")
    assert not _same_config(run, cfg)


def test_recipe_refuses_wrong_types_and_values_before_any_step(tmp_path: Path) -> None:
    """A wrong type in a section other than train was only found when its step ran, after training (a traceback)."""
    from osteo_edge.errors import ConfigError
    from osteo_edge.release.recipe import read_recipe

    p = tmp_path / "r.yaml"
    for text, msg in (("gate: {synthetic: many}\n", "'synthetic' must be an integer"), ("export: {calib_size: many}\n", "'calib_size'"),
                      ("quantize: {epochs: many}\n", "'epochs' must be an integer"), ("parity: {max_drop: big}\n", "'max_drop' must be a number"),
                      ("gate: {crossfit: maybe}\n", "true or false"), ("quantize: {method: int4}\n", "qat, ptq"),
                      ("export: {max_p95_dp: 2}\n", "recipe 'export': fidelity budget"), ("parity: {subset: train}\n", "test, val"),
                      ("gate: {min_accept: 0.2}\n", "min_accept"), ("export: {golden: 0}\n", "'golden' must be at least 1"),
                      ("train: [a, b]\n", "'train' must be a mapping"), ("train: {epochs: lots}\n", "recipe 'train'")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            read_recipe(p)
    p.write_text("gate: {non_knee: ../spine, synthetic: 40}\nexport: {threads: null, max_p95_dp: 1}\n")
    r = read_recipe(p)  # one folder is a list of one (it was split into characters); null takes the default
    assert r.gate["non_knee"] == ["../spine"] and r.export == {"threads": None, "max_p95_dp": 1.0}


def test_release_refuses_folders_it_does_not_own_and_writes_nothing(tmp_path: Path) -> None:
    """An existing folder as --out had its runs/fp32 deleted and release files written into it; an existing
    non-bundle folder as --bundle-dir was replaced."""
    from osteo_edge.artifact.signing import generate_keypair
    from osteo_edge.cli import app

    split = tmp_path / "split.csv"
    split.write_text("path,label,group,split\n")
    key, _ = generate_keypair(tmp_path / "keys", "k")
    mine = tmp_path / "project"
    (mine / "runs" / "fp32").mkdir(parents=True)
    (mine / "runs" / "fp32" / "notes.txt").write_text("keep me")
    bundle = _tiny_bundle(tmp_path / "bundle")
    args = ["release", "--split", str(split), "--key", str(key)]
    for extra, msg in ((["--out", str(mine)], "not a release folder (no release.json), yet it holds runs"), (["--out", str(split)], "is a file"),
                       (["--out", str(bundle / "rel")], "inside the model bundle"),
                       (["--out", str(tmp_path / "o"), "--bundle-dir", str(mine)], "--bundle-dir"),
                       (["--out", str(tmp_path / "o"), "--reference-dir", str(split)], "--reference-dir"),
                       # a bundle folder is replaced whole: as --out itself, its parent or its runs it deleted the release
                       (["--out", str(tmp_path / "o"), "--bundle-dir", str(tmp_path / "o")], "would hold --out"),
                       (["--out", str(tmp_path / "o" / "deep"), "--reference-dir", str(tmp_path / "o")], "would hold --out"),
                       (["--out", str(tmp_path / "o"), "--bundle-dir", str(tmp_path / "o" / "runs" / "b")], "its runs"),
                       (["--out", str(tmp_path / "o"), "--bundle-dir", str(tmp_path / "r" / "b"), "--reference-dir", str(tmp_path / "r")],
                        "the other bundle")):
        res = CliRunner().invoke(app, [*args, *extra])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output
    assert (mine / "runs" / "fp32" / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["runs"]
    assert not (tmp_path / "o").exists() and not (bundle / "rel").exists()
    other = tmp_path / "work"  # a folder with other things in it (benchmarks/model/ship.sh's runs/ship) is not refused for that
    other.mkdir()
    (other / "old-run").mkdir()
    res = CliRunner().invoke(app, [*args, "--out", str(other)])
    assert res.exit_code == 1 and "release" not in res.output.split("\n")[0][:40] and "no rows" in res.output.lower(), res.output


def test_a_broken_step_log_is_refused_in_one_line(tmp_path: Path) -> None:
    from osteo_edge.errors import OsteoEdgeError
    from osteo_edge.release.steps import StepLog

    for text in ("{broken", "[1, 2]", '{"steps": [1]}'):
        (tmp_path / "release.json").write_text(text)
        with pytest.raises(OsteoEdgeError, match="remove it to start this release again"):
            StepLog(tmp_path)


@pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")
def test_release_refuses_a_split_too_small_for_the_gate_before_training(tmp_path: Path) -> None:
    """The cross-fitted gate needs 10 knees outside each fold: it failed after training, QAT and both exports."""
    from osteo_edge.artifact.signing import generate_keypair
    from osteo_edge.cli import app
    from test_train import make_tiny_split

    split = make_tiny_split(tmp_path / "split", {"train": 4, "val": 2, "test": 2})  # 9 knees outside the smaller fold
    key, _ = generate_keypair(tmp_path / "keys", "k")
    res = CliRunner().invoke(app, ["release", "--split", str(split), "--out", str(tmp_path / "o"), "--key", str(key)])
    assert res.exit_code == 1 and "at least 10" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not KNEE.is_dir(), reason="needs ../shared/data")
def test_release_refuses_a_bad_cv_result_or_trust_list_before_training(tmp_path: Path) -> None:
    """A cv_result that is not a scores file was a JSON traceback at the per-source step, and a --trusted-key
    that is missing or leaves out the signing key failed the final check: both after training."""
    from osteo_edge.artifact.signing import generate_keypair
    from osteo_edge.cli import app
    from test_export_fixtures import make_split

    split = make_split(tmp_path / "split")
    key, _ = generate_keypair(tmp_path / "keys", "k")
    _, other = generate_keypair(tmp_path / "keys", "other")
    args = ["release", "--split", str(split), "--out", str(tmp_path / "o"), "--key", str(key)]
    recipe, scores = tmp_path / "r.json", tmp_path / "scores.json"
    for text in ("not json", '{"oof": {}, "report": {}}'):
        scores.write_text(text)
        recipe.write_text(json.dumps({"gate": {"crossfit": False}, "cv_result": str(scores)}))
        res = CliRunner().invoke(app, [*args, "--recipe", str(recipe)])
        assert res.exit_code == 1 and str(scores.name) in res.output and "Traceback" not in res.output, res.output
    no_test = tmp_path / "no_test.csv"  # per-source found it after training: "no test rows to measure the bundle on"
    no_test.write_text("".join(line for line in split.read_text().splitlines(True) if ",test," not in line))
    res = CliRunner().invoke(app, [*args, "--eval-split", str(no_test)])
    assert res.exit_code == 1 and "no test rows" in res.output, res.output
    for trusted, msg in ((tmp_path / "none.pub", "no such trusted key"), (other, "not among them")):
        res = CliRunner().invoke(app, [*args, "--trusted-key", str(trusted)])
        assert res.exit_code == 1 and msg in res.output, res.output
    assert not (tmp_path / "o").exists()
