"""Data audit: exact and near duplicates, label conflicts, cross-source overlap, file health.

Every file is decoded by the one reference decoder (:mod:`osteo_edge.preprocess`), hashed twice
(sha256 of the bytes; a 64-bit perceptual DCT hash of the grey image, via ``imagehash``) and the
files are grouped by single linkage: two files are linked when their bytes are identical or their
perceptual hashes differ in at most ``phash_threshold`` bits. A group is one distinct radiograph.

Default threshold 4 bits (of 64), measured on ../shared/data/knee: pairs at distance <= 4 are
re-encoded or rescaled copies (median 64-px pixel correlation >= 0.99), while from 6 bits on the
distances merge into the background of distinct knees, which all look alike at 8x8 DCT scale.
See docs/data.md for the measurement.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import atomic_write_text, sha256_file
from ..core.progress import Progress
from ..errors import ConfigError, InvalidImageError, require
from ..preprocess import decode_image, to_gray
from .sources import ImageRecord, order_labels, scan_sources

log = logging.getLogger(__name__)

DEFAULT_PHASH_THRESHOLD = 4
TINY_SIDE = 64  # px: smaller images cannot show trabecular bone
BLANK_STD = 0.01  # intensity std in [0, 1] below which an image is blank


@dataclass
class FileInfo:
    path: str
    source: str
    label: str
    sha256: str
    readable: bool
    error: str = ""
    phash: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    bits: int = 0
    tiny: bool = False
    blank: bool = False
    group: int = -1


@dataclass
class AuditResult:
    files: list[FileInfo]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def readable(self) -> list[FileInfo]:
        return [f for f in self.files if f.readable]


def _phash(gray: np.ndarray) -> str:
    imagehash = require("imagehash", "data")
    from PIL import Image

    img = Image.fromarray((np.clip(gray, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")
    return str(imagehash.phash(img))


def hash_file(rec: ImageRecord) -> FileInfo:
    """Hash and inspect one file; an unreadable file is returned with ``readable=False``."""
    try:
        sha = sha256_file(rec.path)
    except OSError as exc:
        return FileInfo(str(rec.path), rec.source, rec.label, "", False, f"cannot read: {exc.strerror or exc}")
    info = FileInfo(str(rec.path), rec.source, rec.label, sha, True)
    try:
        decoded = decode_image(rec.path)
    except InvalidImageError as exc:
        info.readable = False
        info.error = str(exc).replace(f"{rec.path}: ", "")
        return info
    gray = to_gray(decoded)
    info.phash = _phash(gray)
    info.width, info.height = decoded.size
    info.mode, info.format, info.bits = decoded.mode, decoded.format, decoded.bits
    info.tiny = min(decoded.size) < TINY_SIDE
    info.blank = float(gray.std()) < BLANK_STD
    return info


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_pairs(phashes: Sequence[str], threshold: int, chunk: int = 1024) -> list[tuple[int, int, int]]:
    """All pairs (i, j, distance) with i < j and Hamming distance <= threshold."""
    if not phashes:
        return []
    h = np.array([int(p, 16) for p in phashes], dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(h), chunk):
        block = h[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        ii, jj = np.nonzero(dist <= threshold)
        for i, j in zip(ii.tolist(), jj.tolist()):
            gi = start + i
            if gi < j:
                pairs.append((gi, j, int(dist[i, j])))
    return pairs


def group_files(infos: list[FileInfo], phash_threshold: int) -> list[tuple[int, int, int]]:
    """Assign ``info.group`` by single linkage over identical sha256 and near phash; returns the links."""
    readable = [i for i, f in enumerate(infos) if f.readable]
    uf = _UnionFind(len(readable))
    by_sha: dict[str, int] = {}
    for k, idx in enumerate(readable):
        first = by_sha.setdefault(infos[idx].sha256, k)
        if first != k:
            uf.union(first, k)
    pairs = near_duplicate_pairs([infos[i].phash for i in readable], phash_threshold)
    for a, b, _ in pairs:
        uf.union(a, b)
    roots: dict[int, int] = {}
    for k, idx in enumerate(readable):
        root = uf.find(k)
        infos[idx].group = roots.setdefault(root, len(roots))
    return [(readable[a], readable[b], d) for a, b, d in pairs]


def summarize(infos: list[FileInfo], phash_threshold: int, sources: Sequence[str]) -> dict[str, Any]:
    readable = [f for f in infos if f.readable]
    groups: dict[int, list[FileInfo]] = defaultdict(list)
    for f in readable:
        groups[f.group].append(f)
    labels = order_labels(f.label for f in infos)
    conflicting = {g: m for g, m in groups.items() if len({f.label for f in m}) > 1}
    per_class_groups = Counter()
    for members in groups.values():
        for lab in {f.label for f in members}:
            per_class_groups[lab] += 1
    per_source: dict[str, Any] = {}
    for src in sources:
        mine = [f for f in infos if f.source == src]
        ok = [f for f in mine if f.readable]
        src_groups = {f.group for f in ok}
        per_source[src] = {
            "files": len(mine),
            "unreadable": len(mine) - len(ok),
            "distinct_groups": len(src_groups),
            "per_class_files": dict(sorted(Counter(f.label for f in mine).items())),
            "groups_with_internal_duplicates": sum(
                1 for g in src_groups if sum(1 for f in groups[g] if f.source == src) > 1
            ),
            "groups_with_conflicting_labels_inside_source": sum(
                1 for g in src_groups if len({f.label for f in groups[g] if f.source == src}) > 1
            ),
            "formats": dict(Counter(f.format for f in ok)),
            "modes": dict(Counter(f.mode for f in ok)),
        }
    overlap: dict[str, int] = {}
    group_sources = {g: {f.source for f in m} for g, m in groups.items()}
    for i, a in enumerate(sources):
        for b in sources[i + 1 :]:
            overlap[f"{a} & {b}"] = sum(1 for s in group_sources.values() if a in s and b in s)
    sha_counts = Counter(f.sha256 for f in readable)
    widths = [f.width for f in readable]
    heights = [f.height for f in readable]
    return {
        "files": len(infos),
        "readable": len(readable),
        "unreadable": len(infos) - len(readable),
        "unreadable_files": [{"path": f.path, "error": f.error} for f in infos if not f.readable],
        "distinct_groups": len(groups),
        "conflicting_groups": len(conflicting),
        "files_in_conflicting_groups": sum(len(m) for m in conflicting.values()),
        "duplicate_files": len(readable) - len(groups),
        "exact_duplicate_files": sum(c - 1 for c in sha_counts.values() if c > 1),
        "largest_group": max((len(m) for m in groups.values()), default=0),
        "group_size_histogram": dict(sorted(Counter(len(m) for m in groups.values()).items())),
        "labels": labels,
        "per_class_files": {lab: sum(1 for f in infos if f.label == lab) for lab in labels},
        "per_class_groups": {lab: per_class_groups.get(lab, 0) for lab in labels},
        "per_source": per_source,
        "cross_source_overlap": overlap,
        "groups_spanning_sources": sum(1 for s in group_sources.values() if len(s) > 1),
        "tiny_images": sum(f.tiny for f in readable),
        "blank_images": sum(f.blank for f in readable),
        "sizes": {
            "width_min": min(widths, default=0),
            "width_max": max(widths, default=0),
            "height_min": min(heights, default=0),
            "height_max": max(heights, default=0),
            "distinct_sizes": len({(f.width, f.height) for f in readable}),
        },
        "modes": dict(Counter(f.mode for f in readable)),
        "formats": dict(Counter(f.format for f in readable)),
        "phash_threshold": phash_threshold,
        "method": (
            "single linkage over identical sha256 and 64-bit perceptual DCT hash (imagehash.phash) "
            f"at Hamming distance <= {phash_threshold}"
        ),
    }


def audit_sources(
    sources: Sequence[str | os.PathLike],
    phash_threshold: int = DEFAULT_PHASH_THRESHOLD,
    progress: Progress | None = None,
) -> AuditResult:
    """Scan, hash and group every file of the sources. No files are written."""
    if not 0 <= phash_threshold <= 32:
        raise ConfigError(f"phash threshold must be between 0 and 32 bits, got {phash_threshold}")
    records = scan_sources(sources)
    infos = []
    for n, rec in enumerate(records, 1):
        infos.append(hash_file(rec))
        if progress:
            progress("hashing", n, len(records))
    for f in infos:
        if not f.readable:
            log.warning("unreadable, skipped: %s (%s)", f.path, f.error)
    group_files(infos, phash_threshold)
    names = list(dict.fromkeys(r.source for r in records))
    return AuditResult(files=infos, summary=summarize(infos, phash_threshold, names))


GROUPS_COLUMNS = ("path", "source", "label", "group", "sha256", "phash", "width", "height", "mode", "format", "readable", "error")


def write_groups_csv(path: Path, infos: list[FileInfo]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=GROUPS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for f in infos:
        w.writerow(asdict(f))
    atomic_write_text(path, buf.getvalue())


def read_groups_csv(path: str | os.PathLike) -> list[FileInfo]:
    from ..errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no groups.csv (run 'osteo-edge data audit' first)")
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(GROUPS_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: not an audit groups.csv, missing columns {sorted(missing)}")
        for row in reader:
            out.append(
                FileInfo(
                    path=row["path"], source=row["source"], label=row["label"], sha256=row["sha256"],
                    readable=row["readable"] == "True", error=row["error"], phash=row["phash"],
                    width=int(row["width"] or 0), height=int(row["height"] or 0), mode=row["mode"],
                    format=row["format"], group=int(row["group"]),
                )
            )
    return out
