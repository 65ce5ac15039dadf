"""Knee joint boxes for the shared knee images (issue 26): the tool that made knee_boxes.csv.

    python benchmarks/locator/boxes.py propose --groups runs/model/audit/groups.csv   # heuristic boxes
    python benchmarks/locator/boxes.py sheets --out runs/locator/sheets                 # contact sheets to check by eye
    python benchmarks/locator/boxes.py correct                                          # apply corrections.csv

``propose`` takes one file per (duplicate group, aspect ratio) from a ``data audit`` groups.csv (the
largest copy; a group's copies with another aspect ratio are other framings of the radiograph and are
boxed too) and boxes every knee with the heuristic framing (:func:`osteo_edge.framing.knee_boxes`).
``sheets`` draws them, numbered, 30 to a sheet, for a person to check each box on the image.
The person lists the ids whose box misses the joint in ``rejected.txt``; ``bootstrap.py`` trains a
first locator on the other (kept) boxes and proposes boxes for the rejected films, which are drawn
again (``sheets --ids ... --merged runs/locator/v0/proposals.csv``) and checked by eye. ``correct``
then writes the result, applying ``corrections.csv`` (written by that person: ``checked-upto`` the
last id checked, ``drop`` a film whose joint cannot be boxed, ``drop-upper`` a proposal's false box
above the joint, ``box`` with ``cx,cy,side`` in the image's pixels for a box drawn by eye). Each row of knee_boxes.csv says who or what made it (``made_by``) and how it was
checked (``checked``). The kept-aside radiographs are not in ../shared/data and are never boxed.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
BOXES = HERE / "knee_boxes.csv"
CORRECTIONS = HERE / "corrections.csv"
REJECTED = HERE / "rejected.txt"  # ids whose heuristic box a person rejected on the sheets
BOXES_SOURCE = HERE / "knee_boxes.heuristic.csv" if (HERE / "knee_boxes.heuristic.csv").exists() else BOXES
FIELDS = ["id", "path", "sha256", "source", "group", "width", "height", "knee", "cx", "cy", "side", "made_by", "checked"]
HEURISTIC = "heuristic framing (osteo_edge.framing.knee_boxes)"
PER_SHEET = 30


def _data_root(path: str) -> tuple[str, str]:
    """(path relative to the data folder holding knee/, that folder)."""
    p = Path(path).resolve()
    parts = p.parts
    i = len(parts) - 1 - parts[::-1].index("knee")
    return str(Path(*parts[i:])), str(Path(*parts[:i]))


def propose(groups_csv: str) -> None:
    from osteo_edge.framing import knee_boxes

    by_key: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in csv.DictReader(Path(groups_csv).read_text().splitlines()):
        if r.get("readable", "True") != "True":
            continue
        by_key[(r["group"], round(int(r["width"]) / int(r["height"]), 2))].append(r)
    rows = []
    for i, key in enumerate(sorted(by_key, key=lambda k: (int(k[0]), k[1]))):
        r = max(by_key[key], key=lambda x: (int(x["width"]) * int(x["height"]), x["source"] == "wani-mendeley", x["path"]))
        rel, _ = _data_root(r["path"])
        gray = _gray(r["path"])
        for k, b in enumerate(knee_boxes(gray)):
            rows.append({"id": i, "path": rel, "sha256": r["sha256"], "source": r["source"], "group": r["group"],
                         "width": gray.shape[1], "height": gray.shape[0], "knee": k, "cx": b.left + b.side / 2,
                         "cy": b.top + b.side / 2, "side": b.side, "made_by": HEURISTIC, "checked": ""})
    _write(rows)
    print(f"wrote {BOXES} ({len(rows)} boxes on {len(by_key)} images)")


def _gray(path: str) -> np.ndarray:
    from osteo_edge.images import decode_image
    from osteo_edge.preprocess import to_gray

    return to_gray(decode_image(path, "scale"))


def _write(rows: list[dict]) -> None:
    tmp = BOXES.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(float(r[k]), 1) if k in ("cx", "cy", "side") else r[k]) for k in FIELDS})
    os.replace(tmp, BOXES)


def read(path: Path | None = None) -> list[dict]:
    """The heuristic's proposals (knee_boxes.heuristic.csv once corrections were applied), or ``path``."""
    return list(csv.DictReader(Path(path or BOXES_SOURCE).read_text().splitlines()))


def sheets(out: str, data: str, only: list[int] | None = None, cell: int = 200, rows: list[dict] | None = None) -> None:
    rows = rows if rows is not None else read()
    by_id: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[int(r["id"])].append(r)
    ids = sorted(by_id) if not only else only
    Path(out).mkdir(parents=True, exist_ok=True)
    for s in range(0, len(ids), PER_SHEET):
        chunk = ids[s : s + PER_SHEET]
        sheet = Image.new("RGB", (6 * cell, 5 * cell), "white")
        for j, i in enumerate(chunk):
            rs = by_id[i]
            img = Image.open(Path(data) / rs[0]["path"]).convert("RGB")
            f = (cell - 14) / max(img.size)
            img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))))
            d = ImageDraw.Draw(img)
            for r in rs:
                cx, cy, sd = (float(r[k]) * f for k in ("cx", "cy", "side"))
                colour = "lime" if r["made_by"] == HEURISTIC else "cyan"
                d.rectangle([cx - sd / 2, cy - sd / 2, cx + sd / 2, cy + sd / 2], outline=colour, width=2)
                d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill="red")
            x0, y0 = (j % 6) * cell, (j // 6) * cell
            sheet.paste(img, (x0, y0 + 14))
            ImageDraw.Draw(sheet).text((x0 + 2, y0), f"{i} {rs[0]['source'][:5]}", fill="black")
        sheet.save(Path(out) / f"sheet{s // PER_SHEET:03d}.png")
    print(f"wrote {(len(ids) + PER_SHEET - 1) // PER_SHEET} sheets to {out}")


def grid(out: str, data: str, ids: list[int], side: int = 480) -> None:
    """One image per id with a 10% coordinate grid in the image's own pixels, for drawing a box by eye."""
    rows = read()
    Path(out).mkdir(parents=True, exist_ok=True)
    for i in ids:
        rs = [r for r in rows if int(r["id"]) == i]
        img = Image.open(Path(data) / rs[0]["path"]).convert("RGB")
        W, H = img.size
        f = side / max(W, H)
        img = img.resize((round(W * f), round(H * f)))
        d = ImageDraw.Draw(img)
        for t in range(1, 10):
            x, y = W * t / 10, H * t / 10
            d.line([x * f, 0, x * f, img.height], fill="yellow")
            d.line([0, y * f, img.width, y * f], fill="yellow")
            d.text((x * f + 1, 1), f"{round(x)}", fill="yellow")
            d.text((1, y * f + 1), f"{round(y)}", fill="yellow")
        for r in rs:
            cx, cy, sd = (float(r[k]) * f for k in ("cx", "cy", "side"))
            d.rectangle([cx - sd / 2, cy - sd / 2, cx + sd / 2, cy + sd / 2], outline="lime", width=2)
        img.save(Path(out) / f"id{i}.png")


def merged(checker: str, proposals: Path | None) -> list[dict]:
    """The boxes after a person's check: heuristic boxes kept, rejected ones replaced by the first
    locator's proposals (``bootstrap.py``) or by boxes drawn by eye, ``drop``ped films left out."""
    rows = read()
    fixes = list(csv.DictReader(CORRECTIONS.read_text().splitlines())) if CORRECTIONS.exists() else []
    checked_upto = max((int(f["id"]) for f in fixes if f["action"] == "checked-upto"), default=-1)
    rejected = {int(x) for x in REJECTED.read_text().split()} if REJECTED.exists() else set()
    drawn: dict[int, list[dict]] = defaultdict(list)
    dropped = {int(f["id"]) for f in fixes if f["action"] == "drop"}
    for f in fixes:
        if f["action"] == "box":
            drawn[int(f["id"])].append(f)
    proposed: dict[int, list[dict]] = defaultdict(list)
    if proposals is not None and proposals.exists():
        for f in csv.DictReader(proposals.read_text().splitlines()):
            proposed[int(f["id"])].append(f)
    for f in fixes:  # a proposal with a false second box above the joint: keep the lowest box
        if f["action"] == "drop-upper" and proposed.get(int(f["id"])):
            proposed[int(f["id"])] = [max(proposed[int(f["id"])], key=lambda p: float(p["cy"]))]
    by_id: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_id[int(r["id"])].append(r)
    out = []
    for i in sorted(by_id):
        base = {k: v for k, v in by_id[i][0].items() if k in FIELDS}
        if i in dropped:
            continue
        if i in drawn:
            new, made = drawn[i], f"drawn by eye ({checker})"
        elif i in rejected and i in proposed:
            made = "knee locator v0 (trained on the kept heuristic boxes) proposal"
            if any(f["action"] == "drop-upper" and int(f["id"]) == i for f in fixes):
                made += ", its false upper box removed by eye"
            new = proposed[i]
        elif i in rejected:
            continue  # not yet re-boxed
        else:
            out.extend({**r, "checked": f"by eye, kept ({checker})" if i <= checked_upto else r["checked"]} for r in by_id[i])
            continue
        out.extend({**base, "knee": k, "cx": float(f["cx"]), "cy": float(f["cy"]), "side": float(f["side"]), "made_by": made,
                    "checked": f"by eye ({checker})" if i <= checked_upto else ""}
                   for k, f in enumerate(sorted(new, key=lambda f: float(f["cx"]))))
    return out


def correct(checker: str, proposals: Path | None) -> None:
    """Write the merged boxes (see :func:`merged`) into knee_boxes.csv, keeping the heuristic's
    original proposals in knee_boxes.heuristic.csv."""
    keep = BOXES.with_name("knee_boxes.heuristic.csv")
    if not keep.exists():
        shutil.copyfile(BOXES, keep)
    global BOXES_SOURCE
    BOXES_SOURCE = keep
    out = merged(checker, proposals)
    _write(out)
    print(f"{len(out)} boxes on {len({r['id'] for r in out})} films written to {BOXES}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("propose"); p.add_argument("--groups", required=True)
    p = sub.add_parser("sheets"); p.add_argument("--out", default="runs/locator/sheets"); p.add_argument("--data", default="../shared/data")
    p.add_argument("--ids", default="")
    p.add_argument("--merged", type=Path, default=None, help="draw the boxes after corrections, with these proposals")
    p = sub.add_parser("grid"); p.add_argument("--out", default="runs/locator/grid"); p.add_argument("--data", default="../shared/data")
    p.add_argument("ids", nargs="+", type=int)
    p = sub.add_parser("correct"); p.add_argument("--checker", default="osteo-edge session 7, AI engineer")
    p.add_argument("--proposals", type=Path, default=Path("runs/locator/v0/proposals.csv"))
    a = ap.parse_args(argv)
    if a.cmd == "propose":
        propose(a.groups)
    elif a.cmd == "sheets":
        ids = [int(x) for x in a.ids.split(",") if x] or None
        sheets(a.out, a.data, ids, rows=merged("preview", a.merged) if a.merged else None)
    elif a.cmd == "grid":
        grid(a.out, a.data, a.ids)
    else:
        correct(a.checker, a.proposals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
