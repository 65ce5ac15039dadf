"""The training loop of one process: frozen warm-up then full fine-tuning, validation and model
selection after every epoch, checkpoints, resume.

:func:`run_training` is what each process runs (``engine.py`` launches the processes): it builds a
:class:`_Run` (datasets, model, optimiser, loader, the loss with its levers), restores ``last.pt`` on
``--resume``, trains epoch by epoch and, on rank 0, validates, selects (``selection.py``), checkpoints
and finally seals the run (``finish.py``). The loss and its levers live in ``losses.py``: the loop
only calls ``run.loss``. Because data order, augmentation and dropout are seeded per epoch, a
resumed run ends with exactly the weights an uninterrupted run would have had (on CPU).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.classification import classification_metrics
from ..core.progress import Progress
from ..core.stats import softmax
from ..modeling.dataset import EpochSampler, RadiographDataset, build_augmentation, cell_weights
from ..modeling.inference import predict_logits
from ..modeling.models import build_model, classifier_module, get_arch
from .config import TrainConfig
from .finish import BEST, LAST, RunOutcome, plot_curves, save_torch, seal_run, write_history
from .losses import LossTerms
from .selection import SELECT_COLUMN, EarlyStopping, source_selection_metrics

log = logging.getLogger(__name__)


def lr_factor(step: int, total: int, schedule: str, warmup_frac: float) -> float:
    """Multiplier of the base LR at ``step`` of ``total`` fine-tuning steps."""
    total = max(1, total)
    t = min(step, total) / total
    if schedule == "onecycle":  # linear rise over 30%, cosine anneal to 1/1000
        if t < 0.3:
            return 0.04 + 0.96 * t / 0.3
        u = (t - 0.3) / 0.7
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * u))
    warm = warmup_frac
    if warm > 0 and t < warm:
        return max(1e-3, t / warm)
    u = (t - warm) / max(1e-9, 1 - warm)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * u))


def _set_backbone_trainable(model: Any, trainable: bool) -> None:
    head = {id(p) for p in classifier_module(model).parameters()}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(trainable)


def _train_mode(model: Any, frozen: bool) -> None:
    """Frozen stage: backbone (incl. BatchNorm statistics) in eval mode, head in train mode."""
    if frozen:
        model.eval()
        classifier_module(model).train()
    else:
        model.train()


@dataclass
class _Run:
    """Everything one process trains with, built once by :func:`_setup`."""

    config: TrainConfig
    out: Path
    rank: int
    world: int
    device: str
    emit: Progress
    table: Any
    labels: list[str]
    spec: Any
    train_ds: RadiographDataset
    val_ds: RadiographDataset
    model: Any = None
    opt: Any = None
    channels_last: bool = False
    sampler: Any = None
    loader: Any = None
    steps_per_epoch: int = 0
    finetune_steps: int = 0
    loss: Any = None  # LossTerms: the loss and its levers (losses.py)
    use_amp: bool = False
    amp_dtype: Any = None
    scaler: Any = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def freeze_epochs(self) -> int:
        return self.config.warmup_epochs


@dataclass
class _LoopState:
    """What changes from epoch to epoch (and is saved in ``last.pt`` for ``--resume``)."""

    stopping: EarlyStopping
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    ft_step: int = 0
    stopped_early: bool = False


@dataclass
class _EpochStats:
    """Training totals of one epoch (this process's, or summed over processes by :func:`_pool_stats`)."""

    loss_sum: float = 0.0
    correct: float = 0
    n: float = 0
    lr: float = 0.0
    t0: float = 0.0


def _setup(rank: int, world: int, config: TrainConfig, out: Path, device: str, progress: Progress | None) -> _Run:
    """Datasets (augmented training, plain validation), model and optimiser, sampler and loader, AMP."""
    from ..data.split import read_split

    table = read_split(config.split)
    train_rows, val_rows = table.train_val(config.fold)
    spec = get_arch(config.arch).spec(config.img_size, resize=config.resize)
    run = _Run(
        config, out, rank, world, device, progress or (lambda *a, **k: None), table, table.labels, spec,
        RadiographDataset(train_rows, table.labels, spec, augment=build_augmentation(config.augment), seed=config.seed),
        RadiographDataset(val_rows, table.labels, spec),
    )
    run.loss = LossTerms.build(config, train_rows, run.train_ds.targets, run.labels, device)
    run.train_ds.return_index = run.loss.needs_index
    _setup_model(run)
    _setup_data(run)
    _setup_amp(run)
    return run


def _setup_model(run: _Run) -> None:
    """The seeded model (channels-last if asked) and AdamW with separate backbone and head groups."""
    import torch

    config = run.config
    torch.manual_seed(config.seed)
    run.model = build_model(config.arch, len(run.labels), weights=config.weights, drop_rate=config.drop_rate).to(run.device)
    run.channels_last = config.channels_last and run.spec.channels > 1
    if run.channels_last:
        run.model = run.model.to(memory_format=torch.channels_last)
    head_ids = {id(p) for p in classifier_module(run.model).parameters()}
    backbone = [p for p in run.model.parameters() if id(p) not in head_ids]
    head = [p for p in run.model.parameters() if id(p) in head_ids] + run.loss.attach(run.model, run.device)
    run.opt = torch.optim.AdamW(
        [{"params": backbone, "name": "backbone"}, {"params": head, "name": "head"}], lr=config.lr, weight_decay=config.weight_decay
    )
    if config.freeze_epochs > 0 and not config.pretrained and run.rank == 0:
        log.info("--weights none: no frozen warm-up (a random backbone is not worth freezing)")


def _setup_data(run: _Run) -> None:
    """The per-rank epoch sampler, the loader and the steps per epoch."""
    from torch.utils.data import DataLoader

    config = run.config
    weights = None
    if config.balance == "cells":  # every (source of the group, class) cell equally often, groups equal within
        rows = run.train_ds.rows
        weights = cell_weights([f"{r.domain}|{r.label}" for r in rows], [r.group for r in rows])
    run.sampler = EpochSampler(run.train_ds.targets, config.seed, balanced=config.balance == "sampler", rank=run.rank,
                               world=run.world, weights=weights)
    n = len(run.sampler)
    steps = -(-n // config.batch_size)
    drop_last = n % config.batch_size == 1 and n > 1
    if drop_last:
        steps -= 1
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    run.steps_per_epoch = steps
    run.finetune_steps = steps * (config.epochs - run.freeze_epochs)
    run.loader = DataLoader(run.train_ds, batch_size=config.batch_size, sampler=run.sampler, num_workers=config.workers, drop_last=drop_last)


def _setup_amp(run: _Run) -> None:
    """Mixed precision on CUDA only: bfloat16 where supported, else float16 with a gradient scaler."""
    import torch

    run.use_amp = run.is_cuda and run.config.amp
    run.amp_dtype = torch.bfloat16 if (run.use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp and run.amp_dtype == torch.float16)


def _resume_state(run: _Run, resume: bool) -> _LoopState:
    """A fresh loop state, or the one in ``last.pt`` (model, optimiser and scaler restored in place)."""
    import torch

    if not resume:
        return _LoopState(EarlyStopping(run.config.patience))
    last = torch.load(run.out / LAST, map_location="cpu", weights_only=True)
    run.model.load_state_dict(last["model"])
    run.opt.load_state_dict(last["optimizer"])
    if last.get("scaler"):
        run.scaler.load_state_dict(last["scaler"])
    run.loss.restore(last)
    stopping = EarlyStopping.from_state(run.config.patience, last)
    state = _LoopState(stopping, [dict(h) for h in last["history"]], int(last["epoch"]) + 1, int(last["ft_step"]), stopping.exhausted)
    if run.rank == 0:
        log.info("resuming %s at epoch %d of %d", run.out, state.start_epoch + 1, run.config.epochs)
    return state


def run_training(
    rank: int, world: int, config: TrainConfig, out: Path, resume: bool, command: str, device: str,
    progress: Progress | None, on_step: Callable[[int, int], None] | None,
) -> None:
    """Train this process's share of the run; rank 0 validates, checkpoints and finally seals it."""
    import torch.distributed as dist

    run = _setup(rank, world, config, out, device, progress)
    state = _resume_state(run, resume)
    run.emit("start", epochs=config.epochs, steps=run.steps_per_epoch, start_epoch=state.start_epoch, train=len(run.train_ds),
             val=len(run.val_ds), device=device, world=world)
    ddp_model, wrapped_stage = None, None
    for epoch in range(state.start_epoch, config.epochs):
        if state.stopped_early:
            break
        frozen = epoch < run.freeze_epochs
        stage = "frozen" if frozen else "finetune"
        if wrapped_stage != stage:
            ddp_model, wrapped_stage = _wrap_for_stage(run, frozen), stage
        stats, train_seconds = _pool_stats(run, run_epoch(run, state, ddp_model, epoch, frozen, on_step))
        stop = _end_epoch(run, state, epoch, stage, stats, train_seconds) if rank == 0 else False
        state.stopped_early = _agree_on_stop(run, stop)
        if state.stopped_early:
            break
    if rank == 0:
        outcome = RunOutcome(state.history, state.stopping.best_epoch, state.stopping.best_score, state.stopped_early, world,
                             run.loss.record())
        seal_run(config, out, run.table, run.labels, run.spec, run.val_ds, device, run.channels_last, outcome, command)
    if run.distributed:
        dist.barrier()


def _wrap_for_stage(run: _Run, frozen: bool) -> Any:
    """(Un)freeze the backbone; under DDP wrap the model anew, since the trainable parameters changed."""
    import torch

    _set_backbone_trainable(run.model, not frozen)
    if not run.distributed:
        return run.model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(run.model, device_ids=[torch.cuda.current_device()] if run.is_cuda else None)


def _set_lr(run: _Run, frozen: bool, ft_step: int) -> float:
    """Constant LR in the frozen warm-up; the schedule (head x ``head_lr_mult``) while fine-tuning."""
    config = run.config
    if frozen:
        for g in run.opt.param_groups:
            g["lr"] = config.lr
        return config.lr
    lr = config.lr * lr_factor(ft_step, run.finetune_steps, config.schedule, config.warmup_steps_frac)
    for g in run.opt.param_groups:
        g["lr"] = lr * (config.head_lr_mult if g.get("name") == "head" else 1.0)
    return lr


def run_epoch(run: _Run, state: _LoopState, ddp_model: Any, epoch: int, frozen: bool, on_step: Callable[[int, int], None] | None) -> _EpochStats:
    """One pass over the training loader (at most ``steps_per_epoch`` optimiser steps)."""
    import torch

    config = run.config
    run.sampler.set_epoch(epoch)
    run.train_ds.epoch = epoch
    torch.manual_seed(config.seed * 1000 + epoch)  # dropout etc.: same per epoch, so resume == uninterrupted
    _train_mode(run.model, frozen)
    run.emit("epoch_start", epoch=epoch, epochs=config.epochs, steps=run.steps_per_epoch, stage="frozen" if frozen else "finetune")
    stats = _EpochStats(lr=config.lr, t0=time.perf_counter())
    for step, batch in enumerate(run.loader):
        if step >= run.steps_per_epoch:
            break
        stats.lr = _set_lr(run, frozen, state.ft_step)
        x, y = batch[0].to(run.device, non_blocking=True), batch[1].to(run.device, non_blocking=True)
        logits, loss = _train_step(run, ddp_model, x, y, batch[2] if len(batch) > 2 else None)
        if not frozen:
            state.ft_step += 1
        n = int(y.shape[0])
        stats.loss_sum += float(loss.detach()) * n
        stats.correct += int((logits.detach().argmax(1) == y).sum())
        stats.n += n
        elapsed = time.perf_counter() - stats.t0
        run.emit("step", epoch=epoch, step=step + 1, steps=run.steps_per_epoch, loss=float(loss.detach()),
                 images_per_second=stats.n * run.world / max(elapsed, 1e-9), lr=stats.lr)
        if on_step is not None:
            on_step(epoch, step)
    return stats


def _train_step(run: _Run, ddp_model: Any, x: Any, y: Any, idx: Any = None) -> tuple[Any, Any]:
    """Forward and loss (``run.loss``: the cross-entropy and every lever's term; autocast under AMP) on a
    batch already on the device (``idx``: its training-row indices, when a lever needs them), backward,
    optimiser step."""
    import torch

    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=run.amp_dtype, enabled=run.use_amp):
        logits, loss = run.loss(run.model, ddp_model, x, y, idx)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    return logits, loss


def validate(run: _Run, epoch: int, stage: str, stats: _EpochStats, train_seconds: float) -> dict[str, Any]:
    """The history row of ``epoch``: pooled training loss/accuracy and validation metrics (rank 0)."""
    import torch
    import torch.nn.functional as F

    val_logits = predict_logits(run.model, run.val_ds, max(run.config.batch_size, 32), run.device, channels_last=run.channels_last)
    vm = classification_metrics(run.val_ds.targets, softmax(val_logits), run.labels)
    val_loss = float(F.cross_entropy(torch.from_numpy(val_logits).float(), torch.from_numpy(run.val_ds.targets)))
    cell_recall, worst_source = source_selection_metrics(run.val_ds, val_logits.argmax(1))
    n = max(stats.n, 1)
    return {
        "epoch": epoch + 1, "stage": stage, "lr": stats.lr,
        "train_loss": float(stats.loss_sum / n), "train_acc": float(stats.correct / n),
        "val_loss": val_loss, "val_acc": vm["accuracy"], "val_macro_f1": vm["macro_f1"], "val_auroc_macro": vm["auroc_macro"],
        "val_cell_recall": cell_recall, "val_worst_source_acc": worst_source,
        "epoch_seconds": time.perf_counter() - stats.t0, "images_per_second": float(stats.n) / max(train_seconds, 1e-9),
    }


def save_checkpoints(run: _Run, state: _LoopState, epoch: int, improved: bool) -> None:
    """``model.pt`` when the epoch is the new best; always ``last.pt`` (all ``--resume`` needs), history and curves."""
    if improved:
        save_torch({k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}, run.out / BEST)
    save_torch(
        {
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "epoch": epoch, **state.stopping.state(), "ft_step": state.ft_step, "history": state.history, "finished": False,
            "split_sha256": run.table.sha256, **run.loss.state(),
        },
        run.out / LAST,
    )
    write_history(run.out, state.history)
    plot_curves(run.out, state.history, run.config, state.stopping.best_epoch)


def _pool_stats(run: _Run, stats: _EpochStats) -> tuple[_EpochStats, float]:
    """The epoch's training loss/accuracy totals summed over all processes, and the training seconds."""
    import torch
    import torch.distributed as dist

    totals = torch.tensor([stats.loss_sum, stats.correct, stats.n], dtype=torch.float64, device=run.device)
    if run.distributed:
        dist.all_reduce(totals)
    train_seconds = time.perf_counter() - stats.t0
    return _EpochStats(float(totals[0]), float(totals[1]), float(totals[2]), stats.lr, stats.t0), train_seconds


def _end_epoch(run: _Run, state: _LoopState, epoch: int, stage: str, stats: _EpochStats, train_seconds: float) -> bool:
    """Rank 0 after an epoch: validate, select, checkpoint, report. Returns whether to stop early."""
    row = validate(run, epoch, stage, stats, train_seconds)
    state.history.append(row)
    stopping = state.stopping
    improved = stopping.update(epoch, row[SELECT_COLUMN[run.config.select]], row["val_loss"], counts=epoch >= run.freeze_epochs)
    stop = stopping.exhausted and epoch + 1 < run.config.epochs
    save_checkpoints(run, state, epoch, improved)
    run.emit("epoch_end", **row, best_epoch=stopping.best_epoch, stopped_early=stop)
    if stop:
        log.info("early stopping after epoch %d: val %s has not improved for %d epochs (best %.3f at epoch %d)",
                 epoch + 1, run.config.select, run.config.patience, stopping.best_score, stopping.best_epoch)
    return stop


def _agree_on_stop(run: _Run, stop: bool) -> bool:
    """Rank 0's early-stopping decision, broadcast to every process (then all wait for each other)."""
    if not run.distributed:
        return stop
    import torch
    import torch.distributed as dist

    flag = torch.tensor([float(stop)], device=run.device)
    dist.broadcast(flag, 0)
    dist.barrier()
    return bool(flag.item())
