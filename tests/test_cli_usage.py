"""Usage errors (issue 23, items 10 and 11, and the README's exit codes: 0 ok, 1 a gate or check
failed, 2 usage): every missing required option in one message, one plain ``Error:`` line in a pipe."""

from __future__ import annotations

from typer.testing import CliRunner

from osteo_edge.cli import app

PIPED = {"COLUMNS": "80", "TTY_COMPATIBLE": "0"}


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("Error:")]


def test_all_missing_options_in_one_message() -> None:
    res = CliRunner().invoke(app, ["quantize", "--int8"], env=PIPED)
    assert res.exit_code == 2
    (line,) = _error_lines(res.output)
    assert line == "Error: Missing options '--model', '--split' and '--out'.", res.output
    res = CliRunner().invoke(app, ["quantize", "--int8", "--model", "runs/x"], env=PIPED)
    assert _error_lines(res.output) == ["Error: Missing options '--split' and '--out'."], res.output
    res = CliRunner().invoke(app, ["quantize", "--model", "runs/x", "--split", "s.csv"], env=PIPED)
    assert _error_lines(res.output) == ["Error: Missing option '--out'."], res.output


def test_help_still_works_with_required_options_missing() -> None:
    res = CliRunner().invoke(app, ["quantize", "--help"], env=PIPED)
    assert res.exit_code == 0 and "--model" in res.output and "Error" not in res.output


def test_a_usage_error_is_one_unwrapped_line_in_a_pipe() -> None:
    res = CliRunner().invoke(app, ["export", "--model", "x", "--format", "foo", "--out", "y"], env=PIPED)
    assert res.exit_code == 2 and "╭" not in res.output
    (line,) = _error_lines(res.output)
    assert "'foo' is not one of" in line
