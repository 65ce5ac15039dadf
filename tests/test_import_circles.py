"""No two files import each other, directly or through others: file-level import circles are zero.

The import-direction test (test_import_direction.py) orders the packages; inside a package, files
could still import each other in a loop (a private helper pulled back up from the module that uses
it). This test builds the graph of every import between files of ``src/osteo_edge`` and the
repository's ``benchmarks/`` scripts (module level and inside functions, relative or absolute) and
fails on any strongly connected group of more than one file, naming the files and the import lines.

A package ``__init__.py`` that defines nothing (a face that only hands names on) is a node too, but
its own imports are not followed: importing ``osteo_edge.edge_runtime`` for a name is not importing
every module the face re-exports.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PKG = "osteo_edge"


def _module_of(path: Path, src: Path) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_face(path: Path, tree: ast.Module) -> bool:
    return path.name == "__init__.py" and not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of every import; ``from X import y`` gives both X.y and X."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
            out.append((f"{base}.*", node.lineno))  # the module itself, for the names that are not submodules
    return out


def file_graph(src: Path = SRC, scripts: Path | None = REPO / "benchmarks") -> dict[str, dict[str, int]]:
    """file -> {imported file: line}, over the package's modules and the benchmark scripts."""
    root = src.parent
    files: dict[str, Path] = {}
    for path in sorted((src / PKG).rglob("*.py")):
        files[_module_of(path, src)] = path
    graph: dict[str, dict[str, int]] = {}

    def resolve(name: str) -> str | None:
        return str(files[name].relative_to(root)) if name in files else None

    def add(path: Path, module: str, is_package: bool, siblings: dict[str, Path]) -> None:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        me = str(path.relative_to(root))
        edges = graph.setdefault(me, {})
        if _is_face(path, tree):
            return
        for name, line in _imported_modules(tree, module, is_package):
            if name.endswith(".*"):  # from X import a, b: an edge to X unless every name is a submodule
                base = name[:-2]
                names = [n for n, ln in _imported_modules(tree, module, is_package) if ln == line and n.startswith(base + ".") and n != name]
                if names and all(n in files for n in names):
                    continue
                name = base
            target = resolve(name)
            if target is None and name in siblings:  # a script importing a script beside it
                target = str(siblings[name].relative_to(root))
            if target is not None and target != me:
                edges.setdefault(target, line)

    for module, path in files.items():
        add(path, module, path.name == "__init__.py", {})
    if scripts is not None and scripts.is_dir():
        for path in sorted(scripts.rglob("*.py")):
            siblings = {p.stem: p for p in path.parent.glob("*.py")}
            add(path, path.stem, False, siblings)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one file (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth is bounded by the number of files (a few hundred)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_file_level_import_circles():
    graph = file_graph()
    assert len(graph) > 100, "the graph should cover the package and the benchmark scripts"
    found = circles(graph)
    lines = []
    for comp in found:
        members = set(comp)
        lines.append(" <-> ".join(comp))
        lines += [f"    {a}:{line} imports {b}" for a in comp for b, line in sorted(graph[a].items()) if b in members]
    assert not found, "files that import each other in a circle:\n" + "\n".join(lines)


def test_the_check_finds_a_circle_and_names_its_files(tmp_path):
    src = tmp_path / "src"
    pkg = src / PKG / "sub"
    pkg.mkdir(parents=True)
    (src / PKG / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .a import f\n")  # a face: not followed
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g()\n")
    (pkg / "b.py").write_text("from osteo_edge.sub import a\n\ndef g():\n    return 1\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = file_graph(src, None)
    assert circles(graph) == [["src/osteo_edge/sub/a.py", "src/osteo_edge/sub/b.py"]]
