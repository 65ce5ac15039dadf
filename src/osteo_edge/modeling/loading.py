"""The one torch-side loader: rebuild any torch run (trained, quantization-tuned or pruned).

The manifest's ``arch`` record (see :func:`osteo_edge.modeling.models.arch_record_for_manifest`)
names the architecture and its constructor arguments. A pruned run cannot be rebuilt from that
alone: its convolutions have fewer channels. Its manifest carries a ``"pruning"`` record, and
:func:`load_run` then resizes every convolution, batch norm and linear layer to the shapes stored
in ``model.pt`` before loading it strictly.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from ..artifact import Bundle, load_bundle
from ..errors import BundleError, require
from .models import build_model

log = logging.getLogger(__name__)


def arch_from_manifest(run_dir: str | os.PathLike, bundle: Bundle) -> tuple[str, int, dict[str, Any]]:
    """``(name, num_classes, constructor kwargs)`` from the manifest's ``arch`` record, checked against the labels."""
    try:
        arch = bundle.arch
    except BundleError as exc:
        raise BundleError(f"{run_dir}: {exc}") from exc
    if arch is None:
        raise BundleError(f"{run_dir}: manifest has no 'arch' record (name, num_classes) to rebuild the model")
    if arch.num_classes != len(bundle.labels):
        raise BundleError(f"{run_dir}: arch has {arch.num_classes} classes but the manifest lists {len(bundle.labels)} labels")
    return arch.name, arch.num_classes, dict(arch.options)


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[Any, Bundle]:
    """``(model in eval mode on device, verified Bundle)`` for any torch run: plain, quantization-tuned or pruned."""
    torch = require("torch", "train")

    bundle = load_bundle(run_dir)  # verifies every checksum
    if bundle.format != "torch":
        raise BundleError(
            f"{run_dir}: bundle format {bundle.format!r} is not a torch run; evaluate, compare, export, quantize, prune "
            "and parity --reference need a run made by 'osteo-edge train', 'quantize' or 'prune'"
        )
    name, num_classes, kw = arch_from_manifest(run_dir, bundle)
    model = build_model(name, num_classes, weights="none", **kw)
    state = torch.load(bundle.model_path, map_location="cpu", weights_only=True)
    pruned = bundle.pruning is not None
    if pruned:
        reshape_to_state_dict(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        what = "pruned weights" if pruned else bundle.model_path.name
        raise BundleError(f"{run_dir}: {what} does not fit arch {name} ({str(exc).splitlines()[0]})") from exc
    model.to(device).eval()
    return model, bundle


def reshape_to_state_dict(model: Any, state: Mapping[str, Any]) -> int:
    """Resize Conv2d / BatchNorm / Linear layers in place to the shapes in ``state``; returns how many.

    Depthwise convolutions (groups == in == out channels) stay depthwise at the new width.
    """
    import torch
    import torch.nn as nn

    changed = 0
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        w = state.get(prefix + "weight")
        if w is None:
            continue
        if isinstance(mod, nn.Conv2d) and tuple(mod.weight.shape) != tuple(w.shape):
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            mod.out_channels = int(w.shape[0])
            if depthwise:
                mod.groups = mod.in_channels = int(w.shape[0])
            else:
                mod.in_channels = int(w.shape[1]) * mod.groups
            mod.weight = nn.Parameter(torch.empty_like(w))
            if mod.bias is not None:
                mod.bias = nn.Parameter(torch.empty(w.shape[0], dtype=w.dtype))
            changed += 1
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and tuple(mod.weight.shape) != tuple(w.shape):
            n = int(w.shape[0])
            mod.num_features = n
            mod.weight = nn.Parameter(torch.empty(n))
            mod.bias = nn.Parameter(torch.empty(n))
            mod.register_buffer("running_mean", torch.zeros(n))
            mod.register_buffer("running_var", torch.ones(n))
            changed += 1
        elif isinstance(mod, nn.Linear) and tuple(mod.weight.shape) != tuple(w.shape):
            mod.out_features, mod.in_features = int(w.shape[0]), int(w.shape[1])
            mod.weight = nn.Parameter(torch.empty_like(w))
            if mod.bias is not None:
                mod.bias = nn.Parameter(torch.empty(w.shape[0]))
            changed += 1
    return changed
