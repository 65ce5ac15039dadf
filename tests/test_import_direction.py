"""The dependency direction of the package, checked on the source with ``ast``.

Every ``import`` / ``from ... import`` in every module counts, at module level or inside a function,
relative or absolute. Layers (top-level units of ``osteo_edge``)::

    base     errors, images, preprocess, framing, locator, native, formats, artifact, _torchcompat, core -> base only
    data                                                                 -> base
    edge_runtime, api (the Python API)                                   -> errors, preprocess, formats, artifact, core
    modeling                                                             -> base, data
    stages   train, compress, export, bench, tabular, demo, dicom        -> base, data, modeling, edge_runtime
                                                                            (never another stage; demo and dicom never
                                                                            modeling or torch)
    screen   (archive screening)                                         -> base, data, edge_runtime, dicom (torch-free)
    release  (recipes that chain the stages)                             -> base, data, modeling, edge_runtime, stages
    cli                                                                  -> anything

Third-party bans: ``edge_runtime`` never imports torch, timm, tensorflow, gradio or sklearn (not even
lazily); ``demo`` never torch; ``core`` imports only numpy and the standard library at module level,
never torch, and only sklearn / matplotlib / rich lazily inside a function. And no import cycle between the
top-level units. Failures name the file and line.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = "osteo_edge"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG

BASE = frozenset({"errors", "images", "preprocess", "framing", "locator", "native", "formats", "artifact", "_torchcompat", "core"})
STAGES = frozenset({"train", "compress", "export", "bench", "tabular", "demo", "dicom"})
TORCH_FREE_STAGES = frozenset({"demo", "dicom", "screen"})  # clinic-side: edge_runtime, never torch or modeling
ALLOWED: dict[str, frozenset[str]] = {
    **{b: BASE for b in BASE},
    "data": BASE | {"data"},
    "edge_runtime": frozenset({"errors", "images", "preprocess", "formats", "artifact", "core", "native", "edge_runtime"}),
    "api": frozenset({"errors", "images", "preprocess", "formats", "artifact", "core", "native", "edge_runtime"}),  # the Python API: torch-free
    "modeling": BASE | {"data", "modeling"},
    **{s: BASE | {"data", "modeling", "edge_runtime", s} for s in STAGES - TORCH_FREE_STAGES},
    **{s: BASE | {"data", "edge_runtime", s} for s in TORCH_FREE_STAGES},
    # archive screening answers into the clinic record of the DICOM node (torch-free, above dicom)
    "screen": BASE | {"data", "edge_runtime", "dicom", "screen"},
    "release": BASE | {"data", "modeling", "edge_runtime", "release"} | STAGES,  # the recipes that chain stages (release, CV scoring)
}
HEAVY_RUNTIME = frozenset({"torch", "timm", "tensorflow", "gradio", "sklearn", "torchvision", "tf_keras", "nncf"})
CORE_LAZY_OK = frozenset({"sklearn", "matplotlib", "rich"})


@dataclass(frozen=True)
class Imp:
    target: str  # absolute dotted module name
    line: int
    lazy: bool  # inside a function


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def module_name(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [PKG, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Imp]:
    """Every import in ``source`` as an absolute module name (relative ones resolved against ``module``)."""
    tree = ast.parse(source)
    out: list[Imp] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(Imp(a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    base = pkg[: len(pkg) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                if child.module is None or child.level and not child.module:
                    # "from . import x": each name is a submodule (or an attribute of the package)
                    out.extend(Imp(f"{prefix}.{a.name}", child.lineno, lazy) for a in child.names)
                else:
                    out.append(Imp(prefix, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return out


def unit_of(module: str) -> str | None:
    """The top-level unit of an ``osteo_edge`` module (``osteo_edge.train.engine`` -> ``train``)."""
    parts = module.split(".")
    if parts[0] != PKG:
        return None
    return parts[1] if len(parts) > 1 else ""


def check_source(source: str, module: str, file: str, is_package: bool = False) -> list[Violation]:
    """The layering violations of one module's source."""
    me = unit_of(module)
    bad: list[Violation] = []
    for imp in imports_of(source, module, is_package):
        top = imp.target.split(".")[0]
        target = unit_of(imp.target)
        if target is not None:
            if me in ("", "cli") or target == "":
                continue
            allowed = ALLOWED.get(me)
            if allowed is None:
                bad.append(Violation(file, imp.line, f"unit {me!r} has no place in the layering table"))
            elif target not in allowed:
                bad.append(Violation(file, imp.line, f"{me} must not import {imp.target} ({target}); allowed: {', '.join(sorted(allowed))}"))
            continue
        if me in ("edge_runtime", "api") and top in HEAVY_RUNTIME:
            bad.append(Violation(file, imp.line, f"{me} must never import {top} (torch-free runtime)"))
        if me in TORCH_FREE_STAGES and top in {"torch", "timm", "torchvision"}:
            bad.append(Violation(file, imp.line, f"{me} must never import {top}"))
        if me == "core" and top not in sys.stdlib_module_names and top != "numpy" and top != "__future__":
            if not (imp.lazy and top in CORE_LAZY_OK):
                how = "inside a function" if imp.lazy else "at module level"
                bad.append(Violation(file, imp.line, f"core imports only numpy and the standard library; {top} {how}"))
    return bad


def unit_graph(modules: dict[str, tuple[str, bool]]) -> dict[str, dict[str, tuple[str, int]]]:
    """unit -> {imported unit: (file, line) of one such import}, for ``{module: (source, is_package)}``."""
    graph: dict[str, dict[str, tuple[str, int]]] = {}
    for mod, (source, is_pkg) in modules.items():
        me = unit_of(mod)
        edges = graph.setdefault(me, {})
        for imp in imports_of(source, mod, is_pkg):
            target = unit_of(imp.target)
            if target is not None and target not in ("", me) and me != "":
                edges.setdefault(target, (mod, imp.line))
    return graph


def find_cycle(graph: dict[str, dict[str, tuple[str, int]]]) -> list[str] | None:
    """One cycle of units (first unit repeated at the end), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, {})):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = dfs(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = dfs(u)
            if found:
                return found
    return None


def _package_sources() -> dict[str, tuple[str, bool, str]]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        out[module_name(path)] = (path.read_text(encoding="utf-8"), path.name == "__init__.py", str(path.relative_to(SRC.parents[1])))
    return out


# ------------------------------------------------------------------------------------------------
# the package itself


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in _package_sources()} - {""}
    missing = sorted(u for u in units if u not in ALLOWED and u != "cli")
    assert not missing, f"add these units to the layering table: {missing}"


def test_imports_follow_the_dependency_direction():
    violations = []
    for mod, (source, is_pkg, file) in _package_sources().items():
        violations += check_source(source, mod, file, is_pkg)
    assert not violations, "import direction violated:\n" + "\n".join(map(str, violations))


def test_no_import_cycle_between_units():
    graph = unit_graph({m: (s, p) for m, (s, p, _) in _package_sources().items()})
    cycle = find_cycle(graph)
    if cycle:
        where = [f"{a} -> {b} ({graph[a][b][0]}:{graph[a][b][1]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between units: " + "; ".join(where))


# ------------------------------------------------------------------------------------------------
# the checker flags what it should (a checker that cannot fail would prove nothing)


def test_checker_flags_a_stage_importing_another_stage_inside_a_function():
    src = "import numpy as np\n\n\ndef f():\n    from ..train.models import build_model\n    return build_model\n"
    v = check_source(src, "osteo_edge.export.golden", "export/golden.py")
    assert len(v) == 1 and v[0].line == 5 and "osteo_edge.train.models" in v[0].message


def test_checker_resolves_absolute_and_package_relative_imports():
    assert check_source("import osteo_edge.compress.prune\n", "osteo_edge.bench.measure", "m.py")
    assert check_source("from .. import train\n", "osteo_edge.demo.app", "m.py")  # osteo_edge.train
    assert check_source("from ..modeling import loading\n", "osteo_edge.demo.app", "m.py")  # demo never modeling
    # inside a package __init__, "from . import x" stays in the package
    assert not check_source("from . import golden\n", "osteo_edge.export", "export/__init__.py", is_package=True)
    assert check_source("from ..train import engine\n", "osteo_edge.modeling", "modeling/__init__.py", is_package=True)
    assert not check_source("from ..modeling.loading import load_run\nfrom ..core.stats import fmt_ci\n", "osteo_edge.train.compare", "m.py")
    assert not check_source("from ..train.engine import train\n", "osteo_edge.cli.train", "m.py")  # cli may import anything


def test_checker_flags_heavy_imports_below_the_stages():
    v = check_source("def f():\n    import torch\n", "osteo_edge.edge_runtime.gate", "gate.py")
    assert v and "torch" in v[0].message and v[0].line == 2
    assert check_source("import sklearn.metrics\n", "osteo_edge.core.stats", "core/stats.py")  # module level
    assert not check_source("def f():\n    from sklearn.metrics import f1_score\n", "osteo_edge.core.classification", "c.py")
    assert check_source("def f():\n    import torch\n", "osteo_edge.core.stats", "core/stats.py")  # never torch
    assert check_source("from ..data.split import read_split\n", "osteo_edge.core.stats", "core/stats.py")  # core is base
    assert check_source("import torch\n", "osteo_edge.demo.explain", "demo/explain.py")


def test_cycle_finder_finds_a_cycle():
    graph = {"export": {"compress": ("osteo_edge.export", 3)}, "compress": {"export": ("osteo_edge.compress.quantize", 56)}, "core": {}}
    assert find_cycle(graph) == ["compress", "export", "compress"]
    assert find_cycle({"train": {"core": ("m", 1)}, "core": {}}) is None
