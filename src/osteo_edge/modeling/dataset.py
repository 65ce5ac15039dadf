"""Training and evaluation datasets over a split, augmentation, and the epoch sampler.

Every sample goes through the shared preprocessing path of :mod:`osteo_edge.preprocess`::

    decode_image -> to_gray -> resize -> [augmentation, training only] -> finalize

so a training sample without augmentation is exactly the runtime input for that file (tested).
Augmentation is seeded per (seed, epoch, index): a run is reproducible on CPU and a resumed run
sees the same samples as an uninterrupted one.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError, InvalidImageError, require
from ..preprocess import PreprocessSpec, decode_for, finalize, frames, to_gray

log = logging.getLogger(__name__)

Augment = Callable[[np.ndarray, int], np.ndarray]


def build_augmentation(level: str) -> Augment | None:
    """A seeded augmentation on resized HxW float32 [0, 1] intensities, or ``None`` for ``none``.

    Geometric (small affine, horizontal flip: left and right knees both occur) and photometric
    (brightness, contrast, gamma) changes only; no crops that could cut away the joint.
    """
    if level == "none":
        return None
    A = require("albumentations", "train")
    if level == "acquisition":
        ops = _acquisition_ops(A)
    elif level == "light":
        ops = [
            A.Affine(scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), rotate=(-5, 5), border_mode=0, fill=0, p=0.7),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    else:
        ops = [
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), border_mode=0, fill=0, p=0.9),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.8),
            A.RandomGamma(gamma_limit=(80, 120), p=0.5),
        ]
    compose = A.Compose(ops, seed=0)

    def augment(img: np.ndarray, seed: int) -> np.ndarray:
        compose.set_random_seed(int(seed) % (2**32))
        out = compose(image=np.ascontiguousarray(img, dtype=np.float32))["image"]
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    return augment


def _acquisition_ops(A: Any) -> list[Any]:
    """The default geometry plus what differs between scanners and sources: exposure and contrast
    curves, local contrast (CLAHE), noise, blur, JPEG re-encoding and down/up-sampling, so that
    acquisition stops telling the source (issue 17, lever 2)."""
    return [
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), border_mode=0, fill=0, p=0.9),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.8),
        A.RandomGamma(gamma_limit=(70, 140), p=0.6),
        A.CLAHE(clip_limit=(1, 3), tile_grid_size=(8, 8), p=0.3),
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.04)), A.GaussianBlur(blur_limit=(3, 5))], p=0.4),
        A.Downscale(scale_range=(0.4, 0.8), p=0.3),
        A.ImageCompression(quality_range=(40, 95), p=0.4),
    ]


class RadiographDataset:
    """A torch-style dataset of split rows: ``(input CxHxW float32 tensor, label index)``.

    The deterministic part (decode, grayscale, resize) is cached in memory; augmentation (training
    only) and :func:`finalize` run per sample.
    """

    def __init__(
        self,
        rows: Sequence[Any],
        labels: Sequence[str],
        spec: PreprocessSpec,
        augment: Augment | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.rows = list(rows)
        self.labels = list(labels)
        self.spec = spec
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}
        self.return_index = False  # __getitem__ also returns the row index (per-row extra targets: T-score, DRO group, teacher)
        index = {lab: i for i, lab in enumerate(self.labels)}
        unknown = sorted({r.label for r in self.rows} - set(index))
        if unknown:
            raise DataError(f"label(s) {unknown} are not among the model's labels {self.labels}")
        self.targets = np.array([index[r.label] for r in self.rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def views(self, i: int) -> list[np.ndarray]:
        """decode -> to_gray -> every view of the spec's framing for row ``i`` (cached): one image,
        or one per knee for the ``knee`` policy."""
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        path = self.rows[i].path
        try:
            out = frames(to_gray(decode_for(path, self.spec)), self.spec)
        except InvalidImageError as exc:
            raise DataError(f"split row {path}: {exc}") from exc
        if self.cache:
            self._cache[i] = out
        return out

    def resized(self, i: int) -> np.ndarray:
        """The first view of row ``i`` (the whole resized image for single-view policies)."""
        return self.views(i)[0]

    def sample_seed(self, i: int) -> int:
        return (self.seed * 1_000_003 + self.epoch * 10_007 + i) % (2**32)

    def array(self, i: int) -> np.ndarray:
        """The model input for row ``i`` as a numpy array (augmented when this is a training set;
        a training set also draws one of several views, e.g. either knee of a bilateral film)."""
        views = self.views(i)
        if self.augment is None:
            return finalize(views[0], self.spec)
        seed = self.sample_seed(i)
        img = views[seed % len(views)]
        return finalize(self.augment(img, seed), self.spec)

    def view_arrays(self, i: int) -> list[np.ndarray]:
        """Every view of row ``i`` as model input (no augmentation): evaluation averages their logits."""
        return [finalize(v, self.spec) for v in self.views(i)]

    def all_view_arrays(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Every view of every row as model input, and the row each belongs to (for :func:`mean_by_owner`)."""
        xs: list[np.ndarray] = []
        owner: list[int] = []
        for i in range(len(self)):
            views = self.view_arrays(i)
            xs += views
            owner += [i] * len(views)
        return xs, np.asarray(owner, dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        if self.return_index:
            return torch.from_numpy(self.array(i)), int(self.targets[i]), i
        return torch.from_numpy(self.array(i)), int(self.targets[i])


def mean_by_owner(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Row-wise mean of ``values`` grouped by ``owner`` index (0..n-1)."""
    out = np.zeros((n, values.shape[1]), dtype=np.float64)
    np.add.at(out, owner, values)
    return (out / np.bincount(owner, minlength=n)[:, None]).astype(np.float32)


def cell_weights(cells: Sequence[str], groups: Sequence[Any]) -> np.ndarray:
    """Sampling weights that give every cell (e.g. a (source, class) pair) the same share of an
    epoch and, inside a cell, every duplicate group the same share however many copies it has."""
    cells_a, groups_a = np.asarray([str(c) for c in cells]), np.asarray([str(g) for g in groups])
    group_size = {g: n for g, n in zip(*np.unique(groups_a, return_counts=True))}
    groups_in_cell: dict[str, set[str]] = {}
    for c, g in zip(cells_a, groups_a):
        groups_in_cell.setdefault(c, set()).add(g)
    w = np.array([1.0 / (len(groups_in_cell[c]) * group_size[g]) for c, g in zip(cells_a, groups_a)])
    return w / w.sum()


class EpochSampler:
    """Indices for one epoch: a seeded permutation, or a weighted draw with replacement (``balanced``:
    class-balanced; ``weights``: given per-row probabilities, e.g. :func:`cell_weights`); sharded over
    ``world`` processes (padded so every rank takes the same steps)."""

    def __init__(self, targets: np.ndarray, seed: int, balanced: bool = False, rank: int = 0, world: int = 1,
                 weights: np.ndarray | None = None) -> None:
        self.targets = np.asarray(targets)
        self.seed = int(seed)
        self.balanced = balanced
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.rank, self.world = rank, world
        self.epoch = 0
        n = len(self.targets)
        self.num_samples = -(-n // world)  # ceil

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.targets)
        if self.weights is not None:
            idx = rng.choice(n, size=n, replace=True, p=self.weights / self.weights.sum())
        elif self.balanced:
            counts = np.bincount(self.targets)
            w = 1.0 / counts[self.targets]
            idx = rng.choice(n, size=n, replace=True, p=w / w.sum())
        else:
            idx = rng.permutation(n)
        pad = self.num_samples * self.world - n
        if pad:
            idx = np.concatenate([idx, idx[:pad]])
        return idx

    def __iter__(self):
        return iter(self.epoch_indices()[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.num_samples


def class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1 over the classes that occur."""
    counts = np.bincount(np.asarray(targets), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return w.astype(np.float32)
