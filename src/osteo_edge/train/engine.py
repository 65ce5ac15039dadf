"""Training's entry point and process launch: :func:`train` checks the run and the data, launches the
processes, and answers with the sealed run's :class:`TrainResult`.

A run directory becomes a sealed model bundle (format ``torch``, ``model.pt`` = the best
checkpoint's state dict) when training ends (``finish.py``); ``--resume`` continues from the last
completed epoch. Each process runs the loop of ``loop.py``.

``devices > 1`` launches one process per device itself (torch.multiprocessing, a torchrun-style
rendezvous on localhost): NCCL on CUDA, gloo on CPU. Under an external ``torchrun`` launch
(``WORLD_SIZE``/``RANK`` in the environment) the same code joins that process group instead.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artifact import atomic_write_text
from ..core.progress import Progress
from ..errors import ConfigError, DataError, OsteoEdgeError, require
from ..modeling.inference import resolve_device
from ..modeling.models import build_model
from .config import TrainConfig, config_yaml_text, read_config_yaml
from .finish import LAST
from .losses import check_levers

log = logging.getLogger(__name__)


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



def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    train_rows, val_rows = table.train_val(config.fold)
    if not train_rows or not val_rows:
        raise DataError(f"{config.split}: the training or validation subset is empty (train {len(train_rows)}, val {len(val_rows)})")
    labels = table.labels
    missing = [lab for lab in labels if lab not in {r.label for r in train_rows}]
    if missing:
        raise DataError(f"{config.split}: label(s) {missing} have no training rows")
    # Fail fast (before any process is spawned or the run directory is made) if the weights or teachers cannot be had.
    build_model(config.arch, len(labels), weights=config.weights, drop_rate=config.drop_rate)
    check_levers(config, labels, list(val_rows) + table.subset("test"))
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
            cause = [ln for ln in str(exc).strip().splitlines() if ln.strip()][-1]  # the remote traceback ends with the error
            raise OsteoEdgeError(f"a training process failed: {cause}") from None
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
        from .loop import run_training

        run_training(rank, world, config, out, resume, command, device, progress if rank == 0 else None, on_step)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads_before)
