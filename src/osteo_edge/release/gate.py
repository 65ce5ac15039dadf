"""`osteo-edge gate calibrate`: fit the input gate on a split's knee radiographs and non-knee images,
report its measured rates, and write it into bundles.

Knee radiographs come from the split: its train rows fit the out-of-distribution model, its val rows
choose the threshold together with half of each non-knee set, its test rows and the other half of each
non-knee set report the rates. Knee acceptance >= ``min_accept`` holds within EVERY source folder of the
calibration knees, and the rates are reported per source. With ``crossfit`` the threshold is chosen on
out-of-fold scores of every non-test knee (the split's folds; the gate is then refitted on all of them),
and a knee-vs-other discriminator is added (see :func:`~osteo_edge.edge_runtime.gate_fit.calibrate_gate_crossfit`).

Non-knee sets: the image folders given (e.g. ``../shared/data/spine/sriher``, grey spine radiographs),
photographs and an MRI slice that ship inside installed packages (matplotlib, gradio; found on disk,
never imported, converted to grey so the colour rule does not decide), and synthetic grey "photos"
(:func:`synthetic_photos`, seeded).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..edge_runtime.gate import Gate
from ..edge_runtime.gate_fit import calibrate_gate, calibrate_gate_crossfit, write_gate
from ..errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class GateCalibration:
    """A fitted gate, the report written beside it (``gate_calibration.json``) and the bundles it went into."""

    gate: Gate
    report: dict[str, Any]
    bundles: list[Path] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def _field(rng: np.random.Generator, h: int, w: int, kind: int) -> np.ndarray:
    """One synthetic grey image on [0, 1]: smooth field, shapes, gradient, stripes, document, noise."""
    if kind == 0:  # smooth random field (clouds, blurred scenes)
        small = rng.random((int(rng.integers(3, 12)), int(rng.integers(3, 12)))).astype(np.float32)
        return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC))
    if kind == 1:  # shapes on a background
        im = Image.new("L", (w, h), int(rng.integers(0, 256)))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 15))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=int(rng.integers(0, 256)))
        return np.asarray(im, dtype=np.float32) / 255
    if kind == 2:  # gradient with vignette
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        a, b = rng.normal(size=2)
        img = a * xx + b * yy
        img = img - img.min()
        return img / (img.max() + 1e-6) * (1 - 0.5 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2))
    if kind == 3:  # stripes / checkerboard
        yy, xx = np.mgrid[0:h, 0:w]
        f = rng.uniform(0.02, 0.3)
        return 0.5 + 0.5 * np.sin(f * xx + rng.uniform(0, 6)) * np.sin(f * rng.uniform(0, 1) * yy + rng.uniform(0, 6))
    if kind == 4:  # document: text-like blocks on light paper
        im = Image.new("L", (w, h), int(rng.integers(200, 256)))
        d = ImageDraw.Draw(im)
        y = 10
        while y < h - 10:  # the row step is drawn after each row: the seeded images stay those the shipped gate saw
            x = 10
            while x < w - 20:
                lw = int(rng.integers(5, 30))
                d.rectangle([x, y, x + lw, y + 6], fill=int(rng.integers(0, 80)))
                x += lw + 6
            y += int(rng.integers(12, 20))
        return np.asarray(im, dtype=np.float32) / 255
    small = rng.random((h // 4 + 1, w // 4 + 1)).astype(np.float32)  # textured noise scene
    img = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    return 0.6 * img + 0.4 * rng.random((h, w))


def synthetic_photos(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` seeded synthetic grey non-radiographs (uint8), six kinds in turn."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(160, 480)), int(rng.integers(160, 480))
        out.append((np.clip(_field(rng, h, w, i % 6), 0, 1).astype(np.float32) * 255).astype(np.uint8))
    return out


def package_photos(packages: Sequence[str] = ("matplotlib", "gradio")) -> list[tuple[str, np.ndarray]]:
    """Real photographs and an MRI slice shipped inside installed packages (grey), as (kind, pixels).
    The packages are located on disk, never imported."""
    found: list[tuple[str, np.ndarray]] = []
    for mod in packages:
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            continue
        for p in sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*")):
            if p.suffix.lower() in (".jpg", ".jpeg") or p.name == "Minduka_Present_Blue_Pack.png":
                try:
                    found.append(("photo", np.asarray(Image.open(p).convert("L"))))
                except OSError:
                    pass
            elif p.name == "s1045.ima.gz":  # 256x256 16-bit MRI slice
                arr = np.frombuffer(gzip.decompress(p.read_bytes()), dtype="<u2").reshape(256, 256)
                found.append(("mri", arr.astype(np.uint16)))
    return found


def halves(items: list, seed: int = 0) -> tuple[list, list]:
    """A seeded random half of ``items`` and the other half."""
    idx = np.random.default_rng(seed).permutation(len(items))
    k = len(items) // 2
    return [items[i] for i in idx[:k]], [items[i] for i in idx[k:]]


def non_knee_sets(folders: Sequence[Path], synthetic: int, photos: bool = True) -> tuple[dict[str, list], dict[str, list], dict[str, Any]]:
    """(calibration half, test half, description) of every non-knee set, by set name."""
    sets: dict[str, list] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"--non-knee {folder}: no such folder")
        files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"--non-knee {folder}: no .jpg/.jpeg/.png images in it")
        sets["_".join(folder.parts[-2:])] = files
    found = package_photos() if photos else []
    if found:
        sets["package_photos_grey"] = [a for _, a in found]
    if synthetic:
        sets["synthetic_grey"] = synthetic_photos(synthetic)
    if sum(len(v) for v in sets.values()) < 20:
        raise ConfigError("the gate needs at least 20 non-knee images: give --non-knee folders or --synthetic 20 or more")
    split_sets = {name: halves(items) for name, items in sets.items()}
    info = {name: len(items) for name, items in sets.items()}
    info["package_photos"] = [k for k, _ in found]
    return {k: v[0] for k, v in split_sets.items()}, {k: v[1] for k, v in split_sets.items()}, info


def _protocol(where: str, crossfit: bool, min_accept: float) -> str:
    if crossfit:
        return (f"two-part gate cross-fitted on the non-test rows of {where} by its folds: a density model (threshold: the largest "
                "out-of-fold knee score + 10%) and a knee-vs-other logistic score fitted against a seeded half of each non-knee set "
                f"(threshold: the smallest accepting >= {min_accept} of every source folder's out-of-fold knees); both refitted "
                "on all non-test knees; rates on its test rows and the other halves")
    return (f"OOD model fitted on the train rows of {where}; threshold chosen on its val rows plus a seeded half of each non-knee "
            f"set (max Youden J with knee acceptance >= {min_accept} within every source folder); rates on its test rows and the other halves")


def check_crossfit_folds(table: Any) -> list[Any]:
    """The non-test rows of a split, refused in one line unless every one has a fold (at least two folds)."""
    knees = [r for r in table.rows if r.split != "test"]
    if len({r.fold for r in knees if r.fold >= 0}) < 2 or any(r.fold < 0 for r in knees):
        raise ConfigError(f"{table.path}: --crossfit needs a split with folds on every non-test row (osteo-edge data split --folds K)")
    return knees


def check_gate_rows(table: Any, crossfit: bool) -> None:
    """Refuse in one line a split with too few knees to fit the gate (at least 10 per fitting set: every
    fold's complement with ``crossfit``, else the train rows), before any fitting or training."""
    if crossfit:
        knees = check_crossfit_folds(table)
        folds = [r.fold for r in knees]
        fewest = min(len(knees) - folds.count(f) for f in set(folds))
        if fewest < 10:
            raise ConfigError(f"{table.path}: the cross-fitted gate fits each fold on the other folds' knees, at least 10; "
                              f"the smallest such set has {fewest} (a larger split, or gate crossfit: false)")
    elif len(table.subset("train")) < 10:
        raise ConfigError(f"{table.path}: the gate is fitted on the train rows, at least 10; got {len(table.subset('train'))}")


def _fit(table: Any, calib_ood: dict, test_ood: dict, crossfit: bool, min_accept: float, protocol: str) -> tuple[Gate, int, int]:
    """The gate, and the numbers of fitting and calibration knees."""
    test_rows = table.subset("test")
    test = [r.path for r in test_rows]
    if crossfit:
        knees = check_crossfit_folds(table)
        gate = calibrate_gate_crossfit(
            [r.path for r in knees], [r.source for r in knees], [r.fold for r in knees], calib_ood, test, test_ood,
            min_accept=min_accept, protocol=protocol, test_in_sources=[r.source for r in test_rows])
        return gate, len(knees), len(knees)
    fit, cal_rows = table.subset("train"), table.subset("val")
    gate = calibrate_gate(
        [r.path for r in fit], [r.path for r in cal_rows], calib_ood, test, test_ood, min_accept=min_accept, protocol=protocol,
        calib_in_sources=[r.source for r in cal_rows], test_in_sources=[r.source for r in test_rows])
    return gate, len(fit), len(cal_rows)


def calibrate_gate_from_split(
    split: str | Path,
    *,
    bundles: Sequence[str | Path] = (),
    crossfit: bool = False,
    non_knee: Sequence[str | Path] = (),
    synthetic: int = 120,
    package_images: bool = True,
    min_accept: float = 0.99,
    out: str | Path | None = None,
    command: str = "",
) -> GateCalibration:
    """Fit the gate on ``split`` (see the module docstring), write ``gate.json`` and
    ``gate_calibration.json`` into ``out`` (when given) and the gate into every bundle of ``bundles``
    (each re-sealed through a recorded revision; a signature is dropped and must be renewed)."""
    from ..data.split import read_split
    from ..core.machine import machine_info

    t0 = time.perf_counter()
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for gate.json and gate_calibration.json")
    if not 0.5 <= min_accept <= 1:
        raise ConfigError(f"--min-accept must be in [0.5, 1], got {min_accept}")
    for b in bundles:  # refuse a wrong bundle before minutes of fitting
        if not (Path(b) / "manifest.json").is_file():
            raise ConfigError(f"--bundle {b}: not a model bundle (no manifest.json)")
    table = read_split(split)
    calib_ood, test_ood, info = non_knee_sets([Path(p) for p in non_knee], synthetic, package_images)
    check_gate_rows(table, crossfit)
    where = f"the split {Path(split).name} ({table.info.get('protocol', 'split protocol not recorded')})"
    gate, n_fit, n_cal = _fit(table, calib_ood, test_ood, crossfit, min_accept, _protocol(where, crossfit, min_accept))
    assert gate.ood is not None
    m = machine_info()
    report = {
        "threshold": gate.ood.threshold,
        "calibration": gate.ood.calibration,
        "sets": {"fit_knee": n_fit, "calib_knee": n_cal, "test_knee": len(table.subset("test")), "non_knee": info},
        "split_sha256": table.sha256,
        "command": command,
        "machine": {k: m.get(k) for k in ("cpu", "cores", "arch")},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    res = GateCalibration(gate, report)
    if out is not None:
        from ..artifact import atomic_write_json

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        res.files = {"gate_calibration.json": atomic_write_json(folder / "gate_calibration.json", report),
                     "gate.json": atomic_write_json(folder / "gate.json", gate.to_dict())}
    for b in bundles:
        write_gate(b, gate)
        res.bundles.append(Path(b))
        log.info("wrote the gate into %s", b)
    return res
