"""`osteo-edge bench`: latency, throughput, memory and size per model, on this machine or a Raspberry Pi."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..bench.targets import TARGETS
from . import _output as out
from ._steps import after_bench
from ._common import TRUSTED_KEY_HELP, choices, handle_errors, trust_store, usage_error


TargetName = choices("TargetName", TARGETS)


@handle_errors
def bench(
    target: Annotated[TargetName, typer.Option("--target", help="Where to measure: host (this machine) or raspberrypi (a Pi over SSH: needs --host, or --emulate).")] = TargetName.host,
    model: Annotated[Optional[List[Path]], typer.Option("--model", help="Model bundle directory (repeatable; default: the shipped bundle, and models/default-fp32 beside it in a checkout).")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="user@address of the Raspberry Pi (SSH keys, no password prompt).")] = None,
    threads: Annotated[str, typer.Option("--threads", help="Inference threads, set explicitly for every backend; several in one run: 1,2 (host).")] = "2",
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per model (batch 1) after warm-up.")] = 100,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up runs per model.")] = 10,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here (a PNG chart is written beside it).")] = None,
    torch_reference: Annotated[bool, typer.Option("--torch-reference/--no-torch-reference", help="Also measure each bundle's torch fp32 parent run (needs torch).")] = True,
    ssh_option: Annotated[Optional[List[str]], typer.Option("--ssh-option", help="Extra ssh argument, e.g. --ssh-option=-p2222 (repeatable).")] = None,
    remote_python: Annotated[Optional[str], typer.Option("--remote-python", help="Interpreter on the device that already has the runtime (skips the venv install).")] = None,
    remote_dir: Annotated[str, typer.Option("--remote-dir", help="Working directory on the device (relative = under the SSH user's home); replaced each run.")] = "osteo-edge-bench",
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP)] = None,
    emulate: Annotated[bool, typer.Option("--emulate", help="raspberrypi without a Pi: run the runtime under aarch64 emulation here (proves it runs on ARM; not a Pi latency) and estimate Pi 4/5 latency.")] = False,
    emulator_dir: Annotated[Optional[Path], typer.Option("--emulator-dir", help="aarch64 emulation kit for --emulate (qemu-aarch64, sysroot/, site/).")] = None,
) -> None:
    """Measure load time, p50/p90/p99 latency, throughput, peak RSS and size of each model.

    Each model runs in its own process, all in this one run, so speed-ups against the torch fp32
    parent are ratios from the same run. Writes a table, and with --json a JSON report and a PNG.
    """
    from ..bench.targets import RASPBERRYPI_NEEDS_HOST, parse_threads, run_bench
    from ..bench.local import BenchRequest
    from ..bench.output import plot_report, write_json
    from ..edge_runtime import default_bundle_path
    from ..edge_runtime.classifier import open_bundle

    # usage errors (exit 2) before any bundle is opened or measured
    if target == TargetName.raspberrypi and not host and not emulate:
        raise usage_error(RASPBERRYPI_NEEDS_HOST)
    if host and emulate:
        raise usage_error("give --host (a Pi over SSH) or --emulate (aarch64 emulation here), not both")
    for given, name in ((host, "--host"), (emulate, "--emulate"), (emulator_dir, "--emulator-dir")):
        if given and target != TargetName.raspberrypi:
            raise usage_error(f"{name} is for --target raspberrypi")

    bundles = list(model or [])
    trust = trust_store(trusted_key)
    for b in bundles or [None]:  # refuse a tampered, unsigned-but-required or untrusted bundle before measuring
        open_bundle(b, trust)
    if not bundles and (default_bundle_path() / "manifest.json").is_file():
        bundles = [default_bundle_path()]
        reference = Path("models") / "default-fp32"  # in a checkout: the shipped bundle's fp32 parent beside it
        if (reference / "manifest.json").is_file():
            open_bundle(reference, trust)
            bundles.append(reference)
    counts = parse_threads(threads)
    req = BenchRequest(
        bundles=bundles, threads=counts[0], threads_list=counts, runs=runs, warmup=warmup, host=host, ssh_options=tuple(ssh_option or ()),
        remote_python=remote_python, remote_dir=remote_dir, torch_reference=torch_reference, emulator_dir=emulator_dir, emulate=emulate,
    )
    report = run_bench(target.value, req)
    render(report)
    if json_out is not None:
        written = [write_json(report, json_out)]
        if any(r.get("status") == "ok" for r in report["results"]):
            written.append(plot_report(report, json_out.with_suffix(".png")))
        out.wrote(written)
    if any(r.get("status") == "failed" for r in report["results"]):
        out.next_step("osteo-edge verify BUNDLE", "a model failed to load or run: check the bundle, or rerun with --verbose")
        raise typer.Exit(code=1)  # a check failed (README: exit codes)
    else:
        out.next_step(after_bench((model or [None])[0]))


METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}


def metric_name(path: str) -> str:
    """``test.macro_f1`` -> ``test macro-F1``: a column header that says what it holds."""
    split, _, key = path.rpartition(".")
    return " ".join(x for x in (split.replace(".", " "), METRIC_NAMES.get(key, key.replace("_", " "))) if x)


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def _row(r: dict, emulated: bool, metrics: list[str], several: bool = False) -> list[str]:
    st = r.get("status", "failed")
    acc = r.get("accuracy") or {}
    name = r.get("name", "?") + (f" (reference: {r.get('reference_kind') or 'parent run'})" if r.get("role") == "reference" else "")
    name += f" [{r.get('threads')} thr]" if several else ""
    pre = [f"{r['board_model']} emulated ({r['emulated_cpu']})" if r.get("emulated_cpu") else "this host"] if emulated else []
    post = [_f(r.get("max_abs_diff_vs_host"), "{:.1e}")] if emulated else []
    accs = [f"{acc['value']:.3f}" if acc.get("metric") == m else "-" for m in metrics]
    if st != "ok":
        return [*pre, name, str(r.get("format") or "-"), st, *["-"] * 6, _f(r.get("file_mb")), *accs, "-", *post, r.get("error", "")]
    speed = f"x{r['speedup_vs_torch_fp32']:.2f}" if r.get("speedup_vs_torch_fp32") else "-"
    return [*pre, name, str(r.get("format")), st, _f(r.get("load_ms"), "{:.0f}"), _f(r.get("p50_ms")), _f(r.get("p90_ms")),
            _f(r.get("p99_ms")), _f(r.get("throughput_ips"), "{:.1f}"), _f(r.get("peak_rss_mb"), "{:.0f}"), _f(r.get("file_mb")),
            *accs, speed, *post, ""]


def render(report: dict) -> None:
    m = report["machine"]
    s = report["settings"]
    emulated = report.get("kind", "measured") == "emulated"
    title = f"bench --target {report['target']}" + (f" ({report['host']})" if report.get("host") else "")
    title += ": EMULATED, not a Pi latency" if emulated else ""
    load = m.get("load_average")
    several = isinstance(s["threads"], list)
    threads_text = ",".join(map(str, s["threads"])) if several else s["threads"]
    caption = f"{m.get('cpu')} | {m.get('arch')} | {(m.get('isa') or {}).get('text', 'ISA unknown')} | {m.get('cores')} cores | {threads_text} threads, {s['runs']} runs after {s['warmup']} warm-up, batch 1"
    if load:
        caption += f" | load average {load[0]:.1f} before" + (f", {m['load_average_after'][0]:.1f} after" if m.get("load_average_after") else "")
    metrics = sorted({r["accuracy"]["metric"] for r in report["results"] if r.get("accuracy")})
    cols = [*([out.Col("ran on")] if emulated else []), out.Col("model"), out.Col("format"), out.Col("status"),
            *(out.Col(c, right=True) for c in ("load ms", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak RSS MB", "file MB")),
            *(out.Col(metric_name(x), right=True) for x in metrics), out.Col("vs torch fp32", right=True),
            *([out.Col("max |Δ| vs x86", right=True)] if emulated else []), out.Col("error", wrap=True)]
    rows = [_row(r, emulated, metrics, several) for r in report["results"]]
    if not any(r[-1] for r in rows):  # no error column when nothing failed
        cols, rows = cols[:-1], [r[:-1] for r in rows]
    out.table(title, cols, rows)
    out.line(caption, dim=True)
    out.line("status: " + "; ".join(f"{k} = {v}" for k, v in report.get("status_legend", {}).items()))
    if metrics:
        out.line(f"{', '.join(metric_name(x) for x in metrics)}: as recorded in each bundle's manifest")
    for est in report.get("estimates", []):
        out.line(f"ESTIMATE {est['text']}", style="yellow")
    for note in report.get("notes", []):
        out.line(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
