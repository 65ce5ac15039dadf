"""Two training levers of issue 17 that act on the loss: group DRO and distillation from a teacher ensemble.

**Group DRO** (Sagawa et al., 2020, the online algorithm): the groups are the (source of the duplicate
group, class) cells. The weights ``q`` over the groups follow exponentiated gradient ascent on each
group's mean loss in the batch (``q_g <- q_g * exp(eta * L_g)``, renormalised), and the training loss
is ``sum_g q_g L_g``: the cells the model does worst on (Wani Normal, so far) weigh most.

**Distillation** (lever 6): the teacher is an ensemble of torch runs (several recipes, or folds), each
averaged over every view of an image and its horizontal mirror. Its logits are computed once per
training row before training, on the un-augmented input (a fixed soft target per image, cheaper on a
CPU than running the ensemble at every step); the student's loss is
``(1 - a) * CE + a * T^2 * KL(softmax(teacher / T) || softmax(student / T))``. A teacher must not have
trained on the student's validation or test radiographs: that would leak the evaluation rows into
the soft targets, so :func:`check_teacher_leakage` refuses such a teacher in one line. ``{fold}`` in a
teacher path is replaced by the student's fold, so a k-fold run distils each fold from teachers
trained on that fold's training rows only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

TEACHER_SEP = ","


def dro_groups(rows: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """The (source of the duplicate group, class) cell index of every row, and the cells' names."""
    cells = sorted({f"{r.domain}|{r.label}" for r in rows})
    index = {c: i for i, c in enumerate(cells)}
    return np.array([index[f"{r.domain}|{r.label}"] for r in rows], dtype=np.int64), cells


class GroupDRO:
    """Online group DRO weights ``q`` over ``n_groups`` groups (state saved with the run for --resume)."""

    def __init__(self, n_groups: int, eta: float, q: Any = None) -> None:
        import torch

        self.eta = float(eta)
        self.q = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64) if q is None else torch.as_tensor(q, dtype=torch.float64).clone()

    def loss(self, per_sample: Any, groups: Any) -> Any:
        """``sum_g q_g * mean loss of group g in the batch`` after updating ``q`` with this batch (groups
        absent from the batch keep their weight and add nothing)."""
        import torch

        n = self.q.numel()
        g = groups.to(per_sample.device)
        sums = torch.zeros(n, dtype=per_sample.dtype, device=per_sample.device).index_add(0, g, per_sample)
        counts = torch.bincount(g, minlength=n).to(per_sample.dtype)
        present = counts > 0
        means = torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums))
        with torch.no_grad():
            step = torch.where(present.cpu(), self.eta * means.detach().double().cpu(), torch.zeros(n, dtype=torch.float64))
            q = self.q * torch.exp(step)
            self.q = q / q.sum()
        return (self.q.to(per_sample.device, per_sample.dtype) * means).sum()


def teacher_dirs(spec: str, fold: int) -> list[Path]:
    """The teacher runs named by ``--teacher`` (comma-joined in the config), ``{fold}`` filled in."""
    out = []
    for part in (p.strip() for p in spec.split(TEACHER_SEP)):
        if not part:
            continue
        if "{fold}" in part and fold < 0:
            raise ConfigError(f"--teacher {part}: '{{fold}}' needs a k-fold run (--folds K)")
        out.append(Path(part.replace("{fold}", str(fold))))
    if not out:
        raise ConfigError("--distill needs at least one --teacher RUN (a torch run made by 'osteo-edge train')")
    return out


def check_teacher_leakage(teacher: Path, bundle: Any, held_out: Sequence[Any]) -> None:
    """Refuse a teacher whose training rows share a duplicate group with the student's held-out rows
    (validation and test): read the teacher's own split and fold from its provenance."""
    from ..data.split import read_split

    prov = bundle.provenance
    if not isinstance(prov.split_csv, str) or not Path(prov.split_csv).is_file():
        raise ConfigError(f"--teacher {teacher}: its split file ({prov.split_csv}) is not here, so it cannot be checked for "
                          "leakage into the student's validation/test rows")
    table = read_split(prov.split_csv)
    if prov.split_sha256 and table.sha256 != prov.split_sha256:
        raise ConfigError(f"--teacher {teacher}: its split file {prov.split_csv} changed since it trained (sha256 differs)")
    seen = {r.group for r in table.train_val(prov.fold)[0]}
    leak = sorted({r.group for r in held_out} & seen)
    if leak:
        raise ConfigError(f"--teacher {teacher}: it trained on {len(leak)} duplicate group(s) that are in the student's "
                          f"validation or test rows (e.g. group {leak[0]}); use a teacher trained on the same fold's training rows")


def check_teachers(spec: str, fold: int, labels: Sequence[str], held_out: Sequence[Any]) -> list[Path]:
    """The teacher runs, each a verified bundle with the student's labels that never trained on ``held_out``."""
    from ..artifact import load_bundle
    from ..errors import BundleError

    dirs = teacher_dirs(spec, fold)
    for d in dirs:
        try:
            bundle = load_bundle(d)
        except BundleError as exc:
            raise ConfigError(f"--teacher {d}: {exc}") from exc
        if list(bundle.labels) != list(labels):
            raise ConfigError(f"--teacher {d}: its labels {bundle.labels} are not the student's {list(labels)}")
        check_teacher_leakage(d, bundle, held_out)
    return dirs


def teacher_logits(dirs: Sequence[Path], rows: Sequence[Any], labels: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Mean logits of the teacher ensemble ``dirs`` (as :func:`check_teachers` returned them: ``train``
    checks them before the run starts) on ``rows``: every teacher, every view, and each view's mirror."""
    from ..modeling.dataset import RadiographDataset
    from ..modeling.inference import predict_logits
    from ..modeling.loading import load_run

    total = np.zeros((len(rows), len(labels)), dtype=np.float64)
    for d in dirs:
        model, bundle = load_run(d)
        total += predict_logits(model, RadiographDataset(rows, labels, bundle.spec), batch_size, mirror=True)
    return (total / len(dirs)).astype(np.float32)


def distill_loss(student: Any, teacher: Any, temperature: float) -> Any:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean (Hinton et al.)."""
    import torch.nn.functional as F

    t = float(temperature)
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True) * t * t
