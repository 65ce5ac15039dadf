"""The CLI's choices come from the library's tables: a record added to a table shows up in --help."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import pytest
import typer
from typer.testing import CliRunner

from osteo_edge import formats
from osteo_edge.bench import targets as bench
from osteo_edge.modeling import models
from osteo_edge.train import config


def _help(module: str, command: str) -> str:
    """``COMMAND --help`` of the CLI module re-imported now (its choices are built at import)."""
    mod = importlib.reload(importlib.import_module(module))
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, so that COMMAND is a subcommand as in the real app
        pass

    mod.register(app)
    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def _add_arch(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(models.ARCHS, "tinynet", dataclasses.replace(models.ARCHS["cnn"], name="tinynet"))


def _add_format(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(formats.FORMATS, "coreml", formats.ModelFormat("coreml", ".mlmodel", "coreml", "fp32", "NCHW", True, "Core ML"))


def _add_target(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(bench.TARGETS, "jetson", bench.Target("jetson", "NVIDIA Jetson", bench.run_host))


def _extend(name: str, value: str) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda mp: mp.setattr(config, name, (*getattr(config, name), value))


CASES = {
    "arch": (_add_arch, "osteo_edge.cli.train", "train", "tinynet"),
    "device": (_extend("DEVICES", "mps"), "osteo_edge.cli.train", "train", "mps"),
    "schedule": (_extend("SCHEDULES", "linear"), "osteo_edge.cli.train", "train", "linear"),
    "balance": (_extend("BALANCE", "focal"), "osteo_edge.cli.train", "train", "focal"),
    "augment": (_extend("AUGMENT", "heavy"), "osteo_edge.cli.train", "train", "heavy"),
    "format": (_add_format, "osteo_edge.cli.export", "export", "coreml"),
    "target": (_add_target, "osteo_edge.cli.bench", "bench", "jetson"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_record_added_to_a_table_shows_up_in_help(case: str) -> None:
    add, module, command, name = CASES[case]
    assert name not in _help(module, command)
    try:
        with pytest.MonkeyPatch.context() as mp:
            add(mp)
            assert name in _help(module, command)
    finally:
        importlib.reload(importlib.import_module(module))  # back to the real tables
    assert name not in _help(module, command)


def test_choices_are_the_table_names() -> None:
    from osteo_edge.cli import bench as cli_bench, export as cli_export, train as cli_train

    assert [a.value for a in cli_train.Arch] == list(models.ARCHS)
    assert [s.value for s in cli_train.Schedule] == list(config.SCHEDULES)
    assert [f.value for f in cli_export.ExportFormat] == [f.name for f in formats.FORMATS.values() if f.runtime]
    assert "torch" not in [f.value for f in cli_export.ExportFormat]
    assert [t.value for t in cli_bench.TargetName] == list(bench.TARGETS)
