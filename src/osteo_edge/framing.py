"""One framing for every source: square crops centred on each knee's joint line (issue 17, lever 2).

Knee radiographs arrive framed in ways that tell their source: one knee cropped tall (the Kaggle
sources), both knees side by side or whole lower legs (the Wani source), a knee in the middle of a wide
dark film. :func:`knee_boxes` finds the legs and, in each leg, the joint line, and returns one square
box per knee whose side follows the leg's width, so that every input shows the same thing: one knee,
femoral condyles and tibial plateau in the middle, at about the same scale.

The locator is a plain intensity-profile rule (numpy only, so the torch-free runtime applies the same
framing as training):

1. *Legs*: the smoothed column-intensity profile. A film whose middle third holds a clear valley
   between two bright sides is bilateral and is split at the valley.
2. *Leg band*: inside each half, the columns brighter than halfway between the dark background and the
   brightest column.
3. *Joint line*: the condyles above and the plateau below are the brightest rows of the band (bone is
   widest there), with the dark joint space between them: the joint row is the deepest such gap
   between bright rows in the central 80% of the height (on a bilateral film, from both knees' summed
   evidence: the two joints lie at about the same height).
4. *Box*: a square of 1.15 x the band width (at least a third of the shorter image side, at most the
   half's width and the image height), centred on the band and the joint row, shifted inside the image.

It is a heuristic: on a film it cannot parse (no contrast, one flat colour) it falls back to the
centred square of the whole image, and it never fails.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from PIL import Image

WORK_SIDE = 256          # the locator runs on a copy whose longer side is at most this
VALLEY_RATIO = 0.75      # bilateral when the middle-third valley is below this x the darker side's peak
BILATERAL_ASPECT = 0.7   # only films at least this wide (w/h) are looked at as bilateral
BOX_SCALE = 1.15


@dataclass(frozen=True)
class Box:
    """A square crop in the original image's pixels: ``left, top, side``."""

    left: int
    top: int
    side: int

    def crop(self, gray: np.ndarray) -> np.ndarray:
        return gray[self.top : self.top + self.side, self.left : self.left + self.side]


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    width = max(1, int(width))
    if width == 1 or len(x) < 3:
        return x.astype(np.float64)
    k = np.ones(width) / width
    pad = width // 2
    return np.convolve(np.pad(x.astype(np.float64), pad, mode="edge"), k, mode="same")[pad : pad + len(x)]


def _small(gray: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = gray.shape
    f = min(1.0, WORK_SIDE / max(h, w))
    if f >= 1.0:
        return gray.astype(np.float32, copy=False), 1.0
    size = (max(1, round(w * f)), max(1, round(h * f)))
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F").resize(size, Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32), f


def split_columns(small: np.ndarray) -> list[tuple[int, int]]:
    """Column ranges of the legs: two halves for a bilateral film, else the whole width."""
    h, w = small.shape
    if w < 8 or w / h < BILATERAL_ASPECT:
        return [(0, w)]
    prof = _smooth(small.mean(axis=0), w // 30)
    a, b = w // 3, 2 * w // 3
    valley = a + int(np.argmin(prof[a:b]))
    left_peak, right_peak = prof[:valley].max(), prof[valley:].max()
    floor = np.percentile(prof, 5)
    weak, strong = sorted((left_peak - floor, right_peak - floor))
    if weak > 0.6 * strong and prof[valley] - floor < VALLEY_RATIO * weak:
        return [(0, valley), (valley, w)]
    return [(0, w)]


def _band(small: np.ndarray, c0: int, c1: int) -> tuple[int, int]:
    prof = _smooth(small[:, c0:c1].mean(axis=0), (c1 - c0) // 20)
    lo, hi = np.percentile(prof, 5), prof.max()
    on = np.flatnonzero(prof > lo + 0.3 * (hi - lo))
    if hi - lo < 1e-3 or on.size == 0:
        return c0, c1
    return c0 + int(on[0]), c0 + int(on[-1]) + 1


def _joint_scores(small: np.ndarray, b0: int, b1: int) -> np.ndarray:
    """Per row: how much it looks like the joint space, a dark gap between two bright bone rows
    (condyles above, plateau below) in the band's row-intensity profile; rows outside the central
    80% of the film's rows (dark padding left out) score -inf."""
    h = small.shape[0]
    prof = _smooth(small[:, b0:b1].mean(axis=1), max(1, h // 64))
    lo, hi = np.percentile(prof, 2), prof.max()
    flat = small[:, b0:b1].std(axis=1) < 0.02  # uniform rows: a white or black pad, a label strip
    content = np.flatnonzero((prof > lo + 0.2 * (hi - lo)) & ~flat)  # rows of film, not of padding
    r0, r1 = (int(content[0]), int(content[-1]) + 1) if content.size else (0, h)
    reach = max(2, int(0.12 * (r1 - r0)))
    scores = np.full(h, -np.inf)
    prof = np.where(flat, prof.min(), prof)
    for y in range(r0 + int(0.1 * (r1 - r0)), max(r0 + int(0.1 * (r1 - r0)) + 1, r0 + int(0.9 * (r1 - r0)))):
        bright = min(prof[max(0, y - reach) : y + 1].max(), prof[y : y + reach + 1].max())
        scores[y] = (bright - prof[y]) + 0.25 * bright  # a gap between bright bone, not in the dark
    return scores


def knee_boxes(gray: np.ndarray) -> list[Box]:
    """One square box per knee of an HxW film (left to right), in original pixels."""
    h, w = gray.shape
    small, f = _small(gray)
    sh, sw = small.shape
    legs = split_columns(small)
    bands = [_band(small, c0, c1) for c0, c1 in legs]
    # both knees of one film lie at about the same height: one joint row from the summed evidence
    row = int(np.argmax(np.sum([_joint_scores(small, b0, b1) for b0, b1 in bands], axis=0)))
    boxes = []
    for (c0, c1), (b0, b1) in zip(legs, bands):
        side = BOX_SCALE * (b1 - b0)
        side = min(max(side, min(sh, sw) / 3), c1 - c0, sh)
        cx, cy = (b0 + b1) / 2, row
        # back to original pixels, then kept inside the image
        side_o = max(1, min(int(round(side / f)), h, w))
        left = int(round(cx / f - side_o / 2))
        top = int(round(cy / f - side_o / 2))
        boxes.append(Box(min(max(0, left), w - side_o), min(max(0, top), h - side_o), side_o))
    return boxes
