"""DICOM node benchmark: per-syntax decode time and end-to-end throughput of `osteo-edge serve`.

End to end = from the first byte storescu (dcmtk) sends to the last answer in the clinic record
(spooled with fsync, decoded, classified, SR built and kept in --results with fsync, recorded). Every
syntax file is made from a real knee image by the third-party encoder of
``osteo_edge.dicom.decode.TRANSFER_SYNTAXES`` and sent as CR Image Storage. The load average is
recorded before and after each run: the machine is shared.

    python benchmarks/dicom/bench_node.py --images 60 --out benchmarks/dicom
    python benchmarks/dicom/bench_node.py --images 60 --forward --out benchmarks/dicom/forward

Writes RESULTS.json and RESULTS.md (with the command and the machine) into --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pydicom

from osteo_edge.core.machine import cpu_isa, cpu_model
from osteo_edge.bench.measure import timings
from osteo_edge.dicom.decode import TRANSFER_SYNTAXES, get_syntax
from osteo_edge.dicom.samples import all_syntaxes, storescu_config
from osteo_edge.preprocess import decode_image

REPO = Path(__file__).resolve().parents[2]
KNEE = REPO.parent / "shared" / "data" / "knee" / "wani-mendeley" / "Normal" / "N1.JPEG"
CLI = "from osteo_edge.cli import main; main()"


def decode_times(files: dict[str, Path], runs: int) -> list[dict]:
    rows = []
    for ts in TRANSFER_SYNTAXES:
        path = files[ts.name]
        t = timings(lambda: decode_image(path), runs=runs, warmup=3)
        rows.append({"syntax": ts.name, "uid": ts.uid, "lossless": ts.lossless, "bits": ts.bits,
                     "file_kb": round(path.stat().st_size / 1024, 1), "decode_p50_ms": t["p50_ms"], "decode_p90_ms": t["p90_ms"]})
    return rows


def copies(src: Path, n: int, out: Path) -> list[Path]:
    """n copies of one DICOM file as CR images, each with a new SOP Instance UID (pixel data untouched)."""
    out.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(src)
    base.SOPClassUID = base.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    base.Modality = "CR"
    paths = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(out / f"{i:04d}.dcm")
        ds.save_as(paths[-1])
    return paths


def _recorded(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM predictions").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_to_end(name: str, src: Path, n: int, work: Path, threads: int, forward: bool = False) -> dict:
    """Start `osteo-edge serve`, storescu n images over one association, wait for n recorded answers
    (and, with ``forward``, for n result SRs at a dcmtk storescp playing the PACS)."""
    ts = get_syntax(name)
    run = f"{name}-{len(list(work.glob(f'{name}*.db')))}"  # a fresh record, spool and PACS per repeat
    files = copies(src, n, work / name) if not (work / name).is_dir() else sorted((work / name).glob("*.dcm"))
    db, port = work / f"{run}.db", _free_port()
    argv = [sys.executable, "-c", CLI, "serve", "--record", str(db), "--port", str(port), "--threads", str(threads),
            "--results", str(work / f"{run}-results")]
    pacs, pacs_dir = None, work / f"{run}-pacs"
    if forward:
        pacs_dir.mkdir()
        pacs_port = _free_port()
        pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        argv += ["--forward", f"PACS@127.0.0.1:{pacs_port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delivered = None
    try:
        for _ in range(300):  # up to 60 s for the node to listen
            if subprocess.run(["echoscu", "-aec", "OSTEOEDGE", "127.0.0.1", str(port)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        args = storescu_config(ts.uid, work / f"{name}.cfg")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        sent = subprocess.run(["storescu", "-aec", "OSTEOEDGE", *args, "127.0.0.1", str(port), *map(str, files)],
                              capture_output=True, timeout=600)
        t_sent = time.perf_counter() - t0
        deadline = time.monotonic() + 600
        while _recorded(db) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        total = time.perf_counter() - t0
        if forward:
            while sum(1 for _ in pacs_dir.iterdir()) < n and time.monotonic() < deadline:
                time.sleep(0.02)
            delivered = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if pacs is not None:
            pacs.terminate()
            pacs.wait(timeout=30)
    got = _recorded(db)
    return {"syntax": name, "images": n, "recorded": got, "storescu_rc": sent.returncode, "send_s": round(t_sent, 2),
            "end_to_end_s": round(total, 2), "images_per_s": round(got / total, 2), "file_kb": round(src.stat().st_size / 1024, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "delivered": sum(1 for _ in pacs_dir.iterdir()) if forward else None,
            "all_delivered_s": round(delivered, 2) if delivered is not None else None}


def machine() -> dict:
    versions = {}
    for pkg in ("osteo-edge", "pydicom", "pynetdicom", "highdicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
                "pylibjpeg-rle", "ai-edge-litert", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    dcmtk = [ln.strip("$ ").replace("dcmtk: ", "") for ln in subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout.splitlines()]
    return {"cpu": cpu_model(), "isa": cpu_isa()["text"], "cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "dcmtk": dcmtk[0] if dcmtk else None, "versions": versions}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# DICOM node benchmark", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {m['cpu']} ({m.get('isa', '?')}), {m['cores']} cores, {m['arch']}, Python {m['python']}; {m['dcmtk']}; "
        f"pydicom {m['versions']['pydicom']}, pynetdicom {m['versions']['pynetdicom']}, highdicom {m['versions']['highdicom']}, "
        f"pylibjpeg-libjpeg {m['versions']['pylibjpeg-libjpeg']}, pylibjpeg-openjpeg {m['versions']['pylibjpeg-openjpeg']}, "
        f"ai-edge-litert {m['versions']['ai-edge-litert']}. Model: the shipped tflite-int8 bundle, {result['threads']} inference thread(s).", "",
        f"Image: a real knee radiograph ({KNEE.name}, 512x512) sent as CR Image Storage, 8-bit for JPEG baseline, "
        "12-bit (BitsStored 12) otherwise, compressed by dcmtk / GDCM. The 2 cores are shared with other work (the "
        "load average, 1 minute, is in the table): compare syntaxes within one run.", "",
        "## End to end: storescu -> spool (fsync) -> decode -> classify -> SR (kept, fsync) -> clinic record", "",
        "end-to-end s: until the last answer is recorded; all delivered s (with --forward): until the last result SR "
        "is at the PACS (dcmtk storescp), delivered from the outbox by the node's forwarding thread.", "",
        f"Each syntax is run {result.get('repeats', 1)} times (a fresh node, record and PACS each time); the row is the run "
        "with the median images/s, the range is over all runs.", "",
        "| syntax | file KB | images | recorded | send s | end-to-end s | images/s (median) | range | delivered | all delivered s | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["end_to_end"]:
        rng = f"{min(r['runs_images_per_s'])}-{max(r['runs_images_per_s'])}" if r.get("runs_images_per_s") else "-"
        lines.append(f"| {r['syntax']} | {r['file_kb']} | {r['images']} | {r['recorded']} | {r['send_s']} | {r['end_to_end_s']} | "
                     f"**{r['images_per_s']}** | {rng} | {r.get('delivered') if r.get('delivered') is not None else '-'} | "
                     f"{r.get('all_delivered_s') if r.get('all_delivered_s') is not None else '-'} | "
                     f"{r.get('load_before', '?')} / {r.get('load_after', '?')} |")
    lines += ["", f"## Decode time per transfer syntax ({result['decode_runs']} runs after 3 warm-ups, `preprocess.decode_image`)", "",
              "| syntax | lossless | bits | file KB | p50 ms | p90 ms |", "|---|---|---|---|---|---|"]
    for r in result["decode"]:
        lines.append(f"| {r['syntax']} | {'yes' if r['lossless'] else 'no'} | {r['bits']} | {r['file_kb']} | {r['decode_p50_ms']} | {r['decode_p90_ms']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60, help="images per end-to-end run (default 60)")
    ap.add_argument("--runs", type=int, default=20, help="decode timing runs per syntax (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads of the node (default 1)")
    ap.add_argument("--syntaxes", default="explicit,jpeg-ls,jpeg-lossless-sv1,j2k-lossless,jpeg-extended",
                    help="syntaxes for the end-to-end runs (comma-separated)")
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end runs per syntax; the median is reported (default 3)")
    ap.add_argument("--forward", action="store_true", help="also forward every result SR to a dcmtk storescp (the PACS) and time delivery")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/dicom"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="osteo-dicom-bench-") as tmp:
        work = Path(tmp)
        files = all_syntaxes(KNEE, work / "syntaxes")
        decode = decode_times(files, args.runs)
        e2e = []
        for name in args.syntaxes.split(","):
            runs = sorted((end_to_end(name, files[name], args.images, work, args.threads, args.forward) for _ in range(args.repeats)),
                          key=lambda r: r["images_per_s"])
            e2e.append({**runs[len(runs) // 2], "runs_images_per_s": [r["images_per_s"] for r in runs]})
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "machine": machine(),
              "threads": args.threads, "repeats": args.repeats, "decode_runs": args.runs, "decode": decode, "end_to_end": e2e}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "RESULTS.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
