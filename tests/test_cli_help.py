"""Help at 80 columns in a pipe (issue 23, item 8): nothing cut with an ellipsis, no choice list split
inside a word, descriptions wrapped between words (no ragged hard-wrapped docstrings), train --help short."""

from __future__ import annotations


import pytest
import typer.main
from typer.core import TyperArgument
from typer.testing import CliRunner

from osteo_edge.cli import app
from osteo_edge.cli._common import reflow

PIPED_80 = {"COLUMNS": "80", "TTY_COMPATIBLE": "0"}
WIDTH = 78  # click's help width at 80 columns


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _ragged_pairs(text: str) -> list[tuple[str, str]]:
    """Consecutive lines of one paragraph where the next line's first word would have fitted on the line before."""
    lines = text.splitlines()
    bad = []
    head = next((i for i, ln in enumerate(lines) if ln.endswith(":") and not ln.startswith(" ")), len(lines))
    for i in range(len(lines) - 1):
        a, b = lines[i], lines[i + 1]
        if not a.strip() or not b.strip() or a.startswith("Usage:"):
            continue
        description = i + 1 < head
        continuation = _indent(a) == _indent(b) > 2
        if (description or continuation) and len(a) + 1 + len(b.split()[0]) <= WIDTH:
            bad.append((a, b))
    return bad


def test_ragged_check_catches_a_hard_wrapped_docstring() -> None:
    text = "Usage: x\n\n  A sentence that was wrapped\n  by hand in the source file.\n"
    assert _ragged_pairs(text)
    assert reflow("One\n    two.\n\n    Three\n    four.") == "One two.\n\nThree four."


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "osteo-edge" for p, _ in COMMANDS])
def test_help_at_80_columns_piped_is_whole(path, cmd) -> None:
    res = CliRunner().invoke(app, [*path, "--help"], env=PIPED_80)
    assert res.exit_code == 0, res.output
    text = res.output
    assert "…" not in text and "╭" not in text, text  # no rich cell cut, no panel boxes in a pipe
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, text
    args = {p.name for p in cmd.params if isinstance(p, TyperArgument)}
    for ln in lines:  # a line ending in "..." is a cut summary, unless usage notation (COMMAND [ARGS]..., repeated arguments)
        if ln.rstrip().endswith("...") and not ln.startswith("Usage:"):
            assert ln.split()[0].strip("{}[]<>.") in args, ln
    for p in cmd.params:  # every choice list whole on one line
        choices = getattr(p.type, "choices", None)
        if choices and not isinstance(p, TyperArgument):
            listed = "|".join(str(getattr(c, "value", c)) for c in choices)
            assert any(listed in ln for ln in lines), (p.name, listed, text)
    assert not _ragged_pairs(text), _ragged_pairs(text)
    if not path:
        for name, sub in cmd.commands.items():  # each command's summary whole, not cut with "..."
            first = " ".join((reflow(sub.help) or "").split("\n\n")[0].split())
            assert first in " ".join(text.split()), (name, first)


def test_train_help_is_short_and_shows_the_default_recipe() -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env=PIPED_80)
    assert res.exit_code == 0
    assert len(res.output.splitlines()) <= 70, len(res.output.splitlines())
    assert "[default: efficientnet_lite0]" in " ".join(res.output.split())
    assert "[default: (" not in res.output


def test_wide_terminal_keeps_the_rich_panels() -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "160", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"})
    assert res.exit_code == 0 and "╭" in res.output and "Balance, augmentation and robustness levers" in res.output
