"""int8 quantization of a trained run with NNCF: post-training (PTQ) or quantization-aware (QAT).

Steps (each returns numbers that land in the output bundle):

1. load the run; fold every BatchNorm scale into its convolution (architecture unchanged), so the
   weight quantizer sees the weights the exported graph will hold;
2. ``nncf.quantize`` with calibration images from the TRAINING split through the shared
   preprocessing (per-channel symmetric int8 weights, asymmetric int8 activations: preset MIXED);
3. ``qat`` only: fine-tune the quantized model at a small learning rate (BatchNorm frozen), keeping
   the best epoch by validation accuracy;
4. bake: the weights are replaced by their int8-grid values (``nncf.strip(..., IN_PLACE)``) and saved
   as an ordinary torch state dict for the same architecture (``model.pt``), with the NNCF state
   beside it. ``osteo-edge export --int8`` then re-quantizes these tuned weights with the target's
   own quantizer (ONNX Runtime QDQ or the TFLite full-integer converter): NNCF's own graphs do not
   reach a full-integer TFLite file (see docs/export.md).

The output is a torch run bundle (format ``torch``) with a ``compression`` record; its
``temperature`` is refitted on validation for the tuned weights.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Bundle, atomic_path, atomic_write_text, load_bundle, runtime_versions, seal, write_bundle_dir
from ..core.progress import Progress
from ..errors import ConfigError, ExportError, choice_error, require
from ..modeling.inference import predict_logits
from .finetune import FinetuneConfig, finetune, load_split_data, quick_metrics
from ..modeling.loading import load_run
from .surgery import fold_batchnorm

log = logging.getLogger(__name__)

METHODS = ("qat", "ptq")


def refit_thresholds(parent: Bundle, val_logits: np.ndarray, y_val: np.ndarray, temperature: float) -> tuple[dict[str, float], dict[str, Any]]:
    """The low-BMD threshold refitted for the tuned weights and their temperature, by the parent's own
    rule (the highest threshold with validation sensitivity >= the parent's target): a threshold chosen
    for other probabilities would not give the sensitivity the manifest promises."""
    from ..core.classification import fit_low_bmd_threshold
    from ..core.stats import softmax

    thresholds = dict(parent.thresholds or {})
    target = parent.calibration.target_sensitivity
    choice = fit_low_bmd_threshold(softmax(val_logits, temperature), y_val, parent.labels, target)
    if choice is None or "low_bmd" not in thresholds:
        return thresholds, {"refitted": False}
    record = {"refitted": True, "parent_low_bmd": thresholds["low_bmd"], **choice, "fitted_on": "val",
              "method": f"highest threshold with validation sensitivity >= {target:g} (the parent's rule)"}
    thresholds["low_bmd"] = float(choice["threshold"])
    return thresholds, record


@dataclass
class QuantizeResult:
    bundle: Bundle
    method: str
    val: dict[str, dict[str, float]]  # "float", "int8_simulated", "baked_float"
    history: list[dict[str, Any]]
    seconds: float


def _nncf_dataset(nncf: Any, data: Any, n: int) -> Any:
    import torch

    from ..modeling.calibration import pick_rows

    rows = pick_rows(data.train.rows, n, seed=1)
    index = {id(r): i for i, r in enumerate(data.train.rows)}
    items = [torch.from_numpy(np.ascontiguousarray(_plain(data.train, index[id(r)]))[None]) for r in rows]
    return nncf.Dataset(items), len(items)


def _plain(dataset: Any, i: int) -> np.ndarray:
    """The un-augmented model input of row ``i`` (calibration never sees augmentation)."""
    from ..preprocess import finalize

    return finalize(dataset.resized(i), dataset.spec)


WEIGHT_HOOK_PREFIX = "__nncf_hooks.pre_hooks."


def bake_weights(qmodel: Any, own_keys: list[str]) -> tuple[dict[str, Any], int]:
    """The architecture's state dict from an NNCF-quantized model, each quantized weight replaced by
    its fake-quantized (int8-grid) value. Returns ``(state, number of weights baked)``.

    NNCF 3.x (function hooks) keeps the original modules and puts weight quantizers in pre-hooks
    named ``<module path with '/'>/<op>/<call>__<port>``; port 1 of conv2d/linear is the weight.
    (``nncf.strip(..., IN_PLACE)`` does the same but needs torchao, which this project does not pull in.)
    """
    import torch

    keyset = set(own_keys)
    state = {k: v.detach().clone() for k, v in qmodel.state_dict().items() if k in keyset}
    missing = [k for k in own_keys if k not in state]
    if missing:
        raise ExportError(f"the quantized model lacks {len(missing)} weights of the architecture (e.g. {missing[0]!r})")
    baked = 0
    for name, mod in qmodel.named_modules():
        if not name.startswith(WEIGHT_HOOK_PREFIX) or not name.endswith("__1.0"):
            continue
        parts = name[len(WEIGHT_HOOK_PREFIX) : -len(".0")].rsplit("__", 1)[0].split("/")
        key = next((".".join(parts[:k]) + ".weight" for k in range(len(parts), 0, -1) if ".".join(parts[:k]) + ".weight" in state), None)
        if key is None:
            raise ExportError(f"cannot find the weight that NNCF quantizer {name!r} acts on")
        with torch.no_grad():
            state[key] = mod(state[key]).detach().clone()
        baked += 1
    if baked == 0:
        raise ExportError("the NNCF model has no weight quantizers to bake (unexpected NNCF version?)")
    return state, baked


def history_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = list(history[0]) if history else []
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow(row)
    return buf.getvalue()


def quantize_run(
    run_dir: str | os.PathLike,
    split: str | os.PathLike,
    out: str | os.PathLike,
    method: str = "qat",
    epochs: int = 2,
    calib_size: int = 300,
    lr: float = 1e-5,
    batch_size: int = 16,
    fold_bn: bool = True,
    distill: float = 0.0,
    max_steps: int | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Quantize ``run_dir`` (NNCF PTQ or QAT) and write the tuned run bundle ``out``."""
    if method not in METHODS:
        raise choice_error("quantization method", method, METHODS)
    if calib_size < 1:
        raise ConfigError(f"--calib-size must be at least 1, got {calib_size}")
    torch = require("torch", "compress")
    nncf = require("nncf", "compress")
    from ..modeling.calibration import fit_temperature

    t0 = time.perf_counter()
    cfg = FinetuneConfig(epochs=epochs if method == "qat" else 0, lr=lr, batch_size=batch_size, max_steps=max_steps, distill=distill)
    model, parent = load_run(run_dir)
    spec = parent.spec.with_layout("NCHW")
    data = load_split_data(split, parent.labels, spec)
    val: dict[str, dict[str, float]] = {"float": quick_metrics(predict_logits(model, data.val), data.val.targets)}
    folded = fold_batchnorm(model, torch.randn((2, spec.channels, spec.input_size, spec.input_size))) if fold_bn else 0
    teacher = _frozen_copy(model) if method == "qat" and distill > 0 else None  # the float model, the target of the distillation
    qmodel, n_calib, history = _quantize_and_tune(nncf, model, data, cfg, calib_size, val, teacher, progress)

    state, n_baked = bake_weights(qmodel, list(model.state_dict().keys()))
    model.load_state_dict(state, strict=True)
    val_logits = predict_logits(model, data.val)
    val["baked_float"] = quick_metrics(val_logits, data.val.targets)
    temperature = fit_temperature(val_logits, data.val.targets)
    thresholds, refit = refit_thresholds(parent, val_logits, data.val.targets, temperature)

    compression = _compression_record(nncf, method, cfg, folded, n_baked, n_calib, data.split_sha256, val, history)
    compression["thresholds_refitted"] = refit
    _write_quantized(out, state, qmodel, parent, spec, split, data, temperature, compression, history, command, thresholds)
    return QuantizeResult(bundle=load_bundle(out), method=method, val=val, history=history, seconds=time.perf_counter() - t0)


def _compression_record(
    nncf: Any, method: str, cfg: FinetuneConfig, folded: int, n_baked: int, n_calib: int, split_sha256: str,
    val: dict[str, dict[str, float]], history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The bundle's ``compression`` record: quantizer, calibration, fine-tuning and the validation metrics at each step."""
    return {
        "method": method,
        "quantizer": f"nncf {nncf.__version__} (preset mixed: per-channel symmetric int8 weights, asymmetric int8 activations)",
        "batchnorm_folded": folded,
        "weights_baked": n_baked,
        "calibration": {"subset": "train", "n": n_calib, "split_sha256": split_sha256},
        "finetune": {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "bn": "frozen", "distill_from_float_parent": cfg.distill, "best_epoch": max(history, key=lambda h: (h["accuracy"], -h["nll"]))["epoch"]} if method == "qat" else None,
        "val": val,
        "weights": "model.pt holds the tuned float weights, BatchNorm scales folded, rounded to the NNCF int8 grid; export --int8 re-quantizes them with the target's quantizer",
    }


def _frozen_copy(model: Any) -> Any:
    import copy

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _quantize_and_tune(
    nncf: Any, model: Any, data: Any, cfg: FinetuneConfig, calib_size: int, val: dict[str, dict[str, float]], teacher: Any,
    progress: Progress | None,
) -> tuple[Any, int, list[dict[str, Any]]]:
    """``nncf.quantize`` on training images, then (QAT: ``cfg.epochs`` > 0) fine-tuning; the simulated int8
    validation metrics before and after go into ``val``. Returns ``(quantized model, calibration images, history)``."""
    dataset, n_calib = _nncf_dataset(nncf, data, calib_size)
    if progress:
        progress(f"calibrating on {n_calib} training images (nncf.quantize)", 0, None)
    try:
        qmodel = nncf.quantize(model, dataset, subset_size=n_calib, preset=nncf.QuantizationPreset.MIXED)
    except Exception as exc:
        raise ExportError(f"nncf.quantize failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    if progress:
        progress("validating the int8 model", 0, None)
    val["int8_simulated_before_qat"] = quick_metrics(predict_logits(qmodel, data.val), data.val.targets)
    history = finetune(qmodel, data, cfg, progress=progress, teacher=teacher)
    val["int8_simulated"] = quick_metrics(predict_logits(qmodel, data.val), data.val.targets)
    return qmodel, n_calib, history


def _write_quantized(
    out: str | os.PathLike, state: dict[str, Any], qmodel: Any, parent: Bundle, spec: Any, split: str | os.PathLike, data: Any,
    temperature: float, compression: dict[str, Any], history: list[dict[str, Any]], command: str | None,
    thresholds: dict[str, float] | None = None,
) -> None:
    """Seal the tuned run (``model.pt``, ``nncf_state.pt``, history) in a temporary directory, then move it to ``out``."""
    import torch

    def build(tmp: Path) -> None:
        with atomic_path(tmp / "model.pt") as p:
            torch.save(state, p)
        with atomic_path(tmp / "nncf_state.pt") as p:
            torch.save({k: v for k, v in qmodel.state_dict().items() if isinstance(v, torch.Tensor)}, p)
        atomic_write_text(tmp / "history.csv", history_csv(history))
        provenance = parent.child_provenance(tmp, command).to_dict()
        provenance.update({
            "split_csv": str(split), "split_sha256": data.split_sha256, "protocol": data.protocol or provenance.get("protocol", ""),
        })
        seal(tmp, format="torch", model_file="model.pt", labels=parent.labels, spec=spec, temperature=temperature,
             thresholds=thresholds if thresholds is not None else parent.thresholds, metrics={"val": compression["val"], "parent": parent.metrics.raw}, provenance=provenance,
             versions=runtime_versions(("torch", "timm", "nncf")),
             extra={"arch": parent.arch.to_dict() if parent.arch else None, "compression": compression,
                    **({"pruning": dict(parent.pruning)} if parent.pruning is not None else {})})

    write_bundle_dir(out, build)
