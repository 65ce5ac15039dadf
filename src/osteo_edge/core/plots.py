"""Figure helpers shared by every report writer (matplotlib's object API, no pyplot global state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import require


def new_figure(w: float = 7.0, h: float = 4.0) -> Any:
    """A matplotlib Figure attached to an Agg canvas, without touching pyplot's global state."""
    require("matplotlib", "data")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (a crash never leaves a half-written file)."""
    from ..artifact import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
