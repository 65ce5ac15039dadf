"""``python -m osteo_edge.bench``: the host benchmark without the CLI, torch-free.

Used on a device (a Raspberry Pi over SSH, or under emulation) where only the runtime is present:
measures the bundles, writes the JSON report to ``--json`` (or stdout) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.machine import machine_info
from .local import BenchRequest, make_report, measure_local


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m osteo_edge.bench")
    ap.add_argument("--model", action="append", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    req = BenchRequest(bundles=a.model, threads=a.threads, runs=a.runs, warmup=a.warmup, torch_reference=False)
    req.validate()
    report = make_report("host", "measured", req, measure_local(req), machine_info(), [])
    text = json.dumps(report, indent=2)
    if a.json:
        a.json.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
