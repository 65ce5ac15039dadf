"""`osteo-edge locator`: train, measure and try the learned knee locator (issue 26)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import _output as o
from ._common import handle_errors

locator_app = typer.Typer(help="The learned knee locator: finds each knee joint in a film (int8 TFLite, torch-free).",
                          no_args_is_help=True)


@locator_app.command("train")
@handle_errors
def train(
    boxes: Annotated[Path, typer.Option("--boxes", help="Knee boxes CSV (path, cx, cy, side, made_by, checked), e.g. benchmarks/locator/knee_boxes.csv.")],
    split: Annotated[Path, typer.Option("--split", help="split.csv: its test groups are held out and measured, its fold-1 groups pick the epoch.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for locator.pt, knee-locator.tflite, locator.json, report.json.")],
    data: Annotated[Path, typer.Option("--data", help="Folder the CSV's paths are relative to.")] = Path("../shared/data"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 40,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the locator on the boxes' non-test films, export int8 TFLite, report accuracy per source."""
    from ..release.locator import train_locator

    if not boxes.is_file():
        raise typer.BadParameter(f"{boxes}: no such file", param_hint="--boxes")
    rep = train_locator(boxes, split, data, out, epochs=epochs, threads=threads, seed=seed,
                        command="osteo-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]), log=o.line)
    _table(rep.get("tflite_int8", rep["torch"])["test"], "held-out (test) films, int8 TFLite")
    o.wrote([out / "report.json", out / "knee-locator.tflite", out / "locator.json"])
    o.next_step(f"osteo-edge locator show IMAGE --model-dir {out}")


@locator_app.command("show")
@handle_errors
def show(
    images: Annotated[list[Path], typer.Argument(help="Radiographs (PNG, JPEG, DICOM).")],
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="Locator folder (default: the shipped one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
) -> None:
    """Print the knees the locator finds in each image: crop box (left, top, side) and joint score."""
    from ..images import decode_image
    from ..locator import KneeLocator, default_locator
    from ..preprocess import to_gray

    from ..errors import OsteoEdgeError

    loc = KneeLocator(model_dir) if model_dir else default_locator()
    failed = 0
    for p in images:
        try:
            gray = to_gray(decode_image(p, "scale"))
        except (OsteoEdgeError, OSError) as exc:
            failed += 1
            o.error(f"{p}: {exc}" if str(p) not in str(exc) else str(exc))
            continue
        dets = loc.detect(gray)
        if as_json:
            print(json.dumps({"image": str(p), "knees": [{"left": d.box.left, "top": d.box.top, "side": d.box.side,
                                                          "score": round(d.score, 3)} for d in dets]}))
        else:
            print(f"{p}: " + "; ".join(f"knee at ({d.box.left}, {d.box.top}) side {d.box.side}, score {d.score:.2f}" for d in dets))
    if failed:
        raise typer.Exit(1)


def _table(scores: dict, title: str) -> None:
    o.table(title, ["source", "films", "knees", "mean IoU", "IoU>=0.5", "joint in crop", "knee count ok"],
            [[src, s["films"], s["knees"], f"{s['mean_iou']:.3f}", f"{s['knees_iou_ge_0.5']:.3f}",
              f"{s['films_crop_contains_joint']:.3f}", f"{s['films_right_knee_count']:.3f}"] for src, s in scores.items()])


def register(app: typer.Typer) -> None:
    app.add_typer(locator_app, name="locator")
