"""A release recipe: the options of every step of ``osteo-edge release``, from a YAML or JSON file.

::

    name: E1-per-source            # recorded in the step log and, with a CV result, the manifests
    train:                         # osteo-edge train options (train/config.py's TrainConfig fields)
      arch: efficientnet_lite0
      weights: imagenet
      epochs: 10
      lr: 5.0e-4
    quantize:                      # osteo-edge quantize options; null: export the fp32 run itself
      method: qat
      epochs: 3
      lr: 1.0e-5
    export:                        # osteo-edge export options for both files
      weights_only: true           # the int8 file: int8 weights, float activations (or the full-integer route's budget:)
      max_p95_dp: 0.04
    gate:                          # osteo-edge gate calibrate options
      crossfit: true
      non_knee: [../shared/data/spine/sriher]
    parity:                        # osteo-edge parity options (candidate: int8, reference: fp32)
      pool: runs/model/audit/groups.csv
      pool_members: all
    cv_result: benchmarks/model/results/E1-per-source.json   # evaluate --cv's JSON: its row into the manifests

Every section is optional; a missing one takes the commands' defaults. Paths are as typed (relative to
the working directory). Unknown keys are refused, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, require

QUANTIZE_KEYS = ("method", "epochs", "calib_size", "lr", "batch_size", "fold_bn", "distill", "max_steps")
EXPORT_KEYS = ("calib_size", "golden", "max_p95_dp", "max_abs_dp", "max_float_ops", "weights_only", "gray_fold", "threads", "calibration")
GATE_KEYS = ("crossfit", "non_knee", "synthetic", "package_images", "min_accept")
PARITY_KEYS = ("pool", "pool_members", "subset", "explain", "threads", "max_drop", "min_agreement", "min_decision_agreement",
               "max_p95_dp", "max_abs_dp", "must_pass")
DEFAULT_QUANTIZE = {"method": "qat", "epochs": 3, "lr": 1e-5}
DEFAULT_GATE = {"crossfit": True}


def _section(data: Mapping[str, Any], name: str, keys: tuple[str, ...], default: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if name not in data:
        return dict(default) if default is not None else {}
    value = data[name]
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"recipe '{name}' must be a mapping of options, got {type(value).__name__}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ConfigError(f"recipe '{name}': unknown option(s) {unknown}; valid: {', '.join(keys)}")
    return {**(default or {}), **dict(value)}


@dataclass(frozen=True)
class Recipe:
    name: str = "release"
    train: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_QUANTIZE))
    export: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_GATE))
    parity: dict[str, Any] = field(default_factory=dict)
    cv_result: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"recipe: unknown section(s) {unknown}; valid: {', '.join(sorted(known))}")
        train = dict(data.get("train") or {})
        if "split" in train or "out" in train:
            raise ConfigError("recipe 'train' must not name split or out: give --split and --out to osteo-edge release")
        from ..train.config import resolve_config

        resolve_config(None, {**train, "split": "x"})  # validates every train option now, not after minutes of work
        gate = _section(data, "gate", GATE_KEYS, DEFAULT_GATE)
        if gate is None:
            raise ConfigError("recipe 'gate' cannot be null: a released bundle carries its input gate")
        return cls(name=str(data.get("name") or "release"), train=train,
                   quantize=_section(data, "quantize", QUANTIZE_KEYS, DEFAULT_QUANTIZE),
                   export=_section(data, "export", EXPORT_KEYS, {}) or {}, gate=gate,
                   parity=_section(data, "parity", PARITY_KEYS, {}) or {},
                   cv_result=str(data["cv_result"]) if data.get("cv_result") else None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_recipe(path: str | os.PathLike | None) -> Recipe:
    """A recipe from a YAML (.yaml/.yml) or JSON file; ``None``: every command's defaults."""
    if path is None:
        return Recipe.from_dict({})
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--recipe {p}: no such file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            data = require("yaml", "train").safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: one line, naming the file
        raise ConfigError(f"--recipe {p}: not valid {p.suffix.lstrip('.') or 'JSON'} ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"--recipe {p}: expected a mapping of sections (train, quantize, export, gate, parity)")
    return Recipe.from_dict(data)
