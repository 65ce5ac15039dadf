"""Do QAT's trained weight quantization parameters reach the int8 TFLite file? (issue 22)

    python benchmarks/export/qat_scales.py QRUN BUNDLE [--json OUT]

Prints how many int8 weight channels of BUNDLE carry the scale NNCF trained in QRUN, within 1%
(``osteo_edge.export.qat_check.compare``), and the layers that do not or that the file keeps float.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from osteo_edge.export.qat_check import compare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qrun", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res = compare(a.qrun, a.bundle)
    res["command"] = "python " + " ".join(sys.argv)
    print(f"{res['within_1pct']}/{res['channels']} int8 weight channels ({res['share']:.2%}) carry QAT's trained scale within 1%")
    for r in res["layers"]:
        if "channels" not in r or r["within_1pct"] < r["channels"]:
            detail = r.get("in_file") or f"{r['within_1pct']}/{r['channels']}, max diff {r['max_rel_diff']:.3%}"
            print(f"  {r['layer']}: {detail}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
