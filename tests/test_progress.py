"""Progress on long work (issue 23, item 9): training epochs and QAT say "epoch k/N" with an ETA, in a
terminal and in a pipe or a log (one plain line per finished epoch)."""

from __future__ import annotations

import io

from rich.console import Console

from osteo_edge.core.progress import TerminalProgress, fmt_duration


def test_fmt_duration() -> None:
    assert [fmt_duration(x) for x in (0, 42.4, 75, 3600 + 7 * 60 + 3)] == ["0 s", "42 s", "1 min 15 s", "1 h 07 min"]


def test_plain_lines_when_the_bar_is_off() -> None:
    buf = io.StringIO()
    with TerminalProgress("NNCF qat", console=Console(file=buf, width=200), enabled=False, lines=("epoch", "calibrating")) as p:
        p("calibrating on 4 training images", 0, None)
        p("calibrating on 4 training images", 0, None)  # the same stage again: no second line
        for step in (1, 2):
            p("epoch 1/2", step, 2, eta=fmt_duration(30 - 10 * step))
        p("hashing", 5, 5)  # not one of the stages asked for
        p("epoch 2/2", 2, 2, eta="0 s")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "NNCF qat: calibrating on 4 training images ..."
    assert lines[1].startswith("NNCF qat: epoch 1/2 done in ") and lines[1].endswith(", ETA 10 s")
    assert lines[2].startswith("NNCF qat: epoch 2/2 done in ") and len(lines) == 3, lines


def test_bar_has_an_eta_column() -> None:
    from rich.progress import TimeRemainingColumn

    p = TerminalProgress("x", enabled=False)
    assert any(isinstance(c, TimeRemainingColumn) for c in p.bar.columns)


def test_training_epoch_lines_say_k_of_n_and_eta(capsys) -> None:
    from osteo_edge.cli.train import _Renderer

    r = _Renderer()
    assert not r.enabled  # pytest's stderr is not a terminal: one line per epoch
    row = dict(stage="finetune", train_loss=1.0, train_acc=0.5, val_loss=1.1, val_acc=0.4, val_macro_f1=0.3,
               images_per_second=5.0, stopped_early=False)
    r("epoch_start", epoch=0, epochs=3, steps=2, stage="finetune")
    r("epoch_end", epoch=1, epoch_seconds=10.0, best_epoch=1, **row)
    r("epoch_start", epoch=1, epochs=3, steps=2, stage="finetune")
    r("epoch_end", epoch=2, epoch_seconds=30.0, best_epoch=1, **row)
    r("epoch_start", epoch=2, epochs=3, steps=2, stage="finetune")
    r("epoch_end", epoch=3, epoch_seconds=20.0, best_epoch=1, **row)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch")]
    assert lines[0].startswith("epoch 1/3 [finetune]") and lines[0].endswith("ETA 20 s at most"), lines
    assert lines[1].startswith("epoch 2/3") and lines[1].endswith("ETA 20 s at most"), lines  # mean of 10 and 30 s, one epoch left
    assert lines[2].startswith("epoch 3/3") and "ETA" not in lines[2]
