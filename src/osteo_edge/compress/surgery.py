"""Model surgery that compression needs: BatchNorm folding and freezing.

(Loading a run, pruned or not, is :func:`osteo_edge.modeling.loading.load_run`.)
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ExportError

log = logging.getLogger(__name__)


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
