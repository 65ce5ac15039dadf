"""Per-view inference, in one place: what a model gives for every item of a dataset, views averaged.

An item of :class:`~osteo_edge.modeling.dataset.RadiographDataset` may have several views (one per
knee with the ``knee`` resize policy); every stage scores an item by the mean over its views. Training
(validation, sealing, evaluation, teacher logits), compression (fine-tuning's validation) and the
benchmark scripts all go through :func:`view_outputs`; :func:`predict_logits` is its common case.
:func:`resolve_device` turns ``--device auto`` into the device a model runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.progress import Progress
from ..errors import ConfigError
from .dataset import mean_by_owner


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is a one-line error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return name


def view_outputs(
    dataset: Any, forward: Callable[[Any], Any], *, batch_size: int = 32, device: str = "cpu",
    channels_last: bool = False, progress: Progress | None = None,
) -> Any:
    """``forward(x)`` over every view of ``dataset`` in batches (no gradients), averaged per item.

    ``forward`` takes a batch tensor on ``device`` and returns a tensor of shape ``(batch, ...)``, or a
    tuple of such tensors; the answer is one ``(len(dataset), width)`` float32 array per tensor, the
    mean over each item's views (a tuple when ``forward`` returns one). ``progress`` is called as
    ``progress("predicting", views_done, views_total)``. An empty dataset gives ``None``: the width of
    nothing is unknown here (:func:`predict_logits` answers ``(0, classes)``).
    """
    import torch

    xs, owner = dataset.all_view_arrays()
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():  # not inference_mode: a quantization-aware model may update observer buffers in place
        for start in range(0, len(xs), batch_size):
            x = torch.from_numpy(np.stack(xs[start : start + batch_size])).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = forward(x)
            tensors = out if isinstance(out, tuple) else (out,)
            parts.append([t.float().reshape(t.shape[0], -1).cpu().numpy() for t in tensors])
            if progress is not None:
                progress("predicting", min(start + batch_size, len(xs)), len(xs))
    if not parts:
        return None
    means = tuple(mean_by_owner(np.concatenate(col), owner, len(dataset)) for col in zip(*parts))
    return means if isinstance(out, tuple) else means[0]


def predict_logits(
    model: Any, dataset: Any, batch_size: int = 32, device: str = "cpu", *, channels_last: bool = False,
    mirror: bool = False, progress: Progress | None = None,
) -> np.ndarray:
    """Logits of ``model`` (put in eval mode) for every item of ``dataset``, each the mean of its views'
    logits; ``mirror``: every view's logits averaged with its horizontal mirror's first."""
    import torch

    model.eval()

    def forward(x: Any) -> Any:
        z = model(x)
        return (z + model(torch.flip(x, dims=[-1]))) / 2 if mirror else z

    out = view_outputs(dataset, forward, batch_size=batch_size, device=device, channels_last=channels_last, progress=progress)
    return np.zeros((0, len(dataset.labels)), dtype=np.float32) if out is None else out
