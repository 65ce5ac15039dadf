"""50 people at once: concurrent API predictions (heat map off) against a running demo.

    .venv/bin/python benchmarks/demo/load.py [--model BUNDLE] [--clients 50] [--out DIR]

Starts ``osteo-edge demo`` (shipped bundle unless ``--model``) as its own process with its own
``OSTEO_EDGE_DEMO_TMP``, makes one gradio_client per simulated person (their set-up is not timed),
releases all of them at once (a barrier) and times each ``/predict`` request (upload, queue,
prediction, answer; heat map off) from the client side, after ``WARMUP`` untimed sequential requests. A request that fails is retried once and
counted. Reports p50 / p95 / max, errors, the demo's peak RSS, and the machine's load average;
writes ``load.json`` and ``LOAD.md`` beside this script (or in ``--out``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_demo import _show, machine
from memory import Demo, knees

HERE = Path(__file__).resolve().parent
WARMUP = 5  # sequential requests before the timed burst


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


class HttpPerson:
    """One person's browser-less client: gradio's documented REST API over plain HTTP (upload the
    file, ``POST /gradio_api/call/predict``, read the answer from its event stream). Much lighter
    than gradio_client, so the clients do not eat the CPU the server is measured on."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def _req(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status} {data[:200]!r}")
            return data
        finally:
            conn.close()

    def predict(self, image: Path, explain: bool) -> str:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{image.name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        (path,) = json.loads(self._req("POST", "/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        data = {"data": [{"path": path, "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}, explain]}
        event = json.loads(self._req("POST", "/gradio_api/call/predict", json.dumps(data).encode(), {"Content-Type": "application/json"}))["event_id"]
        stream = self._req("GET", f"/gradio_api/call/predict/{event}").decode()
        if "event: complete" not in stream:
            raise RuntimeError(f"no answer: {stream[-300:]}")
        payload = stream.split("event: complete", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
        return json.loads(payload)[0]


def gradio_person(url: str, downloads: Path) -> object:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))

    class _P:
        def predict(self, image: Path, explain: bool) -> str:
            return client.predict(handle_file(str(image)), explain, api_name="/predict")[0]

    return _P()


def run(url: str, images: list[Path], clients: int, downloads: Path, kind: str = "http") -> dict:
    people = [HttpPerson(url) if kind == "http" else gradio_person(url, downloads / str(i)) for i in range(clients)]
    start = threading.Barrier(clients)
    errors: list[str] = []

    def one(i: int) -> tuple[float, str]:
        start.wait(timeout=120)
        t0 = time.perf_counter()
        for attempt in (1, 2):
            try:
                status = people[i].predict(images[i % len(images)], False)
                return time.perf_counter() - t0, status
            except Exception as exc:  # a load test records failures instead of stopping
                errors.append(f"client {i} attempt {attempt}: {type(exc).__name__}: {exc}"[:300])
        return time.perf_counter() - t0, "failed"

    t_all = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        outs = list(pool.map(one, range(clients)))
    wall = time.perf_counter() - t_all
    lat = [t for t, s in outs if s != "failed"]
    statuses = {k: sum(1 for _, s in outs if k in s) for k in ("Status: ok", "Status: refer for DEXA", "Status: rejected", "failed")}
    return {"clients": clients, "answered": len(lat), "failed": clients - len(lat), "errors": errors, "statuses": statuses,
            "latencies_s": [round(t, 4) for t in lat],
            "wall_s": round(wall, 2), "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p95_s": round(percentile(lat, 95), 3) if lat else None, "max_s": round(max(lat), 3) if lat else None}


def markdown(r: dict) -> str:
    m, x = r["machine"], r["result"]
    ok = x["failed"] == 0 and x["p95_s"] is not None and x["p95_s"] < 3.0
    return "\n".join([
        "# Demo under 50 concurrent API predictions (heat map off)", "",
        f"Generated by `benchmarks/demo/load.py` on {r['date']}; raw numbers in `load.json`.", f"Re-run: `{r['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, Python {m['python']}; load average at the start "
        f"{m['load_average_1_5_15']}, at the end {r['load_average_end']} (other jobs share these cores).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Model: {r['model']}. Server: `osteo-edge demo --threads {r['threads']}`, all analyses share 2 workers (gradio queue, 64 places).",
        f"Client: {'plain HTTP, gradio REST API (upload, /gradio_api/call/predict, event stream)' if r['client'] == 'http' else 'gradio_client'}, "
        "one per simulated person, all released at once.",
        f"Images: {len(r['images'])} real knee radiographs from ../shared/data, round robin.", "",
        "| burst | clients at once | answered | failed | p50 | p95 | max | all done after |", "|---|---|---|---|---|---|---|---|",
        *[f"| {i + 1} | {b['clients']} | {b['answered']} | {b['failed']} | {b['p50_s']} s | {b['p95_s']} s | {b['max_s']} s | {b['wall_s']} s |"
          for i, b in enumerate(r["rounds"])],
        f"| **all {x['rounds']} pooled** | {x['clients']} | {x['answered']} | {x['failed']} | {x['p50_s']} s | **{x['p95_s']} s** | {x['max_s']} s | |",
        "", f"Demo peak RSS during the run: {r['demo_peak_rss_mb']:.0f} MB.", "",
        f"CPU time spent during the run: demo server {r['cpu_s']['demo_server']} s, the {x['clients']} clients (this process) "
        f"{r['cpu_s']['clients']} s, on {m['cores']} cores shared with other jobs.", "",
        f"Target: every request answered and p95 (pooled) under 3 s: **{'pass' if ok else 'FAIL'}**. Statuses: {x['statuses']}.",
        ("Errors (retried once): " + "; ".join(x["errors"][:5])) if x["errors"] else "No request failed or needed a retry.", "",
        "Latency is measured by each client from the release of the barrier to its answer (upload, queue wait, prediction, "
        f"answer); the clients run on the same 2 cores as the server. {WARMUP} sequential requests warm the server up first "
        "(untimed): the very first requests after a start import and compile code lazily.", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="bursts of --clients requests, one after the other")
    ap.add_argument("--threads", type=int, default=1, help="inference threads of the demo (2 workers x 1 thread = 2 cores)")
    ap.add_argument("--client", choices=("http", "gradio_client"), default="http",
                    help="http: gradio's REST API over plain HTTP (default); gradio_client: the Python client (heavier)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    images = knees(10)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(["python", *(_show(a) for a in sys.argv)]),
                    "machine": machine(), "model": args.model or "the shipped bundle (src/osteo_edge/models/default)",
                    "images": [f"{p.parent.name}/{p.name}" for p in images]}
    with tempfile.TemporaryDirectory(prefix="oe-load-") as tmp:
        work = Path(tmp)
        demo = Demo(args.model, work / "base", work / "demo.log", threads=args.threads)
        result["threads"] = args.threads
        try:
            import resource

            cpu0, me0 = cpu_seconds(demo.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
            result["client"] = args.client
            kind = "http" if args.client == "http" else "gradio"
            for image in images[:WARMUP]:  # first requests import and compile lazily: not what a clinic waits for
                HttpPerson(demo.url).predict(image, False)
            rounds = [run(demo.url, images, args.clients, work / "dl", kind) for _ in range(args.rounds)]
            result["rounds"] = [{k: v for k, v in r.items() if k != "latencies_s"} for r in rounds]
            pooled = [t for r in rounds for t in r["latencies_s"]]
            result["result"] = {
                "clients": args.clients, "rounds": args.rounds, "answered": sum(r["answered"] for r in rounds),
                "failed": sum(r["failed"] for r in rounds), "errors": [e for r in rounds for e in r["errors"]],
                "statuses": {k: sum(r["statuses"][k] for r in rounds) for k in rounds[0]["statuses"]},
                "wall_s": max(r["wall_s"] for r in rounds), "p50_s": round(statistics.median(pooled), 3) if pooled else None,
                "p95_s": round(percentile(pooled, 95), 3) if pooled else None, "max_s": round(max(pooled), 3) if pooled else None,
            }
            me1 = resource.getrusage(resource.RUSAGE_SELF)
            result["cpu_s"] = {"demo_server": round(cpu_seconds(demo.proc.pid) - cpu0, 2),
                               "clients": round(me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime, 2)}
            result["demo_peak_rss_mb"] = demo.mem()["VmHWM"]
        finally:
            demo.stop()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({**result["result"], "cpu_s": result["cpu_s"]}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "LOAD.md").write_text(markdown(result))
    print(f"wrote {args.out / 'load.json'} and {args.out / 'LOAD.md'}")


if __name__ == "__main__":
    main()
