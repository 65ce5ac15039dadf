"""Audit report: the audit's files (audit.json, groups.csv), a readable markdown page and its PNGs
(matplotlib's object API, no pyplot state). The audit itself (:mod:`.audit`) computes; this writes."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..artifact import atomic_write_json, atomic_write_text
from ..core.plots import new_figure, save_figure
from .audit import AuditResult, write_groups_csv


def write_audit(result: AuditResult, out: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
    """Write audit.json, groups.csv, report.md and the PNGs into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"audit.json": atomic_write_json(out / "audit.json", result.summary)}
    write_groups_csv(out / "groups.csv", result.files)
    written["groups.csv"] = out / "groups.csv"
    pngs = write_audit_plots(result, out) if plots else {}
    written.update(pngs)
    written["report.md"] = atomic_write_text(out / "report.md", audit_markdown(result, pngs))
    return written


def write_audit_plots(result: AuditResult, out: Path, contact_groups: int = 6) -> dict[str, Path]:
    s = result.summary
    labels = s["labels"]
    sources = list(s["per_source"])
    written: dict[str, Path] = {}

    fig = new_figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(sources))
    for k, lab in enumerate(labels):
        vals = [s["per_source"][src]["per_class_files"].get(lab, 0) for src in sources]
        ax.bar(x + k * width, vals, width, label=lab)
    ax.set_xticks(x + width * (len(labels) - 1) / 2, sources, rotation=10)
    ax.set_ylabel("files")
    ax.set_title("Class balance per source (files)")
    ax.legend()
    written["class_balance.png"] = save_figure(fig, out / "class_balance.png")

    fig = new_figure(9, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    hist = {int(k): v for k, v in s["group_size_histogram"].items()}
    ax1.bar(list(hist), list(hist.values()))
    ax1.set_xlabel("files per group (distinct radiograph)")
    ax1.set_ylabel("groups")
    ax1.set_yscale("log")
    ax1.set_title("Duplicate structure")
    names = list(s["cross_source_overlap"])
    ax2.barh(range(len(names)), [s["cross_source_overlap"][n] for n in names])
    ax2.set_yticks(range(len(names)), [n.replace(" & ", "\n& ") for n in names], fontsize=7)
    ax2.set_xlabel("groups shared")
    ax2.set_title("Cross-source overlap")
    written["duplicates.png"] = save_figure(fig, out / "duplicates.png")

    fig = new_figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    for src in sources:
        sides = [max(f.width, f.height) for f in result.readable if f.source == src]
        if sides:
            ax.hist(sides, bins=30, alpha=0.6, label=src)
    ax.set_xlabel("longer side (px)")
    ax.set_ylabel("files")
    ax.set_title("Image sizes per source")
    ax.legend()
    written["sizes.png"] = save_figure(fig, out / "sizes.png")

    groups: dict[int, list] = defaultdict(list)
    for f in result.readable:
        groups[f.group].append(f)
    conflicting = [m for m in groups.values() if len({f.label for f in m}) > 1]
    conflicting.sort(key=lambda m: (-len(m), m[0].path))
    picks = conflicting[:contact_groups]
    if picks:
        from ..preprocess import decode_image, to_gray

        cols = min(4, max(len(m) for m in picks))
        fig = new_figure(2.2 * cols, 2.4 * len(picks))
        for r, members in enumerate(picks):
            for c, f in enumerate(members[:cols]):
                ax = fig.add_subplot(len(picks), cols, r * cols + c + 1)
                ax.imshow(to_gray(decode_image(f.path)), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{f.source[:14]}\n{f.label} {f.width}x{f.height}", fontsize=7)
                ax.axis("off")
        fig.suptitle("Conflicting groups: the same radiograph under different labels", fontsize=9)
        written["conflicts.png"] = save_figure(fig, out / "conflicts.png")
    return written


def audit_markdown(result: AuditResult, pngs: dict[str, Path]) -> str:
    s = result.summary
    lines = [
        "# Data audit",
        "",
        f"Method: {s['method']}.",
        "",
        "| what | count |",
        "|---|---|",
        f"| files | {s['files']} |",
        f"| unreadable (skipped) | {s['unreadable']} |",
        f"| distinct radiographs (groups) | {s['distinct_groups']} |",
        f"| duplicate files (beyond one per group) | {s['duplicate_files']} |",
        f"| byte-identical duplicate files | {s['exact_duplicate_files']} |",
        f"| groups with conflicting labels | {s['conflicting_groups']} ({s['files_in_conflicting_groups']} files) |",
        f"| groups spanning several sources | {s['groups_spanning_sources']} |",
        f"| tiny images (< 64 px side) | {s['tiny_images']} |",
        f"| blank images | {s['blank_images']} |",
        "",
        "## Per class",
        "",
        "| label | files | groups |",
        "|---|---|---|",
    ]
    for lab in s["labels"]:
        lines.append(f"| {lab} | {s['per_class_files'][lab]} | {s['per_class_groups'][lab]} |")
    lines += ["", "## Per source", "", "| source | files | groups | internal duplicate groups | internal label conflicts | classes |", "|---|---|---|---|---|---|"]
    for src, d in s["per_source"].items():
        classes = ", ".join(f"{k} {v}" for k, v in d["per_class_files"].items())
        lines.append(
            f"| {src} | {d['files']} | {d['distinct_groups']} | {d['groups_with_internal_duplicates']} | "
            f"{d['groups_with_conflicting_labels_inside_source']} | {classes} |"
        )
    lines += ["", "## Overlap between sources (groups present in both)", "", "| pair | groups |", "|---|---|"]
    for pair, n in s["cross_source_overlap"].items():
        lines.append(f"| {pair} | {n} |")
    sizes = s["sizes"]
    lines += [
        "",
        "## Files",
        "",
        f"Sizes: width {sizes['width_min']}-{sizes['width_max']} px, height {sizes['height_min']}-{sizes['height_max']} px, "
        f"{sizes['distinct_sizes']} distinct sizes. Modes: {s['modes']}. Formats: {s['formats']}.",
        "",
    ]
    if s["unreadable_files"]:
        lines += ["Unreadable files (skipped):", ""]
        lines += [f"- `{u['path']}`: {u['error']}" for u in s["unreadable_files"][:50]]
        lines.append("")
    lines += [
        "## What this means",
        "",
        f"Only {s['distinct_groups']} of {s['readable']} readable files are distinct radiographs. A file-level random "
        "split puts copies of the same radiograph in training and test; use `osteo-edge data split`, which keeps "
        "every group in one split, and drops (or majority-votes) the conflicting groups.",
        "",
    ]
    for name in ("class_balance.png", "duplicates.png", "sizes.png", "conflicts.png"):
        if name in pngs:
            lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)
