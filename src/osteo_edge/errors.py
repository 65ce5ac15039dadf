"""Typed errors. Every message is one line a person can act on: it names the bad value and the valid ones.

The CLI turns any :class:`OsteoEdgeError` into that line and exit code 1; anything else is a bug.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Iterable


class OsteoEdgeError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidImageError(OsteoEdgeError):
    """An input file is not a usable image (empty, truncated, not an image, too large, ...)."""


class DataError(OsteoEdgeError):
    """A dataset source or split file is missing, empty or malformed."""


class BundleError(OsteoEdgeError):
    """A model bundle is missing, incomplete, tampered with or of an unknown kind."""


class ConfigError(OsteoEdgeError):
    """An option or configuration value is invalid."""


class DependencyError(OsteoEdgeError):
    """An optional dependency (an install extra) is missing."""


class ExportError(OsteoEdgeError):
    """A model could not be converted, quantized or pruned (a converter failed or gave a broken file)."""


class ParityError(OsteoEdgeError):
    """An exported or compressed model does not match its reference within the stated tolerance."""


class WeightsUnavailableError(OsteoEdgeError):
    """Pretrained weights were asked for and cannot be had."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters ("" when it has none):
    what a one-line error quotes of a library's exception."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""


def choice_error(what: str, value: object, valid: Iterable[object]) -> ConfigError:
    """A ConfigError naming the bad value and the valid ones."""
    options = ", ".join(str(v) for v in valid)
    return ConfigError(f"unknown {what} {value!r}; valid: {options}")


def install_hint(extra: str) -> str:
    """How to add an extra, in words that work: osteo-edge is installed from a checkout or a built wheel,
    never from a package registry (``pip install 'osteo-edge[x]'`` would fail)."""
    return f"install the {extra} extra: pip install '.[{extra}]' in an osteo-edge checkout (or 'WHEEL[{extra}]' with a built wheel)"


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or raise a one-line DependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(f"{module} is not installed ({exc}); {install_hint(extra)}") from exc
