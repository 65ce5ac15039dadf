"""Peak memory of `osteo-edge predict` and of the demo on a 36 Mpx RGB knee, and the answer change
that the decoder's early reduction causes.

    .venv/bin/python benchmarks/demo/memory.py [--model BUNDLE] [--knees 5] [--no-browser] [--out DIR]

1. A 36 Mpx (6000 x 6000) RGB PNG made by upscaling a real knee radiograph from ../shared/data
   (bicubic), written to a temporary folder (deleted afterwards).
2. ``osteo-edge predict`` on it in a fresh process: its peak RSS from
   ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh wrapper process (the child's
   high-water mark; target <= 350 MB). The same for the original small knee, as the baseline.
3. ``osteo-edge demo`` in a fresh process (its own ``OSTEO_EDGE_DEMO_TMP``): peak RSS (``VmHWM``
   in /proc/PID/status) after start, after one upload with the heat map on through headless
   Chromium (or the HTTP API with ``--no-browser``; target <= 1 GB), after five such uploads at
   once through the HTTP API (gradio_client, one client per upload; target < 1.5 GB, every one
   answered), and the RSS it keeps afterwards.
4. The answer change: ``--knees`` real knees upscaled to 6000 px, predicted with the early
   reduction (the product path) and with the full-size decode; largest probability change and
   label agreement, beside the original-size answer.

Writes ``memory.json`` and ``MEMORY.md`` beside this script (or in ``--out``), with the command and
the machine. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_demo import DATA, REPO, _show, free_port, machine

HERE = Path(__file__).resolve().parent
SIDE = 6000
CLI = [sys.executable, "-c", "from osteo_edge.cli import main; main()"]
CHROMIUM = "/usr/lib/chromium/chromium"


def knees(n: int) -> list[Path]:
    """Real knee radiographs spread over the classes of the three-class source."""
    files = sorted(p for p in (DATA / "wani-mendeley").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def upscale(src: Path, dst: Path, side: int = SIDE) -> Path:
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(dst, format="PNG", compress_level=1)
    return dst


def child_peak_mb(cmd: list[str]) -> tuple[float, int, str]:
    """Peak RSS (MB) of ``cmd`` run by a fresh wrapper process (so only this child counts)."""
    code = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode, p.stdout[-2000:] + p.stderr[-2000:]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cmd)], capture_output=True, text=True, check=True)
    kb, rc, text = json.loads(out.stdout.strip().splitlines()[-1])
    return kb / 1024, rc, text


def proc_mem(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS of a running process, MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) / 1024
    return out


class Demo:
    def __init__(self, model: str | None, base: Path, log: Path, threads: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "OSTEO_EDGE_DEMO_TMP": str(base), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        cmd = [*CLI, "demo", "--port", str(self.port), "--threads", str(threads), *(["--model", model] if model else [])]
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        import urllib.request

        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"demo exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
            if time.monotonic() > deadline:
                raise SystemExit("demo did not start within 180 s")

    def mem(self) -> dict[str, float]:
        return proc_mem(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def api_predict(url: str, image: Path, explain: bool, downloads: Path) -> tuple[str, float]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))
    t0 = time.perf_counter()
    status = client.predict(handle_file(str(image)), explain, api_name="/predict")[0]
    return status, time.perf_counter() - t0


def browser_predict(url: str, image: Path, timeout_s: float = 300) -> tuple[str, float]:
    """One upload through the page in headless Chromium; waits for the verdict and the heat map."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--headless=new", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"])
        page = browser.new_page()
        page.goto(url, wait_until="networkidle")
        t0 = time.perf_counter()
        page.locator("#single-file input[type=file]").set_input_files(str(image))
        page.wait_for_function(
            "n => { const e = document.querySelector('#status'); return e && e.innerText.includes(n); }",
            arg=image.name, timeout=timeout_s * 1000)
        page.wait_for_selector("#heatmap img", timeout=timeout_s * 1000)
        status = page.locator("#status").inner_text()
        elapsed = time.perf_counter() - t0
        browser.close()
    return status, elapsed


def measure_predict(big: Path, small: Path, model: str | None) -> dict:
    extra = ["--model", model] if model else []
    peak_small, rc_s, _ = child_peak_mb([*CLI, "predict", "--json", *extra, str(small)])
    peak_big, rc_b, text = child_peak_mb([*CLI, "predict", "--json", *extra, str(big)])
    status = json.loads(text.strip().splitlines()[0]).get("status") if rc_b == 0 else text[-300:]
    return {"normal_knee_peak_mb": round(peak_small, 1), "knee_36mpx_peak_mb": round(peak_big, 1), "exit_codes": [rc_s, rc_b],
            "status_36mpx": status, "target_mb": 350}


def measure_demo(big: Path, model: str | None, work: Path, browser: bool) -> dict:
    demo = Demo(model, work / "demo-base", work / "demo.log")
    res: dict = {"target_one_upload_mb": 1024, "target_five_uploads_mb": 1536}
    try:
        res["after_start"] = demo.mem()
        how = "browser (headless Chromium)" if browser else "HTTP API (gradio_client)"
        status, secs = browser_predict(demo.url, big) if browser else api_predict(demo.url, big, True, work / "dl")
        res["one_upload"] = {**demo.mem(), "how": how, "seconds": round(secs, 2), "answered": "Status:" in status}
        with ThreadPoolExecutor(max_workers=5) as pool:
            start = threading.Barrier(5)

            def one(i: int) -> tuple[str, float]:
                start.wait(timeout=60)
                return api_predict(demo.url, big, True, work / f"dl{i}")

            outs = list(pool.map(one, range(5)))
        res["five_uploads"] = {**demo.mem(), "how": "HTTP API (gradio_client), 5 at once, heat map on",
                               "answered": sum("Status:" in s for s, _ in outs), "seconds": [round(t, 2) for _, t in outs]}
        time.sleep(2)
        res["kept_after"] = demo.mem()
    finally:
        demo.stop()
    res["files_left_after_stop"] = sorted(str(p) for p in (work / "demo-base").rglob("*") if p.is_file())
    return res


def answer_change(n: int, model: str | None, work: Path) -> dict:
    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.preprocess import decode_for, decode_image

    clf = EdgeClassifier.load(model)
    rows = []
    for src in knees(n):
        big = upscale(src, work / f"up-{src.stem}.png")
        reduced, full = decode_for(big, clf.spec), decode_image(big, clf.spec.bit_depth)
        p_orig, p_red, p_full = (clf.predict(d, name=src.name) for d in (decode_for(src, clf.spec), reduced, full))
        delta = max(abs(p_red.probabilities.get(k, 0) - p_full.probabilities.get(k, 0)) for k in clf.labels)
        rows.append({"knee": f"{src.parent.name}/{src.name}", "reduced_to": list(reduced.pixels.shape[:2]), "factor": reduced.reduced,
                     "label_original": p_orig.label, "label_full_decode": p_full.label, "label_reduced": p_red.label,
                     "max_abs_prob_change_reduced_vs_full": round(delta, 4),
                     "p_reduced": {k: round(v, 4) for k, v in p_red.probabilities.items()},
                     "p_full": {k: round(v, 4) for k, v in p_full.probabilities.items()}})
        big.unlink()
    return {"knees": rows, "labels_agree": sum(r["label_reduced"] == r["label_full_decode"] for r in rows),
            "max_abs_prob_change": max(r["max_abs_prob_change_reduced_vs_full"] for r in rows)}


def markdown(r: dict) -> str:
    m, p, d, a = r["machine"], r["predict"], r["demo"], r["answer_change"]
    one, five = d["one_upload"], d["five_uploads"]
    lines = [
        "# Memory on a 36 Mpx knee radiograph, and the answer change of the early reduction", "",
        f"Generated by `benchmarks/demo/memory.py` on {r['date']}; raw numbers in `memory.json`.",
        f"Re-run: `{r['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, Python {m['python']}; load average at the start {m['load_average_1_5_15']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Image: a real knee (`{r['source_knee']}`) upscaled (bicubic) to {SIDE} x {SIDE} RGB PNG ({r['image_mb']} MB file).", "",
        "| what | peak RSS | target | result |", "|---|---|---|---|",
        f"| `osteo-edge predict` on the original knee (baseline) | {p['normal_knee_peak_mb']} MB | | |",
        f"| `osteo-edge predict` on the 36 Mpx knee (fresh process, getrusage of the child) | **{p['knee_36mpx_peak_mb']} MB** | <= 350 MB | {'pass' if p['knee_36mpx_peak_mb'] <= 350 else 'FAIL'} |",
        f"| demo process after start (VmHWM) | {d['after_start']['VmHWM']:.0f} MB | | |",
        f"| demo, one upload with heat map ({one['how']}, {one['seconds']} s) | **{one['VmHWM']:.0f} MB** | <= 1024 MB | {'pass' if one['VmHWM'] <= 1024 and one['answered'] else 'FAIL'} |",
        f"| demo, five uploads at once ({five['how']}; {five['answered']}/5 answered, {min(five['seconds'])}-{max(five['seconds'])} s) | **{five['VmHWM']:.0f} MB** | < 1536 MB | {'pass' if five['VmHWM'] < 1536 and five['answered'] == 5 else 'FAIL'} |",
        f"| demo RSS kept afterwards (VmRSS) | {d['kept_after']['VmRSS']:.0f} MB | | |",
        f"| files left in the demo's base folder after SIGTERM | {len(d['files_left_after_stop'])} | 0 | {'pass' if not d['files_left_after_stop'] else 'FAIL'} |",
        "", "## Answer change of the early reduction (real knees upscaled to 6000 px)", "",
        "Each knee is predicted three ways with the same bundle: the original file; the 6000 px copy through the product path "
        "(reduced in the decoder to at least 2x the model input); the 6000 px copy decoded at full size (the old path).", "",
        "| knee | reduced to (factor) | label original | label full decode | label reduced | max abs change of a probability, reduced vs full |",
        "|---|---|---|---|---|---|",
    ]
    for k in a["knees"]:
        lines.append(f"| {k['knee']} | {k['reduced_to'][1]} x {k['reduced_to'][0]} ({k['factor']}x) | {k['label_original']} | "
                     f"{k['label_full_decode']} | {k['label_reduced']} | {k['max_abs_prob_change_reduced_vs_full']:.4f} |")
    lines += ["", f"Labels agree (reduced vs full decode) on {a['labels_agree']} of {len(a['knees'])}; largest probability change "
              f"{a['max_abs_prob_change']:.4f}. Images whose shorter side is at most 4x the model's working side (896 px for the "
              "shipped 224 px model) are never reduced, so every image of ../shared/data keeps exactly its previous input. "
              "Where the original-size label differs from both 6000 px labels, the bicubic upscaling itself changed the image "
              "the model sees, not the reduction.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="bundle (default: the shipped one)")
    ap.add_argument("--knees", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true", help="the single demo upload through the HTTP API, not Chromium")
    ap.add_argument("--skip-answer-change", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    browser = not args.no_browser and os.access(CHROMIUM, os.X_OK)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "command": " ".join(["python", *(_show(a) for a in sys.argv)]), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="oe-memory-") as tmp:
        work = Path(tmp)
        src = knees(1)[0]
        big = upscale(src, work / "knee_36mpx.png")
        result["source_knee"] = f"{src.parent.name}/{src.name}"
        result["image_mb"] = round(big.stat().st_size / 1e6, 1)
        result["predict"] = measure_predict(big, src, args.model)
        print("predict:", json.dumps(result["predict"]), flush=True)
        result["demo"] = measure_demo(big, args.model, work, browser)
        print("demo:", json.dumps(result["demo"]), flush=True)
        result["answer_change"] = (answer_change(args.knees, args.model, work) if not args.skip_answer_change
                                   else {"knees": [], "labels_agree": 0, "max_abs_prob_change": 0.0})
        print("answer change:", json.dumps(result["answer_change"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "MEMORY.md").write_text(markdown(result))
    print(f"wrote {args.out / 'memory.json'} and {args.out / 'MEMORY.md'}")


if __name__ == "__main__":
    main()
