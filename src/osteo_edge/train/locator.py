"""Training and accuracy of the knee locator (torch; the runtime part, :mod:`osteo_edge.locator`,
is torch-free). ``osteo-edge locator train`` chains this with the int8 export
(:mod:`osteo_edge.export.locator`) in :mod:`osteo_edge.release.locator`.

The boxes CSV holds one row per knee (``path`` relative to the data folder, ``cx, cy, side`` in the
image's pixels, ``made_by``, ``checked``).
"""
from __future__ import annotations

import csv
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..framing import Box
from ..locator import (
    CHANNELS,
    GRID,
    INPUT,
    MIN_SCORE,
    STRIDE,
    detections,
    letterbox,
    model_input,
    to_box,
)

CACHE_SIDE = 512  # films are kept in memory with their longer side at most this


@dataclass
class Film:
    path: str
    source: str
    group: str
    gray: np.ndarray  # cached copy, longer side <= CACHE_SIDE
    knees: list[tuple[float, float, float]]  # (cx, cy, side) in the cached copy's pixels
    factor: float  # cached pixels per original pixel
    rows: list[dict] = field(default_factory=list)


def load_films(boxes_csv: str | Path, data_root: str | Path, rejected: set[int] | None = None) -> list[Film]:
    from PIL import Image

    from ..images import decode_image
    from ..preprocess import to_gray

    by_path: dict[str, list[dict]] = defaultdict(list)
    for r in read_table(boxes_csv, ("id", "path", "source", "group", "cx", "cy", "side"), "knee boxes CSV"):
        if rejected and int(r["id"]) in rejected:
            continue
        by_path[r["path"]].append(r)
    films = []
    for rel, rows in by_path.items():
        gray = to_gray(decode_image(Path(data_root) / rel, "scale"))
        h, w = gray.shape
        f = min(1.0, CACHE_SIDE / max(h, w))
        if f < 1.0:
            size = (max(1, round(w * f)), max(1, round(h * f)))
            gray = np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)
        try:
            knees = [(float(r["cx"]) * f, float(r["cy"]) * f, float(r["side"]) * f) for r in rows]
        except ValueError:
            from ..errors import ConfigError

            raise ConfigError(f"{boxes_csv}: a box of {rel} has a non-numeric cx, cy or side") from None
        films.append(Film(rel, rows[0]["source"], rows[0]["group"], gray, knees, f, rows))
    return films


# ------------------------------------------------------------------------------------------------
# targets and augmentation


def read_table(path: str | Path, needed: Sequence[str], what: str) -> list[dict]:
    """Rows of a CSV that must have ``needed`` columns; a one-line ConfigError otherwise."""
    from ..errors import ConfigError

    try:
        rows = list(csv.DictReader(Path(path).read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) else exc.reason})") from None
    missing = [c for c in needed if not rows or c not in rows[0]]
    if missing:
        raise ConfigError(f"{path}: not a {what} (no rows, or no column {', '.join(missing)})")
    return rows


def targets(knees: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """GRID x GRID x (heat, dx, dy, log side, mask) for knees given in letterboxed pixels."""
    t = np.zeros((GRID, GRID, 5), dtype=np.float32)
    yy, xx = np.mgrid[0:GRID, 0:GRID]
    for x, y, s in knees:
        gx, gy = x / STRIDE, y / STRIDE
        c, r = min(GRID - 1, max(0, int(gx))), min(GRID - 1, max(0, int(gy)))
        sigma = max(0.6, s / STRIDE / 6)
        t[..., 0] = np.maximum(t[..., 0], np.exp(-((xx + 0.5 - gx) ** 2 + (yy + 0.5 - gy) ** 2) / (2 * sigma**2)))
        t[r, c, 0] = 1.0
        t[r, c, 1:5] = (gx - c, gy - r, math.log(max(s, 1.0) / INPUT), 1.0)
    return t


def augment(film: Film, rng: random.Random) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """A random view of a film: a crop that keeps every knee box whole, a flip, a gamma and contrast change."""
    g = film.gray
    h, w = g.shape
    x0 = min(cx - s / 2 for cx, cy, s in film.knees)
    x1 = max(cx + s / 2 for cx, cy, s in film.knees)
    y0 = min(cy - s / 2 for cx, cy, s in film.knees)
    y1 = max(cy + s / 2 for cx, cy, s in film.knees)
    if rng.random() < 0.7:
        left = int(rng.uniform(0, max(0.0, min(x0, w))))
        top = int(rng.uniform(0, max(0.0, min(y0, h))))
        right = int(w - rng.uniform(0, max(0.0, min(w - x1, w - left - 8))))
        bottom = int(h - rng.uniform(0, max(0.0, min(h - y1, h - top - 8))))
        g = g[top:bottom, left:right]
        knees = [(cx - left, cy - top, s) for cx, cy, s in film.knees]
    else:
        knees = list(film.knees)
    if rng.random() < 0.5:
        g = g[:, ::-1]
        knees = [(g.shape[1] - cx, cy, s) for cx, cy, s in knees]
    g = np.clip(g, 0, 1) ** rng.uniform(0.7, 1.4)
    g = np.clip((g - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
    return np.ascontiguousarray(g, dtype=np.float32), knees


def example(gray: np.ndarray, knees: Sequence[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    lb, scale, left, top = letterbox(gray)
    lk = [(cx * scale + left, cy * scale + top, s * scale) for cx, cy, s in knees]
    return model_input(lb)[0], targets(lk)


# ------------------------------------------------------------------------------------------------
# model


def build(weights: str = "imagenet") -> Any:
    """Lite0 trunk (stem + blocks 0-4, stride 16, 112 channels) and a small head; NHWC input
    (batch, INPUT, INPUT, 3), output (batch, GRID * GRID * CHANNELS) in row-major (row, col, channel)."""
    import torch
    from torch import nn

    from ..modeling.models import build_model

    base = build_model("efficientnet_lite0", num_classes=2, weights=weights)

    class Locator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(base.conv_stem, base.bn1)
            self.blocks = nn.Sequential(*list(base.blocks)[:5])
            self.head = nn.Sequential(nn.Conv2d(112, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, CHANNELS, 1))
            with torch.no_grad():
                self.head[-1].bias.zero_()
                self.head[-1].bias[0] = -2.19  # a prior of 0.1 for the joint score
                self.head[-1].bias[1:3] = 0.0  # offsets around the cell's middle come from the weights

        def forward(self, x: Any) -> Any:
            x = x.permute(0, 3, 1, 2)
            y = self.head(self.blocks(self.stem(x)))
            return y.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

    return Locator()


def loss_fn(out: Any, t: Any) -> Any:
    """CenterNet focal loss on the score map, L1 on offsets and log side at the knees' cells."""
    import torch

    out = out.view(-1, GRID, GRID, CHANNELS)
    p = torch.sigmoid(out[..., 0]).clamp(1e-4, 1 - 1e-4)
    heat, mask = t[..., 0], t[..., 4]
    pos = (heat >= 1.0).float()
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * (1 - heat) ** 4 * p**2 * torch.log(1 - p)).sum()
    n = pos.sum().clamp(min=1.0)
    reg = (mask[..., None] * (out[..., 1:4] - t[..., 1:4]).abs()).sum()
    return focal / n + reg / n


# ------------------------------------------------------------------------------------------------
# accuracy


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a.left + a.side, b.left + b.side) - max(a.left, b.left))
    iy = max(0, min(a.top + a.side, b.top + b.side) - max(a.top, b.top))
    inter = ix * iy
    return inter / float(a.side**2 + b.side**2 - inter) if inter else 0.0


def score_films(films: Sequence[Film], boxes_of: Callable[[Film], list[Box]]) -> dict[str, Any]:
    """Per source and pooled: films, knees, the mean IoU of each true knee with its best predicted
    box, the fraction of true knees with IoU >= 0.5, the fraction of films whose every true joint
    centre lies in the central half of a predicted crop (the crop contains the joint, not at its
    edge), and films with the wrong number of knees."""
    per: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for film in films:
        h, w = film.gray.shape
        pred = boxes_of(film)
        truth = [to_box(cx, cy, s, h, w) for cx, cy, s in film.knees]
        ious = [max((iou(t, p) for p in pred), default=0.0) for t in truth]
        inside = all(any(abs(cx - (p.left + p.side / 2)) <= p.side / 4 and abs(cy - (p.top + p.side / 2)) <= p.side / 4 for p in pred)
                     for cx, cy, _ in film.knees)
        for key in (film.source, "all"):
            per[key]["iou"].extend(ious)
            per[key]["contains"].append(inside)
            per[key]["count_ok"].append(len(pred) == len(truth))
    out = {}
    for key, d in sorted(per.items()):
        iou_arr = np.asarray(d["iou"])
        out[key] = {"films": len(d["contains"]), "knees": int(iou_arr.size), "mean_iou": round(float(iou_arr.mean()), 3),
                    "knees_iou_ge_0.5": round(float((iou_arr >= 0.5).mean()), 3),
                    "films_crop_contains_joint": round(float(np.mean(d["contains"])), 3),
                    "films_right_knee_count": round(float(np.mean(d["count_ok"])), 3)}
    return out


def torch_boxes(model: Any, min_score: float) -> Callable[[Film], list[Box]]:
    import torch

    def boxes_of(film: Film) -> list[Box]:
        h, w = film.gray.shape
        lb, scale, left, top = letterbox(film.gray)
        with torch.no_grad():
            out = model(torch.from_numpy(model_input(lb))).numpy()[0]
        return [d.box for d in detections(out, h, w, scale, left, top, min_score)]

    return boxes_of


# ------------------------------------------------------------------------------------------------
# training


def split_groups(split_csv: str | Path) -> tuple[set[str], set[str]]:
    """(test groups, fold-1 groups) of a ``data split`` table, as the boxes CSV writes group ids."""
    from ..data.split import read_split

    table = read_split(split_csv)
    return {str(r.group) for r in table.subset("test")}, {str(r.group) for r in table.subset("val", fold=1)}


def fit(films: Sequence[Film], val: Sequence[Film], epochs: int = 40, batch: int = 16, lr: float = 1e-3, seed: int = 0,
        threads: int = 1, log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any]]:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(films) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    best, best_state, history = -1.0, None, []
    for ep in range(epochs):
        t0 = time.monotonic()
        model.train()
        order = list(films)
        rng.shuffle(order)
        total = 0.0
        for i in range(0, len(order), batch):
            xs, ts = zip(*(example(*augment(f, rng)) for f in order[i : i + batch]))
            x, t = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ts))
            loss = loss_fn(model(x), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(xs)
        model.eval()
        s = score_films(val, torch_boxes(model, MIN_SCORE))["all"]
        key = s["films_crop_contains_joint"] + s["mean_iou"]
        history.append({"epoch": ep + 1, "loss": round(total / len(order), 4), **s, "seconds": round(time.monotonic() - t0, 1)})
        log(f"epoch {ep + 1}/{epochs} loss {total / len(order):.3f} | val IoU {s['mean_iou']:.3f} contains {s['films_crop_contains_joint']:.3f} "
            f"count {s['films_right_knee_count']:.3f} | {time.monotonic() - t0:.0f}s")
        if key > best:
            best, best_state = key, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model, {"history": history}


def pick_threshold(model: Any, val: Sequence[Film]) -> float:
    """The score threshold with the most val films given the right number of knees (ties: lower)."""
    best = (-1.0, MIN_SCORE)
    for thr in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
        s = score_films(val, torch_boxes(model, thr))["all"]["films_right_knee_count"]
        if s > best[0]:
            best = (s, thr)
    return best[1]
