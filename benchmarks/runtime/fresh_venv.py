"""Install only the runtime extra into a fresh venv and measure it.

    python benchmarks/runtime/fresh_venv.py [--model BUNDLE] [--image IMG] [--out benchmarks/runtime/fresh_venv.json]

Reports: installed size of the venv (and of its largest packages), `import osteo_edge.edge_runtime`
time (median of 5 fresh interpreters), whether torch/timm/tensorflow/gradio got imported (they
must not be installed at all), first-prediction time (EdgeClassifier.load + predict of one real
image, in a fresh interpreter) and the output of `osteo-edge predict --json` on that image.
Without --model the shipped bundle (src/osteo_edge/models/default) is used.
Needs PyPI (pip install); this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


PIP_ITSELF = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")


def du_without_pip(site: Path, pattern: str = "*") -> int:
    """Bytes of ``pattern`` files in site-packages, pip and setuptools (and their dist-info) not counted."""
    keep = [p for p in site.iterdir() if p.name.split("-")[0] not in PIP_ITSELF]
    return sum(q.stat().st_size for p in keep for q in ([p] if p.is_file() else p.rglob(pattern)) if q.is_file() and q.match(pattern) and not q.is_symlink())


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def dicom_outcomes(venv: Path, tmp: Path, image: Path) -> dict[str, str]:
    """`osteo-edge predict --json` in the fresh venv on the image written in every transfer syntax of
    the table (by dcmtk/gdcm, run from this environment): the status, or the one-line reason."""
    try:
        from osteo_edge.dicom.samples import all_syntaxes, missing_tools
    except ImportError as exc:
        return {"skipped": f"osteo_edge not importable here ({exc})"}
    if missing_tools():
        return {"skipped": f"encoders missing: {missing_tools()}"}
    out = {}
    for name, path in all_syntaxes(image, tmp / "dicom").items():
        if name.startswith("base"):
            continue
        r = run([str(venv / "bin" / "osteo-edge"), "predict", str(path), "--json"], cwd=tmp)
        try:
            p = json.loads(r.stdout.strip().splitlines()[-1])
            out[name] = p["status"] if p["status"] != "rejected" else p["message"].split(". Screening")[0]
        except (ValueError, IndexError, KeyError):
            out[name] = f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1]}"
        if "Traceback" in r.stderr:
            out[name] += " (traceback on stderr!)"
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "src" / "osteo_edge" / "models" / "default")
    ap.add_argument("--image", type=Path, default=SHARED / "knee" / "wani-mendeley" / "Osteopenia" / "OP1.jpg")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runtime" / "fresh_venv.json")
    ap.add_argument("--keep", type=Path, default=None, help="create the venv here and keep it")
    a = ap.parse_args()
    if not a.image.exists():
        cands = sorted((SHARED / "knee" / "wani-mendeley").rglob("*.*"))
        a.image = next(p for p in cands if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return a


def install_runtime(venv: Path, tmp: Path) -> tuple[Path, float, subprocess.CompletedProcess]:
    """Create ``venv`` and pip-install ``.[runtime]`` into it; its python, the seconds taken and pip's result."""
    t0 = time.perf_counter()
    r = run([sys.executable, "-m", "venv", str(venv)])
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    # build from a copy without the dev venv or caches
    src = tmp / "src"
    # (benchmarks/, tests/ and docs/ of the repository root only: src/osteo_edge/bench is a package)
    top = shutil.ignore_patterns(".venv", ".git", "benchmarks", "tests", "docs", "build")
    anywhere = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT, src, ignore=lambda d, names: set(anywhere(d, names)) | (set(top(d, names)) if Path(d) == ROOT else set()))
    r = run([str(py), "-m", "pip", "install", "-q", f"{src}[runtime]"])
    return py, time.perf_counter() - t0, r


def import_times(py: Path, tmp: Path) -> tuple[list[float], str | None]:
    """`import osteo_edge.edge_runtime` in 5 fresh interpreters: the seconds, and the heavy modules it pulled in."""
    heavy = ("torch", "timm", "tensorflow", "gradio", "sklearn", "matplotlib")
    probe = (
        "import sys, time; t=time.perf_counter(); import osteo_edge.edge_runtime; dt=time.perf_counter()-t;"
        f"print(dt, sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    imports, leaked = [], None
    for _ in range(5):
        out = run([str(py), "-c", probe], cwd=tmp).stdout.split(" ", 1)
        imports.append(float(out[0]))
        leaked = out[1].strip()
    return imports, leaked


def first_prediction(py: Path, venv: Path, tmp: Path, model: Path, image: Path) -> tuple[bool, dict, subprocess.CompletedProcess]:
    """EdgeClassifier.load + predict in a fresh interpreter, then `osteo-edge predict --json`: whether the
    shipped bundle is used, the first-prediction timings and the CLI's result."""
    # The shipped bundle is package data: in the fresh install it loads with no path at all.
    shipped = model.resolve() == (ROOT / "src" / "osteo_edge" / "models" / "default").resolve()
    load_arg = "" if shipped else repr(str(model))
    first = (
        "import time; t=time.perf_counter();"
        "from osteo_edge.edge_runtime import EdgeClassifier;"
        f"c=EdgeClassifier.load({load_arg + ', ' if load_arg else ''}threads=2); t1=time.perf_counter();"
        f"p=c.predict({str(image)!r}); t2=time.perf_counter();"
        "import json; print(json.dumps({'import_and_load_s': t1-t, 'first_predict_s': t2-t1, 'total_s': t2-t, 'status': p.status, 'label': p.label, 'format': c.bundle.format}))"
    )
    fp = run([str(py), "-c", first], cwd=tmp)
    first_pred = json.loads(fp.stdout.strip().splitlines()[-1]) if fp.returncode == 0 else {"error": fp.stderr.strip().splitlines()[-1:]}
    cli = run([str(venv / "bin" / "osteo-edge"), "predict", str(image), "--json", *([] if shipped else ["--model", str(model)])], cwd=tmp)
    return shipped, first_pred, cli


def main() -> int:
    a = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="osteo-rt-venv-"))
    venv = a.keep or tmp / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    py, install_s, r = install_runtime(venv, tmp)
    if r.returncode != 0:
        print(r.stderr[-2000:])
        return 1
    freeze = run([str(py), "-m", "pip", "freeze"]).stdout.split()
    site = next((venv / "lib").glob("python3*/site-packages"))
    pkgs = sorted(((du(p), p.name) for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))), reverse=True)
    imports, leaked = import_times(py, tmp)
    importable = {m: run([str(py), "-c", f"import {m}"]).returncode == 0 for m in ("torch", "timm", "tensorflow", "gradio", "onnxruntime", "ai_edge_litert", "pydicom", "nacl", "pydantic", "pylibjpeg")}
    shipped, first_pred, cli = first_prediction(py, venv, tmp, a.model, a.image)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    dicom = dicom_outcomes(venv, tmp, a.image)
    result = {
        "what": "fresh venv with only osteo-edge[runtime] installed (pip install '.[runtime]'): LiteRT + pydicom (uncompressed, deflated, RLE; JPEG baseline and JPEG 2000 through Pillow), no ONNX Runtime, no DICOM node",
        "machine": {"cpu": cpu, "cores": __import__("os").cpu_count(), "arch": platform.machine(), "python": platform.python_version()},
        "install_seconds": round(install_s, 1),
        "venv_mb": round(du(venv) / 1e6, 1),
        "site_packages_mb": round(du(site) / 1e6, 1),
        "site_packages_mb_without_pip_setuptools": round(du_without_pip(site) / 1e6, 1),
        "site_packages_bytes_without_pip_setuptools": du_without_pip(site),
        "of_which_bytecode_mb": round(du_without_pip(site, "*.pyc") / 1e6, 1),  # compiled by pip at install
        "largest_packages_mb": {n: round(s / 1e6, 1) for s, n in pkgs[:8]},
        "packages": freeze,
        "import_edge_runtime_s_median_of_5": round(statistics.median(imports), 3),
        "heavy_modules_imported": leaked,
        "importable": importable,
        "bundle": str(a.model.relative_to(ROOT)) if a.model.is_relative_to(ROOT) else str(a.model),
        "image": str(a.image.relative_to(SHARED.parent)) if a.image.is_relative_to(SHARED.parent) else str(a.image),
        "bundle_loaded_from": "the installed package (EdgeClassifier.load() with no path)" if shipped else "--model path",
        "first_prediction": first_pred,
        "cli_predict_command": "osteo-edge predict IMAGE --json" + ("" if shipped else " --model BUNDLE"),
        "cli_predict_exit_code": cli.returncode,
        "cli_predict_json": cli.stdout.strip(),
        "dicom_by_transfer_syntax": dicom,
        "command": " ".join(["python", *sys.argv]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "packages"}, indent=2))
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
