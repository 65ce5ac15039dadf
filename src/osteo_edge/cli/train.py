"""`osteo-edge train`: transfer learning / training from scratch into a sealed run bundle."""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..core.progress import TerminalProgress, fmt_duration
from ..modeling.models import ARCHS
from ..train.config import AUGMENT, BALANCE, DEVICES, SCHEDULES, SELECT
from . import _output as o
from ._common import choices, err_console, handle_errors
from ._steps import after_train


Arch = choices("Arch", ARCHS)
Device = choices("Device", DEVICES)
Schedule = choices("Schedule", SCHEDULES)
Balance = choices("Balance", BALANCE)
Select = choices("Select", SELECT)
Augment = choices("Augment", AUGMENT)
LEVERS = "Balance, augmentation and robustness levers"  # a help panel of its own on a wide terminal


def command_line(name: str, params: dict[str, Any]) -> str:
    """The command as a person would type it, from the options actually given."""
    parts = ["osteo-edge", name]
    for k, v in params.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif isinstance(v, (list, tuple)):
            for x in v:  # a repeatable option
                parts += [flag, shlex.quote(str(x))]
        else:
            parts += [flag, shlex.quote(str(v.value if isinstance(v, Enum) else v))]
    return " ".join(parts)


class _Renderer(TerminalProgress):
    """The training event stream (:class:`osteo_edge.core.progress.Progress`, label = event) on a
    terminal bar; one line per epoch otherwise."""

    def __init__(self) -> None:
        super().__init__(console=o.console(stderr=True))
        self.prefix = ""
        self.epochs = 0
        self.seconds: list[float] = []  # this process's epoch durations, for the ETA

    def __call__(self, event: str, done: int = 0, total: int | None = None, **d: Any) -> None:
        if event == "fold":
            self.prefix = f"fold {d['fold'] + 1}/{d['folds']} "
            err_console.print(f"[bold]{self.prefix.strip()}[/bold]", highlight=False)
        elif event == "start":
            err_console.print(f"training on {d['device']} x{d['world']}: {d['train']} train / {d['val']} val images, "
                              f"{d['steps']} steps per epoch" + (f", resuming at epoch {d['start_epoch'] + 1}" if d["start_epoch"] else ""), highlight=False)
        elif event == "epoch_start":
            self.epochs = d["epochs"]
            desc = f"{self.prefix}epoch {d['epoch'] + 1}/{d['epochs']} ({d['stage']})"
            self.bar.reset(self.task, total=d["steps"], description=desc, info="")
        elif event == "step":
            self.bar.update(self.task, completed=d["step"], info=f"loss {d['loss']:.3f}  {d['images_per_second']:.1f} img/s")
        elif event == "epoch_end":
            mark = " *" if d["best_epoch"] == d["epoch"] else ""
            self.seconds.append(float(d["epoch_seconds"]))
            left = max(0, self.epochs - int(d["epoch"]))
            eta = "" if d.get("stopped_early") or not left else f", ETA {fmt_duration(sum(self.seconds) / len(self.seconds) * left)} at most"
            line = (f"{self.prefix}epoch {d['epoch']}/{self.epochs or '?'} [{d['stage']}] train loss {d['train_loss']:.3f} acc {d['train_acc']:.3f} | "
                    f"val loss {d['val_loss']:.3f} acc {d['val_acc']:.3f} macro-F1 {d['val_macro_f1']:.3f} | "
                    f"{d['epoch_seconds']:.0f}s, {d['images_per_second']:.1f} img/s{mark}{eta}")
            if self.enabled:  # markup off: "[finetune]" is text, not a rich tag
                self.bar.console.print(line, highlight=False, markup=False)
            else:
                err_console.print(line, highlight=False, soft_wrap=True, markup=False)


@handle_errors
def train_cmd(
    split: Annotated[Optional[Path], typer.Option("--split", help="split.csv from 'osteo-edge data split'.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory (becomes a sealed model bundle).")] = Path("runs/run"),
    arch: Annotated[Optional[Arch], typer.Option(help="Architecture.", show_default="efficientnet_lite0")] = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", help="Input size in pixels.", show_default="224")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.", show_default="30")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Batch size per process.", show_default="16")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW).", show_default="1e-3")] = None,
    freeze_epochs: Annotated[Optional[int], typer.Option("--freeze-epochs", help="Frozen-backbone warm-up epochs (pretrained only).", show_default="auto = min(2, epochs // 3)")] = None,
    weights: Annotated[Optional[str], typer.Option(help="imagenet | none | PATH to a state dict.", show_default="imagenet")] = None,
    device: Annotated[Optional[Device], typer.Option(help="Where to train.", show_default="auto")] = None,
    devices: Annotated[Optional[int], typer.Option(help="Data-parallel processes (NCCL on GPUs, gloo on CPU).", show_default="1")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint and saved config.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.", show_default="0")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options (CLI options override it).")] = None,
    folds: Annotated[int, typer.Option(help="k-fold cross-validation: train K runs OUT/fold<k> (the split needs --folds K).")] = 0,
    schedule: Annotated[Optional[Schedule], typer.Option(help="LR schedule.", show_default="cosine")] = None,
    balance: Annotated[Optional[Balance], typer.Option(help="Imbalance: weighted loss, class-balanced sampler, sampler over (source, class) cells, none.", rich_help_panel=LEVERS, show_default="weighted")] = None,
    augment: Annotated[Optional[Augment], typer.Option(help="Augmentation; acquisition = default plus exposure, CLAHE, noise, blur, JPEG, resampling.", rich_help_panel=LEVERS, show_default="default")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early stopping patience in epochs on val macro-F1.", show_default="8")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per process.", show_default="2")] = None,
    select: Annotated[Optional[Select], typer.Option(help="Best epoch and early stopping on validation macro-F1, mean (source, class) cell recall, or worst-source accuracy.", rich_help_panel=LEVERS, show_default="macro-f1")] = None,
    tscore_aux: Annotated[Optional[float], typer.Option("--tscore-aux", help="Weight of an auxiliary T-score regression loss (Wani films; needs --tscore-csv). 0: off.", rich_help_panel=LEVERS, show_default="0")] = None,
    tscore_csv: Annotated[Optional[Path], typer.Option("--tscore-csv", help="wani_patient_details.csv (Patient Id = image file stem).", rich_help_panel=LEVERS)] = None,
    group_dro: Annotated[Optional[float], typer.Option("--group-dro", help="Group DRO over (source, class) cells: step size, e.g. 0.01. 0: off.", rich_help_panel=LEVERS, show_default="0")] = None,
    distill: Annotated[Optional[float], typer.Option("--distill", help="Weight in [0, 1] of distillation towards the --teacher ensemble. 0: off.", rich_help_panel=LEVERS, show_default="0")] = None,
    teacher: Annotated[Optional[list[Path]], typer.Option("--teacher", help="Teacher torch run for --distill (repeatable; '{fold}' = the student's fold); never trained on the student's val/test.", rich_help_panel=LEVERS)] = None,
    resize: Annotated[Optional[str], typer.Option(help="Resize policy: center_crop | letterbox | stretch | knee (one square per knee, logits averaged) | knee_locator (the same, knees found by the learned locator).", show_default="center_crop")] = None,
) -> None:
    """Train a model on a split: frozen warm-up, fine-tuning, early stopping on validation macro-F1."""
    from ..train.config import resolve_config

    params = dict(split=split, out=out, arch=arch, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr,
                  freeze_epochs=freeze_epochs, weights=weights, device=device, devices=devices, resume=resume, seed=seed,
                  config=config, folds=folds or None, schedule=schedule, balance=balance, augment=augment, patience=patience,
                  threads=threads, resize=resize, select=select, tscore_aux=tscore_aux, tscore_csv=tscore_csv,
                  group_dro=group_dro, distill=distill, teacher=teacher)
    command = command_line("train", params)
    overrides = {k: (v.value if isinstance(v, Enum) else (str(v) if isinstance(v, Path) else v)) for k, v in params.items()
                 if k not in ("out", "resume", "config", "folds", "teacher")}
    if teacher:
        if any("," in str(t) for t in teacher):
            raise typer.BadParameter("a --teacher path may not contain ','", param_hint="--teacher")
        overrides["teacher"] = ",".join(str(t) for t in teacher)
    if resume and folds == 0:
        from ..train.config import TrainConfig

        cfg = TrainConfig(split=str(split or "x"))  # the run's saved config is used; this one is a placeholder
    else:
        cfg = resolve_config(config, overrides)
        if not cfg.split:
            raise typer.BadParameter("--split is required (or 'split:' in --config)")
    with _Renderer() as render:
        if folds:
            from ..train.cv import train_folds

            results = train_folds(cfg, out, folds, resume=resume, progress=render, command=command)
        else:
            from ..train.engine import train

            results = [train(cfg, out, resume=resume, progress=render, command=command)]
    rows = [[str(r.run_dir), str(r.best_epoch), str(r.epochs_run) + (" (early stop)" if r.stopped_early else ""),
             *(f"{r.val_metrics.get(k, float('nan')):.3f}" for k in ("macro_f1", "accuracy", "low_bmd_auroc")),
             f"{r.temperature:.2f}", f"{r.train_seconds / 60:.1f}"] for r in results]
    cols = [o.Col("run"), *(o.Col(c, right=True) for c in ("best epoch", "epochs", "val macro-F1", "val accuracy", "val low-BMD AUROC", "T", "time (min)"))]
    o.table(f"Training: {out}", cols, rows)
    o.line("validation metrics only (used for early stopping and calibration); the test split is untouched.")
    o.next_step(after_train(out, split if split is not None else cfg.split, folds))


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
