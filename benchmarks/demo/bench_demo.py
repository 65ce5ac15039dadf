"""Demo cold start and per-image latency, measured on this machine.

    .venv/bin/python benchmarks/demo/bench_demo.py [--model BUNDLE] [--runs 3] [--images 30] [--threads 2]

1. Cold start: ``osteo-edge demo`` as a new process, from ``Popen`` to the first HTTP 200 on ``/``
   (imports, bundle checksum verification, model load, UI build, server start), ``--runs`` times.
2. Per image, in the process that serves the demo (``DemoService.analyse``, the code behind the
   page): the runtime's prediction latency (decode, gate, preprocess, inference), the occlusion
   heat map (one batch of grid*grid occluded copies) and the total, over ``--images`` real knee
   radiographs from ../shared/data after 3 warm-up images.
3. Per image, end to end over HTTP: a gradio_client request to the running demo (upload, queue,
   prediction, heat map, PNG encoding, download of the result), same images.

Writes ``results.json`` and ``README.md`` beside this script (or ``--out DIR``). p50/p90, threads
set explicitly, machine and versions recorded. The numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data" / "knee"


def machine() -> dict:
    from importlib import metadata

    from osteo_edge.core.machine import cpu_model

    versions = {}
    for pkg in ("osteo-edge", "gradio", "gradio_client", "onnxruntime", "ai-edge-litert", "numpy", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def _show(arg: str) -> str:
    """A command-line argument with paths inside the repository made relative to it."""
    p = Path(arg)
    if p.is_absolute() and p.resolve().is_relative_to(REPO):
        return str(p.resolve().relative_to(REPO))
    return arg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "min": float(a.min()), "max": float(a.max())}


def start_demo(model: Path, threads: int, port: int, log_path: Path) -> tuple[subprocess.Popen, float]:
    """Start ``osteo-edge demo``; return the process and seconds from Popen to the first HTTP 200."""
    env = {**os.environ}
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # the command must switch it off by itself
    cmd = [sys.executable, "-c", "from osteo_edge.cli import main; main()", "demo", "--model", str(model), "--port", str(port), "--threads", str(threads)]
    log = log_path.open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"demo exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            pass
        if time.perf_counter() - t0 > 180:
            proc.kill()
            raise SystemExit("demo did not answer within 180 s")
        time.sleep(0.02)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def radiographs(n: int) -> list[Path]:
    """n real knee radiographs spread over the three sources and their classes (deterministic)."""
    from itertools import zip_longest

    groups = []
    for src in ("multiclass-kaggle", "wani-mendeley", "2class-kaggle"):
        for cls_dir in sorted(p for p in (DATA / src).iterdir() if p.is_dir()):
            groups.append(sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")))
    per = -(-n // len(groups))
    picks = [g[:: max(1, len(g) // per)][:per] for g in groups]
    return [x for tup in zip_longest(*picks) for x in tup if x is not None][:n]


def build_stand_in(root: Path) -> Path:
    """A random-weight EfficientNet-Lite0 ONNX bundle (224 px, 3 classes) for timing only."""
    import shutil

    import torch

    from osteo_edge.artifact import seal
    from osteo_edge.preprocess import PreprocessSpec
    from osteo_edge.modeling.models import build_model

    torch.manual_seed(0)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    m = build_model("efficientnet_lite0", 3, weights="none").eval()
    torch.onnx.export(m, torch.zeros(1, 3, 224, 224), str(root / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    seal(root, format="onnx", model_file="model.onnx", labels=["Normal", "Osteopenia", "Osteoporosis"],
         spec=PreprocessSpec(input_size=224), thresholds={"min_confidence": 0.6, "low_bmd": 0.5},
         provenance={"command": "benchmarks/demo/bench_demo.py --stand-in (random weights, timing only)"})
    return root


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="bundle directory (default: the shipped bundle)")
    ap.add_argument("--runs", type=int, default=3, help="cold starts")
    ap.add_argument("--images", type=int, default=30, help="timed images")
    ap.add_argument("--threads", type=int, default=2, help="inference threads")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--stand-in", action="store_true",
                    help="when no --model is given and the package ships no bundle: time a random-weight EfficientNet-Lite0 "
                         "ONNX bundle (224 px) built here with torch (the architecture the project ships; timings only)")
    return ap.parse_args()


def resolve_model(args: argparse.Namespace) -> tuple[Path, bool]:
    """The bundle to time and whether it is a random-weight stand-in built here."""
    from osteo_edge.edge_runtime import default_bundle_path

    model = (args.model or default_bundle_path()).resolve()
    if args.model is None and not (model / "manifest.json").is_file():
        if not args.stand_in:
            raise SystemExit(f"{model}: no shipped bundle; pass --model BUNDLE or --stand-in")
        return build_stand_in(args.out / ".stand-in"), True
    return model, False


def measure_cold_starts(model: Path, args: argparse.Namespace) -> dict:
    """1. cold start: ``osteo-edge demo`` from Popen to the first HTTP 200, ``--runs`` times."""
    colds = []
    for r in range(args.runs):
        proc, secs = start_demo(model, args.threads, free_port(), args.out / ".server.log")
        stop(proc)
        colds.append(secs)
        print(f"cold start {r + 1}/{args.runs}: {secs:.2f} s", flush=True)
    return {**pct(colds), "runs": colds}


def measure_in_process(model: Path, images: list[Path], threads: int) -> dict:
    """2. in-process, the code behind the page (3 warm-up images, then the rest)."""
    from osteo_edge.demo.service import DemoService
    from osteo_edge.edge_runtime import EdgeClassifier

    clf = EdgeClassifier.load(model, threads=threads)
    svc = DemoService(clf)
    for p in images[:3]:
        svc.analyse(p)
    pred_ms, heat_ms, total_ms, statuses = [], [], [], {}
    for p in images[3:]:
        r = svc.analyse(p)
        statuses[r.prediction.status] = statuses.get(r.prediction.status, 0) + 1
        if r.prediction.status == "rejected":
            continue
        pred_ms.append(r.prediction.latency_ms)
        total_ms.append(r.total_ms)
        if r.explanation is not None:
            heat_ms.append(r.explanation.elapsed_ms)
    print(f"in process: prediction p50 {np.median(pred_ms):.1f} ms, heat map p50 {np.median(heat_ms):.1f} ms", flush=True)
    return {"prediction": pct(pred_ms), "heat_map": pct(heat_ms), "total": pct(total_ms),
            "heat_map_grid": svc.grid, "statuses": statuses}


def measure_http(model: Path, images: list[Path], args: argparse.Namespace) -> dict:
    """3. end to end over HTTP through the running demo, with and without the heat map."""
    from gradio_client import Client, handle_file

    proc, _ = start_demo(model, args.threads, port := free_port(), args.out / ".server.log")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        for p in images[:3]:
            client.predict(handle_file(str(p)), True, api_name="/predict")
        rt = {True: [], False: []}
        for explain in (True, False):
            for p in images[3:]:
                t0 = time.perf_counter()
                client.predict(handle_file(str(p)), explain, api_name="/predict")
                rt[explain].append((time.perf_counter() - t0) * 1000)
        client.close()
    finally:
        stop(proc)
    print(f"HTTP round trip p50: {np.median(rt[True]):.0f} ms with heat map, {np.median(rt[False]):.0f} ms without", flush=True)
    return {"with_heat_map": pct(rt[True]), "without_heat_map": pct(rt[False])}


def main() -> None:
    args = parse_args()

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from osteo_edge.artifact import load_bundle

    model, stand_in = resolve_model(args)
    bundle = load_bundle(model)
    images = radiographs(args.images + 3)
    if len(images) < args.images + 3:
        raise SystemExit(f"need {args.images + 3} radiographs under {DATA}")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "machine": machine(),
        "model": {"path": str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model), "format": bundle.format,
                  "input_size": bundle.spec.input_size, "labels": bundle.labels,
                  "model_bytes": bundle.model_path.stat().st_size},
        "stand_in": stand_in,
        "threads": args.threads,
        "command": " ".join([".venv/bin/python", *[_show(a) for a in sys.argv]]),
        "date": time.strftime("%Y-%m-%d"),
    }
    result["cold_start_s"] = measure_cold_starts(model, args)
    result["in_process_ms"] = measure_in_process(model, images, args.threads)
    result["http_round_trip_ms"] = measure_http(model, images, args)
    (args.out / ".server.log").unlink(missing_ok=True)
    if stand_in:
        import shutil

        shutil.rmtree(model, ignore_errors=True)

    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "README.md").write_text(render(result))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'README.md'}")

def render(r: dict) -> str:
    m = {**r["machine"]}
    m["load_average_1_5_15"] = r["machine"].get("load_average_1_5_15", "not recorded")
    c = r["cold_start_s"]
    ip = r["in_process_ms"]
    h = r["http_round_trip_ms"]
    row = lambda name, d, unit="ms", f="{:.1f}": f"| {name} | {f.format(d['p50'])} {unit} | {f.format(d['p90'])} {unit} | {d['n']} |"  # noqa: E731
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items())
    return f"""# Demo: cold start and per-image latency

Generated by `benchmarks/demo/bench_demo.py` on {r['date']}; raw numbers in `results.json`.
Re-run: `{r['command']}`

Machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, Python {m['python']} ({m['platform']});
load average at the start {m['load_average_1_5_15']} (other jobs share these cores).
Versions: {v}.
Model: {"a random-weight EfficientNet-Lite0 stand-in (timings only; no shipped bundle yet) at " if r.get("stand_in") else ""}`{r['model']['path']}` ({r['model']['format']}, {r['model']['input_size']} px input, {r['model']['model_bytes'] / 1e6:.1f} MB), {r['threads']} inference threads.

| what | p50 | p90 | n |
|---|---|---|---|
{row("cold start: `osteo-edge demo` process start to first HTTP 200", c, "s", "{:.2f}")}
{row("prediction (runtime: decode, gate, preprocess, inference)", ip['prediction'])}
{row(f"occlusion heat map ({ip['heat_map_grid']}x{ip['heat_map_grid']} grid, one batch)", ip['heat_map'])}
{row("total per image behind the page (prediction + heat map + overlay)", ip['total'])}
{row("HTTP round trip per image, with heat map (gradio_client)", h['with_heat_map'], "ms", "{:.0f}")}
{row("HTTP round trip per image, without heat map", h['without_heat_map'], "ms", "{:.0f}")}

Images: real knee radiographs from ../shared/data spread over the three sources (3 warm-up images
not timed); statuses in process: {ip['statuses']} (rejected images are not timed). The machine is a
shared 2-core container, so numbers are noisy; compare only numbers taken in the same run.
"""


if __name__ == "__main__":
    main()
