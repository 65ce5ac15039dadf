"""Structured channel pruning with torch-pruning (channels really removed), then fine-tuning.

torch-pruning builds a dependency graph of the network, so depthwise convolutions, squeeze-excite
and residual additions are pruned consistently. Channels are ranked per layer group by L2
magnitude and ``ratio`` of them removed (the classifier is kept whole); BatchNorm statistics are
re-estimated on training images (the inputs of every later layer changed), and the model is then
fine-tuned on the training split (best epoch by validation accuracy). Parameters, MACs, weight
size, torch CPU latency (same process, same threads, before and after) and validation accuracy are
recorded in the bundle's ``pruning`` record; :func:`osteo_edge.modeling.loading.load_run` rebuilds
the pruned shapes from ``model.pt``.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..artifact import Bundle, atomic_path, atomic_write_text, load_bundle, runtime_versions, seal, write_bundle_dir
from ..core.progress import Progress
from ..errors import ConfigError, ExportError, require
from ..modeling.inference import predict_logits
from .finetune import FinetuneConfig, finetune, latency_ms, load_split_data, quick_metrics, recalibrate_batchnorm
from ..modeling.loading import load_run
from .quantize import history_csv

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    bundle: Bundle
    before: dict[str, Any]
    after: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


def _state_bytes(model: Any) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def measure(model: Any, example: Any, tp: Any, val_logits_fn: Callable[[], Any], targets: Any, latency_runs: int) -> dict[str, Any]:
    macs, params = tp.utils.count_ops_and_params(model, example)
    return {
        "params": int(params),
        "macs": int(macs),
        "weights_bytes": _state_bytes(model),
        "torch_latency_ms": latency_ms(model, example, runs=latency_runs),
        "val": quick_metrics(val_logits_fn(), targets),
    }


def prune_run(
    run_dir: str | os.PathLike,
    split: str | os.PathLike,
    out: str | os.PathLike,
    ratio: float = 0.3,
    finetune_epochs: int = 3,
    lr: float = 3e-4,
    batch_size: int = 16,
    round_to: int | None = 8,
    latency_runs: int = 30,
    recalibrate_bn: bool = True,
    max_steps: int | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> PruneResult:
    """Prune ``ratio`` of the channels of ``run_dir``, fine-tune, and write the pruned run ``out``."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--ratio must be in (0, 1), got {ratio}")
    torch = require("torch", "compress")
    tp = require("torch_pruning", "compress")
    from ..modeling.calibration import fit_temperature

    t0 = time.perf_counter()
    cfg = FinetuneConfig(epochs=finetune_epochs, lr=lr, batch_size=batch_size, max_steps=max_steps)
    model, parent = load_run(run_dir)
    if parent.compression is not None:
        log.warning("%s is already quantization-tuned; prune the float run first, then quantize", run_dir)
    spec = parent.spec.with_layout("NCHW")
    data = load_split_data(split, parent.labels, spec)
    example = torch.zeros((1, spec.channels, spec.input_size, spec.input_size))
    before = measure(model, example, tp, lambda: predict_logits(model, data.val), data.val.targets, latency_runs)
    _prune_channels(model, example, tp, ratio, round_to)
    after, n_recal, history = _recover(model, example, tp, data, cfg, recalibrate_bn, latency_runs, progress)
    temperature = fit_temperature(predict_logits(model, data.val), data.val.targets)
    record = _pruning_record(tp, ratio, round_to, cfg, n_recal, before, after)
    _write_pruned(out, model, example, parent, spec, split, data, temperature, record, history, command)
    bundle = load_bundle(out)
    return PruneResult(bundle=bundle, before=before, after=after, history=history, seconds=time.perf_counter() - t0)


def _pruning_record(
    tp: Any, ratio: float, round_to: int | None, cfg: FinetuneConfig, n_recal: int, before: dict[str, Any], after: dict[str, Any],
) -> dict[str, Any]:
    """The bundle's ``pruning`` record: method, fine-tuning, measurements before and after, their ratios."""
    return {
        "ratio": ratio,
        "method": f"torch-pruning {getattr(tp, '__version__', '?')} MetaPruner, GroupMagnitudeImportance(p=2), round_to={round_to}, classifier kept",
        "finetune": {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "bn": "frozen",
                     "bn_recalibrated_on_train_images": n_recal},
        "before": before,
        "after": after,
        "macs_reduction": 1.0 - after["macs"] / before["macs"],
        "params_reduction": 1.0 - after["params"] / before["params"],
        "torch_speedup_p50": before["torch_latency_ms"]["p50"] / after["torch_latency_ms"]["p50"],
        "note": "latency: torch eager CPU, batch 1, measured before and after in the same process",
    }


def _prune_channels(model: Any, example: Any, tp: Any, ratio: float, round_to: int | None) -> None:
    """Remove ``ratio`` of the channels of every layer group (L2 magnitude), the classifier kept whole."""
    import torch

    from ..modeling.models import classifier_module

    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=[classifier_module(model)], round_to=round_to,
        )
        pruner.step()
    except Exception as exc:  # torch-pruning raises many types on unsupported graphs
        raise ExportError(f"torch-pruning failed on {type(model).__name__}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    model.eval()
    with torch.no_grad():
        model(example)  # the pruned graph must still run


def _recover(
    model: Any, example: Any, tp: Any, data: Any, cfg: FinetuneConfig, recalibrate_bn: bool, latency_runs: int,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
    """BatchNorm re-estimation and fine-tuning of the pruned model; returns ``(after, images, history)``
    where ``after`` holds the measurements, with the validation metrics at each step on the way."""
    pruned_only = quick_metrics(predict_logits(model, data.val), data.val.targets)
    n_recal = recalibrate_batchnorm(model, data.train) if recalibrate_bn else 0
    recalibrated = quick_metrics(predict_logits(model, data.val), data.val.targets) if n_recal else None
    history = finetune(model, data, cfg, progress=progress)
    after = measure(model, example, tp, lambda: predict_logits(model, data.val), data.val.targets, latency_runs)
    after["val_before_finetune"] = pruned_only
    after["val_after_bn_recalibration"] = recalibrated
    return after, n_recal, history


def _write_pruned(
    out: str | os.PathLike, model: Any, example: Any, parent: Bundle, spec: Any, split: str | os.PathLike, data: Any,
    temperature: float, record: dict[str, Any], history: list[dict[str, Any]], command: str | None,
) -> None:
    """Seal the pruned run in a temporary directory, check that it reloads to the same model, move it to ``out``."""
    import torch

    def build(tmp: Path) -> None:
        with atomic_path(tmp / "model.pt") as p:
            torch.save(model.state_dict(), p)
        atomic_write_text(tmp / "history.csv", history_csv(history))
        provenance = parent.child_provenance(tmp, command).to_dict()
        provenance.update({
            "split_csv": str(split), "split_sha256": data.split_sha256, "protocol": data.protocol or provenance.get("protocol", ""),
        })
        seal(tmp, format="torch", model_file="model.pt", labels=parent.labels, spec=spec, temperature=temperature,
             thresholds=parent.thresholds, metrics={"val": record["after"]["val"], "parent": parent.metrics.raw}, provenance=provenance,
             versions=runtime_versions(("torch", "timm", "torch-pruning")),
             extra={"arch": parent.arch.to_dict() if parent.arch else None, "pruning": record})

        # the bundle must rebuild before it is moved into place: load_run reshapes the architecture
        reloaded, _ = load_run(tmp)
        with torch.no_grad():
            diff = float((reloaded(example) - model(example)).abs().max())
        if diff > 1e-4:
            raise ExportError(f"the pruned bundle does not reload to the same model (max output difference {diff:.3g})")

    write_bundle_dir(out, build)
