"""Rewrite a sealed bundle's provenance without the paths of the machine that built it, then re-seal.

    PYTHONPATH=src python benchmarks/export/strip_build_paths.py [BUNDLE]   (default: the shipped bundle)
    osteo-edge sign BUNDLE --key RELEASE_KEY                                  (re-sealing drops the signature)

A thin caller of ``osteo_edge.release.portable.strip_build_paths`` (the ``strip-paths`` step of
``osteo-edge release``, which does this for every bundle it builds; see docs/release.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from osteo_edge.errors import OsteoEdgeError
from osteo_edge.release.portable import strip_build_paths

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", type=Path, default=ROOT / "src" / "osteo_edge" / "models" / "default")
    a = ap.parse_args(argv)
    try:
        removed = strip_build_paths(a.bundle)
    except OsteoEdgeError as exc:
        print(f"{a.bundle}: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"{a.bundle}: no build-machine paths; nothing to do")
        return 0
    for field, path in removed:
        print(f"removed {path} from {field}")
    print(f"re-sealed {a.bundle}; sign it again: osteo-edge sign {a.bundle} --key KEY")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
