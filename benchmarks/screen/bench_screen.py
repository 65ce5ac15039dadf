"""Screening benchmark: images/s of `osteo-edge screen` for --workers 1 and 2 and on a local Ray instance,
for uncompressed DICOM, JPEG 2000 DICOM and JPEG files, and a cost model for a million films.

Inputs (made in a temporary folder, never in the repository):
  jpeg       distinct real knee films of the shared data as they are (JPEG, up to 512 px)
  dicom      the same films as archive-size CR DICOM: 2048 x 2560 px, 12 bits, Explicit VR Little Endian
             (resized with Pillow, written with pydicom over dcmtk's img2dcm header)
  dicom-j2k  those DICOM files compressed with GDCM's gdcmconv --j2k (JPEG 2000 lossless)
Every run screens one set into a fresh clinic record through the library call behind the CLI
(osteo_edge.screen.screen) and reports: wall time, the first answer's arrival (worker processes or
Ray actors loading the model), images/s over the wall time, and the wall and CPU time one worker
spends per image (sha256 + header + decode + inference). Ray: one local instance (num_cpus = 2) is
started once for all sets; its start time is reported apart. The cost model uses the CPU time.

    .venv/bin/python benchmarks/screen/bench_screen.py --images 40 --out benchmarks/screen

Writes RESULTS.json and RESULTS.md (tables, the cost model, the command and the machine) into --out.
The machine is shared: the load average is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "knee"
ARCHIVE_SIZE = (2048, 2560)  # columns, rows: a typical CR knee film
RUNS = (("local", 1), ("local", 2), ("ray", 2))


def distinct_films(n: int) -> list[Path]:
    import hashlib

    seen, out = set(), []
    for f in sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        if h not in seen:
            seen.add(h)
            out.append(f)
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} distinct films under {DATA}")


def make_sets(films: list[Path], root: Path) -> dict[str, Path]:
    """{set name: folder}: JPEG links, archive-size uncompressed DICOM, and JPEG 2000 lossless copies."""
    import numpy as np
    import pydicom
    from PIL import Image

    from osteo_edge.dicom.samples import base_images

    jpeg, dcm, j2k = root / "jpeg", root / "dicom", root / "dicom-j2k"
    for d in (jpeg, dcm, j2k):
        d.mkdir(parents=True)
    header = pydicom.dcmread(base_images(films[0], root / "base")[12])
    header.SOPClassUID = header.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    header.Modality = "CR"
    for i, f in enumerate(films):
        (jpeg / f"{i:04d}{f.suffix.lower()}").symlink_to(f)
        gray = Image.open(f).convert("L").resize(ARCHIVE_SIZE, Image.BILINEAR)
        ds = header.copy()
        ds.Columns, ds.Rows = ARCHIVE_SIZE
        ds.PixelData = (np.asarray(gray, dtype="<u2") * 16).tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(dcm / f"{i:04d}.dcm", enforce_file_format=True)
        subprocess.run(["gdcmconv", "--j2k", str(dcm / f"{i:04d}.dcm"), str(j2k / f"{i:04d}.dcm")], check=True, capture_output=True)
    return {"jpeg": jpeg, "dicom": dcm, "dicom-j2k": j2k}


def kb(folder: Path) -> float:
    files = [p for p in folder.iterdir()]
    return round(sum(p.resolve().stat().st_size for p in files) / len(files) / 1024, 1)


def one_run(folder: Path, engine: str, workers: int, db: Path) -> dict:
    from osteo_edge.core.machine import load_average
    from osteo_edge.screen.run import ScreenJob, screen

    load0 = load_average()
    t0 = time.perf_counter()
    res = screen(ScreenJob(record=db, source=folder, workers=workers, engine=engine))
    wall = time.perf_counter() - t0
    n = sum(res.answered.values())
    return {"engine": engine, "workers": workers, "images": n, "statuses": dict(res.answered), "wall_s": round(wall, 2),
            "first_answer_s": round(res.startup_seconds, 2), "images_per_s": round(n / wall, 2),
            "worker_ms_per_image": round(res.ms_per_image, 1), "worker_cpu_ms_per_image": round(res.cpu_ms_per_image, 1),
            "load_before": load0, "load_after": load_average()}


def cost_model(ms: float, n: int = 1_000_000) -> list[dict]:
    """Hours for n films at ``ms`` per image per core, perfectly parallel (the measured 2-worker
    efficiency says how close one gets), for a few fleet shapes; core-hours for the bill."""
    core_h = ms / 1000 * n / 3600
    shapes = [("this machine", 1, 2), ("one 16-core server", 1, 16), ("Ray: 4 x 16-core", 4, 16), ("Ray: 16 x 16-core", 16, 16)]
    return [{"fleet": name, "machines": m, "cores": c, "hours": round(core_h / (m * c), 2), "core_hours": round(core_h, 1)}
            for name, m, c in shapes]


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# osteo-edge screen: throughput and a million-film cost model", "",
             f"Command: `{doc['command']}`", "",
             f"Machine: {m['cpu']} ({m['isa']}), {m['cores']} cores, {m['arch']}, Python {m['python']}; "
             f"{', '.join(f'{k} {v}' for k, v in doc['versions'].items())}. Model: the shipped default bundle (tflite-int8), "
             "1 inference thread per worker.", "",
             "The machine is shared with other jobs: the 1-minute load average before each run is in the table (2 cores: "
             "a load above 2 means the workers wait for a CPU). Wall-clock figures (images/s, ms/image) are what this run "
             "got; CPU ms/image is the CPU time the worker process spent per image (time.process_time; a first image "
             "also pays lazy imports), which other load inflates far less: the cost model uses it.", "",
             f"{doc['images']} distinct films per set. Ray: a local instance (num_cpus=2) started once, in {doc['ray_start_s']} s "
             "(not in the rows below; a Ray row's 'first answer' includes its actors loading the model, and Ray Data "
             "returns answers in blocks).", "",
             "| set | film | engine | workers | load | wall s | first answer s | images/s | ms/image in a worker | CPU ms/image |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in doc["sets"]:
        for r in s["runs"]:
            load = r["load_before"][0] if r.get("load_before") else "-"
            lines.append(f"| {s['name']} | {s['film']} | {r['engine']} | {r['workers']} | {load} | {r['wall_s']} | {r['first_answer_s']} | "
                         f"{r['images_per_s']} | {r['worker_ms_per_image']} | {r['worker_cpu_ms_per_image']} |")
    lines += ["", "## A million films, on paper", "",
              "Per-image cost = the CPU ms/image of each set's `--workers 1` local run (sha256, DICOM header, decode and "
              "inference, one process); hours = ms x 1,000,000 / 3,600,000 / cores, assuming one worker per core and "
              "linear scaling over cores and machines (the workers share nothing but the driver; the 2-worker rows above "
              "cannot show it on a loaded 2-core machine). Not included: reading the films from storage or a PACS "
              "(C-GET), and Ray's start-up, neither of which this model measures.", "",
              "| set | CPU ms/image | fleet | machines x cores | hours | core-hours |", "|---|---:|---|---|---:|---:|"]
    for s in doc["sets"]:
        for c in s["cost_model"]:
            lines.append(f"| {s['name']} | {s['ms_per_image']} | {c['fleet']} | {c['machines']} x {c['cores']} | {c['hours']} | {c['core_hours']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "screen")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    ap.add_argument("--render", type=Path, help="only write RESULTS.md again from this RESULTS.json (no measuring)")
    args = ap.parse_args()
    if args.render is not None:
        from osteo_edge.artifact.atomic import atomic_write_text

        atomic_write_text(args.out / "RESULTS.md", markdown(json.loads(args.render.read_text())))
        return
    import logging

    from osteo_edge.core.machine import cpu_isa, cpu_model

    logging.getLogger("ray").setLevel(logging.ERROR)
    doc: dict = {"command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/screen/bench_screen.py", *sys.argv[1:]]),
                 "images": args.images, "sets": [], "ray_start_s": None,
                 "machine": {"cpu": cpu_model(), "isa": cpu_isa()["text"], "cores": __import__("os").cpu_count(),
                             "arch": platform.machine(), "python": platform.python_version()},
                 "versions": {p: _version(p) for p in ("ai-edge-litert", "pydicom", "pillow", "ray", "pynetdicom")}}
    films = distinct_films(args.images)
    runs = [r for r in RUNS if not (args.no_ray and r[0] == "ray")]
    with tempfile.TemporaryDirectory(prefix="screen-bench-") as tmp:
        sets = make_sets(films, Path(tmp))
        if any(e == "ray" for e, _ in runs):
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            doc["ray_start_s"] = round(time.perf_counter() - t0, 1)
        try:
            for name, folder in sets.items():
                first = next(folder.iterdir())
                film = f"{kb(folder)} KB, " + ("2048x2560 12-bit" if name.startswith("dicom") else "up to 512 px 8-bit")
                rows = []
                for engine, workers in runs:
                    rows.append(one_run(folder, engine, workers, Path(tmp) / f"{name}-{engine}-{workers}.db"))
                    print(name, json.dumps(rows[-1]), flush=True)
                ms = rows[0]["worker_cpu_ms_per_image"]
                doc["sets"].append({"name": name, "film": film, "example": first.name, "runs": rows, "ms_per_image": ms,
                                    "cost_model": cost_model(ms)})
        finally:
            if doc["ray_start_s"] is not None:
                import ray

                ray.shutdown()
    from osteo_edge.artifact.atomic import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "RESULTS.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(args.out / "RESULTS.md", markdown(doc))
    print(markdown(doc))


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
