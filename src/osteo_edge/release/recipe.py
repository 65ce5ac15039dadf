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

_I, _F, _B, _S, _L = "int", "float", "bool", "str", "list"  # the type each option takes (None: the command's default)
QUANTIZE_TYPES = {"method": _S, "epochs": _I, "calib_size": _I, "lr": _F, "batch_size": _I, "fold_bn": _B, "distill": _F, "max_steps": _I}
EXPORT_TYPES = {"calib_size": _I, "golden": _I, "max_p95_dp": _F, "max_abs_dp": _F, "max_float_ops": _I, "weights_only": _B,
                "gray_fold": _B, "threads": _I, "calibration": _S}
GATE_TYPES = {"crossfit": _B, "non_knee": _L, "synthetic": _I, "package_images": _B, "min_accept": _F}
PARITY_TYPES = {"pool": _S, "pool_members": _S, "subset": _S, "explain": _B, "threads": _I, "max_drop": _F, "min_agreement": _F,
                "min_decision_agreement": _F, "max_p95_dp": _F, "max_abs_dp": _F, "must_pass": _B}
QUANTIZE_KEYS, EXPORT_KEYS, GATE_KEYS, PARITY_KEYS = (tuple(t) for t in (QUANTIZE_TYPES, EXPORT_TYPES, GATE_TYPES, PARITY_TYPES))
DEFAULT_QUANTIZE = {"method": "qat", "epochs": 3, "lr": 1e-5}
DEFAULT_GATE = {"crossfit": True}


def _typed(section: str, key: str, value: Any, kind: str) -> Any:
    """``value`` when it is of ``kind`` (an int is a float; one path is a list of one), else a one-line refusal."""
    if value is None and key in ("max_steps", "threads", "pool"):
        return None
    ok = {_I: isinstance(value, int) and not isinstance(value, bool), _F: isinstance(value, (int, float)) and not isinstance(value, bool),
          _B: isinstance(value, bool), _S: isinstance(value, str)}.get(kind)
    if kind == _L:
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        want = {_I: "an integer", _F: "a number", _B: "true or false", _S: "a string", _L: "a list of folders"}[kind]
        raise ConfigError(f"recipe '{section}': option {key!r} must be {want}, got {value!r}")
    return float(value) if kind == _F else value


def _section(data: Mapping[str, Any], name: str, types: Mapping[str, str], default: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if name not in data:
        return dict(default) if default is not None else {}
    value = data[name]
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"recipe '{name}' must be a mapping of options, got {type(value).__name__}")
    unknown = sorted(set(value) - set(types))
    if unknown:
        raise ConfigError(f"recipe '{name}': unknown option(s) {unknown}; valid: {', '.join(types)}")
    return {**(default or {}), **{k: _typed(name, k, v, types[k]) for k, v in value.items()}}


def _check_values(quantize: Mapping[str, Any] | None, export: Mapping[str, Any], gate: Mapping[str, Any], parity: Mapping[str, Any]) -> None:
    """The options' values, refused in one line now rather than when their step runs after training."""
    from ..export.fidelity import FidelityBudget
    from ..export.parity import Gates
    from ..export.pool import POOL_MEMBERS

    if quantize is not None and quantize.get("method", "qat") not in ("qat", "ptq"):
        raise ConfigError(f"recipe 'quantize': method {quantize['method']!r}; valid: qat, ptq")
    try:
        FidelityBudget(**{k: export[k] for k in ("max_p95_dp", "max_abs_dp", "max_float_ops", "weights_only") if k in export})
    except ConfigError as exc:
        raise ConfigError(f"recipe 'export': {exc}") from exc
    try:
        Gates(**{k: parity[k] for k in ("max_drop", "min_agreement", "min_decision_agreement", "max_p95_dp", "max_abs_dp") if k in parity})
    except ConfigError as exc:
        raise ConfigError(f"recipe 'parity': {exc}") from exc
    for section, opts, keys in (("quantize", quantize or {}, ("epochs", "calib_size", "batch_size")),
                                ("export", export, ("calib_size", "golden", "threads")), ("gate", gate, ("synthetic",)),
                                ("parity", parity, ("threads",))):
        for k in keys:
            if opts.get(k) is not None and opts[k] < (0 if k in ("epochs", "synthetic") else 1):
                raise ConfigError(f"recipe '{section}': option {k!r} must be at least {0 if k in ('epochs', 'synthetic') else 1}, got {opts[k]}")
    if not 0.5 <= gate.get("min_accept", 0.99) <= 1:
        raise ConfigError(f"recipe 'gate': min_accept must be in [0.5, 1], got {gate['min_accept']}")
    if export.get("calibration", "split") not in ("split", "synthetic"):
        raise ConfigError(f"recipe 'export': calibration {export['calibration']!r}; valid: split, synthetic")
    if parity.get("subset", "test") not in ("test", "val"):
        raise ConfigError(f"recipe 'parity': subset {parity['subset']!r}; valid: test, val")
    if parity.get("pool_members", "one") not in POOL_MEMBERS:
        raise ConfigError(f"recipe 'parity': pool_members {parity['pool_members']!r}; valid: {', '.join(POOL_MEMBERS)}")


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
        if not isinstance(data.get("train") or {}, Mapping):
            raise ConfigError(f"recipe 'train' must be a mapping of options, got {type(data['train']).__name__}")
        train = dict(data.get("train") or {})
        if "split" in train or "out" in train:
            raise ConfigError("recipe 'train' must not name split or out: give --split and --out to osteo-edge release")
        from ..train.config import resolve_config

        try:  # every train option now, not after minutes of work
            resolve_config(None, {**train, "split": "x"})
        except ConfigError as exc:
            raise ConfigError(f"recipe 'train': {str(exc).removeprefix('options: ')}") from exc
        gate = _section(data, "gate", GATE_TYPES, DEFAULT_GATE)
        if gate is None:
            raise ConfigError("recipe 'gate' cannot be null: a released bundle carries its input gate")
        quantize = _section(data, "quantize", QUANTIZE_TYPES, DEFAULT_QUANTIZE)
        export = _section(data, "export", EXPORT_TYPES, {}) or {}
        parity = _section(data, "parity", PARITY_TYPES, {}) or {}
        _check_values(quantize, export, gate, parity)
        return cls(name=str(data.get("name") or "release"), train=train, quantize=quantize, export=export, gate=gate, parity=parity,
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
    is_yaml = p.suffix.lower() in (".yaml", ".yml")
    try:
        text = p.read_text(encoding="utf-8")
        data = require("yaml", "train").safe_load(text) if is_yaml else json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError / UnicodeDecodeError: one line, naming the file
        what = "YAML" if is_yaml else "JSON" + ("" if p.suffix.lower() == ".json" else " (a recipe is .yaml, .yml or .json)")
        raise ConfigError(f"--recipe {p}: not valid {what} ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"--recipe {p}: expected a mapping of sections (train, quantize, export, gate, parity)")
    return Recipe.from_dict(data)
