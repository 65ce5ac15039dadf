"""Dataset sources: ImageFolder-style directories (one subfolder per class)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

from ..errors import ConfigError, DataError

# Canonical label order: severity, so a binary or 3-class view always lists Normal first.
LABEL_ORDER = ("Normal", "Osteopenia", "Osteoporosis")
LOW_BMD = "LowBMD"
BINARY_MAP = {"Normal": "Normal", "Osteopenia": LOW_BMD, "Osteoporosis": LOW_BMD}
SKIP_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
# The only three-class source, labelled from T-scores; the Kaggle folders hold byte-identical copies
# of its images, so a duplicate group with any Wani member is a Wani radiograph.
WANI = "wani-mendeley"
# Files a split keeps per duplicate group: every copy; the largest; the largest of each source folder
# (the same radiograph as each source framed and encoded it: source-invariance data, one copy per source).
MEMBERS = ("all", "one", "per-source")


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    source: str
    label: str


def order_labels(labels: Iterable[str]) -> list[str]:
    """Known labels in severity order, then any others alphabetically."""
    uniq = set(labels)
    known = [x for x in (*LABEL_ORDER, LOW_BMD) if x in uniq]
    return known + sorted(uniq - set(known))


def source_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names for source directories (the folder name, widened if two collide)."""
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def scan_sources(sources: Sequence[str | os.PathLike]) -> list[ImageRecord]:
    """All candidate files of the given ImageFolder sources, in a stable order.

    Every regular file inside a class folder is a candidate: whether it is an image is decided
    by its content later, not by its extension. A missing or empty source, or one without class
    folders, raises a one-line :class:`DataError`.
    """
    if not sources:
        raise DataError("no data source given; pass one or more ImageFolder directories")
    paths = [Path(s).expanduser().resolve() for s in sources]
    if len(set(paths)) != len(paths):
        raise DataError("the same source directory was given twice")
    records: list[ImageRecord] = []
    for path, name, typed in zip(paths, source_names(paths), sources):  # messages name the path as the user typed it
        if not path.exists():
            raise DataError(f"source {typed} does not exist")
        if not path.is_dir():
            raise DataError(f"source {typed} is not a directory (expected one subfolder per class)")
        classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"source {typed} has no class folders (expected e.g. {Path(typed) / 'Normal' / '*.png'})")
        found = 0
        for cdir in classes:
            for f in sorted(cdir.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and f.name not in SKIP_NAMES:
                    records.append(ImageRecord(path=f, source=name, label=cdir.name))
                    found += 1
        if found == 0:
            raise DataError(f"source {typed} is empty: its class folders hold no files")
    return records


def _field(row: Any, name: str) -> Any:
    if isinstance(row, Mapping):
        return row[name]
    return getattr(row, name)


def group_source(rows: Iterable[Any], priority: Sequence[str] = (WANI,), mixed: str = "join") -> dict[Hashable, str]:
    """The source of every duplicate group, from per-file rows with ``group`` and ``source``.

    Rows are mappings or objects (``SplitRow``, ``FileInfo``). A group with any member from a source
    in ``priority`` (default: ``wani-mendeley``) belongs to the first such source: the Kaggle
    folders hold byte-identical copies of Wani images, and counting those as Kaggle would turn every
    Wani Normal and Osteoporosis knee into a "Kaggle" knee. Otherwise the group's source is that of
    its members. A group spread over several other sources gets their names joined with ``+``
    (``mixed="join"``, e.g. ``2class-kaggle+multiclass-kaggle``: on the knee data every 2class-kaggle
    radiograph also sits in multiclass-kaggle) or the most frequent one, ties alphabetical
    (``mixed="majority"``, as the split's stratification does).

    Give it ALL member files (an audit's groups.csv or a ``--members all`` split): a ``--members
    one`` split keeps only one representative per group, which may be the Kaggle copy.
    """
    if mixed not in ("join", "majority"):
        raise ConfigError(f"unknown mixed={mixed!r}; valid: join, majority")
    members: dict[Hashable, Counter[str]] = defaultdict(Counter)
    for r in rows:
        g = _field(r, "group")
        g = int(g) if isinstance(g, str) and g.lstrip("-").isdigit() else g
        members[g][str(_field(r, "source"))] += 1
    out: dict[Hashable, str] = {}
    for g, counts in members.items():
        first = next((p for p in priority if counts.get(p)), None)
        if first is not None:
            out[g] = first
        elif mixed == "join":
            out[g] = "+".join(sorted(counts))
        else:
            out[g] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return out
