"""The one progress protocol of the library.

Long work (hashing a dataset, preprocessing calibration images, fine-tuning, cross-validation,
training epochs) reports through a :class:`Progress` callable::

    progress(label, done, total, **info)

``label`` says what is being done ("hashing", "epoch 2/5", "logreg fold 3/5"; for training it is the
event name: start, epoch_start, step, epoch_end, fold), ``done``/``total`` count units of it
(``total=None``: unknown), and ``info`` carries optional fields (loss, images per second, ...).
Library code takes ``progress: Progress | None = None`` and never prints; :func:`no_progress` is
the do-nothing default and :class:`TerminalProgress` a rich bar for the CLI that stays off when
stderr is not a terminal.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    def __call__(self, label: str, done: int = 0, total: int | None = None, **info: Any) -> None: ...


def no_progress(label: str, done: int = 0, total: int | None = None, **info: Any) -> None:
    """The do-nothing :class:`Progress`."""


def progress_enabled(stream: Any = None) -> bool:
    """Progress bars only on a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class TerminalProgress:
    """A :class:`Progress` drawn as one rich bar (label, bar, done/total, info, elapsed) on stderr.

    Off when stderr is not a terminal (or ``enabled=False``); use it as a context manager::

        with TerminalProgress() as progress:
            audit_sources(sources, progress=progress)
    """

    def __init__(self, label: str = "", console: Any = None, enabled: bool | None = None, transient: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as _RichProgress

        self.enabled = progress_enabled() if enabled is None else bool(enabled)
        kw = {"console": console} if console is not None else {}
        self.bar = _RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), disable=not self.enabled, transient=transient, **kw)
        self.task = self.bar.add_task(label, total=None, info="")

    def __enter__(self) -> "TerminalProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, label: str, done: int = 0, total: int | None = None, **info: Any) -> None:
        text = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        self.bar.update(self.task, description=label, completed=done, total=total, info=text)
