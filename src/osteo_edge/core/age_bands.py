"""Age bands: the one definition behind every subgroup report (training's ``evaluate --subgroups age``
and the tabular bias analysis).

Edges 40, 50, 60, 70: bands ``<40``, ``40-49``, ``50-59``, ``60-69``, ``70+``. 50 is the edge that
matters clinically (the densitometry convention: T-score criteria from 50 and after menopause,
Z-scores below); 40 separates young adults, whose low bone density is rare and mostly secondary, and
both public cohorts have them (36 of the 208 Wani patients, 1265 of the 1958 lifestyle rows), so
the band is neither empty nor folded into the perimenopausal decade.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

AGE_EDGES = (40.0, 50.0, 60.0, 70.0)
UNKNOWN = "unknown"


def age_band(age: Any, edges: Sequence[float] = AGE_EDGES, unknown: str = UNKNOWN) -> str:
    """The band of ``age`` (``<40``, ``40-49``, ..., ``70+`` for the default edges); ``unknown`` when
    the age is not a number."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return unknown
    if math.isnan(a):
        return unknown
    fmt = lambda v: f"{v:g}"  # noqa: E731
    if a < edges[0]:
        return f"<{fmt(edges[0])}"
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= a < hi:
            return f"{fmt(lo)}-{fmt(hi - 1) if float(hi).is_integer() and float(lo).is_integer() else fmt(hi)}"
    return f"{fmt(edges[-1])}+"


def band_order(edges: Sequence[float] = AGE_EDGES, unknown: str = UNKNOWN) -> list[str]:
    """Every band of ``edges`` youngest first, then ``unknown``."""
    probe = [edges[0] - 1] + list(edges)
    return [age_band(a, edges) for a in probe] + [unknown]
