"""A bundle's provenance without the paths of the machine that built it, re-sealed.

What :func:`strip_build_paths` changes, through ``reseal`` (step "strip build-machine paths"):

- ``provenance.split_csv``: an absolute path becomes ``{"name": "split.csv", "sha256": ...}`` (the
  split's content hash, already recorded as ``split_sha256``);
- ``provenance.parent.path``: an absolute path becomes the path relative to the bundle as it was
  built, from the relative ``--model`` and ``--out`` of the recorded export command (both were typed
  from the same working directory);
- the recorded commands (``command``, ``parent_command``, ``lineage``): every absolute path argument
  is replaced by its file name.

Nothing else changes: the model file, the metrics, the thresholds. It refuses to write when an
absolute path would remain (:func:`osteo_edge.artifact.build_machine_paths`). Re-sealing drops a
signature: sign the bundle afterwards.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from ..artifact import build_machine_paths, load_bundle, reseal, split_reference
from ..errors import ConfigError

STEP = "strip build-machine paths"


def _option(command: str, name: str) -> str | None:
    words = shlex.split(command)
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w == name), None)


def _relative_words(command: str) -> str:
    """A recorded command with every absolute path argument replaced by its file name."""
    words = shlex.split(command)
    if not any(os.path.isabs(w) for w in words):
        return command
    return shlex.join(Path(w).name if os.path.isabs(w) else w for w in words)


def _strip_split(prov: dict[str, Any]) -> None:
    old_split = prov.get("split_csv")
    if not (isinstance(old_split, str) and os.path.isabs(old_split)):
        return
    ref = split_reference(old_split, prov.get("split_sha256"))
    if not ref["sha256"]:
        raise ConfigError(f"no split_sha256 recorded for {old_split}: cannot name the split by content")
    prov["split_csv"] = ref
    prov["command"] = (prov.get("command") or "").replace(old_split, ref["name"])
    prov["parent_command"] = (prov.get("parent_command") or "").replace(old_split, ref["name"])
    prov["lineage"] = [c.replace(old_split, ref["name"]) for c in prov.get("lineage") or []]


def portable_provenance(prov: dict[str, Any]) -> dict[str, Any]:
    """The provenance dict with build-machine paths rewritten (see the module docstring)."""
    prov = dict(prov)
    typed = prov.get("command") or ""  # the parent is rebuilt from the paths as typed, before any is rewritten
    _strip_split(prov)
    for key in ("command", "parent_command"):  # a split already named by content, but typed as an absolute path
        if prov.get(key):
            prov[key] = _relative_words(prov[key])
    if prov.get("lineage"):
        prov["lineage"] = [_relative_words(c) for c in prov["lineage"]]
    parent = dict(prov.get("parent") or {})
    if parent.get("path") and os.path.isabs(parent["path"]):
        model, out = _option(typed, "--model"), _option(typed, "--out")
        if not model or not out or os.path.isabs(model) or os.path.isabs(out) or not parent["path"].endswith(model):
            raise ConfigError(f"cannot make {parent['path']} relative: the export command does not name it relatively")
        parent["path"] = Path(os.path.relpath(model, out)).as_posix()
        prov["parent"] = parent
    return prov


def strip_build_paths(bundle_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """Remove the build machine's absolute paths from a bundle's provenance and re-seal it.

    Returns the (field, path) pairs removed; an empty list (and no re-seal) when there were none."""
    bundle = load_bundle(bundle_dir)
    before = build_machine_paths(bundle.manifest)
    if not before:
        return []
    prov = portable_provenance(dict(bundle.manifest.get("provenance") or {}))
    left = build_machine_paths({**bundle.manifest, "provenance": prov})
    if left:
        raise ConfigError(f"{bundle_dir}: absolute paths would remain after stripping: {left}")
    reseal(bundle_dir, step=STEP, provenance=prov)
    return before
