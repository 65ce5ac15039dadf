"""Rewrite a sealed bundle's provenance without the paths of the machine that built it, then re-seal.

    PYTHONPATH=src python benchmarks/export/strip_build_paths.py [BUNDLE]   (default: the shipped bundle)
    osteo-edge sign BUNDLE --key RELEASE_KEY                                  (re-sealing drops the signature)

What it changes, through the library (``osteo_edge.artifact.reseal``, step "strip build-machine paths"):

- ``provenance.split_csv``: an absolute path becomes ``{"name": "split.csv", "sha256": ...}`` (the
  split's content hash, already recorded as ``split_sha256``);
- ``provenance.parent.path``: an absolute path becomes the path relative to the bundle as it was
  built, from the relative ``--model`` and ``--out`` of the recorded export command (both were typed
  from the same working directory);
- the recorded commands (``command``, ``parent_command``, ``lineage``): the absolute split path is
  replaced by the split's file name.

Nothing else changes: the model file, the metrics, the thresholds. The script refuses to write when
an absolute path would remain (``osteo_edge.artifact.build_machine_paths``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from osteo_edge.artifact import build_machine_paths, load_bundle, reseal, split_reference

ROOT = Path(__file__).resolve().parents[2]


def _option(command: str, name: str) -> str | None:
    words = shlex.split(command)
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w == name), None)


def _relative_words(command: str) -> str:
    """A recorded command with every absolute path argument replaced by its file name."""
    words = shlex.split(command)
    return shlex.join(Path(w).name if os.path.isabs(w) else w for w in words) if any(os.path.isabs(w) for w in words) else command


def portable_provenance(prov: dict) -> dict:
    """The provenance dict with build-machine paths rewritten (see the module docstring)."""
    prov = dict(prov)
    old_split = prov.get("split_csv")
    if isinstance(old_split, str) and os.path.isabs(old_split):
        ref = split_reference(old_split, prov.get("split_sha256"))
        if not ref["sha256"]:
            raise SystemExit(f"no split_sha256 recorded for {old_split}: cannot name the split by content")
        prov["split_csv"] = ref

        def strip(text: str) -> str:
            return text.replace(old_split, ref["name"])

        prov["command"] = strip(prov.get("command") or "")
        prov["parent_command"] = strip(prov.get("parent_command") or "")
        prov["lineage"] = [strip(c) for c in prov.get("lineage") or []]
    # a split already named by content, but typed as an absolute path in the recorded commands
    for key in ("command", "parent_command"):
        if prov.get(key):
            prov[key] = _relative_words(prov[key])
    if prov.get("lineage"):
        prov["lineage"] = [_relative_words(c) for c in prov["lineage"]]
    parent = dict(prov.get("parent") or {})
    if parent.get("path") and os.path.isabs(parent["path"]):
        model, out = _option(prov["command"], "--model"), _option(prov["command"], "--out")
        if not model or not out or os.path.isabs(model) or os.path.isabs(out) or not parent["path"].endswith(model):
            raise SystemExit(f"cannot make {parent['path']} relative: the export command does not name it relatively")
        parent["path"] = Path(os.path.relpath(model, out)).as_posix()
        prov["parent"] = parent
    return prov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", type=Path, default=ROOT / "src" / "osteo_edge" / "models" / "default")
    a = ap.parse_args(argv)
    bundle = load_bundle(a.bundle)
    before = build_machine_paths(bundle.manifest)
    if not before:
        print(f"{a.bundle}: no build-machine paths; nothing to do")
        return 0
    prov = portable_provenance(dict(bundle.manifest["provenance"]))
    left = build_machine_paths({**bundle.manifest, "provenance": prov})
    if left:
        print(f"{a.bundle}: absolute paths would remain: {left}", file=sys.stderr)
        return 1
    reseal(a.bundle, step="strip build-machine paths", provenance=prov)
    for field, path in before:
        print(f"removed {path} from {field}")
    print(f"re-sealed {a.bundle}; sign it again: osteo-edge sign {a.bundle} --key KEY")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
