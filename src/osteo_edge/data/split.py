"""Leakage-safe, group-aware stratified splits, k-fold assignment, and the split.csv reader.

A group (one distinct radiograph and all its copies, from :mod:`.audit`) never spans two splits.
Groups are stratified by (label, source): each stratum's groups are shuffled with the seed and
cut by the requested fractions, so class shares (counted over groups) match across splits and
no source is concentrated in one split. With ``folds=K`` the non-test groups also get a fold
index 0..K-1, stratified the same way (test rows have fold -1).

split.csv columns: ``path`` (relative to the split file's folder; older files: absolute), ``label`` (after the label mapping), ``orig_label``,
``source`` (the file's folder), ``group``, ``split`` (train/val/test), ``fold``, ``sha256`` and
``group_source``: the source of the whole duplicate group by :func:`.sources.group_source`
(``wani-mendeley`` when any copy is a Wani file), computed from every member even when
``--members one`` keeps a Kaggle copy. Per-source metrics use it. Beside it, ``split.json`` records
the options, the label order and the counts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..artifact import atomic_write_json, atomic_write_text, sha256_file
from ..core.progress import Progress
from ..errors import ConfigError, DataError, choice_error
from .audit import DEFAULT_PHASH_THRESHOLD, FileInfo, audit_sources
from .sources import BINARY_MAP, MEMBERS, group_source, order_labels

SPLIT_COLUMNS = ("path", "label", "orig_label", "source", "group", "split", "fold", "sha256", "group_source")
SPLITS = ("train", "val", "test")



@dataclass(frozen=True)
class SplitOptions:
    val: float = 0.15
    test: float = 0.15
    folds: int = 0
    conflicts: str = "drop"  # drop | majority
    members: str = "all"  # all | one | per-source
    labels: tuple[str, ...] = ()  # keep only these (after mapping); empty = all
    binary: bool = False
    seed: int = 0
    phash_threshold: int = DEFAULT_PHASH_THRESHOLD

    def __post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ConfigError(f"--val and --test must be fractions in [0, 1) summing below 1, got {self.val} and {self.test}")
        if self.conflicts not in ("drop", "majority"):
            raise ConfigError(f"unknown --conflicts {self.conflicts!r}; valid: drop, majority")
        if self.members not in MEMBERS:
            raise choice_error("--members", self.members, MEMBERS)
        if self.folds < 0 or self.folds == 1:
            raise ConfigError(f"--folds must be 0 (none) or at least 2, got {self.folds}")


@dataclass
class SplitRow:
    path: str
    label: str
    orig_label: str
    source: str
    group: int
    split: str
    fold: int
    sha256: str
    group_source: str = ""  # the duplicate group's source (Wani rule); "" in split files made before it

    @property
    def domain(self) -> str:
        """The source used for per-source metrics: the group's source, else the file's folder."""
        return self.group_source or self.source


@dataclass
class SplitTable:
    rows: list[SplitRow]
    labels: list[str]
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def subset(self, split: str, fold: int | None = None) -> list[SplitRow]:
        """Rows of one split. With ``fold`` given (k-fold), 'val' is that fold and 'train' the others."""
        if fold is None:
            return [r for r in self.rows if r.split == split]
        if split == "test":
            return [r for r in self.rows if r.split == "test"]
        if split == "val":
            return [r for r in self.rows if r.fold == fold]
        return [r for r in self.rows if r.fold >= 0 and r.fold != fold]

    def train_val(self, fold: int = -1) -> tuple[list[SplitRow], list[SplitRow]]:
        """The training and validation rows: the 'train' and 'val' splits, or with ``fold >= 0``
        (k-fold) the other folds and fold ``fold``; the test split is in neither."""
        if fold < 0:
            return self.subset("train"), self.subset("val")
        if self.folds <= fold:
            raise ConfigError(f"fold {fold} asked for, but the split has {self.folds} folds (make one with 'data split --folds K')")
        return self.subset("train", fold), self.subset("val", fold)

    @property
    def sha256(self) -> str:
        if self.path is not None and self.path.exists():
            return sha256_file(self.path)
        return hashlib.sha256(_rows_csv(self.rows).encode()).hexdigest()

    @property
    def folds(self) -> int:
        return max((r.fold for r in self.rows), default=-1) + 1


def _map_label(label: str, binary: bool) -> str:
    return BINARY_MAP.get(label, label) if binary else label


def _resolve_groups(infos: list[FileInfo], opts: SplitOptions) -> tuple[dict[int, str], dict[str, int]]:
    """Label per group after mapping and conflict handling; counts of what was dropped."""
    members: dict[int, list[FileInfo]] = defaultdict(list)
    for f in infos:
        if f.readable:
            members[f.group].append(f)
    labels: dict[int, str] = {}
    dropped = Counter()
    for g, mem in members.items():
        votes = Counter(_map_label(f.label, opts.binary) for f in mem)
        if len(votes) > 1:
            if opts.conflicts == "drop":
                dropped["conflicting_groups"] += 1
                dropped["conflicting_files"] += len(mem)
                continue
            (top, n1), (_, n2) = votes.most_common(2)
            if n1 == n2:
                dropped["tied_groups"] += 1
                dropped["tied_files"] += len(mem)
                continue
            labels[g] = top
        else:
            labels[g] = next(iter(votes))
    if opts.labels:
        known = set(labels.values())
        unknown = [lab for lab in opts.labels if lab not in known]
        if unknown:
            raise ConfigError(f"unknown label(s) {unknown} in --labels; the data has: {', '.join(order_labels(known))}")
        keep = set(opts.labels)
        for g in [g for g, lab in labels.items() if lab not in keep]:
            dropped["other_label_groups"] += 1
            del labels[g]
    return labels, dict(dropped)


def assign_splits(
    group_labels: dict[int, str], group_source: dict[int, str], opts: SplitOptions
) -> tuple[dict[int, str], dict[int, int]]:
    """Split and fold per group, stratified by (label, source), deterministic for a seed."""
    rng = random.Random(opts.seed)
    strata: dict[tuple[str, str], list[int]] = defaultdict(list)
    for g in sorted(group_labels):
        strata[(group_labels[g], group_source[g])].append(g)
    split_of: dict[int, str] = {}
    fold_of: dict[int, int] = {}
    # Carry fractional remainders across strata so small strata do not all round the same way.
    carry = [0.0, 0.0, 0.0]
    fold_offset = 0
    for key in sorted(strata):
        groups = strata[key]
        rng.shuffle(groups)
        n = len(groups)
        want = [n * opts.test + carry[0], n * opts.val + carry[1]]
        n_test, n_val = int(round(want[0])), int(round(want[1]))
        n_test, n_val = min(n_test, n), min(n_val, n - min(n_test, n))
        carry = [want[0] - n_test, want[1] - n_val, 0.0]
        for i, g in enumerate(groups):
            split_of[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        if opts.folds:
            rest = [g for g in groups if split_of[g] != "test"]
            for i, g in enumerate(rest):
                fold_of[g] = (i + fold_offset) % opts.folds
            fold_offset = (fold_offset + len(rest)) % opts.folds
    return split_of, fold_of


def _choose_representative(mem: list[FileInfo]) -> FileInfo:
    """The member with most pixels (then lexical path) stands for the group."""
    return sorted(mem, key=lambda f: (-(f.width * f.height), f.path))[0]


def _kept_members(mem: list[FileInfo], policy: str) -> list[FileInfo]:
    if policy == "all":
        return mem
    if policy == "one":
        return [_choose_representative(mem)]
    by_source: dict[str, list[FileInfo]] = defaultdict(list)
    for f in mem:
        by_source[f.source].append(f)
    return [_choose_representative(fs) for _, fs in sorted(by_source.items())]


def make_split(infos: list[FileInfo], opts: SplitOptions) -> SplitTable:
    group_labels, dropped = _resolve_groups(infos, opts)
    if not group_labels:
        raise DataError("no usable groups left after dropping unreadable files and label conflicts")
    members: dict[int, list[FileInfo]] = defaultdict(list)
    for f in infos:
        if f.readable and f.group in group_labels:
            members[f.group].append(f)
    # A group's source for stratification: its majority source (ties: alphabetical).
    majority_source = {g: sorted(Counter(f.source for f in m).items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for g, m in members.items()}
    split_of, fold_of = assign_splits(group_labels, majority_source, opts)
    domain = group_source([f for m in members.values() for f in m])
    rows: list[SplitRow] = []
    for g in sorted(members):
        mem = _kept_members(members[g], opts.members)
        for f in sorted(mem, key=lambda f: f.path):
            rows.append(
                SplitRow(
                    path=str(Path(f.path).resolve()), label=group_labels[g], orig_label=f.label, source=f.source,
                    group=g, split=split_of[g], fold=fold_of.get(g, -1), sha256=f.sha256, group_source=domain[g],
                )
            )
    labels = order_labels(group_labels.values())
    table = SplitTable(rows=rows, labels=labels)
    table.info = split_summary(table, opts, dropped, unreadable=sum(not f.readable for f in infos))
    return table


def split_summary(table: SplitTable, opts: SplitOptions, dropped: dict[str, int], unreadable: int) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for sp in SPLITS:
        rows = table.subset(sp)
        groups = {r.group: r.label for r in rows}
        counts[sp] = {
            "files": len(rows),
            "groups": len(groups),
            "groups_per_label": {lab: sum(1 for v in groups.values() if v == lab) for lab in table.labels},
            "files_per_label": {lab: sum(1 for r in rows if r.label == lab) for lab in table.labels},
            "groups_per_source": dict(sorted(Counter(r.source for r in {r.group: r for r in rows}.values()).items())),
        }
    opts_d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.__dict__.items()}
    return {
        "labels": table.labels,
        "options": opts_d,
        "counts": counts,
        "folds": opts.folds,
        "dropped": dropped,
        "unreadable_skipped": unreadable,
        "protocol": protocol_text(opts),
    }


def protocol_text(opts: SplitOptions) -> str:
    """One sentence naming the split protocol, for every report that quotes a metric."""
    return (
        f"group-aware split (duplicates grouped by sha256 + perceptual hash <= {opts.phash_threshold} bits, "
        f"no group in two splits), stratified by label and source, test {opts.test:.0%} / val {opts.val:.0%} of groups, "
        f"conflicting-label groups: {opts.conflicts}, members per group: {opts.members}, "
        f"labels: {'binary Normal vs LowBMD' if opts.binary else 'as found'}, seed {opts.seed}"
    )


def _relative_to(path: str, folder: Path) -> str:
    """``path`` relative to ``folder`` (both taken physically, as :func:`read_split` resolves them), in
    forward slashes; absolute when there is no relative path (another drive on Windows)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()
    except ValueError:
        return str(path)


def _rows_csv(rows: list[SplitRow], folder: Path | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SPLIT_COLUMNS)
    for r in rows:
        w.writerow([_relative_to(r.path, folder) if c == "path" and folder is not None else getattr(r, c) for c in SPLIT_COLUMNS])
    return buf.getvalue()


def write_split(table: SplitTable, out: str | os.PathLike, relative: bool = True) -> dict[str, Path]:
    """Write ``split.csv`` and ``split.json`` into ``out``. Image paths are stored relative to ``out``
    (``relative=False``: absolute, as split files made before issue 23), so a split moves or is shared
    together with the data beside it; :func:`read_split` reads both."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = atomic_write_text(out / "split.csv", _rows_csv(table.rows, out if relative else None))
    table.path = csv_path
    info = dict(table.info, split_csv_sha256=sha256_file(csv_path))
    json_path = atomic_write_json(out / "split.json", info)
    return {"split.csv": csv_path, "split.json": json_path}


def split_sources(
    sources: Sequence[str | os.PathLike],
    opts: SplitOptions,
    groups_csv: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> SplitTable:
    """Audit (or reuse an audit's groups.csv) and split."""
    if groups_csv is not None:
        from .audit import read_groups_csv

        infos = _from_sources(read_groups_csv(groups_csv), sources, groups_csv)
    else:
        infos = audit_sources(sources, opts.phash_threshold, progress=progress).files
    return make_split(infos, opts)


def _from_sources(infos: list[Any], sources: Sequence[str | os.PathLike], groups_csv: str | os.PathLike) -> list[Any]:
    """The rows of an audit's groups.csv under the given source folders (an audit of more folders
    serves a split of fewer); one line when a folder has no row there (the audit did not cover it)."""
    roots = [Path(s).resolve() for s in sources]
    kept, seen = [], set()
    for info in infos:
        path = Path(info.path).resolve()
        root = next((r for r in roots if path.is_relative_to(r)), None)
        if root is not None:
            kept.append(info)
            seen.add(root)
    missing = [str(s) for s, r in zip(sources, roots) if r not in seen]
    if missing:
        raise DataError(f"{groups_csv}: no audited file under {', '.join(missing)}; audit those folders "
                        "('osteo-edge data audit') or leave out --groups")
    return kept


def read_split(path: str | os.PathLike) -> SplitTable:
    """Read a split.csv (and the split.json beside it, when present). Relative paths resolve
    against the CSV's directory."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such split file (make one with 'osteo-edge data split')")
    rows: list[SplitRow] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "group", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: not a split file, missing columns {sorted(missing)}")
        for n, row in enumerate(reader, 2):
            split = row["split"]
            if split not in SPLITS:
                raise DataError(f"{path}:{n}: unknown split {split!r}; valid: {', '.join(SPLITS)}")
            p = Path(row["path"])
            if not p.is_absolute():
                p = (path.parent / p).resolve()
            try:
                rows.append(
                    SplitRow(
                        path=str(p), label=row["label"], orig_label=row.get("orig_label") or row["label"],
                        source=row.get("source", ""), group=int(row["group"]), split=split,
                        fold=int(row.get("fold") or -1), sha256=row.get("sha256", ""),
                        group_source=row.get("group_source") or "",
                    )
                )
            except ValueError as exc:
                raise DataError(f"{path}:{n}: bad group or fold number ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: split file has no rows")
    info: dict[str, Any] = {}
    jpath = path.with_name("split.json")
    if jpath.is_file():
        try:
            info = json.loads(jpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            info = {}
    labels = info.get("labels") or order_labels(r.label for r in rows)
    unknown = sorted({r.label for r in rows} - set(labels))
    if unknown:
        raise DataError(f"{path}: label(s) {unknown} are not in the split's label list {labels}")
    return SplitTable(rows=rows, labels=list(labels), path=path, info=info)
