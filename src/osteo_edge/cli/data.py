"""`osteo-edge data audit` and `osteo-edge data split`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..core.progress import TerminalProgress
from ..data.sources import MEMBERS
from . import _output as o
from ._common import choices, handle_errors
from ._steps import after_audit, after_split

data_app = typer.Typer(help="Audit datasets for duplicates and label conflicts; make leakage-safe splits.", no_args_is_help=True)


class Conflicts(str, Enum):
    drop = "drop"
    majority = "majority"


Members = choices("Members", MEMBERS)


Sources = Annotated[List[Path], typer.Argument(help="ImageFolder directories (one subfolder per class).", show_default=False)]


@data_app.command("audit")
@handle_errors
def audit(
    sources: Sources,
    out: Annotated[Path, typer.Option("--out", help="Directory for audit.json, groups.csv, report.md and PNGs.")],
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate threshold: max Hamming distance of 64-bit perceptual hashes.")] = 4,
    plots: Annotated[bool, typer.Option(help="Write the PNG figures.")] = True,
) -> None:
    """Find exact and near duplicates, label conflicts, cross-source overlap and unreadable files."""
    from ..data.audit import audit_sources
    from ..data.report import write_audit

    with TerminalProgress("hashing") as progress:
        result = audit_sources(sources, phash_threshold, progress=progress)
    written = write_audit(result, out, plots=plots)
    s = result.summary
    keys = ("files", "unreadable", "distinct_groups", "duplicate_files", "exact_duplicate_files", "conflicting_groups",
            "groups_spanning_sources", "tiny_images", "blank_images")
    rows = [(k.replace("_", " "), s[k]) for k in keys]
    rows += [(f"{lab}: files / groups", f"{s['per_class_files'][lab]} / {s['per_class_groups'][lab]}") for lab in s["labels"]]
    o.summary("Data audit", rows)
    o.wrote(written.values())
    o.next_step(after_audit(sources, out))


@data_app.command("split")
@handle_errors
def split(
    sources: Sources,
    out: Annotated[Path, typer.Option("--out", help="Directory for split.csv and split.json.")],
    val: Annotated[float, typer.Option(help="Fraction of groups for validation.")] = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of groups for test.")] = 0.15,
    folds: Annotated[int, typer.Option(help="Also assign K cross-validation folds over train+val (0: none).")] = 0,
    conflicts: Annotated[Conflicts, typer.Option(help="Groups whose copies carry different labels: drop them, or take the majority label.")] = Conflicts.drop,
    members: Annotated[Members, typer.Option(help="Files kept per duplicate group: all; one (the largest); per-source (the largest of each source folder).")] = Members("all"),
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated labels to keep (after --binary mapping).")] = None,
    binary: Annotated[bool, typer.Option(help="Map to Normal vs LowBMD (Osteopenia + Osteoporosis).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same file.")] = 0,
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate threshold (bits), as in 'data audit'.")] = 4,
    groups: Annotated[Optional[Path], typer.Option(help="Reuse an audit's groups.csv instead of hashing again.")] = None,
) -> None:
    """Group-aware stratified split: no duplicate group spans two splits."""
    from ..data.split import SplitOptions, split_sources, write_split

    opts = SplitOptions(
        val=val, test=test, folds=folds, conflicts=conflicts.value, members=members.value,
        labels=tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else (),
        binary=binary, seed=seed, phash_threshold=phash_threshold,
    )
    with TerminalProgress("hashing") as progress:
        table = split_sources(sources, opts, groups_csv=groups, progress=progress)
    written = write_split(table, out)
    counts = table.info["counts"]
    rows = [[sp, *[f"{counts[sp]['groups_per_label'][lab]} ({counts[sp]['files_per_label'][lab]})" for lab in table.labels],
             f"{counts[sp]['groups']} ({counts[sp]['files']})"] for sp in ("train", "val", "test")]
    o.table("Split (groups per label; files in brackets)", [o.Col("split"), *(o.Col(lab, right=True) for lab in table.labels),
            o.Col("total", right=True)], rows)
    if table.info["dropped"]:
        o.line(f"dropped: {o.mapping_text(table.info['dropped'])}")
    o.line(f"protocol: {table.info['protocol']}")
    o.wrote([written["split.csv"], written["split.json"]])
    o.next_step(after_split(written["split.csv"]))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
