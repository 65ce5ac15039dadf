"""The training loss and its levers, in one place: the loop asks :class:`LossTerms` for a batch's
logits and loss and never names a lever.

The loss is cross-entropy (class-weighted with ``--balance weighted``, label-smoothed), reduced over
the batch by its mean or, with ``--group-dro``, by the group-DRO mix over (source, class) cells; then
each lever folds its term in, in order: distillation from a teacher ensemble (``--distill``), the
T-score regression head (``--tscore-aux``). A lever is a :class:`Lever`: its per-training-row targets
built once, its term, its trainable extras, its state in ``last.pt`` and its record in the manifest.

**Adding a loss lever**: an option in ``train/config.py``, one :class:`Lever` subclass here and its name
in :data:`LEVERS`. The launch checks, the loop, checkpoints, resume and sealing reach it through
:class:`LossTerms` and :func:`check_levers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..modeling.dataset import class_weights
from .config import TrainConfig


@dataclass
class Batch:
    """One training batch as the levers see it: inputs, labels, the rows' indices into the training set
    (``None`` when no lever needs them) and, once forwarded, the logits and pooled features."""

    x: Any
    y: Any
    idx: Any = None
    logits: Any = None
    feats: Any = None  # pooled features, when a lever asked for them (Lever.wants_features)


class Lever:
    """One loss lever, built once per process from the config and the training rows. Defaults: no
    check, no extra parameters, no term, nothing to save or record."""

    needs_rows = True  # its targets are per training row: the loader yields each row's index
    wants_features = False  # its term reads the pooled features (the model's own head is applied to them)
    reduces = False  # it replaces the batch mean of the cross-entropy (:meth:`reduce`)

    def __init__(self, config: TrainConfig, rows: Sequence[Any], labels: Sequence[str]) -> None:
        self.config = config

    @staticmethod
    def wanted(config: TrainConfig) -> bool:
        """Whether the run's options ask for this lever."""
        raise NotImplementedError

    @classmethod
    def check(cls, config: TrainConfig, labels: Sequence[str], held_out: Sequence[Any]) -> None:
        """Before any process starts or the run directory is made: what the lever needs from outside
        the run can be had (``held_out``: the validation and test rows)."""

    def attach(self, model: Any, device: str) -> list[Any]:
        """Build what trains beside the model (after the model, so the seeded initialisation is unchanged);
        its parameters join the optimiser's head group."""
        return []

    def reduce(self, per_sample: Any, batch: Batch) -> Any:
        """The batch loss from the per-sample cross-entropy (levers with ``reduces`` only)."""
        raise NotImplementedError

    def fold(self, loss: Any, batch: Batch) -> Any:
        """The loss with this lever's term folded in."""
        return loss

    def state(self) -> dict[str, Any]:
        """What ``last.pt`` keeps of it for ``--resume``."""
        return {}

    def restore(self, last: Mapping[str, Any]) -> None:
        """Take back :meth:`state` from a ``last.pt``."""

    def record(self) -> dict[str, Any]:
        """What the manifest's training record says of it."""
        return {}


class GroupDROLever(Lever):
    """``--group-dro``: the batch loss is ``sum_g q_g L_g`` over the (source, class) cells (train/robust.py)."""

    reduces = True

    def __init__(self, config: TrainConfig, rows: Sequence[Any], labels: Sequence[str]) -> None:
        import torch

        from .robust import GroupDRO, dro_groups

        super().__init__(config, rows, labels)
        groups, self.cells = dro_groups(rows)
        self.group = torch.from_numpy(groups)
        self.eta = config.group_dro
        self.dro = GroupDRO(len(self.cells), self.eta)

    @staticmethod
    def wanted(config: TrainConfig) -> bool:
        return config.group_dro > 0

    def reduce(self, per_sample: Any, batch: Batch) -> Any:
        return self.dro.loss(per_sample, self.group[batch.idx])

    def state(self) -> dict[str, Any]:
        return {"dro_q": self.dro.q.tolist()}

    def restore(self, last: Mapping[str, Any]) -> None:
        if last.get("dro_q") is not None:
            from .robust import GroupDRO

            self.dro = GroupDRO(len(self.cells), self.eta, last["dro_q"])

    def record(self) -> dict[str, Any]:
        return {"group_dro": {"step_size": self.eta, "final_weights": dict(zip(self.cells, (round(float(q), 6) for q in self.dro.q)))}}


class DistillLever(Lever):
    """``--distill``: ``(1 - a) * loss + a * KL`` to the teacher ensemble's logits, computed once per row."""

    def __init__(self, config: TrainConfig, rows: Sequence[Any], labels: Sequence[str]) -> None:
        import torch

        from .robust import teacher_dirs, teacher_logits

        super().__init__(config, rows, labels)  # the teachers were checked by check() before the run started
        self.teacher = torch.from_numpy(teacher_logits(teacher_dirs(config.teacher, config.fold), rows, labels))

    @staticmethod
    def wanted(config: TrainConfig) -> bool:
        return config.distill > 0

    @classmethod
    def check(cls, config: TrainConfig, labels: Sequence[str], held_out: Sequence[Any]) -> None:
        """The teachers: verified bundles with the student's labels that never trained on ``held_out``."""
        from .robust import check_teachers

        check_teachers(config.teacher, config.fold, labels, held_out)

    def fold(self, loss: Any, batch: Batch) -> Any:
        from .robust import distill_loss

        c = self.config
        soft = distill_loss(batch.logits.float(), self.teacher[batch.idx].to(batch.logits.device), c.distill_temperature)
        return (1 - c.distill) * loss + c.distill * soft

    def record(self) -> dict[str, Any]:
        from .robust import teacher_dirs

        c = self.config
        return {"distill": {"weight": c.distill, "temperature": c.distill_temperature,
                            "teachers": [str(d) for d in teacher_dirs(c.teacher, c.fold)],
                            "soft_targets": "ensemble mean logits over every view and its mirror, un-augmented, computed once"}}


class TScoreLever(Lever):
    """``--tscore-aux``: a linear head on the pooled features regresses the standardised T-score (train/tscore.py);
    the weighted MSE on the batch's rows that have one joins the loss. The head is not part of ``model.pt``."""

    wants_features = True

    def __init__(self, config: TrainConfig, rows: Sequence[Any], labels: Sequence[str]) -> None:
        import torch

        from .tscore import read_tscores, tscore_targets

        super().__init__(config, rows, labels)
        self.target = torch.from_numpy(tscore_targets(rows, read_tscores(config.tscore_csv))[0])
        self.head: Any = None

    @staticmethod
    def wanted(config: TrainConfig) -> bool:
        return config.tscore_aux > 0

    def attach(self, model: Any, device: str) -> list[Any]:
        import torch

        if not hasattr(model, "forward_head"):
            raise ConfigError(f"--tscore-aux needs a timm architecture (pooled features), not {self.config.arch}")
        self.head = torch.nn.Linear(int(model.num_features), 1).to(device)
        return list(self.head.parameters())

    def fold(self, loss: Any, batch: Batch) -> Any:
        import torch
        import torch.nn.functional as F

        t = self.target[batch.idx].to(batch.feats.device)
        known = ~torch.isnan(t)
        if not bool(known.any()):
            return loss
        pred = self.head(batch.feats.float()).squeeze(1)
        return loss + self.config.tscore_aux * F.mse_loss(pred[known], t[known].float())


LEVERS: tuple[type[Lever], ...] = (GroupDROLever, DistillLever, TScoreLever)  # in the order their terms fold in


@dataclass
class LossTerms:
    """The loss of one run: the cross-entropy's settings and the levers in the order they fold in."""

    config: TrainConfig
    class_weight: Any = None  # --balance weighted: inverse class frequency of the training rows
    levers: list[Lever] = field(default_factory=list)

    @classmethod
    def build(cls, config: TrainConfig, rows: Sequence[Any], targets: Any, labels: Sequence[str], device: str) -> LossTerms:
        """The run's loss over the training ``rows`` (``targets``: their class indices)."""
        import torch

        weight = torch.tensor(class_weights(targets, len(labels))).to(device) if config.balance == "weighted" else None
        return cls(config, weight, [lever(config, rows, labels) for lever in LEVERS if lever.wanted(config)])

    @property
    def needs_index(self) -> bool:
        """Whether the loader must yield each row's index (a lever has per-row targets)."""
        return any(lv.needs_rows for lv in self.levers)

    def attach(self, model: Any, device: str) -> list[Any]:
        """Every lever's extra trainable parameters (they join the head's optimiser group)."""
        return [p for lv in self.levers for p in lv.attach(model, device)]

    def __call__(self, model: Any, ddp_model: Any, x: Any, y: Any, idx: Any = None) -> tuple[Any, Any]:
        """(logits, loss) of a batch on the device (inside the caller's autocast). ``model``: the bare
        network (its pooled features, for a lever that wants them, in one process); ``ddp_model``: what
        the plain forward runs through."""
        import torch.nn.functional as F

        levers = self.levers if idx is not None else []  # without row indices no lever can act
        batch = Batch(x, y, idx)
        if any(lv.wants_features for lv in levers):  # one process (checked by the config): the model's own head on its features
            batch.feats = model.forward_head(model.forward_features(x), pre_logits=True)
            batch.logits = model.get_classifier()(batch.feats)
        else:
            batch.logits = ddp_model(x)
        reducer = next((lv for lv in levers if lv.reduces), None)
        ce = {"weight": self.class_weight, "label_smoothing": self.config.label_smoothing}
        if reducer is None:
            loss = F.cross_entropy(batch.logits.float(), y, **ce)
        else:
            loss = reducer.reduce(F.cross_entropy(batch.logits.float(), y, reduction="none", **ce), batch)
        for lv in levers:
            loss = lv.fold(loss, batch)
        return batch.logits, loss

    def state(self) -> dict[str, Any]:
        return {k: v for lv in self.levers for k, v in lv.state().items()}

    def restore(self, last: Mapping[str, Any]) -> None:
        for lv in self.levers:
            lv.restore(last)

    def record(self) -> dict[str, Any]:
        return {k: v for lv in self.levers for k, v in lv.record().items()}


def check_levers(config: TrainConfig, labels: Sequence[str], held_out: Sequence[Any]) -> None:
    """Before any process starts: each wanted lever's :meth:`Lever.check` (``held_out``: validation and test rows)."""
    for lever in LEVERS:
        if lever.wanted(config):
            lever.check(config, labels, held_out)
