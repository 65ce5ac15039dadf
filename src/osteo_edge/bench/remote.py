"""Benchmark on a real device over SSH (a Raspberry Pi 4/5 running 64-bit Raspberry Pi OS).

Steps, each one ``ssh`` call (``BatchMode=yes``: keys only, never a password prompt):

1. copy: the bundles and the runtime (this ``osteo_edge`` package, without models or caches) go
   over as one tar stream into ``~/<remote_dir>`` (replaced each run);
2. install: ``python3 -m venv`` there and ``pip install`` the runtime requirements (the
   ``runtime`` extra plus the base dependencies; no torch). ``remote_python`` skips this step and
   uses an interpreter that already has them;
3. run: ``python -m osteo_edge.bench`` with ``PYTHONPATH`` on the copied package;
4. bring back: the JSON report is printed by the remote command and parsed here.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, OsteoEdgeError

log = logging.getLogger(__name__)


class RemoteError(OsteoEdgeError):
    """An SSH step on the benchmark device failed."""


_HOST = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._:\[\]-]+$|^[A-Za-z0-9._:\[\]-]+$")


def runtime_requirements(extras: Sequence[str] = ("runtime", "onnx")) -> list[str]:
    """Base + ``extras`` requirements of the installed osteo-edge, markers kept, the extra clause removed.

    Both runtime backends by default (``runtime``: LiteRT; ``onnx``: ONNX Runtime), so that a device
    benchmark can compare bundles of either format."""
    from importlib import metadata

    try:
        reqs = metadata.requires("osteo-edge") or []
    except metadata.PackageNotFoundError:
        reqs = []
    out = []
    for r in reqs:
        req, _, marker = r.partition(";")
        marker = marker.strip()
        if "extra" in marker:
            names = "|".join(map(re.escape, extras))
            if not re.search(rf"extra\s*==\s*['\"]({names})['\"]", marker):
                continue
            marker = re.sub(rf"\s*(and\s+)?extra\s*==\s*['\"]({names})['\"]\s*(and\s+)?", " ", marker).strip()
            marker = re.sub(r"^\((.*)\)$", r"\1", marker).strip()
        out.append(f"{req.strip()}; {marker}" if marker else req.strip())
    if not out:  # not installed from metadata (e.g. run from a source tree): the documented set
        out = ["numpy>=1.24", "pillow>=10.0", "typer>=0.12,<0.29", "rich>=13.0", "pynacl>=1.5", "onnxruntime>=1.18", "pydicom>=3.0",
               "ai-edge-litert>=1.4,<2; python_version < '3.13' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')", "ai-edge-litert>=2.0; python_version >= '3.13' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')"]
    return out


def _tar(bundles: Sequence[Path]) -> tuple[bytes, list[str]]:
    pkg = Path(__file__).resolve().parent.parent  # .../osteo_edge
    buf = io.BytesIO()
    names = []

    def skip(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(ti.name).parts
        if "__pycache__" in parts or ti.name.endswith(".pyc") or (len(parts) > 2 and parts[1] == "osteo_edge" and parts[2] == "models"):
            return None
        return ti

    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(pkg, arcname="pkg/osteo_edge", filter=skip)
        for i, b in enumerate(bundles):
            name = f"bundles/{i}_{Path(b).name}"
            tf.add(Path(b), arcname=name)
            names.append(name)
    return buf.getvalue(), names


def _ssh(host: str, opts: Sequence[str], command: str, timeout: float, stdin: bytes | None = None, what: str = "") -> str:
    cmd = ["ssh", "-o", "BatchMode=yes", *opts, host, command]
    log.debug("ssh: %s", " ".join(shlex.quote(c) for c in cmd))
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise RemoteError("ssh is not installed on this machine (it runs the raspberrypi target with --host)") from exc
    except subprocess.TimeoutExpired as exc:
        raise RemoteError(f"{host}: {what} timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RemoteError(f"{host}: {what} failed (exit {proc.returncode}): {err[-1] if err else 'no message'}")
    return proc.stdout.decode(errors="replace")


def run_over_ssh(req: Any) -> dict[str, Any]:
    host = str(req.host)
    if not _HOST.match(host):
        raise ConfigError(f"--host must look like user@address, got {host!r}")
    rdir = req.remote_dir.rstrip("/")
    if not rdir or rdir == "/" or ".." in rdir.split("/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", rdir):
        raise ConfigError(f"remote directory must be a plain path without '..', got {req.remote_dir!r}")
    opts = list(req.ssh_options)
    data, names = _tar(req.bundles)
    q = shlex.quote
    _ssh(host, opts, f"rm -rf {q(rdir)} && mkdir -p {q(rdir)} && tar -xzf - -C {q(rdir)}", 600, stdin=data, what="copying the bundles and runtime")
    if req.remote_python:
        py = q(req.remote_python)
    else:
        reqs = " ".join(q(r) for r in runtime_requirements())
        _ssh(host, opts, f"cd {q(rdir)} && python3 -m venv venv && venv/bin/python -m pip install -q --upgrade pip && venv/bin/python -m pip install -q {reqs}", req.timeout_s, what="installing the runtime extra")
        py = "venv/bin/python"
    models = " ".join(f"--model {q(n)}" for n in names)
    out = _ssh(
        host, opts,
        f"cd {q(rdir)} && PYTHONPATH=pkg {py} -m osteo_edge.bench {models} --threads {int(req.threads)} --runs {int(req.runs)} --warmup {int(req.warmup)}",
        req.timeout_s, what="running the benchmark",
    )
    start = out.find("{")
    try:
        report = json.loads(out[start:])
    except (ValueError, json.JSONDecodeError) as exc:
        raise RemoteError(f"{host}: the benchmark printed no JSON report ({exc})") from exc
    local = {n: str(b) for n, b in zip(names, req.bundles)}
    for r in report.get("results", []):
        remote_rel = "/".join(Path(r.get("path", "")).parts[-2:])
        r["path"] = local.get(remote_rel, r.get("path"))
        r["name"] = Path(r["path"]).name
    report["host"] = host
    report["notes"] = [*report.get("notes", []), f"measured on {host} over SSH; the runtime was {'used from ' + req.remote_python if req.remote_python else 'installed into a fresh venv there'}"]
    return report
