"""A site's labels file: which image is which class, by a label or by a DEXA T-score.

The CSV has a ``file`` column (a path relative to the images folder) and either a ``label`` column
(one of the bundle's labels) or a ``tscore`` column, turned into the WHO classes (T >= -1 Normal,
-2.5 < T < -1 Osteopenia, T <= -2.5 Osteoporosis). When both are given, ``label`` is used. An
optional ``group`` column (a patient id, say) keeps rows of one group together: resampled together
by the bootstrap and put in the same cross-validation fold.

Every problem is refused with one line (:class:`~osteo_edge.errors.ConfigError`) naming the bad
value and the valid ones: a missing column, an unknown label, a T-score that is not a number, a file
named twice, a file that does not exist.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ...artifact import sha256_file
from ...errors import ConfigError

WHO_LABELS = ("Normal", "Osteopenia", "Osteoporosis")
WHO_NORMAL_MIN = -1.0  # T >= -1: Normal
WHO_OSTEOPOROSIS_MAX = -2.5  # T <= -2.5: Osteoporosis; in between: Osteopenia
LOW_BMD_NAMES = ("Osteopenia", "Osteoporosis", "LowBMD")  # site labels that mean "low BMD" (the binary split's name)


def who_class(t: float) -> str:
    """The WHO class of a T-score: Normal (T >= -1), Osteopenia (-2.5 < T < -1), Osteoporosis (T <= -2.5)."""
    if t >= WHO_NORMAL_MIN:
        return "Normal"
    if t <= WHO_OSTEOPOROSIS_MAX:
        return "Osteoporosis"
    return "Osteopenia"


@dataclass(frozen=True)
class SiteLabels:
    """The rows of a labels file, in file order; ``y`` indexes the bundle's labels."""

    images: Path
    files: tuple[str, ...]
    y: np.ndarray
    groups: np.ndarray
    labels: tuple[str, ...]
    truth_from: str  # "label" | "tscore"
    csv_name: str
    csv_sha256: str
    site_labels: tuple[str, ...] = ()  # the label each row had in the labels file (before any mapping)
    mapping: tuple[tuple[str, str], ...] = ()  # (site label, bundle label) pairs applied; empty: none

    @property
    def paths(self) -> list[Path]:
        return [self.images / f for f in self.files]

    def counts(self) -> dict[str, int]:
        return {lab: int(np.sum(self.y == i)) for i, lab in enumerate(self.labels)}

    def subset(self, idx: np.ndarray) -> "SiteLabels":
        return SiteLabels(self.images, tuple(self.files[i] for i in idx), self.y[idx], self.groups[idx], self.labels,
                          self.truth_from, self.csv_name, self.csv_sha256,
                          tuple(self.site_labels[i] for i in idx) if self.site_labels else (), self.mapping)

    def site_counts(self) -> dict[str, int]:
        """Rows per label as the labels file gave them (before any mapping onto the bundle's labels)."""
        names = self.site_labels or tuple(self.labels[int(i)] for i in self.y)
        return {lab: names.count(lab) for lab in dict.fromkeys(sorted(names))}

    def mapping_note(self) -> str | None:
        """One sentence on the labels mapped onto the bundle's, or None."""
        if not self.mapping:
            return None
        counts = self.site_counts()
        pairs = "; ".join(f"{a} ({counts.get(a, 0)} images) -> {b}" for a, b in self.mapping)
        return (f"the bundle's labels are {', '.join(self.labels)}: it answers only the low-BMD question, so site labels it does "
                f"not have were mapped onto its low-BMD label ({pairs}); accuracy and macro-F1 are of the bundle's labels")


def label_mapping(site_values: Sequence[str], bundle_labels: Sequence[str], negative: str | None) -> dict[str, str]:
    """Site labels the bundle lacks -> the bundle's label, when the bundle has exactly one low-BMD label
    (every label but ``negative``): Osteopenia, Osteoporosis and LowBMD map onto it. Any other unknown
    label (or a bundle with several low-BMD labels) maps nowhere and is refused by :func:`read_labels`."""
    labels = list(bundle_labels)
    positive = [lab for lab in labels if lab != negative]
    if negative is None or negative not in labels or len(positive) != 1:
        return {}
    return {v: positive[0] for v in dict.fromkeys(site_values) if v not in labels and v in LOW_BMD_NAMES}


def _first(items: Sequence[tuple[int, str]], n: int = 3) -> str:
    shown = ", ".join(f"{v!r} (line {line})" for line, v in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def read_labels(images: str | os.PathLike, labels_csv: str | os.PathLike, bundle_labels: Sequence[str],
                negative: str | None = None) -> SiteLabels:
    """Read and check a labels file against the bundle's labels; one-line ConfigError on any problem.
    With ``negative`` (the bundle's negative label) site labels the bundle lacks are mapped onto its
    low-BMD label where :func:`label_mapping` allows it."""
    images, path = Path(images), Path(labels_csv)
    if not images.is_dir():
        raise ConfigError(f"{images}: no such images folder")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the labels file ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = cols
    truth = "label" if "label" in cols else "tscore" if "tscore" in cols else None
    if "file" not in cols or truth is None:
        raise ConfigError(f"{path}: a labels file needs a 'file' column and a 'label' or 'tscore' column; found {cols or 'no header'}")
    labels = [str(x) for x in bundle_labels]
    mapping = label_mapping(WHO_LABELS, labels, negative) if truth == "tscore" else {}
    if truth == "tscore" and not set(WHO_LABELS) <= set(labels) | set(mapping):
        raise ConfigError(f"{path}: a 'tscore' column gives the WHO classes {', '.join(WHO_LABELS)}, but the bundle's labels are {', '.join(labels)}")
    rows = list(reader)
    if truth == "label":
        mapping = label_mapping([(r.get("label") or "").strip() for r in rows], labels, negative)
    files, ys, groups, originals = [], [], [], []
    unknown, bad_t, empty, seen_twice, missing = [], [], [], [], []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        f = (row.get("file") or "").strip()
        value = (row.get(truth) or "").strip()
        if not f and not value:
            continue  # a blank line
        if not f:
            empty.append((line, value))
            continue
        if truth == "label":
            if value not in labels and value not in mapping:
                unknown.append((line, value))
                continue
            lab = value
        else:
            try:
                t = float(value)
                if not math.isfinite(t):
                    raise ValueError
            except ValueError:
                bad_t.append((line, value))
                continue
            lab = who_class(t)
        if f in seen:
            seen_twice.append((line, f))
            continue
        seen.add(f)
        if not (images / f).is_file():
            missing.append((line, f))
        files.append(f)
        originals.append(lab)
        ys.append(labels.index(mapping.get(lab, lab)))
        groups.append((row.get("group") or "").strip() or f)
    if unknown:
        also = [f"{a} (as {b})" for a, b in label_mapping(LOW_BMD_NAMES, labels, negative).items()]
        raise ConfigError(f"{path}: unknown label {_first(unknown)}; valid: {', '.join(labels + also)}")
    if bad_t:
        raise ConfigError(f"{path}: 'tscore' must be a number, got {_first(bad_t)}")
    if empty:
        raise ConfigError(f"{path}: rows without a file name: {_first(empty)}")
    if seen_twice:
        raise ConfigError(f"{path}: file listed twice: {_first(seen_twice)}")
    if missing:
        raise ConfigError(f"{path}: {len(missing)} file(s) not found under {images}: {_first(missing)}")
    if not files:
        raise ConfigError(f"{path}: no rows")
    used = tuple((a, b) for a, b in mapping.items() if a in originals)
    return SiteLabels(images, tuple(files), np.asarray(ys, dtype=int), np.asarray(groups, dtype=object), tuple(labels), truth,
                      path.name, sha256_file(path), tuple(originals), used)


def check_counts(site: SiteLabels, negative: str, min_per_class: int) -> dict[str, int]:
    """Refuse a site with fewer than ``min_per_class`` images on either side of the low-BMD question
    (``negative`` = the bundle's negative label, e.g. Normal, against every other label). Returns the
    counts of both sides."""
    neg = site.labels.index(negative)
    n_neg = int(np.sum(site.y == neg))
    n_pos = int(np.sum(site.y != neg))
    if n_neg < min_per_class or n_pos < min_per_class:
        raise ConfigError(
            f"too few images per class: {n_neg} {negative} and {n_pos} low-BMD ({', '.join(l for l in site.labels if l != negative)}); "
            f"site validation needs at least {min_per_class} of each (counts: "
            + ", ".join(f"{k} {v}" for k, v in site.counts().items()) + ")")
    return {negative: n_neg, "low BMD": n_pos}
