"""`osteo-edge release`: rebuild a bundle the way the shipped one was built, resumable per step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import _output as o
from ._common import handle_errors, progress_console, quiet_native, quiet_third_party


@handle_errors
def release_cmd(
    split: Annotated[Path, typer.Option("--split", help="split.csv to train on (train rows; val rows choose the epoch and calibrate).")],
    out: Annotated[Path, typer.Option("--out", help="Release folder: runs, step log, parity, per-source reports, model card.")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (osteo-edge keygen) that signs both bundles.")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="YAML/JSON recipe: train, quantize, export, gate, parity sections (docs/release.md).", show_default="every command's defaults")] = None,
    eval_split: Annotated[Optional[Path], typer.Option("--eval-split", help="split.csv for export checks, the gate, parity and the per-source figures.", show_default="--split")] = None,
    bundle_dir: Annotated[Optional[Path], typer.Option("--bundle-dir", help="Where the int8 bundle goes.", show_default="OUT/bundle")] = None,
    reference_dir: Annotated[Optional[Path], typer.Option("--reference-dir", help="Where the fp32 reference bundle goes.", show_default="OUT/reference")] = None,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help="Public key(s) or folder the final check trusts.", show_default="the --key's own public half")] = None,
) -> None:
    """Train -> QAT -> fp32 and faithful int8 TFLite -> gate -> parity -> per-source metrics -> strip paths -> sign -> verify.

    Each step is skipped when its output exists and matches the step log (OUT/release.json): run the
    same command again to finish a release that stopped, or after changing one section of the recipe."""
    from ..core.progress import TerminalProgress
    from ..release.pipeline import release
    from ..release.recipe import read_recipe

    rec = read_recipe(recipe)
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")  # QAT compiles a small C++ extension on first use
    try:
        import nncf  # noqa: F401 - imported here so that its INFO logger is quieted below
    except ImportError:
        pass
    quiet_third_party()
    with TerminalProgress(f"release {rec.name}", console=progress_console()) as progress, quiet_native():
        res = release(split, out, key, recipe=rec, eval_split=eval_split, bundle_dir=bundle_dir, reference_dir=reference_dir,
                      trusted_keys=trusted_key or [], progress=progress)
    o.table(f"Release {rec.name}: {out}", [o.Col("step"), o.Col("status"), o.Col("seconds", right=True), o.Col("result")],
            [[x.name, x.status, f"{x.seconds:.1f}" if x.status == "ran" else "-", x.summary] for x in res.outcomes])
    o.wrote([res.paths.bundle, res.paths.reference, *res.files.values()])
    if not res.parity_passed:
        for f in res.parity_failures:
            o.line(f"parity gate failed: {f}", stderr=True, style="red")
        o.line("the bundles are built, signed and verified, but the int8 bundle is not faithful to its fp32 reference", stderr=True)
        raise typer.Exit(code=1)
    o.next_step(f"osteo-edge predict KNEE.png --model {res.paths.bundle}")


def register(app: typer.Typer) -> None:
    app.command("release")(release_cmd)
