"""Load any torch run (trained, quantization-tuned or pruned) and the model surgery compression needs.

A pruned run cannot be rebuilt from its architecture name alone: its convolutions have fewer
channels. Its manifest carries a ``"pruning"`` record, and :func:`load_run` rebuilds the
architecture, then resizes every convolution, batch norm and linear layer to the shapes stored in
``model.pt`` before loading it strictly. Everything else goes through
:func:`osteo_edge.train.models.load_model`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from ..artifact import Bundle, load_bundle
from ..errors import BundleError, ExportError, require

log = logging.getLogger(__name__)


def load_run(run_dir: str | os.PathLike) -> tuple[Any, Bundle]:
    """``(model in eval mode, verified Bundle)`` for a torch run, pruned or not."""
    torch = require("torch", "train")
    from ..train.models import build_model, load_model

    bundle = load_bundle(run_dir)
    if bundle.format != "torch":
        raise BundleError(
            f"{run_dir}: bundle format {bundle.format!r} is not a torch run; export, quantize, prune and "
            "parity --reference need a run made by 'osteo-edge train', 'quantize' or 'prune'"
        )
    if "pruning" not in bundle.manifest:
        return load_model(run_dir)
    arch = bundle.manifest.get("arch")
    if not isinstance(arch, dict) or "name" not in arch or "num_classes" not in arch:
        raise BundleError(f"{run_dir}: manifest has no 'arch' record (name, num_classes) to rebuild the model")
    kw = {k: v for k, v in arch.items() if k not in ("name", "num_classes", "timm_name")}
    model = build_model(arch["name"], int(arch["num_classes"]), weights="none", **kw)
    state = torch.load(bundle.model_path, map_location="cpu", weights_only=True)
    reshape_to_state_dict(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{run_dir}: pruned weights do not fit arch {arch['name']} ({str(exc).splitlines()[0]})") from exc
    return model.eval(), bundle


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


def _conv_bn_pairs(model: Any) -> list[tuple[Any, Any]]:
    """(conv, bn) pairs where a BatchNorm directly follows a Conv2d in module order with matching width."""
    import torch.nn as nn

    pairs, last_conv = [], None
    for _, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            last_conv = mod
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if last_conv is not None and last_conv.out_channels == mod.num_features and mod.affine:
                pairs.append((last_conv, mod))
            last_conv = None
        elif len(list(mod.children())) == 0 and not isinstance(mod, (nn.Identity, nn.Dropout)):
            last_conv = None  # any other leaf (activation, pooling) between conv and BN breaks the pairing
    return pairs


def fold_batchnorm(model: Any, example: Any, atol: float = 1e-4) -> int:
    """Fold every BatchNorm scale into the preceding convolution, in place, keeping the architecture.

    Each BN keeps only its shift (weight 1, mean 0, var 1 - eps), so the state dict still fits the
    architecture, the eval-mode function is unchanged (checked on ``example``), and a weight
    quantizer sees exactly the weights the exported graph will hold. Returns the pairs folded.
    BN layers must stay in eval mode afterwards (fine-tuning freezes them).
    """
    import torch

    model.eval()
    with torch.no_grad():
        before = model(example)
        pairs = _conv_bn_pairs(model)
        for conv, bn in pairs:
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma, beta = bn.weight, bn.bias
            scale = gamma / std
            conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            shift = beta - bn.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(shift)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        after = model(example)
    err = float((after - before).abs().max())
    scale = float(before.abs().max()) + 1.0
    if err > atol * scale:
        raise ExportError(f"BatchNorm folding changed the model output by {err:.3g} (tolerance {atol * scale:.3g}); the conv/BN pairing is wrong for this architecture")
    log.info("folded %d BatchNorm layers into their convolutions (max output change %.2g)", len(pairs), err)
    return len(pairs)


def freeze_batchnorm(model: Any) -> None:
    """Put every BatchNorm in eval mode with frozen scale (for fine-tuning folded models)."""
    import torch.nn as nn

    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()
            if mod.weight is not None:
                mod.weight.requires_grad_(False)
