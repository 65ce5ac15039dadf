"""Calibrate the edge runtime's input gate (out-of-distribution score) and save the measured rates.

    python benchmarks/runtime/calibrate_gate.py --split SPLIT.csv [--bundle BUNDLE_DIR] [--out benchmarks/runtime/gate]

Knee radiographs: the split's train rows fit the out-of-distribution model, its val rows choose the
threshold together with half of each non-knee set, its test rows and the other half of each non-knee
set report the rates. Knee acceptance >= --min-accept holds within EVERY source folder of the
validation knees (a ``--members per-source`` split holds each radiograph as every source filmed it,
so Wani's own films of all three classes are there), and the rates are reported per source. Non-knee sets: ../shared/data/spine/sriher (grey spine images), photographs that
ship inside installed packages (matplotlib / gradio sample images, converted to grey so the colour
rule does not decide), an MRI slice shipped with matplotlib, and synthetic grey "photos" drawn here
(smooth random fields, shapes, gradients, stripes, text-like blocks, noise; seeded).
With --bundle the gate is written into that bundle's manifest (``gate`` field) and the bundle resealed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from osteo_edge.data.split import read_split
from osteo_edge.edge_runtime.gate import calibrate_gate, calibrate_gate_crossfit, write_gate
from osteo_edge.preprocess import decode_image

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def synthetic_photos(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(160, 480)), int(rng.integers(160, 480))
        kind = i % 6
        if kind == 0:  # smooth random field (clouds, blurred scenes)
            small = rng.random((int(rng.integers(3, 12)), int(rng.integers(3, 12)))).astype(np.float32)
            img = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC))
        elif kind == 1:  # shapes on a background
            im = Image.new("L", (w, h), int(rng.integers(0, 256)))
            d = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(3, 15))):
                x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
                box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
                (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=int(rng.integers(0, 256)))
            img = np.asarray(im, dtype=np.float32) / 255
        elif kind == 2:  # gradient with vignette
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            a, b = rng.normal(size=2)
            img = a * xx + b * yy
            img = img - img.min()
            img = img / (img.max() + 1e-6) * (1 - 0.5 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2))
        elif kind == 3:  # stripes / checkerboard
            yy, xx = np.mgrid[0:h, 0:w]
            f = rng.uniform(0.02, 0.3)
            img = 0.5 + 0.5 * np.sin(f * xx + rng.uniform(0, 6)) * np.sin(f * rng.uniform(0, 1) * yy + rng.uniform(0, 6))
        elif kind == 4:  # document: text-like blocks on light paper
            im = Image.new("L", (w, h), int(rng.integers(200, 256)))
            d = ImageDraw.Draw(im)
            y = 10
            while y < h - 10:
                x = 10
                while x < w - 20:
                    lw = int(rng.integers(5, 30))
                    d.rectangle([x, y, x + lw, y + 6], fill=int(rng.integers(0, 80)))
                    x += lw + 6
                y += int(rng.integers(12, 20))
            img = np.asarray(im, dtype=np.float32) / 255
        else:  # textured noise scene
            small = rng.random((h // 4 + 1, w // 4 + 1)).astype(np.float32)
            img = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BILINEAR))
            img = 0.6 * img + 0.4 * rng.random((h, w))
        img = np.clip(img, 0, 1).astype(np.float32)
        out.append((img * 255).astype(np.uint8))
    return out


def package_photos() -> list[np.ndarray]:
    """Real photographs and an MRI slice shipped inside installed packages (grey versions)."""
    found = []
    for mod in ("matplotlib", "gradio"):
        try:
            pkg = Path(__import__(mod).__file__).parent
        except ImportError:
            continue
        for p in sorted(pkg.rglob("*")):
            if p.suffix.lower() in (".jpg", ".jpeg") or p.name in ("Minduka_Present_Blue_Pack.png",):
                try:
                    found.append(("photo", np.asarray(Image.open(p).convert("L"))))
                except OSError:
                    pass
            if p.name == "s1045.ima.gz":  # 256x256 16-bit MRI slice
                arr = np.frombuffer(gzip.decompress(p.read_bytes()), dtype="<u2").reshape(256, 256)
                found.append(("mri", arr.astype(np.uint16)))
    return found


def halves(items: list, seed: int = 0) -> tuple[list, list]:
    idx = np.random.default_rng(seed).permutation(len(items))
    k = len(items) // 2
    return [items[i] for i in idx[:k]], [items[i] for i in idx[k:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, type=Path)
    ap.add_argument("--bundle", type=Path, action="append", default=[])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runtime" / "gate")
    ap.add_argument("--min-accept", type=float, default=0.99)
    ap.add_argument("--synthetic", type=int, default=120)
    ap.add_argument("--crossfit", action="store_true",
                    help="choose the threshold on out-of-fold scores of every non-test knee (the split's folds) "
                         "instead of its val rows; the gate is then fitted on all of them")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = read_split(args.split)
    fit = [r.path for r in table.subset("train")]
    cal_rows, test_rows = table.subset("val"), table.subset("test")
    cal, test = [r.path for r in cal_rows], [r.path for r in test_rows]
    spine = sorted(str(p) for p in (SHARED / "spine" / "sriher").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = package_photos()
    synth = synthetic_photos(args.synthetic)
    sp_a, sp_b = halves(spine)
    ph_a, ph_b = halves([a for _, a in photos])
    sy_a, sy_b = halves(synth)
    calib_ood = {"spine_sriher": sp_a, "package_photos_grey": ph_a, "synthetic_grey": sy_a}
    test_ood = {"spine_sriher": sp_b, "package_photos_grey": ph_b, "synthetic_grey": sy_b}
    where = f"the split {args.split.name} ({table.info.get('protocol', 'split protocol not recorded')})"
    if args.crossfit:
        knees = [r for r in table.rows if r.split != "test"]
        fit = [r.path for r in knees]
        protocol = (
            f"two-part gate cross-fitted on the non-test rows of {where} by its folds: a density model (threshold: the largest "
            "out-of-fold knee score + 10%) and a knee-vs-other logistic score fitted against a seeded half of each non-knee set "
            f"(threshold: the smallest accepting >= {args.min_accept} of every source folder's out-of-fold knees); both refitted "
            "on all non-test knees; rates on its test rows and the other halves"
        )
        gate = calibrate_gate_crossfit(
            fit, [r.source for r in knees], [r.fold for r in knees], calib_ood, test, test_ood,
            min_accept=args.min_accept, protocol=protocol, test_in_sources=[r.source for r in test_rows],
        )
    else:
        protocol = (
            f"OOD model fitted on the train rows of {where}; "
            f"threshold chosen on its val rows plus a seeded half of each non-knee set (max Youden J with knee acceptance >= {args.min_accept} "
            "within every source folder); "
            "rates on its test rows and the other halves"
        )
        gate = calibrate_gate(
            fit, cal, calib_ood, test, test_ood, min_accept=args.min_accept, protocol=protocol,
            calib_in_sources=[r.source for r in cal_rows], test_in_sources=[r.source for r in test_rows],
        )
    cal_d = gate.ood.calibration
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    result = {
        "threshold": gate.ood.threshold,
        "calibration": cal_d,
        "sets": {"fit_knee": len(fit), "calib_knee": len(fit) if args.crossfit else len(cal), "test_knee": len(test), "spine": len(spine),
                 "package_photos": [k for k, _ in photos], "synthetic": len(synth)},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": cpu, "arch": platform.machine(), "python": platform.python_version()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gate_calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gate.json").write_text(json.dumps(gate.to_dict()) + "\n")
    for b in args.bundle:
        write_gate(b, gate)
        print(f"wrote gate into {b}")
    ts = cal_d.get("test_sets", {})
    print(f"threshold {gate.ood.threshold:.3f}")
    for name, sets in (("calibration", cal_d["calibration_sets"]), ("test", ts)):
        if not sets:
            continue
        i = sets["in_distribution"]
        print(f"[{name}] knee accepted {i['accepted']}/{i['n']} ({i['accept_rate']:.3f}) rules refused {i['refused_by_rules']}")
        for src, r in sets.get("in_distribution_by_source", {}).items():
            print(f"[{name}]   {src}: accepted {r['accepted']}/{r['n']} ({r['accept_rate']:.3f})")
        for k, v in sets["out_of_distribution"].items():
            if "rejected" in v:
                print(f"[{name}] {k}: rejected {v['rejected']}/{v['n']} ({v['reject_rate']:.3f}) + refused by rules {v['refused_by_rules']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
