"""Code shape: no function or method in src/osteo_edge or the benchmark scripts is longer than
MAX_LINES lines, and no file in src/osteo_edge is longer than MAX_FILE_LINES.

A long function is made of named pieces (a state object, small helpers) so that the next change
(a loss, a sampler, a model-selection rule) lands in one piece instead of growing one function.
"""

from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 80
MAX_FILE_LINES = 500  # a file over this does more than one job: split it by job
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "osteo_edge"
SCRIPTS = REPO / "benchmarks"


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``path:line qualified.name (N lines)`` for every function or method longer than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = f"{prefix}{getattr(child, 'name', '')}"
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = child.end_lineno - child.lineno + 1
                    if n > limit:
                        found.append(f"{path.relative_to(root.parent)}:{child.lineno} {name} ({n} lines)")
                stack.append((child, f"{name}." if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else prefix))
    return sorted(found)


def long_files(root: Path, limit: int = MAX_FILE_LINES) -> list[str]:
    """``path (N lines)`` for every Python file under ``root`` longer than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            found.append(f"{path.relative_to(root.parent)} ({n} lines)")
    return found


def test_no_function_is_longer_than_the_limit():
    assert SRC.is_dir() and SCRIPTS.is_dir(), (SRC, SCRIPTS)
    too_long = long_functions(SRC) + long_functions(SCRIPTS)  # the benchmark scripts too
    assert not too_long, f"functions over {MAX_LINES} lines (split them into named pieces):\n" + "\n".join(too_long)


def test_no_file_in_src_is_longer_than_the_limit():
    too_long = long_files(SRC)
    assert not too_long, f"files over {MAX_FILE_LINES} lines (split them by job):\n" + "\n".join(too_long)


def test_the_file_check_names_the_offending_file(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "big.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    (pkg / "small.py").write_text("x = 1\n" * MAX_FILE_LINES)
    assert long_files(pkg) == [f"pkg/big.py ({MAX_FILE_LINES + 1} lines)"]


def test_the_check_names_the_offending_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_LINES))  # def line + MAX_LINES = one too many
    (pkg / "mod.py").write_text("class C:\n    def short(self):\n        return 1\n\n    def long(self):\n" + body)
    (pkg / "ok.py").write_text("def f():\n    return 1\n")
    assert long_functions(pkg) == [f"pkg/mod.py:5 C.long ({MAX_LINES + 1} lines)"]
