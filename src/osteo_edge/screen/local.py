"""The local engine: N worker processes on this machine, each with its own runtime.

``workers=1`` answers in this process. More: a spawn-started process pool (a fork would copy the
driver's open model and record), fed through a bounded window of images in flight, so that memory
stays bounded however long the list (and a PACS spool stays small). A worker killed by a decoder
(a segfault in a native codec) costs a fresh pool; the images it held are retried one by one, and
the one that kills a worker again is answered rejected, so the run goes on.
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from ..errors import OsteoEdgeError
from .sources import ScreenItem
from .work import Screener, WorkerConfig, crashed

log = logging.getLogger(__name__)

Outcome = dict[str, Any]


class ScreenError(OsteoEdgeError):
    """A screening run that cannot go on (its workers do not start)."""


_SCREENER: Screener | None = None


def _init(config: WorkerConfig) -> None:
    global _SCREENER
    _watch_parent()
    _SCREENER = Screener(config)


def _watch_parent() -> None:
    """End this worker when the driver is gone (SIGKILL, SIGTERM, a crash): a pool worker would otherwise
    wait forever on its queue, an orphan holding a model in memory."""
    import os
    import threading
    from multiprocessing import parent_process
    from multiprocessing.connection import wait as wait_for

    parent = parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait_for([parent.sentinel])  # readable once the driver's end of the pipe is closed: it exited
        os._exit(1)

    threading.Thread(target=watch, name="screen-parent-watch", daemon=True).start()


def _answer(item: ScreenItem) -> Outcome:
    assert _SCREENER is not None, "worker not initialised"
    return _SCREENER(item)


def _ping() -> bool:
    return _SCREENER is not None


def _pool(config: WorkerConfig, workers: int) -> ProcessPoolExecutor:
    """A started pool; a worker that cannot load the bundle is a one-line error, not a crash to retry."""
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init, initargs=(config,))
    try:
        pool.submit(_ping).result()
    except BrokenProcessPool as exc:
        pool.shutdown(wait=True, cancel_futures=True)
        raise ScreenError("a screening worker process could not start (it could not load the model bundle?); "
                          "run with --workers 1 to see why") from exc
    return pool


def run_local(items: Iterable[ScreenItem], config: WorkerConfig, workers: int, on_outcome: Callable[[Outcome], None],
              clf: Any = None, window: int | None = None) -> None:
    """Answer every item, calling ``on_outcome`` in the driver as each answer arrives (completion order)."""
    if workers <= 1:
        screener = Screener(config, clf)
        for item in items:
            on_outcome(screener(item))
        return
    window = window or 4 * workers
    source = iter(items)
    while True:
        suspects = _drain(_pool(config, workers), source, window, on_outcome)
        if suspects is None:
            return
        log.warning("a worker process died (a native decoder crash?); retrying its %d image(s) one by one", len(suspects))
        for item in suspects:
            _isolate(config, item, on_outcome)


def _drain(pool: ProcessPoolExecutor, source: Iterator[ScreenItem], window: int,
           on_outcome: Callable[[Outcome], None]) -> list[ScreenItem] | None:
    """Run the pool until the source is empty (None) or the pool breaks (the items then in flight)."""
    flight: dict[Future, ScreenItem] = {}
    done_source = False
    try:
        while True:
            while not done_source and len(flight) < window:
                item = next(source, None)
                if item is None:
                    done_source = True
                    break
                flight[pool.submit(_answer, item)] = item
            if not flight:
                return None
            finished, _ = wait(flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                outcome = fut.result()  # raises BrokenProcessPool with this item still in flight
                flight.pop(fut)
                on_outcome(outcome)
    except BrokenProcessPool:
        return list(flight.values())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate(config: WorkerConfig, item: ScreenItem, on_outcome: Callable[[Outcome], None]) -> None:
    """One image in a pool of its own: its answer, or rejected when it kills that worker too."""
    pool = _pool(config, 1)  # a pool that does not start raises (not the image's fault)
    try:
        outcome = pool.submit(_answer, item).result()
    except BrokenProcessPool:
        outcome = crashed(item, "the decoder crashed its worker process twice")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    on_outcome(outcome)
