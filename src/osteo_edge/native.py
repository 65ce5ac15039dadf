"""Quieting what native (C++) libraries (LiteRT) print to the process's stderr; a base unit with no
osteo_edge imports, used by the edge runtime, the knee locator and the CLI."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Send what native (C++) code writes to file descriptor 2 to /dev/null for the block.

    LiteRT prints an INFO line to stderr from C++ when it applies its default XNNPACK delegate;
    Python's logging cannot reach it. Python-level writes to ``sys.stderr`` are flushed first and
    are unaffected when ``sys.stderr`` is not fd 2. Set ``OSTEO_EDGE_NATIVE_LOGS=1`` to keep them.
    """
    if os.environ.get("OSTEO_EDGE_NATIVE_LOGS") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
