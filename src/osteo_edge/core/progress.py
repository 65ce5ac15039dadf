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


def fmt_duration(seconds: float) -> str:
    """``75.2`` -> ``"1 min 15 s"``; ``4000`` -> ``"1 h 07 min"``: an ETA a person reads at a glance."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class TerminalProgress:
    """A :class:`Progress` drawn as one rich bar (label, bar, done/total, info, elapsed, ETA) on stderr.

    Off when stderr is not a terminal (or ``enabled=False``); use it as a context manager::

        with TerminalProgress() as progress:
            audit_sources(sources, progress=progress)

    ``lines``: label prefixes (e.g. ``("epoch",)``) for which, when the bar is off (a pipe, a log),
    one plain line is printed per finished unit (``epoch 1/2 done in 45 s, ETA 45 s``) and per
    stage of unknown length as it starts, so long work is never silent in a log.
    """

    def __init__(self, label: str = "", console: Any = None, enabled: bool | None = None, transient: bool = True,
                 lines: tuple[str, ...] = ()) -> None:
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as _RichProgress

        self.enabled = progress_enabled() if enabled is None else bool(enabled)
        kw = {"console": console} if console is not None else {}
        self.bar = _RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not self.enabled,
                                 transient=transient, **kw)
        self.task = self.bar.add_task(label, total=None, info="")
        self.title = label
        self.lines = tuple(lines)
        self._clock = time.perf_counter
        self._last = ("", 0, None)
        self._started = self._clock()

    def __enter__(self) -> "TerminalProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, label: str, done: int = 0, total: int | None = None, **info: Any) -> None:
        text = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        self.bar.update(self.task, description=label, completed=done, total=total, info=text)
        if not self.enabled and self.lines and label.startswith(self.lines):
            self._line(label, done, total, info)

    def _line(self, label: str, done: int, total: int | None, info: dict[str, Any]) -> None:
        """One plain line when the bar is off: a unit finished, or a stage of unknown length started."""
        if label != self._last[0]:
            self._started = self._clock()
        finished = total is not None and done >= total and (label, done) != self._last[:2]
        starting = total is None and label != self._last[0]
        self._last = (label, done, total)
        if not (finished or starting):
            return
        head = f"{self.title}: " if self.title else ""
        if starting:
            text = f"{head}{label} ..."
        else:
            eta = info.get("eta")
            text = f"{head}{label} done in {fmt_duration(self._clock() - self._started)}" + (f", ETA {eta}" if eta else "")
        self.bar.console.print(text, highlight=False, soft_wrap=True)
