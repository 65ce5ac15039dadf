"""A small fine-tuning loop shared by QAT and pruning recovery, and the evaluation they report.

Samples come from :class:`osteo_edge.modeling.dataset.RadiographDataset` (the shared preprocessing with
the training augmentation between resize and finalize). Each epoch draws one file per duplicate
group of the training split (a different copy each epoch), so a radiograph with five copies does
not weigh five times. BatchNorm stays frozen (eval mode): batches are small and a folded model's
BN must not move. The best epoch by validation accuracy is kept.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..core.progress import Progress, fmt_duration
from ..errors import ConfigError, DataError, require

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    epochs: int = 2
    lr: float = 1e-5
    batch_size: int = 16
    weight_decay: float = 0.0
    augment: str = "light"
    seed: int = 0
    max_steps: int | None = None  # per epoch (tests)
    distill: float = 0.0  # weight of the KL loss to a teacher's outputs (0: labels only, 1: teacher only)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"distillation weight must be in [0, 1], got {self.distill}")


@dataclass
class SplitData:
    """The split subsets a compression step needs, as datasets over the model's spec."""

    train: Any
    val: Any
    labels: list[str]
    train_groups: np.ndarray
    protocol: str
    split_sha256: str
    split_csv: str
    info: dict[str, Any] = field(default_factory=dict)


def load_split_data(split_csv: str | os.PathLike, labels: Sequence[str], spec: Any, augment: str = "light", seed: int = 0) -> SplitData:
    from ..data.split import read_split
    from ..modeling.dataset import RadiographDataset, build_augmentation

    table = read_split(split_csv)
    train_rows, val_rows = table.train_val()
    if not train_rows:
        raise DataError(f"{split_csv}: the train subset is empty")
    if not val_rows:
        raise DataError(f"{split_csv}: the val subset is empty (compression picks its best epoch on it)")
    train = RadiographDataset(train_rows, labels, spec, augment=build_augmentation(augment), seed=seed)
    val = RadiographDataset(val_rows, labels, spec, augment=None)
    return SplitData(
        train=train, val=val, labels=list(labels),
        train_groups=np.array([r.group for r in train_rows]),
        protocol=table.info.get("protocol", ""), split_sha256=table.sha256, split_csv=str(split_csv),
    )


def quick_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    from ..core.classification import classification_metrics
    from ..core.stats import softmax

    m = classification_metrics(targets, softmax(logits), [str(i) for i in range(logits.shape[1])])
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "nll": m["nll"]}


def one_per_group(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random member index per group, shuffled."""
    order = rng.permutation(len(groups))
    _, first = np.unique(groups[order], return_index=True)
    picked = order[first]
    rng.shuffle(picked)
    return picked


def finetune(
    model: Any,
    data: SplitData,
    cfg: FinetuneConfig,
    progress: Progress | None = None,
    teacher: Any = None,
) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place; restores the best epoch (val accuracy). Returns the history.

    With ``teacher`` (e.g. the float parent of a quantized model) and ``cfg.distill > 0`` the loss
    mixes cross-entropy with the KL divergence to the teacher's softmax on the same batch, which
    pulls the student towards agreeing with the teacher, the quantity the parity gate measures.
    """
    torch = require("torch", "train")
    from ..modeling.dataset import class_weights
    from ..modeling.inference import predict_logits
    from .surgery import freeze_batchnorm

    history: list[dict[str, Any]] = []
    val_logits = predict_logits(model, data.val)
    best = {"epoch": 0, **quick_metrics(val_logits, data.val.targets)}
    history.append({**best, "train_loss": float("nan"), "seconds": 0.0})
    log.info("epoch 0 (before fine-tuning): val accuracy %.4f, macro-F1 %.4f", best["accuracy"], best["macro_f1"])
    if cfg.epochs == 0:
        return history
    best_state = copy.deepcopy(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = torch.from_numpy(class_weights(data.train.targets, len(data.labels)))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    rng = np.random.default_rng(cfg.seed)
    t_start, steps_done = time.perf_counter(), 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        data.train.epoch = epoch
        idx = one_per_group(data.train_groups, rng)
        steps = int(np.ceil(len(idx) / cfg.batch_size))
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps)
        model.train()
        freeze_batchnorm(model)
        losses = []
        for s in range(steps):
            b = idx[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb = torch.from_numpy(np.stack([data.train.array(int(i)) for i in b]))
            yb = torch.from_numpy(data.train.targets[b])
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            if teacher is not None and cfg.distill > 0:
                with torch.no_grad():
                    target = torch.softmax(teacher(xb), dim=1)
                kd = torch.nn.functional.kl_div(torch.log_softmax(logits, dim=1), target, reduction="batchmean")
                loss = (1.0 - cfg.distill) * loss + cfg.distill * kd
            if not torch.isfinite(loss):
                raise ConfigError(f"fine-tuning diverged at epoch {epoch} (loss {loss.item()}); lower the learning rate")
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            steps_done += 1
            if progress:  # ETA of the whole fine-tuning (the validation passes of past epochs included)
                left = steps * (cfg.epochs - epoch) + (steps - s - 1)
                progress(f"epoch {epoch}/{cfg.epochs}", s + 1, steps, eta=fmt_duration((time.perf_counter() - t_start) / steps_done * left))
        val = quick_metrics(predict_logits(model, data.val), data.val.targets)
        row = {"epoch": epoch, **val, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
        history.append(row)
        log.info("epoch %d: loss %.4f, val accuracy %.4f, macro-F1 %.4f (%.0f s)", epoch, row["train_loss"], val["accuracy"], val["macro_f1"], row["seconds"])
        if (val["accuracy"], -val["nll"]) > (best["accuracy"], -best["nll"]):
            best = {"epoch": epoch, **val}
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    log.info("kept epoch %d (val accuracy %.4f)", best["epoch"], best["accuracy"])
    return history


def recalibrate_batchnorm(model: Any, dataset: Any, batch_size: int = 16, max_images: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics on un-augmented training images.

    After channels are removed the inputs of later layers change, and the stored statistics no
    longer fit; a forward pass in train mode (no gradients, cumulative average) refreshes them.
    Returns the number of images used.
    """
    torch = require("torch", "train")
    from ..preprocess import finalize

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [m.momentum for m in bns]
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over all batches
        model.train()
        with torch.no_grad():
            for i in range(0, n, batch_size):
                xb = np.stack([finalize(dataset.resized(j), dataset.spec) for j in range(i, min(i + batch_size, n))])
                model(torch.from_numpy(xb))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return n


def latency_ms(model: Any, example: Any, runs: int = 30, warmup: int = 5) -> dict[str, float]:
    """Torch CPU latency at batch 1 (p50/p90 of ``runs`` after ``warmup``), threads as set by the caller."""
    torch = require("torch", "train")
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(example)
        for _ in range(runs):
            t = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - t) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)), "runs": runs, "threads": int(torch.get_num_threads())}
