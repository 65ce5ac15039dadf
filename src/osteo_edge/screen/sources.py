"""What a screening run answers: :class:`ScreenItem` from a folder tree or a CSV list of files.

A CSV list has a ``path`` column (relative paths are read from the CSV's folder) and, optionally,
``patient_id``, ``accession_number``, ``study_instance_uid`` and ``film_date`` for the referral
worklist of films that are not DICOM (a DICOM file's header gives them).
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError

META_FIELDS = ("patient_id", "accession_number", "study_instance_uid", "film_date")


@dataclass(frozen=True)
class ScreenItem:
    """One image to answer. ``key``: its record identity when known before reading it (a PACS gives
    the SOP Instance UID), else None (the worker reads it: SOP Instance UID, else sha256).
    ``meta``: worklist fields known from the source (CSV columns, C-FIND answers)."""

    path: str
    key: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def folder_items(root: str | os.PathLike) -> tuple[list[ScreenItem], int]:
    """Every image file under ``root`` (recursively, sorted; hidden and side files such as .csv left
    out, as ``predict`` does) and how many files were left out."""
    from ..edge_runtime import scan_inputs

    inputs, skipped = scan_inputs([root])
    return [ScreenItem(str(p)) for p in inputs], len(skipped)


def csv_items(path: str | os.PathLike) -> list[ScreenItem]:
    """The files listed in a CSV with a ``path`` column (others optional, see the module doc)."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in cols:
                raise ConfigError(f"{p}: a file list needs a 'path' column; found {', '.join(cols) or 'no header'}")
            rows = []
            for r in reader:
                if None in r:  # more cells than the header has columns
                    raise ConfigError(f"{p}: line {reader.line_num} has more cells than the header has columns "
                                      "(a path with a comma must be in double quotes)")
                rows.append({(k or "").strip(): (v or "").strip() for k, v in r.items()})
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{p}: not a readable CSV file list ({exc})") from exc
    items = []
    for r in rows:
        if not r.get("path"):
            continue
        f = Path(r["path"])
        f = f if f.is_absolute() else p.parent / f
        items.append(ScreenItem(str(f), meta={k: r[k] for k in META_FIELDS if r.get(k)}))
    if not items:
        raise ConfigError(f"{p}: the file list names no file")
    return items


def source_items(source: str | os.PathLike) -> tuple[list[ScreenItem], int]:
    """A folder tree or a ``.csv`` file list: (items, files left out)."""
    p = Path(source)
    if p.is_dir():
        items, left_out = folder_items(p)
        if not items:
            raise ConfigError(f"{p}: no image files in this folder tree")
        return items, left_out
    if p.is_file() and p.suffix.lower() == ".csv":
        return csv_items(p), 0
    if p.is_file():
        raise ConfigError(f"{p}: SOURCE is a folder tree or a CSV list of files (a 'path' column); for one file use osteo-edge predict")
    raise ConfigError(f"{p}: no such folder or file list")


def chunks(items: Iterator[ScreenItem] | list[ScreenItem], size: int) -> Iterator[list[ScreenItem]]:
    """``items`` in lists of at most ``size``."""
    batch: list[ScreenItem] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
