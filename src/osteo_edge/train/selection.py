"""Model selection: which validation column picks the kept epoch (``--select``), and patience.

The history row of every epoch carries the candidate columns; :data:`SELECT_COLUMN` maps each
``--select`` choice to its column, and :class:`EarlyStopping` keeps the epoch with the highest value
of it. A new selection rule is one entry here and one column in the history row
(:func:`osteo_edge.train.loop.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SELECT_COLUMN = {"macro-f1": "val_macro_f1", "cell-recall": "val_cell_recall", "worst-source": "val_worst_source_acc"}


def source_selection_metrics(ds: Any, pred: np.ndarray) -> tuple[float, float]:
    """(mean recall over (source, class) cells, accuracy of the worst source) of predictions on a
    dataset; the source of a row is its duplicate group's source (``SplitRow.domain``)."""
    src = np.array([str(r.domain) for r in ds.rows])
    ok = np.asarray(pred) == ds.targets
    cells = {(s, t) for s, t in zip(src, ds.targets)}
    cell = [float(ok[(src == s) & (ds.targets == t)].mean()) for s, t in sorted(cells)]
    worst = [float(ok[src == s].mean()) for s in np.unique(src)]
    return (float(np.mean(cell)) if cell else float("nan"), float(min(worst)) if worst else float("nan"))


@dataclass
class EarlyStopping:
    """Model selection and patience: the best epoch has the highest value of the selection column
    (``SELECT_COLUMN[config.select]``; ties: the lower validation loss); patience counts fine-tuning
    epochs without improvement only."""

    patience: int
    best_score: float = -1.0
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, score: float, val_loss: float, counts: bool) -> bool:
        """Record epoch ``epoch`` (0-based) with its selection ``score``; True when it is the new best.
        ``counts``: a fine-tuning epoch."""
        improved = score > self.best_score + 1e-9 or (abs(score - self.best_score) <= 1e-9 and val_loss < self.best_loss)
        if improved:
            self.best_score, self.best_loss, self.best_epoch, self.bad_epochs = score, val_loss, epoch + 1, 0
        elif counts:
            self.bad_epochs += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    @classmethod
    def from_state(cls, patience: int, last: Mapping[str, Any]) -> EarlyStopping:
        # "best_f1": the key's name in a last.pt saved before the selection column could be other than macro-F1
        score = last["best_score"] if "best_score" in last else last["best_f1"]
        return cls(patience, float(score), float(last["best_loss"]), int(last["best_epoch"]), int(last["bad_epochs"]))
