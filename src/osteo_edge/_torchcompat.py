"""Make ``import torchvision`` (and so ``import timm``) work beside a CPU-only torch.

PyPI's torchvision wheels are built against CUDA torch. Next to the CPU torch build its compiled
extension cannot load, so the operator schemas it would register are missing and torchvision's
Python side dies at import with "operator torchvision::nms does not exist". timm imports
torchvision. When (and only when) those schemas are missing, we declare them ourselves before
torchvision is imported: timm models and transforms then work, while torchvision's compiled ops
(nms, roi_align, ...) stay unavailable; this product never calls them.

This runs only when a training/export code path asks for timm, never on ``import osteo_edge``.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType

log = logging.getLogger(__name__)

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library.Library alive for the life of the process


def _has_schema(name: str) -> bool:
    import torch

    return bool(torch._C._jit_get_schemas_for_operator(f"torchvision::{name}"))


def ensure_torchvision_importable() -> None:
    """Declare torchvision's missing operator schemas if its compiled extension cannot provide them."""
    global _LIBRARY
    if "torchvision" in sys.modules:
        return
    import torch

    missing = [n for n in _SCHEMAS if not _has_schema(n)]
    if not missing:
        return
    try:  # a working torchvision registers the schemas itself when its extension loads
        import importlib.util

        if importlib.util.find_spec("torchvision") is None:
            return
    except (ImportError, ValueError):
        return
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901
    for name in missing:
        if not _has_schema(name):
            _LIBRARY.define(_SCHEMAS[name])
    log.debug("declared torchvision operator schemas %s (CPU torch beside a CUDA torchvision)", missing)


def import_timm() -> ModuleType:
    """Import timm, first making torchvision importable; a missing extra is a one-line error."""
    from .errors import require

    require("torch", "train")
    ensure_torchvision_importable()
    return require("timm", "train")
